//! The Cluster service (etcd's `v3rpc/member.go`): the member list. Membership changes arrive with
//! multi-member clusters and answer `Unimplemented` until then.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::pending::not_yet;
use crate::node::Node;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::*;
use crate::read;

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        crate::api::auth::require_membership_admin(&self.node, request.metadata())?;
        Err(not_yet("Cluster.MemberAdd"))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        crate::api::auth::require_membership_admin(&self.node, request.metadata())?;
        Err(not_yet("Cluster.MemberRemove"))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        crate::api::auth::require_membership_admin(&self.node, request.metadata())?;
        Err(not_yet("Cluster.MemberUpdate"))
    }

    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            read::linearizable_barrier(&self.node).await.map_err(crate::api::status::to_status)?;
        }
        let members = self
            .node
            .members
            .iter()
            .map(|m| Member {
                id: m.id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: m.client_urls.clone(),
                is_learner: m.is_learner,
            })
            .collect();
        // etcd's member list header carries no revision.
        let header = ResponseHeader {
            cluster_id: self.node.cluster_id,
            member_id: self.node.member_id,
            raft_term: self.node.raft_status().term,
            revision: 0,
        };
        Ok(Response::new(MemberListResponse { header: Some(header), members }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        crate::api::auth::require_membership_admin(&self.node, request.metadata())?;
        Err(not_yet("Cluster.MemberPromote"))
    }
}
