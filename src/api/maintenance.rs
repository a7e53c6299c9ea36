//! The Maintenance service (etcd 3.5.16's `v3rpc/maintenance.go`): Status, alarms, HashKV and
//! Hash, Defragment, Downgrade, Snapshot in etcd's file format, and MoveLeader (through
//! `membership`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use std::io::{Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

use crate::api::BoxStream;
use crate::api::{header, status::to_status};
use crate::apply::command::{Request as Cmd, Response as Applied};
use crate::error::Error;
use crate::node::Node;
use crate::propose;
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

    /// etcd's Alarm: GET, ACTIVATE and DEACTIVATE all go through raft (alarms are cluster
    /// state); `etcdctl alarm list` / `alarm disarm` are GET and a DEACTIVATE per listed alarm.
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        // etcd 3.5.16 panics on an unknown action, and on activating an unknown alarm type (after
        // storing it, so it panics again on restart); refuse those instead of proposing them.
        let action = AlarmAction::try_from(req.action);
        if action.is_err() {
            return Err(to_status(Error::Internal(format!("unknown alarm action {}", req.action))));
        }
        if action == Ok(AlarmAction::Activate) && AlarmType::try_from(req.alarm).is_err() {
            return Err(to_status(Error::Internal(format!("unknown alarm type {}", req.alarm))));
        }
        match propose::propose(&self.node, Cmd::Alarm(req)).await.map_err(to_status)? {
            (Applied::Alarm(mut resp), _) => {
                resp.header = Some(header::complete(&self.node, resp.header));
                Ok(Response::new(resp))
            }
            _ => Err(to_status(Error::Internal("apply returned an unexpected response to alarm".into()))),
        }
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let raft = node.raft_status();
        let size = node.db_size().map_err(to_status)?;
        let mut errors = Vec::new();
        if raft.leader.is_none() {
            errors.push(crate::api::status::code_and_message(&Error::NoLeader).1);
        }
        // Then every active alarm, in gogoproto's text form, as etcd lists them.
        errors.extend(node.applier.alarms().get(AlarmType::None as i32).iter().map(alarm_text));
        let revision = node.mvcc().current_revision();
        Ok(Response::new(StatusResponse {
            header: Some(header::header(node, revision)),
            version: ETCD_VERSION.to_string(),
            db_size: size.total_bytes as i64,
            leader: raft.leader.unwrap_or(0),
            // etcd reports the committed index here, not the last index in its log.
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            errors,
            db_size_in_use: size.in_use_bytes as i64,
            is_learner: node.is_learner(),
        }))
    }

    /// etcd's Defragment: give free space back to the file system. etcd blocks every read and
    /// write of the member while it rewrites bbolt (etcd issue 9222); the engine here rewrites
    /// beside the live file and holds writes off only to swap files. As in etcd, the response is
    /// `{}` without a header.
    async fn defragment(&self, request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        // Root only; etcd sends the auth error untranslated.
        crate::api::auth::require_admin(&self.node, request.metadata())?;
        let node = self.node.clone();
        let started = std::time::Instant::now();
        let inflight = crate::metrics::GaugeGuard::hold(&crate::metrics::DEFRAG_INFLIGHT);
        blocking(move || Ok(node.engine().defragment()?)).await?;
        drop(inflight);
        crate::metrics::DEFRAG.observe(started.elapsed());
        tracing::info!(took = ?started.elapsed(), "finished defragmenting the backend");
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    /// etcd's Hash: a checksum of the member's whole state. etcd's value depends on bbolt's page
    /// layout and cannot be reproduced; ours is stable for one state (see `Applier::state_hash`).
    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        // Root only; etcd sends the auth error untranslated.
        crate::api::auth::require_admin(&self.node, request.metadata())?;
        let node = self.node.clone();
        let (hash, revision) = blocking(move || {
            // The revision is read first: the state hashed is at least that new, as in etcd,
            // where the revision comes from the same locked view.
            let revision = node.mvcc().current_revision();
            Ok((node.applier.state_hash()?, revision))
        })
        .await?;
        Ok(Response::new(HashResponse { header: Some(header::header(&self.node, revision)), hash }))
    }

    /// etcd's HashKV: the key-value history's CRC-32C up to a revision, equal to real etcd's for
    /// the same history (see `mvcc::hash`). The header carries the store revision.
    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        // Root only; etcd sends the auth error untranslated.
        crate::api::auth::require_admin(&self.node, request.metadata())?;
        let rev = request.into_inner().revision;
        let mvcc = self.node.mvcc();
        let h = blocking(move || mvcc.hash_kv(rev)).await?;
        Ok(Response::new(HashKvResponse {
            header: Some(header::header(&self.node, h.current_revision)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            // etcd 3.5.16 computes the hashed revision but leaves this field unset.
            hash_revision: 0,
        }))
    }

    /// etcd's Snapshot: the database in 32 KiB blobs, each with the bytes still to come, then one
    /// message whose blob is the sha256 of everything sent (which `etcdctl snapshot save` checks
    /// and appends to the file). As in 3.5, the messages carry no header.
    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        // Root only; etcd sends the auth error untranslated (Unknown `auth: permission denied`).
        crate::api::auth::require_admin(&self.node, request.metadata())?;
        let node = self.node.clone();
        let started = std::time::Instant::now();
        let (file, total) = tokio::task::spawn_blocking(move || snapshot_file(&node))
            .await
            .map_err(|e| to_status(crate::error::Error::Internal(format!("snapshot task: {e}"))))?
            .map_err(to_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            send_snapshot(file, total, tx);
            // etcd times a backend snapshot from its start until the stream is done with it.
            crate::metrics::BACKEND_SNAPSHOT.observe(started.elapsed());
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    /// etcd's answer carries no header.
    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        crate::membership::move_leader(&self.node, target).await.map_err(to_status)?;
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    /// etcd 3.5.16's Downgrade (see `api::downgrade`); the header carries the store revision.
    async fn downgrade(&self, request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        let version = crate::api::downgrade::downgrade(&self.node, request.into_inner()).await.map_err(to_status)?;
        let revision = self.node.mvcc().current_revision();
        Ok(Response::new(DowngradeResponse { header: Some(header::header(&self.node, revision)), version }))
    }
}

/// An alarm as gogoproto's `String()` prints it (what `etcdctl alarm list` and Status `errors`
/// show): each non-zero field as `name:value` followed by a space, enums by name.
pub fn alarm_text(m: &AlarmMember) -> String {
    let mut text = String::new();
    if m.member_id != 0 {
        text.push_str(&format!("memberID:{} ", m.member_id));
    }
    if m.alarm != 0 {
        match AlarmType::try_from(m.alarm) {
            Ok(t) => text.push_str(&format!("alarm:{} ", t.as_str_name())),
            Err(_) => text.push_str(&format!("alarm:{} ", m.alarm)),
        }
    }
    text
}

/// Run storage-bound work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| to_status(crate::error::Error::Internal(format!("maintenance task: {e}"))))?
        .map_err(to_status)
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
