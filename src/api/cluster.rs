//! The Cluster service (etcd's `v3rpc/member.go`): the member list and membership changes. The
//! list is the replicated membership (`membership`); changes are made by the leader, wherever
//! they are asked.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::status::to_status;
use crate::config::EtcdUrl;
use crate::error::Error;
use crate::membership::{self, MemberChange};
use crate::node::{MemberInfo, Node};
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

    /// etcd's member responses carry no revision.
    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.node.cluster_id,
            member_id: self.node.member_id,
            raft_term: self.node.raft_status().term,
            revision: 0,
        }
    }
}

fn to_member(m: &MemberInfo) -> Member {
    Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

fn to_members(ms: &[MemberInfo]) -> Vec<Member> {
    ms.iter().map(to_member).collect()
}

/// etcd's `types.NewURLs`: every URL must parse; they are kept in their normalized form.
fn peer_urls(raw: &[String]) -> Result<Vec<String>, Status> {
    raw.iter()
        .map(|u| EtcdUrl::parse(u).map(|url| url.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| to_status(Error::MemberBadUrls))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only.
        crate::api::auth::require_membership_admin(&self.node, request.metadata())?;
        let req = request.into_inner();
        let urls = peer_urls(&req.peer_ur_ls)?;
        let change = MemberChange::Add { peer_urls: urls, is_learner: req.is_learner };
        let (added, members) = membership::change(&self.node, change).await.map_err(to_status)?;
        Ok(Response::new(MemberAddResponse {
            header: Some(self.header()),
            member: added.as_ref().map(to_member),
            members: to_members(&members),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only.
        crate::api::auth::require_membership_admin(&self.node, request.metadata())?;
        let id = request.into_inner().id;
        let (_, members) = membership::change(&self.node, MemberChange::Remove { id }).await.map_err(to_status)?;
        Ok(Response::new(MemberRemoveResponse { header: Some(self.header()), members: to_members(&members) }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only.
        crate::api::auth::require_membership_admin(&self.node, request.metadata())?;
        let req = request.into_inner();
        let urls = peer_urls(&req.peer_ur_ls)?;
        let change = MemberChange::Update { id: req.id, peer_urls: urls };
        let (_, members) = membership::change(&self.node, change).await.map_err(to_status)?;
        Ok(Response::new(MemberUpdateResponse { header: Some(self.header()), members: to_members(&members) }))
    }

    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            read::linearizable_barrier(&self.node).await.map_err(to_status)?;
        }
        let members = to_members(&self.node.members());
        Ok(Response::new(MemberListResponse { header: Some(self.header()), members }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only.
        crate::api::auth::require_membership_admin(&self.node, request.metadata())?;
        let id = request.into_inner().id;
        let (_, members) = membership::change(&self.node, MemberChange::Promote { id }).await.map_err(to_status)?;
        Ok(Response::new(MemberPromoteResponse { header: Some(self.header()), members: to_members(&members) }))
    }
}
