//! The Election service (etcd 3.5.16's `v3election`): Campaign, Proclaim, Leader, Observe and
//! Resign over the election recipe in `concurrency.rs`, run as the calling user.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::concurrency::{self, Caller};
use crate::api::status::to_recipe_status;
use crate::api::BoxStream;
use crate::node::Node;
use crate::proto::v3electionpb::{
    election_server::Election, CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};

pub struct ElectionService {
    node: Arc<Node>,
}

impl ElectionService {
    pub fn new(node: Arc<Node>) -> Self {
        ElectionService { node }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    type ObserveStream = BoxStream<LeaderResponse>;

    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let caller = Caller::of(&metadata);
        let (header, leader) = concurrency::campaign(&self.node, &caller, &req.name, req.lease, &req.value)
            .await
            .map_err(to_recipe_status)?;
        Ok(Response::new(CampaignResponse { header: Some(header), leader: Some(leader) }))
    }

    async fn proclaim(&self, request: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let caller = Caller::of(&metadata);
        let header =
            concurrency::proclaim(&self.node, &caller, req.leader, &req.value).await.map_err(to_recipe_status)?;
        Ok(Response::new(ProclaimResponse { header: Some(header) }))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let caller = Caller::of(&metadata);
        concurrency::leader(&self.node, &caller, &req.name).await.map(Response::new).map_err(to_recipe_status)
    }

    async fn observe(&self, request: Request<LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let (metadata, _, req) = request.into_parts();
        Ok(Response::new(concurrency::observe(self.node.clone(), Caller::of(&metadata), req.name)))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let header =
            concurrency::resign(&self.node, &Caller::of(&metadata), req.leader).await.map_err(to_recipe_status)?;
        Ok(Response::new(ResignResponse { header: Some(header) }))
    }
}
