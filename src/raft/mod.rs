//! Consensus plumbing around openraft: the log store over our WAL, the state machine over the
//! applier, the peer network (`network`, client; `peer_service`, server). Knows nothing of etcd
//! semantics beyond etcd's raft settings (heartbeat, election timeout, pre-vote, snapshot count).

pub mod log_store;
pub mod network;
pub mod peer_service;
pub mod state_machine;
pub mod types;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::apply::applier::Applier;
use crate::error::{Error, Result};
use openraft::error::{InitializeError, RaftError};
use types::{PeerNode, Raft};

pub struct RaftSettings {
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// Entries between raft snapshots (etcd's `--snapshot-count`); the log is purged behind them.
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot for slow followers (etcd's `--experimental-snapshot-catchup-entries`).
    pub catchup_entries: u64,
}

/// Start this member's raft over the WAL in `data_dir/member/wal`. On first boot of a new cluster
/// (`bootstrap` is the whole initial membership) the membership is initialised; a member joining an
/// existing cluster (`bootstrap` None) starts empty and waits for the leader to replicate to it.
///
/// Every member of a new cluster initialises with the same membership (same ids, same node
/// info, all computed from `--initial-cluster`): openraft documents that initialising several
/// members with an identical config is safe (they all write the same membership entry at the same
/// log id, and voting elects one leader). A member that already received the leader's log before
/// initialising is refused with `NotAllowed`, which is the goal reached and is ignored.
pub async fn start(
    member_id: u64,
    bootstrap: Option<BTreeMap<u64, PeerNode>>,
    data_dir: &Path,
    applier: Arc<Applier>,
    network: network::PeerNetwork,
    settings: &RaftSettings,
) -> Result<(Raft, log_store::LogStore)> {
    let heartbeat = settings.heartbeat.as_millis().max(1) as u64;
    let election = (settings.election_timeout.as_millis() as u64).max(heartbeat * 2 + 2);
    let config = openraft::Config {
        cluster_name: "keel".to_string(),
        heartbeat_interval: heartbeat,
        // etcd campaigns a random [T, 2T) after the last heartbeat (T = --election-timeout).
        // openraft campaigns only once the leader's lease (election_timeout_max) AND a timeout
        // sampled from [min, max) have passed, so [T/2, T) here makes that [1.5T, 2T): close to
        // etcd's, and a dead leader is replaced well within three election timeouts.
        election_timeout_min: (election / 2).max(heartbeat + 1),
        election_timeout_max: election,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_count.max(1)),
        // etcd keeps this many entries (5000 by default) behind a snapshot for slow followers to
        // catch up from; one further behind is sent the snapshot.
        max_in_snapshot_log_to_keep: settings.catchup_entries,
        // etcd runs raft with PreVote on.
        enable_pre_vote: Some(true),
        // A restarted member starts as a follower, as etcd's raft always starts one. openraft would
        // otherwise let a leader that restarts before anyone else campaigns resume its term without
        // an election, with the commit index it last wrote down (we persist it lazily, as etcd
        // does), which can lag what it had acknowledged; its read index then let linearizable reads
        // miss acknowledged writes (the linearizability test caught one). An election teaches the
        // member the commit index again.
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::Internal(format!("raft config: {e}")))?;

    let wal_dir = data_dir.join("member").join("wal");
    let snap_dir = data_dir.join("member").join("snap");
    let log_store = log_store::LogStore::open(&wal_dir)?;
    let state_machine = state_machine::StateMachine::open(applier, snap_dir)?;
    let raft = Raft::new(member_id, Arc::new(config), network, log_store.clone(), state_machine)
        .await
        .map_err(|e| Error::Internal(format!("raft start: {e}")))?;

    let initialized = raft.is_initialized().await.map_err(|e| Error::Internal(format!("raft: {e}")))?;
    if let (false, Some(members)) = (initialized, bootstrap) {
        match raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(Error::Internal(format!("raft initialize: {e}"))),
        }
    }
    Ok((raft, log_store))
}
