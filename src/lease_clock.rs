//! The leader's lease clock: the wall-clock half of etcd 3.5.16's lessor. The lessor (`lease/`)
//! holds what every member agrees on; this holds the deadlines, which only the leader keeps:
//! keep-alives renew them here without going through raft (leader-local, as in etcd — and the
//! reason keep-alives are cheap), and a task started at boot revokes expired leases by proposing
//! `LeaseRevoke` through raft (≤ 1000/s, etcd's `leaseRevokeRate`), so apply never reads a clock.
//!
//! Where we deliberately do better than etcd (etcd issues 9395 and 9888): etcd re-arms every lease
//! to its full TTL when a member becomes leader (restart, leader change), because its remaining
//! time lives only in the old leader's memory (checkpointing is off by default and runs every
//! 5 minutes when on). Here the leader proposes a `LeaseCheckpoint` of every lease's remaining
//! TTL every few seconds and once more on graceful shutdown, so a new leader resumes each lease
//! with what was left of it (plus one election timeout, as etcd's `Promote` adds, to give
//! clients time to find the new leader) instead of starting it over.
//!
//! May use `node`, `propose` and the lessor read-only (like `propose` and `read`); the Lease API
//! (`api/lease.rs`) reaches it through the node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::apply::command::Request;
use crate::error::{Error, Result};
use crate::lease::expiry::{after, after_duration, ExpiryQueue};
use crate::lease::{LeaseChange, LeaseInfo, Lessor};
use crate::node::Node;
use crate::proto::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};

/// etcd's `leaseRevokeRate`: at most this many expired leases are revoked per second.
const REVOKE_RATE: f64 = 1000.0;
/// etcd's `expiredLeaseRetryInterval`: an expired lease whose revoke has not landed by then is
/// proposed again.
const REVOKE_RETRY: Duration = Duration::from_secs(3);
/// etcd's `maxLeaseCheckpointBatchSize`: checkpoints per raft command.
const CHECKPOINT_BATCH: usize = 1000;
/// How often the task looks for expired leases at most (etcd: every 500 ms).
const TICK: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// etcd's minimum TTL: ceil(1.5 × election timeout) seconds, 2 s by default.
    pub min_ttl: i64,
    /// Added to every lease when this member becomes leader (etcd's `Promote(electionTimeout)`).
    pub extend: Duration,
    /// How often the leader checkpoints remaining TTLs.
    pub checkpoint_interval: Duration,
}

impl LeaseSettings {
    /// etcd computes the minimum from whole election ticks: `(3 × ticks / 2) × heartbeat`, rounded
    /// up to a second (`server.go`).
    pub fn new(heartbeat: Duration, election_timeout: Duration) -> LeaseSettings {
        let hb = heartbeat.as_millis().max(1);
        let ticks = election_timeout.as_millis() / hb;
        let min_ms = (3 * ticks / 2) * hb;
        let min_ttl = i64::try_from(min_ms.div_ceil(1000)).unwrap_or(i64::MAX);
        LeaseSettings { min_ttl, extend: election_timeout, checkpoint_interval: Duration::from_secs(5) }
    }
}

/// What a keep-alive made of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed to its full TTL (the value).
    Renewed(i64),
    /// No such lease.
    NotFound,
    /// The lease's deadline passed; its revoke is on the way and it is not renewed.
    Expired,
}

/// LeaseTimeToLive's answer for an existing lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeToLive {
    pub ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

