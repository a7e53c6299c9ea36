//! Services whose behaviour arrives with later issues (lock and election). Registered now so every etcd method name resolves; each answers gRPC `Unimplemented`
//! until its issue lands, as a client of an etcd without that feature would see.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::proto::{v3electionpb, v3lockpb};

/// A server stream as the generated service traits want it.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub fn not_yet(method: &str) -> Status {
    Status::unimplemented(format!("keel does not serve {method} yet"))
}

/// `Lock`: not served yet.
pub struct PendingLock;

#[tonic::async_trait]
impl v3lockpb::lock_server::Lock for PendingLock {
    async fn lock(&self, _request: Request<v3lockpb::LockRequest>) -> Result<Response<v3lockpb::LockResponse>, Status> {
        Err(not_yet("Lock.Lock"))
    }

    async fn unlock(
        &self,
        _request: Request<v3lockpb::UnlockRequest>,
    ) -> Result<Response<v3lockpb::UnlockResponse>, Status> {
        Err(not_yet("Lock.Unlock"))
    }
}

/// `Election`: not served yet.
pub struct PendingElection;

#[tonic::async_trait]
impl v3electionpb::election_server::Election for PendingElection {
    type ObserveStream = BoxStream<v3electionpb::LeaderResponse>;

    async fn campaign(
        &self,
        _request: Request<v3electionpb::CampaignRequest>,
    ) -> Result<Response<v3electionpb::CampaignResponse>, Status> {
        Err(not_yet("Election.Campaign"))
    }

    async fn proclaim(
        &self,
        _request: Request<v3electionpb::ProclaimRequest>,
    ) -> Result<Response<v3electionpb::ProclaimResponse>, Status> {
        Err(not_yet("Election.Proclaim"))
    }

    async fn leader(
        &self,
        _request: Request<v3electionpb::LeaderRequest>,
    ) -> Result<Response<v3electionpb::LeaderResponse>, Status> {
        Err(not_yet("Election.Leader"))
    }

    async fn observe(
        &self,
        _request: Request<v3electionpb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        Err(not_yet("Election.Observe"))
    }

    async fn resign(
        &self,
        _request: Request<v3electionpb::ResignRequest>,
    ) -> Result<Response<v3electionpb::ResignResponse>, Status> {
        Err(not_yet("Election.Resign"))
    }
}
