//! The Maintenance service (etcd's `v3rpc/maintenance.go`): Status and the alarm list, which
//! `etcdctl endpoint status/health` need. Defragment, hashes, snapshots, leader moves and downgrades
//! arrive with the operations issue and answer `Unimplemented` until then.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::pending::{not_yet, BoxStream};
use crate::api::{header, status::to_status};
use crate::node::Node;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::*;

/// The etcd release whose behaviour Keel reproduces; kube-apiserver parses it from Status.
pub const ETCD_VERSION: &str = "3.5.16";

pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>) -> Self {
        MaintenanceService { node }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = BoxStream<SnapshotResponse>;

    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        match AlarmAction::try_from(req.action) {
            // No alarm is ever raised yet (quota and corruption checks come with their issue), so
            // the list is truthfully empty.
            Ok(AlarmAction::Get) => {
                let revision = self.node.mvcc().current_revision();
                Ok(Response::new(AlarmResponse { header: Some(header::header(&self.node, revision)), alarms: vec![] }))
            }
            _ => Err(not_yet("Maintenance.Alarm (activate/deactivate)")),
        }
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let raft = node.raft_status();
        let size = node.db_size().map_err(to_status)?;
        let mut errors = Vec::new();
        if raft.leader.is_none() {
            errors.push("etcdserver: no leader".to_string());
        }
        let revision = node.mvcc().current_revision();
        Ok(Response::new(StatusResponse {
            header: Some(header::header(node, revision)),
            version: ETCD_VERSION.to_string(),
            db_size: size.total_bytes as i64,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.last_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            errors,
            db_size_in_use: size.in_use_bytes as i64,
            is_learner: false,
        }))
    }

    async fn defragment(&self, _request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        Err(not_yet("Maintenance.Defragment"))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(not_yet("Maintenance.Hash"))
    }

    async fn hash_kv(&self, _request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(not_yet("Maintenance.HashKV"))
    }

    async fn snapshot(&self, _request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_yet("Maintenance.Snapshot"))
    }

    async fn move_leader(&self, _request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(not_yet("Maintenance.MoveLeader"))
    }

    async fn downgrade(&self, _request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(not_yet("Maintenance.Downgrade"))
    }
}
