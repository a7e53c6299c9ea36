use super::*;
use crate::mvcc::mem_engine::MemEngine;
use crate::storage::{Engine, WriteBatch};

const S: Duration = Duration::from_secs(1);

fn settings() -> LeaseSettings {
    LeaseSettings::new(Duration::from_millis(100), Duration::from_millis(1000))
}

struct Fixture {
    engine: MemEngine,
    lessor: Arc<Lessor>,
    clock: LeaseClock,
}

fn fixture() -> Fixture {
    let engine = MemEngine::default();
    let lessor = Arc::new(Lessor::open(&engine).unwrap());
    let clock = LeaseClock::new(lessor.clone(), settings());
    Fixture { engine, lessor, clock }
}

impl Fixture {
    fn grant(&self, id: i64, ttl: i64) {
        let mut b = WriteBatch::default();
        self.lessor.stage_grant(&mut b, id, ttl);
        self.engine.write(b).unwrap();
        self.lessor.granted(id, ttl);
    }

    fn revoke(&self, id: i64) {
        let mut b = WriteBatch::default();
        self.lessor.stage_revoke(&mut b, id).unwrap();
        self.engine.write(b).unwrap();
        self.lessor.revoked(id);
    }

    fn checkpoint(&self, cps: &[LeaseCheckpoint]) {
        let mut b = WriteBatch::default();
        let applied = self.lessor.stage_checkpoints(&mut b, cps);
        self.engine.write(b).unwrap();
        self.lessor.checkpointed(&applied);
    }

    fn ttl(&self, id: i64, now: Instant) -> i64 {
        self.clock.time_to_live(id, false, now).unwrap().map_or(-1, |t| t.ttl)
    }
}

#[test]
fn min_ttl_is_etcds() {
    // Default 100 ms heartbeat / 1 s election: 15 ticks × 100 ms = 1.5 s → 2 s (etcd: grant TTL 1
    // answers TTL 2).
    assert_eq!(settings().min_ttl, 2);
    assert_eq!(LeaseSettings::new(Duration::from_millis(100), Duration::from_millis(5000)).min_ttl, 8);
    // Whole election ticks: 1050 ms / 100 ms = 10 ticks, as etcd's integer division has it.
    assert_eq!(LeaseSettings::new(Duration::from_millis(100), Duration::from_millis(1050)).min_ttl, 2);
    assert_eq!(LeaseSettings::new(Duration::from_millis(50), Duration::from_millis(500)).min_ttl, 1);
}

#[test]
fn followers_do_not_answer_from_their_clock() {
    let f = fixture();
    f.grant(1, 10);
    assert!(matches!(f.clock.renew(1, Instant::now()), Err(Error::NotLeader)));
    assert!(matches!(f.clock.time_to_live(1, false, Instant::now()), Err(Error::NotLeader)));
}

#[test]
fn time_to_live_truncates_like_go() {
    let f = fixture();
    let t0 = Instant::now();
    f.clock.promote(t0);
    f.grant(1, 10);
    f.clock.absorb(t0);
    // etcd quirk: int64(remaining.Seconds()) truncates, so right after a grant of 10 s it says 9.
    assert_eq!(f.ttl(1, t0 + Duration::from_millis(1)), 9);
    assert_eq!(f.ttl(1, t0), 10);
    assert_eq!(f.ttl(1, t0 + 3 * S + Duration::from_millis(500)), 6);
    // Past the deadline but not revoked yet: 0, then negative.
    assert_eq!(f.ttl(1, t0 + 10 * S + Duration::from_millis(500)), 0);
    assert_eq!(f.ttl(1, t0 + 12 * S + Duration::from_millis(500)), -2);
    assert_eq!(f.ttl(2, t0), -1);
    f.revoke(1);
    assert_eq!(f.ttl(1, t0), -1);
}

#[test]
fn renew_restores_the_full_ttl_but_not_for_an_expired_lease() {
    let f = fixture();
    let t0 = Instant::now();
    f.clock.promote(t0);
    f.grant(1, 10);
    f.clock.absorb(t0);
    assert_eq!(f.clock.renew(1, t0 + 4 * S).unwrap(), Renewal::Renewed(10));
    assert_eq!(f.ttl(1, t0 + 4 * S), 10);
    assert_eq!(f.clock.renew(7, t0).unwrap(), Renewal::NotFound);
    assert_eq!(f.clock.renew(1, t0 + 14 * S).unwrap(), Renewal::Expired);
    assert_eq!(f.clock.renew(1, t0 + 15 * S).unwrap(), Renewal::Expired);
}

