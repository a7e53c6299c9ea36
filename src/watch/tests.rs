//! Unit tests of the hub against an in-memory history: ids and answers, synced delivery, catch-up
//! from history, falling behind and catching up, compaction cancels, progress, filters, prev_kv,
//! bounded outboxes, and exactly-once delivery while publishing races catch-up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::proto::mvccpb::event::EventType;

/// History kept as the list of published revisions, with etcd's compaction rule for reads.
#[derive(Default)]
struct FakeHistory {
    log: Mutex<(BTreeMap<i64, Vec<Event>>, i64)>,
}

impl FakeHistory {
    fn new() -> Arc<FakeHistory> {
        let h = FakeHistory::default();
        h.log.lock().unwrap().1 = -1;
        Arc::new(h)
    }

    fn compact(&self, rev: i64) {
        self.log.lock().unwrap().1 = rev;
    }
}

struct Shared(Arc<FakeHistory>);

impl History for Shared {
    fn compacted(&self) -> i64 {
        self.0.log.lock().unwrap().1
    }

    fn read(&self, from: i64, to: i64, max_revs: usize, _max_bytes: usize) -> Result<Chunk> {
        let log = self.0.log.lock().unwrap();
        if from < log.1 {
            return Err(Error::Compacted);
        }
        let mut events = Vec::new();
        let mut last = to;
        for (n, (rev, evs)) in log.0.range(from.max(1)..=to).enumerate() {
            if n == max_revs {
                last = rev - 1;
                break;
            }
            events.extend(evs.iter().cloned());
        }
        Ok(Chunk { events, last })
    }

    fn prev_kvs(&self, events: &[Event]) -> Result<Vec<Option<KeyValue>>> {
        let log = self.0.log.lock().unwrap();
        Ok(events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref()?;
                if e.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision {
                    return None;
                }
                let before = log.0.range(..kv.mod_revision).rev().flat_map(|(_, evs)| evs.iter().rev());
                let last = before.into_iter().find(|p| p.kv.as_ref().is_some_and(|p| p.key == kv.key))?;
                (last.r#type == EventType::Put as i32).then(|| last.kv.clone()).flatten()
            })
            .collect())
    }
}

struct Fixture {
    history: Arc<FakeHistory>,
    hub: Arc<WatchHub>,
    rev: i64,
    /// key → (create revision, version) of live keys.
    live: BTreeMap<Vec<u8>, (i64, i64)>,
}

impl Fixture {
    fn new() -> Fixture {
        let history = FakeHistory::new();
        let hub = Arc::new(WatchHub::new(Box::new(Shared(history.clone())), 1));
        Fixture { history, hub, rev: 1, live: BTreeMap::new() }
    }

    /// Commit one revision of puts (`key=value`) and deletes (`-key`), then publish it.
    fn write(&mut self, changes: &[&str]) -> i64 {
        self.rev += 1;
        let rev = self.rev;
        let mut events = Vec::new();
        for change in changes {
            if let Some(key) = change.strip_prefix('-') {
                if self.live.remove(key.as_bytes()).is_some() {
                    events.push(Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(KeyValue { key: key.into(), mod_revision: rev, ..Default::default() }),
                        prev_kv: None,
                    });
                }
            } else {
                let (key, value) = change.split_once('=').unwrap();
                let (created, version) = match self.live.get(key.as_bytes()) {
                    Some((c, v)) => (*c, v + 1),
                    None => (rev, 1),
                };
                self.live.insert(key.into(), (created, version));
                events.push(Event {
                    r#type: EventType::Put as i32,
                    kv: Some(KeyValue {
                        key: key.into(),
                        value: value.into(),
                        create_revision: created,
                        mod_revision: rev,
                        version,
                        lease: 0,
                    }),
                    prev_kv: None,
                });
            }
        }
        self.history.log.lock().unwrap().0.insert(rev, events.clone());
        self.hub.publish(rev, events);
        rev
    }
}

fn spec(key: &str) -> WatchSpec {
    WatchSpec {
        watch_id: 0,
        span: KeySpan::Key(key.into()),
        start_revision: 0,
        prev_kv: false,
        progress_notify: false,
        fragment: false,
        no_put: false,
        no_delete: false,
    }
}

