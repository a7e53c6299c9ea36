//! The handle every service holds: this member's identity, its raft, and the stores behind it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use sha1::{Digest, Sha1};

use crate::apply::applier::Applier;
use crate::lease_clock::LeaseClock;
use crate::mvcc::MvccStore;
use crate::raft::log_store::LogStore;
use crate::raft::types::{Raft, TypeConfig};

pub type RaftMetricsReceiver =
    openraft::type_config::alias::WatchReceiverOf<TypeConfig, openraft::RaftMetrics<TypeConfig>>;
use crate::storage::{Engine, SizeInfo};

/// One member as etcd's Cluster API reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// Limits the edge enforces before a request reaches raft.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// How long a proposal may wait for its result (etcd: 5 s + 2 × election timeout).
    pub request_timeout: Duration,
    /// Period of watch progress notifications (`--experimental-watch-progress-notify-interval`).
    pub watch_progress_notify_interval: Duration,
    /// Raft election timeout: `hasleader` streams end after three of them without a leader.
    pub election_timeout: Duration,
    /// `--quota-backend-bytes` in effect (`u64::MAX` when the quota is off).
    pub quota_bytes: u64,
}

pub struct Node {
    pub member_id: u64,
    pub cluster_id: u64,
    pub name: String,
    pub limits: Limits,
    pub raft: Raft,
    /// openraft's metrics, read in place on every request (`is_learner`, `raft_status`): one
    /// receiver kept here, as `raft.metrics()` hands out a fresh clone each call, whose reference
    /// counts both cores then fought over.
    pub raft_metrics: RaftMetricsReceiver,
    pub applier: Arc<Applier>,
    pub log_store: LogStore,
    pub request_ids: RequestIds,
    pub db_size: SizeCache,
    pub read_batcher: crate::read::ReadBatcher,
    /// Writes and keep-alives this member forwards to the leader, batched per peer call.
    pub leader_calls: crate::forward::LeaderCallBatcher,
    /// The leader's lease deadlines (keep-alives, expiry).
    pub leases: Arc<LeaseClock>,
    /// Set once the member is asked to stop: calls that may wait without end (Lock, Campaign,
    /// Observe) end then, or the graceful stop, which waits for every call, would wait for them.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Connections to the other members (raft replication shares them).
    pub peer_channels: crate::raft::network::PeerChannels,
    /// When the leader last reached this member (a follower's view of its leader's liveness).
    pub leader_contact: LeaderContact,
}

/// The last time an append (or heartbeat) or snapshot from the leader was accepted here.
///
/// etcd forgets its leader the moment it starts a (pre-)election, an election timeout after the
/// leader went quiet, so `no leader` errors and Status report it. openraft keeps naming the old
/// leader while pre-votes fail (its vote does not change), so a follower decides for itself:
/// a leader not heard from for 1.5 election timeouts is none (and a leader no quorum answered
/// for as long reports none either, see `raft_status`).
#[derive(Default)]
pub struct LeaderContact(Mutex<Option<Instant>>);

impl LeaderContact {
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn within(&self, limit: Duration) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|at| at.elapsed() <= limit)
    }
}

impl Node {
    pub fn next_request_id(&self) -> u64 {
        self.request_ids.0.fetch_add(1, Ordering::Relaxed)
    }

    /// The member list: openraft's replicated membership.
    pub fn members(&self) -> Vec<MemberInfo> {
        crate::membership::members(self)
    }

    /// How to reach member `id`, if it is one.
    pub fn peer_node(&self, id: u64) -> Option<crate::raft::types::PeerNode> {
        let stored = self.raft_metrics.borrow_watched().membership_config.clone();
        stored.membership().get_node(&id).cloned()
    }

    /// Whether this member is a learner (not a voter) in the membership it knows.
    pub fn is_learner(&self) -> bool {
        // Asked on every request: look at the membership in place rather than cloning it.
        let watched = self.raft_metrics.borrow_watched();
        let membership = watched.membership_config.membership();
        // Not `voter_ids()`, which collects a set.
        let voter = membership.get_joint_config().iter().any(|config| config.contains(&self.member_id));
        !voter && membership.get_node(&self.member_id).is_some()
    }

    pub fn mvcc(&self) -> Arc<MvccStore> {
        self.applier.mvcc()
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        self.applier.engine()
    }