#[test]
fn expired_leases_are_handed_out_once_then_retried() {
    let f = fixture();
    let t0 = Instant::now();
    f.clock.promote(t0);
    f.grant(1, 2);
    f.grant(2, 3);
    f.grant(3, 60);
    f.clock.absorb(t0);
    assert!(f.clock.take_expired(t0 + S, 100).is_empty());
    assert_eq!(f.clock.take_expired(t0 + 5 * S, 1), vec![1]);
    assert_eq!(f.clock.take_expired(t0 + 5 * S, 100), vec![2]);
    // Proposed already: not again until the retry interval has passed...
    assert!(f.clock.take_expired(t0 + 6 * S, 100).is_empty());
    // ...and still expired for keep-alives and TimeToLive meanwhile.
    assert_eq!(f.clock.renew(2, t0 + 6 * S).unwrap(), Renewal::Expired);
    assert_eq!(f.ttl(2, t0 + 6 * S), -3);
    f.revoke(1);
    f.clock.absorb(t0 + 6 * S);
    assert_eq!(f.clock.take_expired(t0 + 9 * S, 100), vec![2]);
}

#[test]
fn a_reused_id_gets_a_fresh_deadline() {
    let f = fixture();
    let t0 = Instant::now();
    f.clock.promote(t0);
    f.grant(1, 2);
    f.clock.absorb(t0);
    f.revoke(1);
    f.grant(1, 100);
    // The old deadline (t0 + 2 s) must not be taken for the new lease, even before the clock
    // has heard of the revoke.
    assert!(f.clock.take_expired(t0 + 5 * S, 100).is_empty());
    // It is armed from when the clock hears of it.
    f.clock.absorb(t0 + 5 * S);
    assert_eq!(f.ttl(1, t0 + 5 * S), 100);
    assert!(f.clock.take_expired(t0 + 50 * S, 100).is_empty());
}

/// etcd issues 9395 / 9888: etcd re-arms every lease to its full TTL (+ one election timeout)
/// when a member becomes leader. Keel resumes from the checkpointed remaining TTL instead.
#[test]
fn promotion_resumes_from_the_checkpoint_not_the_full_ttl() {
    let f = fixture();
    let t0 = Instant::now();
    f.clock.promote(t0);
    f.grant(1, 30);
    f.grant(2, 30);
    f.clock.absorb(t0);
    // Six seconds later the leader checkpoints what is left: 24 s (rounded up).
    let cps = f.clock.checkpoints(t0 + 6 * S, false);
    assert_eq!(cps.iter().map(|c| (c.id, c.remaining_ttl)).collect::<Vec<_>>(), vec![(1, 24), (2, 24)]);
    f.checkpoint(&cps[..1]);
    // Leadership moves (or the member restarts) and comes back much later.
    f.clock.demote();
    let t1 = t0 + 100 * S;
    f.clock.promote(t1);
    // 24 s left plus one election timeout: 25 s, reported truncated right after as 24...
    assert_eq!(f.ttl(1, t1 + Duration::from_millis(1)), 24);
    // ...where etcd (and the lease without a checkpoint here) starts over at 30 + 1.
    assert_eq!(f.ttl(2, t1 + Duration::from_millis(1)), 30);
    // A renewal afterwards restores the full TTL.
    assert_eq!(f.clock.renew(1, t1 + S).unwrap(), Renewal::Renewed(30));
    assert_eq!(f.ttl(1, t1 + S), 30);
}

#[test]
fn checkpoints_round_up_and_skip_expired_leases() {
    let f = fixture();
    let t0 = Instant::now();
    f.clock.promote(t0);
    f.grant(1, 10);
    f.grant(2, 2);
    f.clock.absorb(t0);
    let cps = f.clock.checkpoints(t0 + Duration::from_millis(2500), true);
    assert_eq!(cps.iter().map(|c| (c.id, c.remaining_ttl)).collect::<Vec<_>>(), vec![(1, 8)]);
}

