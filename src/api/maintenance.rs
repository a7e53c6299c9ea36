//! The Maintenance service (etcd's `v3rpc/maintenance.go`): Status and the alarm list, which
//! `etcdctl endpoint status/health` need, Snapshot in etcd's file format, and MoveLeader (through
//! `membership`). Defragment, hashes and downgrades arrive with the operations issue and answer
//! `Unimplemented` until then.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use std::io::{Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

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
            is_learner: node.is_learner(),
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

    /// etcd's Snapshot: the database in 32 KiB blobs, each with the bytes still to come, then one
    /// message whose blob is the sha256 of everything sent (which `etcdctl snapshot save` checks
    /// and appends to the file). As in 3.5, the messages carry no header.
    async fn snapshot(&self, _request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let node = self.node.clone();
        let (file, total) = tokio::task::spawn_blocking(move || snapshot_file(&node))
            .await
            .map_err(|e| to_status(crate::error::Error::Internal(format!("snapshot task: {e}"))))?
            .map_err(to_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || send_snapshot(file, total, tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    /// etcd's answer carries no header.
    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        crate::membership::move_leader(&self.node, target).await.map_err(to_status)?;
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    async fn downgrade(&self, _request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(not_yet("Maintenance.Downgrade"))
    }
}

/// etcd's `snapshotSendBufferSize`: the size of every blob but the last.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// Export into an anonymous temporary file (unlinked at once, so nothing is left behind whatever
/// happens to the stream); returns it rewound, with the database's length.
fn snapshot_file(node: &Node) -> crate::error::Result<(std::fs::File, u64)> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("keel-snapshot-{}-{n}.db", std::process::id()));
    let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    let _ = std::fs::remove_file(&path);
    let mut file = node.write_etcd_snapshot(file)?;
    let total = file.stream_position()?;
    file.seek(SeekFrom::Start(0))?;
    Ok((file, total))
}

/// Stream the file in chunks, then its sha256; stops early when the client goes away.
fn send_snapshot(mut file: std::fs::File, total: u64, tx: tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>) {
    let mut hash = Sha256::new();
    let mut sent = 0u64;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
    while sent < total {
        let want = SNAPSHOT_CHUNK.min((total - sent) as usize);
        if let Err(e) = file.read_exact(&mut buf[..want]) {
            let _ = tx.blocking_send(Err(to_status(e.into())));
            return;
        }
        sent += want as u64;
        hash.update(&buf[..want]);
        let msg = SnapshotResponse { header: None, remaining_bytes: total - sent, blob: buf[..want].to_vec() };
        if tx.blocking_send(Ok(msg)).is_err() {
            return;
        }
    }
    let digest = hash.finalize().to_vec();
    let _ = tx.blocking_send(Ok(SnapshotResponse { header: None, remaining_bytes: 0, blob: digest }));
}