    /// The database's size, measured at most once a second: measuring redb walks its pages while
    /// holding writers off, so Status must not measure on every call.
    pub fn db_size(&self) -> crate::error::Result<SizeInfo> {
        let mut cache = self.db_size.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, size)) = &*cache {
            if at.elapsed() < SizeCache::MAX_AGE {
                return Ok(*size);
            }
        }
        let size = self.engine().size()?;
        *cache = Some((Instant::now(), size));
        self.db_size.1.store(0, Ordering::Relaxed);
        Ok(size)
    }

    /// The database's size as the space quota sees it: the last measurement plus what the quota
    /// admitted since. Measurements are up to a second old and lag the write buffer, and a burst
    /// of writes inside that second must not overshoot the quota by its whole volume.
    pub fn db_size_for_quota(&self) -> crate::error::Result<u64> {
        let measured = self.db_size()?.total_bytes;
        Ok(measured.saturating_add(self.db_size.1.load(Ordering::Relaxed)))
    }

    /// The space quota admitted a request of `cost` bytes.
    pub fn admitted_to_quota(&self, cost: u64) {
        self.db_size.1.fetch_add(cost, Ordering::Relaxed);
    }

    /// Raft's view right now: (term, leader, is this member the leader, committed index, applied index).
    pub fn raft_status(&self) -> RaftStatus {
        let m = self.raft_metrics.borrow_watched();
        let is_leader = m.state == ServerState::Leader;
        let silence = self.limits.election_timeout * 3 / 2;
        let leader = if is_leader {
            // etcd's leader steps down (CheckQuorum) once a quorum has not answered for an
            // election timeout; openraft's keeps leading alone. Report it leaderless meanwhile.
            // Read in place: `voter_ids()` collects a set, and this runs on every request.
            let mut voters = m.membership_config.membership().get_joint_config().iter().flatten();
            let first = voters.next();
            let alone = voters.all(|v| Some(v) == first);
            let acked = m.last_quorum_acked.as_ref().is_some_and(|at| openraft::Instant::elapsed(&**at) <= silence);
            m.current_leader.filter(|_| alone || acked)
        } else {
            m.current_leader.filter(|_| self.leader_contact.within(silence))
        };
        RaftStatus {
            term: m.current_term,
            leader,
            is_leader,
            last_index: m.last_log_index.unwrap_or(0),
            commit_index: m.local_committed.as_ref().map(|l| l.index).unwrap_or(0),
            applied_index: m.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
        }
    }
}

impl Node {
    /// This member's state as an etcd snapshot database (no trailer), written into `file`; returns
    /// the file positioned at the database's end. The source of `Maintenance.Snapshot`.
    pub fn write_etcd_snapshot(&self, file: std::fs::File) -> crate::error::Result<std::fs::File> {
        use crate::snapshot::{ExportInfo, ExportMember};
        let raft = self.raft_status();
        let members = self
            .members()
            .iter()
            .map(|m| ExportMember {
                id: m.id,
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: m.client_urls.clone(),
                is_learner: m.is_learner,
            })
            .collect();
        let info = ExportInfo { consistent_index: raft.applied_index, term: raft.term, members };
        Ok(crate::snapshot::etcd::export_to_file(self.engine().as_ref(), &info, file)?)
    }
}

/// The last size measurement, and the bytes the space quota admitted since it.
#[derive(Default)]
pub struct SizeCache(Mutex<Option<(Instant, SizeInfo)>>, AtomicU64);

impl SizeCache {
    const MAX_AGE: Duration = Duration::from_secs(1);
}

/// Ids for proposals. They only need to be unique among this member's in-flight proposals;
/// seeding with the clock keeps them unique across restarts too, as etcd's id generator does.
pub struct RequestIds(AtomicU64);

impl Default for RequestIds {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        RequestIds(AtomicU64::new(seed))
    }
}

#[derive(Clone, Debug)]
pub struct RaftStatus {
    pub term: u64,
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub last_index: u64,
    /// The highest log index this member knows committed (etcd's Status `raftIndex`).
    pub commit_index: u64,
    pub applied_index: u64,
}

/// etcd's member id: the first 8 bytes (big-endian) of sha1 over the sorted peer URLs joined
/// without separator, followed by the cluster token.
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut h = Sha1::new();
    h.update(urls.concat().as_bytes());
    h.update(cluster_token.as_bytes());
    first_u64(&h.finalize())
}

/// etcd's cluster id: sha1 over the sorted member ids, each as 8 big-endian bytes.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcd_for_the_default_single_member() {
        // `etcd` with no flags reports member 8e9e05c52164694d in cluster cdf818194e3a8c32.
        let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "cdf818194e3a8c32");
    }
}