pub struct LeaseClock {
    lessor: Arc<Lessor>,
    settings: LeaseSettings,
    queue: Mutex<ExpiryQueue>,
    /// True while this member is leader and its deadlines are armed (etcd's `isPrimary`).
    primary: AtomicBool,
    /// Leases granted while this member leads but is not yet primary (it is applying the log
    /// written before its election): armed at promotion with their own TTL from their grant, not
    /// extended as the leases of a previous leader are.
    granted_while_promoting: Mutex<Vec<(i64, u64, Instant)>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl LeaseClock {
    pub fn new(lessor: Arc<Lessor>, settings: LeaseSettings) -> LeaseClock {
        LeaseClock {
            lessor,
            settings,
            queue: Mutex::new(ExpiryQueue::default()),
            primary: AtomicBool::new(false),
            granted_while_promoting: Mutex::new(Vec::new()),
            task: Mutex::new(None),
        }
    }

    pub fn min_ttl(&self) -> i64 {
        self.settings.min_ttl
    }

    pub fn is_primary(&self) -> bool {
        self.primary.load(Ordering::Acquire)
    }

    /// A positive id no lease has, for a grant that did not name one. etcd takes the next id of
    /// its request id generator; any unused positive int64 is as good for clients.
    pub fn unused_id(&self) -> i64 {
        loop {
            let id = rand::random::<i64>() & i64::MAX;
            if id != 0 && !self.lessor.contains(id) {
                return id;
            }
        }
    }

    /// This member became leader: arm every lease with its remaining TTL (the checkpointed one,
    /// else the full TTL) plus one election timeout (etcd's `lessor.Promote`).
    pub fn promote(&self, now: Instant) {
        let mut q = self.queue();
        self.lessor.take_changes();
        q.clear();
        let base = after_duration(now, self.settings.extend);
        for info in self.lessor.all() {
            q.arm(info.id, info.epoch, after(base, info.resume_ttl()));
        }
        for (id, epoch, at) in self.granted_while_promoting().drain(..) {
            q.arm(id, epoch, at);
        }
        self.primary.store(true, Ordering::Release);
    }

    fn granted_while_promoting(&self) -> MutexGuard<'_, Vec<(i64, u64, Instant)>> {
        self.granted_while_promoting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// While this member leads but waits to be primary: remember the grants applied meanwhile.
    fn note_grants_while_promoting(&self, now: Instant) {
        let mut granted = self.granted_while_promoting();
        for change in self.lessor.take_changes() {
            match change {
                LeaseChange::Granted(info) => granted.push((info.id, info.epoch, after(now, info.ttl))),
                LeaseChange::Revoked { id, epoch } => granted.retain(|g| (g.0, g.1) != (id, epoch)),
                LeaseChange::Reset => granted.clear(),
            }
        }
    }

    /// This member stopped leading: forget every deadline (etcd's `Demote`).
    pub fn demote(&self) {
        let mut q = self.queue();
        self.primary.store(false, Ordering::Release);
        q.clear();
        self.granted_while_promoting().clear();
    }

    /// Keep-alive of lease `id` at `now`: the full granted TTL from now on (etcd's `lessor.Renew`).
    pub fn renew(&self, id: i64, now: Instant) -> Result<Renewal> {
        if !self.is_primary() {
            return Err(Error::NotLeader);
        }
        let Some(info) = self.lessor.get(id) else {
            return Ok(Renewal::NotFound);
        };
        let mut q = self.queue();
        if self.armed(&mut q, &info, now) <= now {
            return Ok(Renewal::Expired);
        }
        q.arm(id, info.epoch, after(now, info.ttl));
        crate::metrics::LEASE_RENEWED.inc();
        Ok(Renewal::Renewed(info.ttl))
    }

    /// One keep-alive as the Lease API answers it: the new TTL, or 0 for a lease that does not
    /// exist. An expired lease is not renewed: like etcd we wait until its revoke has been applied
    /// (so a client told "0" no longer sees its keys) and then answer 0.
    pub async fn keep_alive(&self, id: i64, patience: Duration) -> Result<i64> {
        match self.renew(id, Instant::now())? {
            Renewal::Renewed(ttl) => Ok(ttl),
            Renewal::NotFound => Ok(0),
            Renewal::Expired => {
                // Subscribing after the check is safe: the loop looks at the lessor first.
                let mut revocations = self.lessor.revocations();
                let gone = async {
                    while self.lessor.contains(id) {
                        if revocations.changed().await.is_err() {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(patience, gone).await;
                Ok(0)
            }
        }
    }

    /// etcd's LeaseTimeToLive on the leader: seconds left, truncated toward zero as Go's
    /// `int64(d.Seconds())` does (so a lease granted with TTL 10 reports 9 right away, and an
    /// expired one not yet revoked reports 0 or less); None if there is no such lease.
    pub fn time_to_live(&self, id: i64, with_keys: bool, now: Instant) -> Result<Option<TimeToLive>> {
        if !self.is_primary() {
            return Err(Error::NotLeader);
        }
        let Some(info) = self.lessor.get(id) else {
            return Ok(None);
        };
        let at = {
            let mut q = self.queue();
            self.armed(&mut q, &info, now)
        };
        let left = if at >= now { (at - now).as_secs_f64() } else { -(now - at).as_secs_f64() };
        let keys = if with_keys { self.lessor.keys(id).unwrap_or_default() } else { Vec::new() };
        Ok(Some(TimeToLive { ttl: left as i64, granted_ttl: info.ttl, keys }))
    }

    /// Every lease id, soonest deadline first (etcd's `Leases()` sorts by expiry), ties by id.
    pub fn leases(&self, now: Instant) -> Vec<i64> {
        let all = self.lessor.all();
        if !self.is_primary() {
            return all.iter().map(|i| i.id).collect();
        }
        let mut q = self.queue();
        let mut by_deadline: Vec<(Instant, i64)> = all.iter().map(|i| (self.armed(&mut q, i, now), i.id)).collect();
        by_deadline.sort_unstable();
        by_deadline.into_iter().map(|(_, id)| id).collect()
    }

    /// The deadline of this grant of the lease, arming it from now if it has none yet (a lease
    /// granted since the task last looked).
    fn armed(&self, q: &mut ExpiryQueue, info: &LeaseInfo, now: Instant) -> Instant {
        if let Some(at) = q.deadline(info.id, info.epoch) {
            return at;
        }
        let at = after(now, info.resume_ttl());
        q.arm(info.id, info.epoch, at);
        at
    }

    /// A grant this leader proposed (for itself or for a follower) was applied: start its clock
    /// now rather than at the task's next look, so TimeToLive right after the grant says 59 for a
    /// 60 s lease, as etcd's does.
    pub fn grant_applied(&self) {
        if self.is_primary() {
            self.absorb(Instant::now());
        } else {
            // A leader still applying its predecessor's log: keep the grant for the promotion.
            self.note_grants_while_promoting(Instant::now());
        }
    }

    /// Take in the lessor's grants and revokes since the last look.
    fn absorb(&self, now: Instant) {
        let changes = self.lessor.take_changes();
        if changes.is_empty() {
            return;
        }
        let mut q = self.queue();
        for change in changes {
            match change {
                LeaseChange::Granted(info) => {
                    if self.is_primary() && q.deadline(info.id, info.epoch).is_none() {
                        q.arm(info.id, info.epoch, after(now, info.ttl));
                    }
                }
                LeaseChange::Revoked { id, epoch } => q.remove(id, epoch),
                LeaseChange::Reset => {
                    drop(q);
                    if self.is_primary() {
                        self.promote(now);
                    }
                    return;
                }
            }
        }
    }

    /// Expired leases to revoke now, at most `limit`; each is looked at again `REVOKE_RETRY` later
    /// so that it is proposed again if this revoke is lost (it stays expired meanwhile).
    fn take_expired(&self, now: Instant, limit: usize) -> Vec<i64> {
        let mut q = self.queue();
        let mut out = Vec::new();
        for (id, epoch) in q.due(now, limit) {
            if self.lessor.get(id).is_some_and(|i| i.epoch == epoch) {
                q.recheck(id, after_duration(now, REVOKE_RETRY));
                out.push(id);
            } else {
                q.remove(id, epoch);
            }
        }
        out
    }

    /// The remaining TTL of the live leases, rounded up to whole seconds (as etcd's checkpoints
    /// are); leases already past their deadline are left out, their revoke is under way.
    ///
    /// Unless `all` is set, a lease is left out while what a new leader would resume it with (its
    /// stored checkpoint, else its TTL) is within a tolerance of the truth: the checkpoint
    /// interval, or a tenth of the TTL for long leases. That bounds the error a restart or leader
    /// change can cause while a 1-hour lease costs a log entry every 6 minutes, not every 5 s.
    /// A renewed lease drifts above its checkpoint and is written again soon after.
    pub fn checkpoints(&self, now: Instant, all: bool) -> Vec<LeaseCheckpoint> {
        let leases = self.lessor.all();
        let interval = self.settings.checkpoint_interval.as_secs().max(1);
        let mut q = self.queue();
        leases
            .iter()
            .filter_map(|info| {
                let at = self.armed(&mut q, info, now);
                if at <= now {
                    return None;
                }
                let remaining = i64::try_from((at - now).as_secs_f64().ceil() as u64).unwrap_or(i64::MAX);
                let tolerance = i64::try_from(interval).unwrap_or(i64::MAX).max(info.ttl / 10);
                let stale = info.resume_ttl().abs_diff(remaining) >= tolerance.unsigned_abs();
                (all || stale).then_some(LeaseCheckpoint { id: info.id, remaining_ttl: remaining })
            })
            .collect()
    }

    /// Propose the remaining TTL of the leases that need it (of all of them with `all`), in
    /// batches, if this member leads.
    pub async fn checkpoint(&self, node: &Node, all: bool) -> Result<()> {
        if !self.is_primary() {
            return Ok(());
        }
        let all = self.checkpoints(Instant::now(), all);
        for batch in all.chunks(CHECKPOINT_BATCH) {
            let req = LeaseCheckpointRequest { checkpoints: batch.to_vec() };
            crate::propose::propose(node, Request::LeaseCheckpoint(req)).await?;
        }
        Ok(())
    }

    /// Start the task that follows leadership, revokes expired leases and checkpoints. Arms the
    /// deadlines at once if this member already leads, so no request sees an unarmed lease.
    pub fn start(self: &Arc<Self>, node: Arc<Node>) {
        let status = node.raft_status();
        if status.is_leader && status.applied_index >= status.last_index {
            self.promote(Instant::now());
        }
        let clock = self.clone();
        let handle = tokio::spawn(async move { clock.run(node).await });
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    /// Stop the task; then, if this member leads, checkpoint once more so a restart resumes every
    /// lease with what is left of it right now.
    pub async fn stop(&self, node: &Node) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        let last = tokio::time::timeout(node.limits.request_timeout, self.checkpoint(node, true)).await;
        match last {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "final lease checkpoint failed"),
            Err(_) => tracing::warn!("final lease checkpoint timed out"),
        }
    }

    async fn run(self: Arc<Self>, node: Arc<Node>) {
        let mut budget = RevokeBudget::new(Instant::now());
        let mut next_checkpoint = after_duration(Instant::now(), self.settings.checkpoint_interval);
        // The log index this member's log ended at when it was found leading: deadlines are armed
        // from the lessor's checkpoints only once everything up to there is applied. The committed
        // index is persisted lazily (`raft/log_store.rs`), so a restarted leader applies the tail of
        // its log after the election; arming earlier took a superseded checkpoint and gave leases
        // seconds they had already used.
        let mut promote_at: Option<u64> = None;
        loop {
            let now = Instant::now();
            let status = node.raft_status();
            if !status.is_leader {
                promote_at = None;
                self.granted_while_promoting().clear();
                if self.is_primary() {
                    self.demote();
                }
            } else if !self.is_primary() {
                self.note_grants_while_promoting(now);
                let applied_through = *promote_at.get_or_insert(status.last_index);
                if status.applied_index >= applied_through {
                    self.promote(now);
                    promote_at = None;
                }
            }
            // While promotion waits, grants are noted above, not dropped here.
            if self.is_primary() || !status.is_leader {
                self.absorb(now);
            }
            if self.is_primary() {
                let expired = self.take_expired(now, budget.available(now));
                budget.spend(expired.len());
                for id in expired {
                    let node = node.clone();
                    tokio::spawn(async move {
                        let req = LeaseRevokeRequest { id };
                        // As root (etcd's `WithRoot`): with auth enabled an anonymous revoke of a
                        // lease with keys would be refused at apply.
                        match crate::propose::propose_as_root(&node, Request::LeaseRevoke(req)).await {
                            Ok(_) => crate::metrics::LEASE_EXPIRED.inc(),
                            Err(Error::LeaseNotFound) => {}
                            Err(e) => {
                                tracing::warn!(lease = %format!("{id:x}"), error = %e, "revoking an expired lease")
                            }
                        }
                    });
                }
                if now >= next_checkpoint {
                    if let Err(e) = self.checkpoint(&node, false).await {
                        tracing::warn!(error = %e, "lease checkpoint failed");
                    }
                    next_checkpoint = after_duration(Instant::now(), self.settings.checkpoint_interval);
                }
            }
            // A leader waiting to be primary looks again soon: lease calls are refused until then.
            let tick = if promote_at.is_some() { Duration::from_millis(5) } else { TICK };
            let wake = self.queue().next().map_or(tick, |at| at.saturating_duration_since(Instant::now()).min(tick));
            tokio::time::sleep(wake.max(Duration::from_millis(5))).await;
        }
    }

    fn queue(&self) -> MutexGuard<'_, ExpiryQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// etcd's revoke pacing as a token bucket: up to 500 revokes at once (etcd revokes at most 500
/// every 500 ms), refilled at `REVOKE_RATE` per second, so a mass expiry cannot flood the log.
struct RevokeBudget {
    tokens: f64,
    last: Instant,
}

impl RevokeBudget {
    const BURST: f64 = REVOKE_RATE / 2.0;

    fn new(now: Instant) -> RevokeBudget {
        RevokeBudget { tokens: Self::BURST, last: now }
    }

    /// How many revokes may be proposed at `now`.
    fn available(&mut self, now: Instant) -> usize {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * REVOKE_RATE;
        self.tokens = (self.tokens + refill).min(Self::BURST);
        self.last = now;
        self.tokens.max(0.0) as usize
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

#[cfg(test)]
mod tests;
