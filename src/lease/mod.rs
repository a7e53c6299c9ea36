//! LESSOR: the replicated half of etcd 3.5.16's `lease` package — every lease's id, granted TTL,
//! last remaining-TTL checkpoint and attached keys, and the key → lease reverse map.
//!
//! Everything here changes only when apply says so, in log order, with no clock: the wall-clock
//! half (deadlines, renewals, deciding expiry) belongs to the leader (`lease_clock.rs`), which
//! proposes revokes and checkpoints through raft like any client. Each lease is a row of the
//! `"lease"` table (etcd's `lease` bucket layout, see [`record`]) written in the same atomic batch
//! as the apply that changes it. Attached keys are not stored: as in etcd they are rebuilt on open
//! from the live key-values' `lease` field ([`Lessor::restore_attachment`]).
//!
//! Apply uses each mutation in two steps: `stage_*` checks and adds the rows to the entry's batch,
//! and the matching in-memory change is made only after the batch is written, so memory never runs
//! ahead of what is stored.

pub mod expiry;
mod record;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use prost::Message;

use crate::error::{Error, Result};
use crate::proto::etcdserverpb::LeaseCheckpoint;
use crate::proto::mvccpb::{event::EventType, Event};
use crate::storage::{Engine, Table, WriteBatch};
use record::LeaseRecord;

/// etcd's `lease` bucket.
pub const LEASE_TABLE: Table = "lease";

/// etcd's `MaxLeaseTTL`: a grant above this fails with `too large lease TTL`.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// What the leader's clock needs to know about one lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    /// The granted TTL in seconds (already raised to the minimum when it was proposed).
    pub ttl: i64,
    /// The last checkpointed remaining TTL in seconds; 0 when none was recorded.
    pub remaining_ttl: i64,
    /// Distinguishes this grant from an earlier lease with the same id (ids may be reused after a
    /// revoke), so a deadline armed for the old lease is never taken for the new one's. Assigned in
    /// apply order, so it is the same on every member, but it is not stored.
    pub epoch: u64,
}

impl LeaseInfo {
    /// The TTL a lease resumes with when a leader (re)arms it: the checkpointed remaining time if
    /// there is one, else the full granted TTL (etcd's `Lease.RemainingTTL`).
    pub fn resume_ttl(&self) -> i64 {
        if self.remaining_ttl > 0 {
            self.remaining_ttl
        } else {
            self.ttl
        }
    }
}

/// A change the leader's clock has to hear about (drained with [`Lessor::take_changes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    Granted(LeaseInfo),
    Revoked {
        id: i64,
        epoch: u64,
    },
    /// The whole state was replaced (raft snapshot installed): every deadline must be re-armed.
    Reset,
}

#[derive(Debug, Default)]
struct Lease {
    ttl: i64,
    remaining_ttl: i64,
    epoch: u64,
    keys: BTreeSet<Vec<u8>>,
}

#[derive(Debug, Default)]
struct State {
    leases: BTreeMap<i64, Lease>,
    owner: HashMap<Vec<u8>, i64>,
    next_epoch: u64,
}

impl State {
    fn info(&self, id: i64) -> Option<LeaseInfo> {
        self.leases.get(&id).map(|l| LeaseInfo { id, ttl: l.ttl, remaining_ttl: l.remaining_ttl, epoch: l.epoch })
    }

    fn insert(&mut self, id: i64, ttl: i64, remaining_ttl: i64) -> LeaseInfo {
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        self.leases.insert(id, Lease { ttl, remaining_ttl, epoch, keys: BTreeSet::new() });
        LeaseInfo { id, ttl, remaining_ttl, epoch }
    }

    fn detach(&mut self, key: &[u8]) {
        if let Some(old) = self.owner.remove(key) {
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(key);
            }
        }
    }

    fn attach(&mut self, key: &[u8], id: i64) -> bool {
        self.detach(key);
        match self.leases.get_mut(&id) {
            Some(l) => {
                l.keys.insert(key.to_vec());
                self.owner.insert(key.to_vec(), id);
                true
            }
            None => false,
        }
    }
}

pub struct Lessor {
    state: RwLock<State>,
    changes: Mutex<Vec<LeaseChange>>,
    /// Bumped after every revoke, for callers waiting for an expired lease to disappear.
    revocations: tokio::sync::watch::Sender<u64>,
}

impl Lessor {
    /// Load every lease row from `engine` (attachments follow through
    /// [`Lessor::restore_attachment`]).
    pub fn open(engine: &dyn Engine) -> Result<Lessor> {
        let state = load(engine)?;
        let (revocations, _) = tokio::sync::watch::channel(0);
        Ok(Lessor { state: RwLock::new(state), changes: Mutex::new(Vec::new()), revocations })
    }