#[test]
fn periodic_checkpoints_only_write_what_drifted() {
    let f = fixture();
    let t0 = Instant::now();
    f.clock.promote(t0);
    f.grant(1, 30);
    f.grant(2, 3600);
    f.clock.absorb(t0);
    let ids = |cps: &[LeaseCheckpoint]| cps.iter().map(|c| (c.id, c.remaining_ttl)).collect::<Vec<_>>();
    // Under the tolerance (5 s; 360 s for the hour-long lease): nothing to write.
    assert!(f.clock.checkpoints(t0 + 4 * S, false).is_empty());
    let cps = f.clock.checkpoints(t0 + 6 * S, false);
    assert_eq!(ids(&cps), vec![(1, 24)]);
    f.checkpoint(&cps);
    assert!(f.clock.checkpoints(t0 + 8 * S, false).is_empty());
    // A renewal puts lease 1 well above its checkpoint: written again.
    f.clock.renew(1, t0 + 9 * S).unwrap();
    assert_eq!(ids(&f.clock.checkpoints(t0 + 9 * S, false)), vec![(1, 30)]);
    assert_eq!(ids(&f.clock.checkpoints(t0 + 400 * S, false)), vec![(2, 3200)]);
    // Shutdown writes everything.
    assert_eq!(ids(&f.clock.checkpoints(t0 + 9 * S, true)), vec![(1, 30), (2, 3591)]);
}

#[test]
fn leases_are_listed_by_deadline() {
    let f = fixture();
    let t0 = Instant::now();
    f.clock.promote(t0);
    f.grant(5, 30);
    f.grant(3, 10);
    f.grant(9, 15);
    f.clock.absorb(t0);
    assert_eq!(f.clock.leases(t0), vec![3, 9, 5]);
    assert_eq!(f.clock.renew(3, t0 + 9 * S).unwrap(), Renewal::Renewed(10));
    assert_eq!(f.clock.leases(t0 + 9 * S), vec![9, 3, 5]);
}

#[tokio::test]
async fn keep_alive_of_an_expired_lease_waits_for_its_revoke() {
    let f = Arc::new(fixture());
    let t0 = Instant::now() - 10 * S;
    f.clock.promote(t0);
    f.grant(1, 2);
    f.clock.absorb(t0);
    let waiter = {
        let f = f.clone();
        tokio::spawn(async move { f.clock.keep_alive(1, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    f.revoke(1);
    assert_eq!(waiter.await.unwrap().unwrap(), 0);
    assert_eq!(f.clock.keep_alive(1, Duration::from_secs(5)).await.unwrap(), 0);
}

#[test]
fn revokes_are_paced_at_etcds_rate() {
    let t0 = Instant::now();
    let mut b = RevokeBudget::new(t0);
    assert_eq!(b.available(t0), 500);
    b.spend(500);
    assert_eq!(b.available(t0), 0);
    assert_eq!(b.available(t0 + Duration::from_millis(100)), 100);
    b.spend(100);
    // Never more than a burst, however long it was idle.
    assert_eq!(b.available(t0 + 60 * S), 500);
    // 3000 expired leases take about 2.5 s: 500 at once, then 1000 per second.
    let mut b = RevokeBudget::new(t0);
    let (mut done, mut t) = (0usize, t0);
    while done < 3000 {
        let n = b.available(t).min(3000 - done);
        b.spend(n);
        done += n;
        t += Duration::from_millis(100);
    }
    let took = t - t0;
    assert!(took >= Duration::from_millis(2500) && took <= Duration::from_millis(2700), "{took:?}");
}

/// A new leader applies the log written before its election before arming deadlines. A lease
/// checkpointed in that log resumes with the checkpoint (plus etcd's extension); a lease granted
/// meanwhile, in this leadership, runs its own TTL from its grant and is not extended.
#[test]
fn grants_applied_while_promoting_are_not_extended() {
    let f = fixture();
    let t0 = Instant::now();
    // Granted and checkpointed under the previous leader, seen here as a follower.
    f.grant(1, 30);
    f.checkpoint(&[LeaseCheckpoint { id: 1, remaining_ttl: 12 }]);
    f.clock.absorb(t0);
    f.clock.note_grants_while_promoting(t0);
    f.grant(2, 10);
    f.clock.note_grants_while_promoting(t0);
    f.clock.promote(t0 + S);
    // Lease 1: its checkpoint plus one election timeout, from the promotion.
    assert_eq!(f.ttl(1, t0 + S), 13);
    // Lease 2: ten seconds from its grant, one of them already gone.
    assert_eq!(f.ttl(2, t0 + S), 9);
}
