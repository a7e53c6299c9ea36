//! Consensus plumbing around openraft: the log store over our WAL, the state machine over the
//! applier, the peer network. Knows nothing of etcd semantics.

pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::apply::applier::Applier;
use crate::error::{Error, Result};
use types::{PeerNode, Raft};

pub struct RaftSettings {
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// Entries between raft snapshots (etcd's `--snapshot-count`); the log is purged behind them.
    pub snapshot_count: u64,
}

/// Start this member's raft over the WAL in `data_dir/member/wal`, initialising a new single-member
/// cluster on first boot.
pub async fn start(
    member_id: u64,
    node: PeerNode,
    initial_members: BTreeMap<u64, PeerNode>,
    data_dir: &Path,
    applier: Arc<Applier>,
    settings: &RaftSettings,
) -> Result<(Raft, log_store::LogStore)> {
    let heartbeat = settings.heartbeat.as_millis().max(1) as u64;
    let election = (settings.election_timeout.as_millis() as u64).max(heartbeat * 2);
    let config = openraft::Config {
        cluster_name: "keel".to_string(),
        heartbeat_interval: heartbeat,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_count.max(1)),
        // etcd keeps 5000 entries behind a snapshot for slow followers to catch up from.
        max_in_snapshot_log_to_keep: 5000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::Internal(format!("raft config: {e}")))?;

    let wal_dir = data_dir.join("member").join("wal");
    let snap_dir = data_dir.join("member").join("snap");
    let log_store = log_store::LogStore::open(&wal_dir)?;
    let state_machine = state_machine::StateMachine::open(applier, snap_dir)?;
    let raft = Raft::new(member_id, Arc::new(config), network::PeerNetwork, log_store.clone(), state_machine)
        .await
        .map_err(|e| Error::Internal(format!("raft start: {e}")))?;

    let initialized = raft.is_initialized().await.map_err(|e| Error::Internal(format!("raft: {e}")))?;
    if !initialized {
        let mut members = initial_members;
        members.entry(member_id).or_insert(node);
        raft.initialize(members).await.map_err(|e| Error::Internal(format!("raft initialize: {e}")))?;
    }
    Ok((raft, log_store))
}