fn prefix(p: &str) -> KeySpan {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    KeySpan::Range(p.into(), end)
}

/// Everything the stream would send now, running catch-up passes until none is left to do.
fn drain(s: &StreamHandle) -> Vec<Outgoing> {
    let mut out = Vec::new();
    loop {
        let popped = s.pop(usize::MAX);
        let progressed = s.catch_up() == CatchUp::Progressed;
        if popped.is_empty() && !progressed {
            return out;
        }
        out.extend(popped);
    }
}

/// (key, mod revision) of an event.
type Brief = (String, i64);

/// (watch id, header revision, events) of each event response.
fn event_summary(items: &[Outgoing]) -> Vec<(i64, i64, Vec<Brief>)> {
    items
        .iter()
        .filter_map(|i| match i {
            Outgoing::Events { watch_id, revision, .. } => Some((
                *watch_id,
                *revision,
                i.events()
                    .map(|e| {
                        let kv = e.kv.as_ref().unwrap();
                        (String::from_utf8(kv.key.clone()).unwrap(), kv.mod_revision)
                    })
                    .collect(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn ids_are_per_stream_from_zero_and_duplicates_are_refused() {
    let f = Fixture::new();
    let s = f.hub.open_stream();
    s.watch(spec("a"));
    s.watch(WatchSpec { watch_id: 2, ..spec("a") });
    s.watch(spec("a"));
    s.watch(spec("a"));
    s.watch(WatchSpec { watch_id: 2, ..spec("b") });
    s.watch(WatchSpec { span: KeySpan::Range(b"b".to_vec(), b"a".to_vec()), ..spec("b") });
    assert_eq!(
        drain(&s),
        vec![
            Outgoing::Created { watch_id: 0, revision: 1 },
            Outgoing::Created { watch_id: 2, revision: 1 },
            Outgoing::Created { watch_id: 1, revision: 1 },
            // Auto ids skip the client's 2.
            Outgoing::Created { watch_id: 3, revision: 1 },
            Outgoing::Rejected { revision: 1, reason: Rejection::DuplicateId },
            Outgoing::Rejected { revision: 1, reason: Rejection::RangeEmpty },
        ]
    );
    // Another stream starts from 0 again; an unknown cancel gets no answer.
    let t = f.hub.open_stream();
    t.watch(spec("a"));
    t.cancel(42);
    assert_eq!(drain(&t), vec![Outgoing::Created { watch_id: 0, revision: 1 }]);
    // Auto ids only move forward: a canceled 0 is not reused.
    s.cancel(0);
    s.watch(spec("a"));
    assert_eq!(
        drain(&s),
        vec![Outgoing::Canceled { watch_id: 0, revision: 1 }, Outgoing::Created { watch_id: 4, revision: 1 }]
    );
}

#[test]
fn synced_watchers_get_one_response_per_revision() {
    let mut f = Fixture::new();
    let s = f.hub.open_stream();
    s.watch(WatchSpec { span: prefix("a"), ..spec("") });
    s.watch(spec("b"));
    f.write(&["a1=x", "b=y", "c=z"]);
    f.write(&["a2=x"]);
    let items = drain(&s);
    assert_eq!(
        event_summary(&items),
        vec![(0, 2, vec![("a1".into(), 2)]), (1, 2, vec![("b".into(), 2)]), (0, 3, vec![("a2".into(), 3)]),]
    );
}

#[test]
fn past_start_replays_history_in_one_response_then_follows() {
    let mut f = Fixture::new();
    f.write(&["a=1"]);
    f.write(&["a=2", "b=1"]);
    f.write(&["-a"]);
    let s = f.hub.open_stream();
    s.watch(WatchSpec { start_revision: 3, span: KeySpan::From(vec![0]), ..spec("") });
    let items = drain(&s);
    assert_eq!(items[0], Outgoing::Created { watch_id: 0, revision: 4 });
    // Catch-up responses carry the newest revision in their header.
    assert_eq!(event_summary(&items), vec![(0, 4, vec![("a".into(), 3), ("b".into(), 3), ("a".into(), 4)])]);
    f.write(&["c=1"]);
    assert_eq!(event_summary(&drain(&s)), vec![(0, 5, vec![("c".into(), 5)])]);
}

#[test]
fn future_start_skips_earlier_revisions() {
    let mut f = Fixture::new();
    let s = f.hub.open_stream();
    s.watch(WatchSpec { start_revision: 4, ..spec("a") });
    f.write(&["a=1"]);
    f.write(&["a=2"]);
    f.write(&["a=3"]);
    assert_eq!(event_summary(&drain(&s)), vec![(0, 4, vec![("a".into(), 4)])]);
}

#[test]
fn a_slow_stream_falls_behind_and_catches_up_exactly_once() {
    let mut f = Fixture::new();
    let s = f.hub.open_stream();
    s.watch(spec("k"));
    drain(&s);
    let writes = OUTBOX_CAPACITY + 300;
    for i in 0..writes {
        f.write(&[&format!("k={i}")]);
        // Memory stays bounded however far behind the client is.
        assert!(s.backlog() <= OUTBOX_CAPACITY);
    }
    let items = drain(&s);
    let revs: Vec<i64> = event_summary(&items).iter().flat_map(|(_, _, evs)| evs.iter().map(|e| e.1)).collect();
    assert_eq!(revs, (2..2 + writes as i64).collect::<Vec<_>>(), "every revision once, in order");
    // The first 128 came while synced (one per response), the rest in one catch-up response.
    assert_eq!(items.len(), OUTBOX_CAPACITY + 1);
    // Synced again afterwards.
    let rev = f.write(&["k=last"]);
    assert_eq!(event_summary(&drain(&s)), vec![(0, rev, vec![("k".into(), rev)])]);
}

#[test]
fn catch_up_responses_hold_at_most_1000_revisions() {
    let mut f = Fixture::new();
    for i in 0..1500 {
        f.write(&[&format!("k=v{i}"), "other=x"]);
    }
    let s = f.hub.open_stream();
    s.watch(WatchSpec { start_revision: 1, ..spec("k") });
    let summary = event_summary(&drain(&s));
    assert_eq!(summary.iter().map(|(_, _, e)| e.len()).collect::<Vec<_>>(), vec![1000, 500]);
    assert!(summary.iter().all(|(_, header, _)| *header == 1501));
}

#[test]
fn compacted_watchers_are_told_and_keep_their_id_until_canceled() {
    let mut f = Fixture::new();
    for i in 0..5 {
        f.write(&[&format!("a={i}")]);
    }
    f.history.compact(4);
    let s = f.hub.open_stream();
    s.watch(WatchSpec { watch_id: 5, start_revision: 3, ..spec("a") });
    s.watch(WatchSpec { watch_id: 6, start_revision: 4, ..spec("a") });
    let items = drain(&s);
    assert_eq!(
        items[..2],
        [Outgoing::Created { watch_id: 5, revision: 6 }, Outgoing::Created { watch_id: 6, revision: 6 }]
    );
    assert_eq!(items[2], Outgoing::Compacted { watch_id: 5, compact_revision: 4 });
    // The watcher at the compaction revision itself still reads it.
    assert_eq!(event_summary(&items[3..]), vec![(6, 6, vec![("a".into(), 4), ("a".into(), 5), ("a".into(), 6)])]);
    // etcd keeps the compacted watcher's id on the stream: the id stays taken and progress
    // requests go unanswered...
    s.watch(WatchSpec { watch_id: 5, ..spec("a") });
    s.request_progress();
    assert_eq!(drain(&s), vec![Outgoing::Rejected { revision: 6, reason: Rejection::DuplicateId }]);
    // ...until the client cancels it.
    s.cancel(5);
    s.request_progress();
    assert_eq!(
        drain(&s),
        vec![Outgoing::Canceled { watch_id: 5, revision: 6 }, Outgoing::Progress { watch_id: -1, revision: 6 }]
    );
}

#[test]
fn a_watcher_behind_a_compaction_is_canceled_while_catching_up() {
    let mut f = Fixture::new();
    let s = f.hub.open_stream();
    s.watch(spec("k"));
    drain(&s);
    for i in 0..OUTBOX_CAPACITY + 10 {
        f.write(&[&format!("k={i}")]);
    }
    let behind_at = 2 + OUTBOX_CAPACITY as i64;
    f.history.compact(behind_at + 5);
    let items = drain(&s);
    assert_eq!(items.len(), OUTBOX_CAPACITY + 1);
    assert_eq!(items.last(), Some(&Outgoing::Compacted { watch_id: 0, compact_revision: behind_at + 5 }));
    // It no longer receives events.
    f.write(&["k=after"]);
    assert_eq!(drain(&s), vec![]);
}

#[test]
fn progress_requests_are_answered_only_when_every_watcher_is_synced() {
    let mut f = Fixture::new();
    let s = f.hub.open_stream();
    // No watchers: nothing to answer.
    s.request_progress();
    assert_eq!(drain(&s), vec![]);
    s.watch(spec("a"));
    f.write(&["a=1"]);
    s.request_progress();
    let items = drain(&s);
    assert_eq!(items.last(), Some(&Outgoing::Progress { watch_id: -1, revision: 2 }));
    // etcd 3.5.16 drops a request while a watcher is unsynced (no deferred answer)...
    for i in 0..3 {
        f.write(&[&format!("b={i}")]);
    }
    s.watch(WatchSpec { start_revision: 2, ..spec("b") });
    s.request_progress();
    let items = drain(&s);
    assert_eq!(event_summary(&items), vec![(1, 5, vec![("b".into(), 3), ("b".into(), 4), ("b".into(), 5)])]);
    assert!(!items.iter().any(|i| matches!(i, Outgoing::Progress { .. })));
    // ...and answers the next one once it has caught up, after the events it reports on.
    s.request_progress();
    assert_eq!(drain(&s), vec![Outgoing::Progress { watch_id: -1, revision: 5 }]);
}

#[test]
fn periodic_progress_skips_watchers_that_just_got_events() {
    let mut f = Fixture::new();
    let s = f.hub.open_stream();
    s.watch(WatchSpec { progress_notify: true, ..spec("a") });
    s.watch(WatchSpec { progress_notify: true, ..spec("b") });
    s.watch(spec("c"));
    drain(&s);
    s.progress_tick();
    assert_eq!(
        drain(&s),
        vec![Outgoing::Progress { watch_id: 0, revision: 1 }, Outgoing::Progress { watch_id: 1, revision: 1 }]
    );
    f.write(&["a=1"]);
    drain(&s);
    s.progress_tick();
    assert_eq!(drain(&s), vec![Outgoing::Progress { watch_id: 1, revision: 2 }]);
    s.progress_tick();
    assert_eq!(
        drain(&s),
        vec![Outgoing::Progress { watch_id: 0, revision: 2 }, Outgoing::Progress { watch_id: 1, revision: 2 }]
    );
}

#[test]
fn filters_and_prev_kv() {
    let mut f = Fixture::new();
    let s = f.hub.open_stream();
    s.watch(WatchSpec { no_put: true, prev_kv: true, ..spec("a") });
    s.watch(WatchSpec { no_delete: true, prev_kv: true, ..spec("a") });
    s.watch(spec("a"));
    drain(&s);
    f.write(&["a=1"]);
    f.write(&["a=2"]);
    f.write(&["-a"]);
    let items = drain(&s);
    let by_watcher = |id: i64| -> Vec<(i32, Option<Vec<u8>>, bool)> {
        items
            .iter()
            .filter_map(|i| match i {
                Outgoing::Events { watch_id, prev_kv, .. } if *watch_id == id => Some(
                    i.events()
                        .map(|e| (e.r#type, e.prev_kv.as_ref().map(|p| p.value.clone()), *prev_kv))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect()
    };
    assert_eq!(by_watcher(0), vec![(1, Some(b"2".to_vec()), true)]);
    assert_eq!(by_watcher(1), vec![(0, None, true), (0, Some(b"1".to_vec()), true)]);
    assert_eq!(by_watcher(2).iter().map(|e| e.2).collect::<Vec<_>>(), vec![false, false, false]);
    // The same from history.
    s.watch(WatchSpec { no_put: true, prev_kv: true, start_revision: 1, ..spec("a") });
    let items = drain(&s);
    let deletes: Vec<_> = event_summary(&items);
    assert_eq!(deletes, vec![(3, 4, vec![("a".into(), 4)])]);
}

#[test]
fn dropping_a_stream_removes_its_watchers() {
    let mut f = Fixture::new();
    let s = f.hub.open_stream();
    s.watch(WatchSpec { prev_kv: true, ..spec("a") });
    s.watch(WatchSpec { start_revision: 1, ..spec("a") });
    assert_eq!(f.hub.stats().watchers, 2);
    drop(s);
    assert_eq!(f.hub.stats(), HubStats { streams: 0, watchers: 0, slow: 0, approx_bytes: f.hub.stats().approx_bytes });
    assert_eq!(f.hub.prev_kv_watchers.load(Ordering::SeqCst), 0);
    f.write(&["a=1"]);
}

#[test]
fn reset_makes_synced_watchers_reread_history() {
    let mut f = Fixture::new();
    let s = f.hub.open_stream();
    s.watch(spec("a"));
    f.write(&["a=1"]);
    drain(&s);
    // A snapshot brought revisions 3 and 4 without publishing them.
    for rev in [3, 4] {
        f.rev = rev;
        let ev = Event {
            r#type: 0,
            kv: Some(KeyValue { key: "a".into(), mod_revision: rev, create_revision: 2, ..Default::default() }),
            prev_kv: None,
        };
        f.history.log.lock().unwrap().0.insert(rev, vec![ev]);
    }
    f.hub.reset(4);
    assert_eq!(event_summary(&drain(&s)), vec![(0, 4, vec![("a".into(), 3), ("a".into(), 4)])]);
}

/// A writer publishes while a slow reader drains and catches up on another thread: every watcher
/// sees every revision of its keys once, in order, with each revision's events together.
#[test]
fn exactly_once_while_publishing_races_catch_up() {
    let f = Arc::new(Mutex::new(Fixture::new()));
    let hub = f.lock().unwrap().hub.clone();
    let s = Arc::new(hub.open_stream());
    s.watch(WatchSpec { span: KeySpan::From(vec![0]), ..spec("") });
    s.watch(spec("k3"));
    s.watch(WatchSpec { start_revision: 1, span: prefix("k"), ..spec("") });
    let writes = 3000;
    let writer = {
        let f = f.clone();
        std::thread::spawn(move || {
            for i in 0..writes {
                let a = format!("k{}=v{i}", i % 7);
                let b = format!("k{}=w{i}", (i + 3) % 7);
                f.lock().unwrap().write(&[&a, &b]);
            }
        })
    };
    let mut got: BTreeMap<i64, Vec<(i64, Vec<Brief>)>> = BTreeMap::new();
    let mut rounds = 0u64;
    loop {
        let done = writer.is_finished();
        let items = drain(&s);
        for (id, header, evs) in event_summary(&items) {
            assert!(evs.iter().all(|e| e.1 <= header), "no event from the future");
            got.entry(id).or_default().push((header, evs));
        }
        rounds += 1;
        if rounds.is_multiple_of(3) {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        if done && items.is_empty() {
            break;
        }
    }
    writer.join().unwrap();
    let last = 1 + writes as i64;
    for (id, want_keys) in [(0, 2usize), (1, 0), (2, 2)] {
        let events: Vec<(String, i64)> = got[&id].iter().flat_map(|(_, e)| e.iter().cloned()).collect();
        let mut revs: Vec<i64> = events.iter().map(|e| e.1).collect();
        let sorted = {
            let mut r = revs.clone();
            r.sort();
            r
        };
        assert_eq!(revs, sorted, "watcher {id}: in order");
        // Each revision's events arrive in one response.
        let mut response_of: BTreeMap<i64, usize> = BTreeMap::new();
        for (n, (_, evs)) in got[&id].iter().enumerate() {
            for e in evs {
                assert_eq!(*response_of.entry(e.1).or_insert(n), n, "watcher {id}: revision {} split", e.1);
            }
        }
        revs.dedup();
        if id == 1 {
            // k3 changes in revisions where i % 7 == 3 or (i + 3) % 7 == 3.
            let want: Vec<i64> = (0..writes).filter(|i| i % 7 == 3 || (i + 3) % 7 == 3).map(|i| i as i64 + 2).collect();
            assert_eq!(revs, want);
        } else {
            assert_eq!(revs, (2..=last).collect::<Vec<_>>(), "watcher {id}: every revision once");
            assert_eq!(events.len(), writes * want_keys);
        }
    }
}

#[test]
fn negative_start_revisions_follow_etcd() {
    let mut f = Fixture::new();
    f.write(&["a=1"]);
    let s = f.hub.open_stream();
    // Below etcd's "never compacted" mark of -1: a compacted cancel carrying -1.
    s.watch(WatchSpec { start_revision: -5, ..spec("a") });
    // -1 is not below it: no history, then new events only.
    s.watch(WatchSpec { start_revision: -1, ..spec("a") });
    let items = drain(&s);
    assert_eq!(items[2], Outgoing::Compacted { watch_id: 0, compact_revision: -1 });
    assert_eq!(event_summary(&items), vec![]);
    let rev = f.write(&["a=2"]);
    assert_eq!(event_summary(&drain(&s)), vec![(1, rev, vec![("a".into(), rev)])]);
}

/// History whose prev_kv lookups fail until switched on: publish must not send a prev_kv
/// watcher an event without its prev_kv, catch-up must fill it in later.
#[test]
fn a_failed_prev_kv_lookup_sends_the_watcher_through_catch_up() {
    struct Flaky(Arc<FakeHistory>, Arc<std::sync::atomic::AtomicBool>);
    impl History for Flaky {
        fn compacted(&self) -> i64 {
            Shared(self.0.clone()).compacted()
        }
        fn read(&self, from: i64, to: i64, max_revs: usize, max_bytes: usize) -> Result<Chunk> {
            Shared(self.0.clone()).read(from, to, max_revs, max_bytes)
        }
        fn prev_kvs(&self, events: &[Event]) -> Result<Vec<Option<KeyValue>>> {
            if self.1.load(Ordering::SeqCst) {
                Shared(self.0.clone()).prev_kvs(events)
            } else {
                Err(Error::Storage("unavailable".into()))
            }
        }
    }
    let mut f = Fixture::new();
    let ok = Arc::new(std::sync::atomic::AtomicBool::new(false));
    f.hub = Arc::new(WatchHub::new(Box::new(Flaky(f.history.clone(), ok.clone())), 1));
    let s = f.hub.open_stream();
    s.watch(WatchSpec { prev_kv: true, ..spec("a") });
    s.watch(spec("a"));
    drain(&s);
    f.write(&["a=1"]);
    f.write(&["a=2"]);
    // The plain watcher is served; the prev_kv one waits (its catch-up fails too).
    assert_eq!(event_summary(&s.pop(usize::MAX)).iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 1]);
    assert_eq!(s.catch_up(), CatchUp::Failed);
    ok.store(true, Ordering::SeqCst);
    let items = drain(&s);
    assert_eq!(event_summary(&items), vec![(0, 3, vec![("a".into(), 2), ("a".into(), 3)])]);
    let prevs: Vec<Option<Vec<u8>>> = items[0].events().map(|e| e.prev_kv.as_ref().map(|p| p.value.clone())).collect();
    assert_eq!(prevs, vec![None, Some(b"1".to_vec())]);
}

/// Cost of publishing one revision to 1,000 watchers of its key on 10 streams (run with
/// `cargo test --release --lib publish_cost -- --ignored --nocapture`).
#[test]
#[ignore]
fn publish_cost() {
    let mut f = Fixture::new();
    let streams: Vec<StreamHandle> = (0..10).map(|_| f.hub.open_stream()).collect();
    for i in 0..1000 {
        streams[i % 10].watch(spec("k"));
    }
    for s in &streams {
        s.pop(usize::MAX);
    }
    let rounds = 2000;
    let mut spent = std::time::Duration::ZERO;
    for i in 0..rounds {
        let started = std::time::Instant::now();
        f.write(&[&format!("k={i}")]);
        spent += started.elapsed();
        for s in &streams {
            assert_eq!(s.pop(usize::MAX).len(), 100);
        }
    }
    eprintln!("publish to 1000 watchers: {:?} per revision", spent / rounds);
}
