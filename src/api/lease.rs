//! The Lease service (etcd 3.5.16's `v3rpc/lease.go` over `v3_server.go`): grants and revokes go
//! through raft; keep-alives and TimeToLive are answered by the leader's lease clock (asked
//! through `forward` from a follower, as etcd followers ask the leader's `/leases` handler), and
//! Leases by this member's.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::auth::identity;
use crate::api::{header, status::to_status};
use crate::apply::command::{Request as Cmd, Response as Applied};
use crate::auth::AuthInfo;
use crate::error::Error;
use crate::node::Node;
use crate::propose;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

pub struct LeaseService {
    node: Arc<Node>,
}

impl LeaseService {
    pub fn new(node: Arc<Node>) -> Self {
        LeaseService { node }
    }
}

fn unexpected(what: &str) -> Status {
    to_status(Error::Internal(format!("apply returned an unexpected response to {what}")))
}

/// One keep-alive request: etcd fills the header BEFORE renewing, so the revision it reports is
/// never newer than the renewal (a lease revoked at revision 3 must not look renewed at 4).
async fn keep_alive_one(node: &Node, id: i64) -> Result<LeaseKeepAliveResponse, Error> {
    let header = header::header(node, node.mvcc().current_revision());
    let ttl = crate::forward::keep_alive(node, id).await?;
    Ok(LeaseKeepAliveResponse { header: Some(header), id, ttl })
}

/// LeaseGrant as etcd's server does it: the server picks the id before proposing and the lessor
/// raises a short TTL to the minimum; both happen here so the log carries the final values. Also
/// the lease behind a lock or election session asked for without one (`api/concurrency.rs`).
pub async fn grant(
    node: &Node,
    mut req: LeaseGrantRequest,
    user: Option<&AuthInfo>,
) -> Result<LeaseGrantResponse, Error> {
    if req.id == 0 {
        req.id = node.leases.unused_id();
    }
    req.ttl = req.ttl.max(node.leases.min_ttl());
    match propose::propose_as(node, Cmd::LeaseGrant(req), user).await? {
        (Applied::LeaseGrant(mut resp), _) => {
            resp.header = Some(header::complete(node, resp.header));
            Ok(resp)
        }
        _ => Err(Error::Internal("apply returned an unexpected response to lease grant".into())),
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        crate::api::quota::check(&self.node, crate::api::quota::LEASE_GRANT_COST).await?;
        let user = identity(&self.node, request.metadata()).map_err(to_status)?;
        grant(&self.node, request.into_inner(), user.as_ref()).await.map(Response::new).map_err(to_status)
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let user = identity(&self.node, request.metadata()).map_err(to_status)?;
        let req = request.into_inner();
        match propose::propose_as(&self.node, Cmd::LeaseRevoke(req), user.as_ref()).await.map_err(to_status)? {
            (Applied::LeaseRevoke(mut resp), _) => {
                resp.header = Some(header::complete(&self.node, resp.header));
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("lease revoke")),
        }
    }

    /// Requests on one stream are answered in order, one at a time (etcd's loop). An unknown or
    /// expired lease gets TTL 0 and the stream stays open; any other failure ends the stream with
    /// that error, as etcd's `togRPCError` return does.
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let inbound = request.into_inner();
        let node = self.node.clone();
        let replies = futures::stream::unfold(Some((inbound, node)), |state| async move {
            let (mut inbound, node) = state?;
            match inbound.message().await {
                Ok(Some(req)) => match keep_alive_one(&node, req.id).await {
                    Ok(resp) => Some((Ok(resp), Some((inbound, node)))),
                    Err(e) => Some((Err(to_status(e)), None)),
                },
                Ok(None) => None,
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    /// An unknown lease is not an error here: etcd answers TTL -1 with an empty header filled in.
    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        // etcd 3.5 (since the CVE-2023-32082 fix): listing a lease's keys needs READ on each.
        if request.get_ref().keys {
            let user = identity(&self.node, request.metadata()).map_err(to_status)?;
            let keys = self.node.applier.lessor().keys(request.get_ref().id).unwrap_or_default();
            self.node.applier.auth().check_keys_readable(user.as_ref(), &keys).map_err(|e| to_status(e.into()))?;
        }
        let req = request.into_inner();
        let found = crate::forward::time_to_live(&self.node, req.id, req.keys).await.map_err(to_status)?;
        let mut resp = match found {
            Some(t) => LeaseTimeToLiveResponse {
                header: None,
                id: req.id,
                ttl: t.ttl,
                granted_ttl: t.granted_ttl,
                keys: t.keys,
            },
            None => LeaseTimeToLiveResponse { header: None, id: req.id, ttl: -1, ..Default::default() },
        };
        resp.header = Some(header::complete(&self.node, None));
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self.node.leases.leases(Instant::now()).into_iter().map(|id| LeaseStatus { id }).collect();
        Ok(Response::new(LeaseLeasesResponse { header: Some(header::complete(&self.node, None)), leases }))
    }
}