    /// Replace the whole state with what `engine` now holds (after a raft snapshot was installed).
    pub fn reload(&self, engine: &dyn Engine) -> Result<()> {
        let fresh = load(engine)?;
        *self.write() = fresh;
        self.push(LeaseChange::Reset);
        self.revocations.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Attach a live key to its lease while rebuilding; false if that lease does not exist (etcd
    /// logs and skips such a key too).
    pub fn restore_attachment(&self, key: &[u8], id: i64) -> bool {
        self.write().attach(key, id)
    }

    // ----- reads -------------------------------------------------------------------------------

    pub fn contains(&self, id: i64) -> bool {
        self.read().leases.contains_key(&id)
    }

    pub fn get(&self, id: i64) -> Option<LeaseInfo> {
        self.read().info(id)
    }

    /// Every lease, by id.
    pub fn all(&self) -> Vec<LeaseInfo> {
        let st = self.read();
        st.leases.keys().filter_map(|id| st.info(*id)).collect()
    }

    pub fn len(&self) -> usize {
        self.read().leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys attached to lease `id`, in key order; None if there is no such lease.
    pub fn keys(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        self.read().leases.get(&id).map(|l| l.keys.iter().cloned().collect())
    }

    /// The lease `key` is attached to, if any.
    pub fn lease_of(&self, key: &[u8]) -> Option<i64> {
        self.read().owner.get(key).copied()
    }

    /// Grants, revokes and resets since the last call, in apply order.
    pub fn take_changes(&self) -> Vec<LeaseChange> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A receiver that changes after every revoke.
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    // ----- apply -------------------------------------------------------------------------------

    /// etcd's `lessor.Grant` checks, in its order: id 0 is refused as not found (the proposer
    /// always picks an id first, so only a hand-made command gets here), then the TTL limit, then
    /// an id already in use.
    pub fn check_grant(&self, id: i64, ttl: i64) -> Result<()> {
        if id == 0 {
            return Err(Error::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        if self.contains(id) {
            return Err(Error::LeaseExists);
        }
        Ok(())
    }

    /// Add the row of a new lease to `batch` (after [`Lessor::check_grant`]).
    pub fn stage_grant(&self, batch: &mut WriteBatch, id: i64, ttl: i64) {
        put_record(batch, &LeaseRecord { id, ttl, remaining_ttl: 0 });
    }

    /// The grant's batch is written: the lease exists from now on.
    pub fn granted(&self, id: i64, ttl: i64) {
        crate::metrics::lease_granted(ttl);
        let info = self.write().insert(id, ttl, 0);
        self.push(LeaseChange::Granted(info));
    }

    /// Delete lease `id`'s row in `batch`; returns the keys the revoke must delete, in key order
    /// (etcd sorts them too), or `LeaseNotFound`.
    pub fn stage_revoke(&self, batch: &mut WriteBatch, id: i64) -> Result<Vec<Vec<u8>>> {
        let keys = self.keys(id).ok_or(Error::LeaseNotFound)?;
        batch.delete(LEASE_TABLE, record::row_key(id).to_vec());
        Ok(keys)
    }

    /// The revoke's batch is written: forget the lease and its attachments.
    pub fn revoked(&self, id: i64) {
        crate::metrics::LEASE_REVOKED.inc();
        let removed = {
            let mut st = self.write();
            let removed = st.leases.remove(&id);
            if let Some(l) = &removed {
                for key in &l.keys {
                    if st.owner.get(key) == Some(&id) {
                        st.owner.remove(key);
                    }
                }
            }
            removed
        };
        if let Some(l) = removed {
            self.push(LeaseChange::Revoked { id, epoch: l.epoch });
            self.revocations.send_modify(|n| *n += 1);
        }
    }

    /// Rewrite the rows of the checkpointed leases with their new remaining TTL; checkpoints of
    /// leases that no longer exist are skipped (etcd's `lessor.Checkpoint`). Returns what to hand
    /// to [`Lessor::checkpointed`] once the batch is written.
    pub fn stage_checkpoints(&self, batch: &mut WriteBatch, checkpoints: &[LeaseCheckpoint]) -> Vec<(i64, i64)> {
        let st = self.read();
        let mut applied = Vec::with_capacity(checkpoints.len());
        for cp in checkpoints {
            if let Some(l) = st.leases.get(&cp.id) {
                put_record(batch, &LeaseRecord { id: cp.id, ttl: l.ttl, remaining_ttl: cp.remaining_ttl });
                applied.push((cp.id, cp.remaining_ttl));
            }
        }
        applied
    }

    pub fn checkpointed(&self, applied: &[(i64, i64)]) {
        let mut st = self.write();
        for (id, remaining) in applied {
            if let Some(l) = st.leases.get_mut(id) {
                l.remaining_ttl = *remaining;
            }
        }
    }

    /// Follow a committed write's events: a PUT attaches its key to the event's lease (detaching
    /// it from any other), a PUT without lease or a DELETE detaches it — etcd's `storeTxnWrite.put`
    /// and `delete` do the same as they go. Deriving this from the commit's events means a txn
    /// that aborted, or a branch that did not run, attaches nothing.
    pub fn follow(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        // Most writes touch no lease at all: look before taking the write lock.
        let involved = |st: &State| {
            events.iter().filter_map(|ev| ev.kv.as_ref()).any(|kv| kv.lease != 0 || st.owner.contains_key(&kv.key))
        };
        if !involved(&self.read()) {
            return;
        }
        let mut st = self.write();
        for ev in events {
            let Some(kv) = &ev.kv else {
                continue;
            };
            if ev.r#type == EventType::Put as i32 && kv.lease != 0 {
                st.attach(&kv.key, kv.lease);
            } else {
                st.detach(&kv.key);
            }
        }
    }

    fn push(&self, change: LeaseChange) {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).push(change);
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn put_record(batch: &mut WriteBatch, r: &LeaseRecord) {
    batch.put(LEASE_TABLE, record::row_key(r.id).to_vec(), r.encode_to_vec());
}

fn load(engine: &dyn Engine) -> Result<State> {
    let mut state = State::default();
    crate::storage::try_scan(engine, LEASE_TABLE, &[], None, &mut |k, v| {
        let r = record::decode(k, v)?;
        state.insert(r.id, r.ttl, r.remaining_ttl);
        Ok::<_, crate::error::Error>(true)
    })?;
    Ok(state)
}

#[cfg(test)]
mod tests;
