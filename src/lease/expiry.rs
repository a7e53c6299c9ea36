//! The leader's expiry queue (etcd's `LeaseExpiredNotifier` heap): one deadline per lease, ordered,
//! so the leader finds the leases to revoke without scanning them all. It never reads a clock —
//! callers pass `now` — which keeps it testable and keeps time out of anything apply could reach.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    /// The lease's deadline.
    at: Instant,
    /// When the leader looks at it next: the deadline, or later once its revoke was proposed.
    check: Instant,
    epoch: u64,
}

/// Deadlines by lease id; each remembers the grant (`epoch`) it was armed for.
#[derive(Debug, Default)]
pub struct ExpiryQueue {
    by_id: HashMap<i64, Slot>,
    /// (check time, id), soonest first.
    order: BTreeSet<(Instant, i64)>,
}

impl ExpiryQueue {
    /// Set (or move) the deadline of lease `id`.
    pub fn arm(&mut self, id: i64, epoch: u64, at: Instant) {
        if let Some(old) = self.by_id.insert(id, Slot { at, check: at, epoch }) {
            self.order.remove(&(old.check, id));
        }
        self.order.insert((at, id));
    }

    /// Look at lease `id` again at `check` without moving its deadline: its revoke was proposed
    /// and is retried then if it has not landed (etcd re-queues the heap item, not the expiry, so
    /// the lease stays expired for keep-alives meanwhile).
    pub fn recheck(&mut self, id: i64, check: Instant) {
        if let Some(slot) = self.by_id.get_mut(&id) {
            self.order.remove(&(slot.check, id));
            slot.check = check;
            self.order.insert((check, id));
        }
    }

    /// The deadline armed for this grant of lease `id`; None if none is, or if it was armed for an
    /// earlier lease with the same id.
    pub fn deadline(&self, id: i64, epoch: u64) -> Option<Instant> {
        self.by_id.get(&id).filter(|s| s.epoch == epoch).map(|s| s.at)
    }

    /// Forget lease `id` if its deadline belongs to grant `epoch`.
    pub fn remove(&mut self, id: i64, epoch: u64) {
        if self.by_id.get(&id).is_some_and(|s| s.epoch == epoch) {
            self.forget(id);
        }
    }

    /// Forget lease `id` whatever grant it was armed for.
    pub fn forget(&mut self, id: i64) {
        if let Some(old) = self.by_id.remove(&id) {
            self.order.remove(&(old.check, id));
        }
    }

    pub fn clear(&mut self) {
        self.by_id.clear();
        self.order.clear();
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// When the leader should look next.
    pub fn next(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Up to `limit` leases due to be looked at (deadline, or recheck time, at or before `now`),
    /// earliest first, as (id, epoch). They stay queued: the caller rechecks or removes each.
    pub fn due(&self, now: Instant, limit: usize) -> Vec<(i64, u64)> {
        self.order
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .filter_map(|(_, id)| self.by_id.get(id).map(|s| (*id, s.epoch)))
            .collect()
    }
}

/// `now + secs` seconds, saturating far in the future instead of overflowing: a TTL can be up to
/// 9,000,000,000 s (≈285 years), which some platforms' `Instant` cannot represent.
pub fn after(now: Instant, secs: i64) -> Instant {
    after_duration(now, Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

pub fn after_duration(now: Instant, d: Duration) -> Instant {
    const FAR: [u64; 3] = [9_000_000_000, 100 * 365 * 86_400, 365 * 86_400];
    now.checked_add(d).or_else(|| FAR.iter().find_map(|s| now.checked_add(Duration::from_secs(*s)))).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_in_deadline_order_and_rearm_moves() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut q = ExpiryQueue::default();
        q.arm(1, 1, t0 + 3 * s);
        q.arm(2, 1, t0 + s);
        q.arm(3, 1, t0 + 2 * s);
        assert_eq!(q.next(), Some(t0 + s));
        assert_eq!(q.due(t0, 10), vec![]);
        assert_eq!(q.due(t0 + 2 * s, 10), vec![(2, 1), (3, 1)]);
        assert_eq!(q.due(t0 + 2 * s, 1), vec![(2, 1)]);
        // Renewing moves the deadline instead of adding a second one.
        q.arm(2, 1, t0 + 5 * s);
        assert_eq!(q.len(), 3);
        assert_eq!(q.due(t0 + 2 * s, 10), vec![(3, 1)]);
        assert_eq!(q.next(), Some(t0 + 2 * s));
    }

    #[test]
    fn recheck_moves_the_look_not_the_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut q = ExpiryQueue::default();
        q.arm(1, 1, t0 + s);
        q.recheck(1, t0 + 4 * s);
        assert_eq!(q.deadline(1, 1), Some(t0 + s));
        assert!(q.due(t0 + 2 * s, 10).is_empty());
        assert_eq!(q.next(), Some(t0 + 4 * s));
        assert_eq!(q.due(t0 + 4 * s, 10), vec![(1, 1)]);
        q.forget(1);
        assert!(q.is_empty() && q.next().is_none());
    }

    #[test]
    fn epochs_keep_a_reused_id_apart() {
        let t0 = Instant::now();
        let mut q = ExpiryQueue::default();
        q.arm(7, 1, t0);
        assert_eq!(q.deadline(7, 1), Some(t0));
        assert_eq!(q.deadline(7, 2), None);
        q.remove(7, 2);
        assert_eq!(q.len(), 1);
        q.remove(7, 1);
        assert!(q.is_empty());
        assert_eq!(q.next(), None);
    }

    #[test]
    fn huge_ttls_do_not_overflow() {
        let t0 = Instant::now();
        assert!(after(t0, 9_000_000_000) > t0 + Duration::from_secs(3600));
        assert!(after(t0, i64::MAX) > t0);
        assert_eq!(after(t0, -5), t0);
        assert_eq!(after(t0, 10), t0 + Duration::from_secs(10));
    }
}
