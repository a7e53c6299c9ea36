//! etcd's watch guarantees over a randomised workload with compactions and slow clients. One
//! writer issues puts, deletes, delete-ranges and multi-op txns while keeping an exact model of
//! the store (it is the only writer, so the model knows every revision's events in order);
//! watchers with random keys, ranges, start revisions (past, compacted, now, future), filters
//! and prev_kv come and go on several streams, some of which stop reading for a while. Checked
//! for every watcher:
//! * ordered: revisions only go up; unique: no event twice;
//! * atomic: all of a revision's events for a watcher arrive in one response;
//! * reliable: exactly the model's events in its range from its start, filters honoured — or, if
//!   the server canceled it for compaction, a prefix of them, and it was behind the compaction;
//! * prev_kv correct (absent only for creations, missing keys, or compacted history);
//! * no event from the future (never above its response's header revision);
//! * progress notifications only after every event up to their revision;
//! * resumable: after the run, a watch from any revision replays exactly the model's events
//!   (or is told that revision was compacted).
//!
//! Runs against Keel (`KEEL_COMPAT_CANDIDATE=etcd` checks the test on etcd); `KEEL_SOAK=1` runs a
//! longer workload; `KEEL_SEED` replays a run.

use std::collections::BTreeMap;
use std::time::Duration;

use compat_tests::watch_client::{prefix_end, seed, soak, Rng, WatchConn};
use compat_tests::{Server, ServerKind};
use keel::proto::etcdserverpb::{
    request_op, CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchResponse,
};
use keel::proto::mvccpb::event::EventType;
use keel::proto::mvccpb::KeyValue;

const KEYS: u64 = 24;
const STREAMS: usize = 5;

fn key_name(n: u64) -> Vec<u8> {
    format!("k{:02}", n).into_bytes()
}

/// One change as the model records it.
#[derive(Clone, Debug, PartialEq)]
struct Ev {
    rev: i64,
    delete: bool,
    kv: KeyValue,
    /// The key's value just before this revision (None if absent).
    prev: Option<KeyValue>,
}

#[derive(Default)]
struct Model {
    live: BTreeMap<Vec<u8>, KeyValue>,
    rev: i64,
    /// Every revision's events, in order.
    history: Vec<Ev>,
    /// Compaction revisions, in order.
    compactions: Vec<i64>,
}

enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>, Vec<u8>),
}

impl Model {
    /// Apply one request's ops at `rev` (the server's answer) and record its events.
    fn apply(&mut self, rev: i64, ops: &[Op]) {
        let mut changed = false;
        let before = self.live.clone();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    let (create, version) = match self.live.get(k) {
                        Some(kv) => (kv.create_revision, kv.version + 1),
                        None => (rev, 1),
                    };
                    let kv = KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                        create_revision: create,
                        mod_revision: rev,
                        version,
                        lease: 0,
                    };
                    self.live.insert(k.clone(), kv.clone());
                    self.history.push(Ev { rev, delete: false, kv, prev: before.get(k).cloned() });
                    changed = true;
                }
                Op::Delete(k, end) => {
                    let doomed: Vec<Vec<u8>> = if end.is_empty() {
                        self.live.contains_key(k).then(|| k.clone()).into_iter().collect()
                    } else {
                        self.live.range(k.clone()..end.clone()).map(|(k, _)| k.clone()).collect()
                    };
                    for d in doomed {
                        self.live.remove(&d);
                        let kv = KeyValue { key: d.clone(), mod_revision: rev, ..Default::default() };
                        self.history.push(Ev { rev, delete: true, kv, prev: before.get(&d).cloned() });
                        changed = true;
                    }
                }
            }
        }
        if changed {
            assert_eq!(rev, self.rev + 1, "a changing request bumps the revision by one");
            self.rev = rev;
        } else {
            assert_eq!(rev, self.rev, "a request that changes nothing keeps the revision");
        }
    }

    fn compacted(&self) -> i64 {
        self.compactions.last().copied().unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
struct Spec {
    key: Vec<u8>,
    end: Vec<u8>,
    start: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
}

impl Spec {
    fn contains(&self, k: &[u8]) -> bool {
        match self.end.as_slice() {
            [] => k == self.key.as_slice(),
            [0] => k >= self.key.as_slice(),
            end => k >= self.key.as_slice() && k < end,
        }
    }

    fn wants(&self, e: &Ev) -> bool {
        let filtered_out = if e.delete { self.no_delete } else { self.no_put };
        self.contains(&e.kv.key) && !filtered_out
    }

    fn request(&self) -> WatchCreateRequest {
        let mut filters = Vec::new();
        if self.no_put {
            filters.push(0);
        }
        if self.no_delete {
            filters.push(1);
        }
        WatchCreateRequest {
            key: self.key.clone(),
            range_end: self.end.clone(),
            start_revision: self.start,
            filters,
            prev_kv: self.prev_kv,
            ..Default::default()
        }
    }
}

fn random_spec(rng: &mut Rng, model: &Model) -> Spec {
    let a = rng.below(KEYS);
    let b = rng.below(KEYS);
    let (key, end) = match rng.below(4) {
        0 => (key_name(a), Vec::new()),
        1 => (key_name(a.min(b)), key_name(a.max(b) + 1)),
        2 => (key_name(a), vec![0]),
        _ => (b"k1".to_vec(), prefix_end(b"k1")),
    };
    let start = match rng.below(5) {
        0 | 1 => 0,
        2 => 1 + rng.below(model.rev.max(1) as u64) as i64,
        3 => model.rev - rng.below(20) as i64,
        _ => model.rev + 1 + rng.below(5) as i64,
    };
    Spec { key, end, start: start.max(0), no_put: rng.chance(10), no_delete: rng.chance(10), prev_kv: rng.chance(60) }
}

/// Everything one watcher received, cut out of its stream's responses.
struct Seen {
    created_rev: i64,
    responses: Vec<WatchResponse>,
    compacted: Option<i64>,
    /// Progress notifications (header revision, events received before it).
    progress: Vec<(i64, usize)>,
}

fn seen_by(stream: &[WatchResponse], watch_id: i64, nth_create: usize) -> Option<Seen> {
    // The nth created answer on the stream names this watcher (ids are unique per stream).
    let created_at = stream.iter().enumerate().filter(|(_, r)| r.created).nth(nth_create)?.0;
    let created = &stream[created_at];
    if created.watch_id != watch_id || created.canceled {
        return None;
    }
    let mut seen = Seen {
        created_rev: created.header.as_ref().map_or(0, |h| h.revision),
        responses: Vec::new(),
        compacted: None,
        progress: Vec::new(),
    };
    let mut events = 0;
    for r in &stream[created_at + 1..] {
        if r.watch_id == watch_id && r.canceled {
            if r.compact_revision != 0 {
                seen.compacted = Some(r.compact_revision);
            }
            break;
        }
        if r.watch_id == watch_id && !r.events.is_empty() {
            events += r.events.len();
            seen.responses.push(r.clone());
        } else if r.events.is_empty() && !r.created && !r.canceled && (r.watch_id == -1 || r.watch_id == watch_id) {
            seen.progress.push((r.header.as_ref().map_or(0, |h| h.revision), events));
        }
    }
    Some(seen)
}

/// Check one watcher against the model; returns the number of events checked.
fn check(name: &str, spec: &Spec, seen: &Seen, model: &Model, canceled_by_client: bool) -> usize {
    let from = if spec.start == 0 { seen.created_rev + 1 } else { spec.start };
    let expected: Vec<&Ev> = model.history.iter().filter(|e| e.rev >= from && spec.wants(e)).collect();
    let mut got: Vec<(i64, &keel::proto::mvccpb::Event)> = Vec::new();
    let mut last_rev = 0;
    let mut response_of: BTreeMap<i64, usize> = BTreeMap::new();
    for (n, r) in seen.responses.iter().enumerate() {
        let header = r.header.as_ref().map_or(0, |h| h.revision);
        for e in &r.events {
            let kv = e.kv.as_ref().expect("event kv");
            assert!(kv.mod_revision <= header, "{name}: event {} above its header {header}", kv.mod_revision);
            assert!(kv.mod_revision >= last_rev, "{name}: revisions go backwards");
            last_rev = kv.mod_revision;
            let first = *response_of.entry(kv.mod_revision).or_insert(n);
            assert_eq!(first, n, "{name}: revision {} split over two responses", kv.mod_revision);
            got.push((kv.mod_revision, e));
        }
    }
    match seen.compacted {
        None if canceled_by_client => assert!(got.len() <= expected.len(), "{name}: more events than committed"),
        None => assert_eq!(got.len(), expected.len(), "{name}: event count (spec {spec:?}, from {from})"),
        Some(c) => {
            assert!(got.len() <= expected.len(), "{name}: more events than committed");
            assert!(model.compactions.contains(&c), "{name}: compact_revision {c} is not a compaction");
            let behind = got.last().map_or(from, |(rev, _)| rev + 1);
            assert!(behind < c || from < c, "{name}: canceled at {c} though it was at {behind}");
        }
    }
    for ((rev, e), want) in got.iter().zip(&expected) {
        let kv = e.kv.as_ref().unwrap();
        assert_eq!(*rev, want.rev, "{name}: revision");
        assert_eq!(e.r#type == EventType::Delete as i32, want.delete, "{name}: type at {rev}");
        assert_eq!(kv, &want.kv, "{name}: kv at {rev}");
        let creation = !want.delete && want.kv.create_revision == want.kv.mod_revision;
        match (&e.prev_kv, spec.prev_kv) {
            (Some(_), false) => panic!("{name}: prev_kv without asking"),
            (None, false) => {}
            (Some(p), true) => {
                assert!(!creation, "{name}: prev_kv on a creation");
                assert_eq!(Some(p), want.prev.as_ref(), "{name}: prev_kv at {rev}");
            }
            (None, true) => assert!(
                creation || want.prev.is_none() || want.rev - 1 < model.compacted(),
                "{name}: missing prev_kv at {rev}"
            ),
        }
    }
    for (p, received) in &seen.progress {
        let due = expected.iter().filter(|e| e.rev <= *p).count();
        if seen.compacted.is_none() {
            assert_eq!(*received, due, "{name}: progress at {p} before all its events");
        }
    }
    got.len()
}

struct Watcher {
    stream: usize,
    nth_create: usize,
    watch_id: i64,
    spec: Spec,
    /// The client canceled it: what it saw must be a prefix of what it would have seen.
    canceled: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_guarantees_hold_under_random_load() {
    let kind = ServerKind::from_env_or(ServerKind::Keel);
    let seed = seed();
    let steps: usize = if soak() { 12_000 } else { 1_500 };
    eprintln!("watch guarantees on {kind}: seed {seed} (KEEL_SEED), {steps} steps");
    let mut rng = Rng::new(seed);
    let server = Server::start(kind).await.unwrap();
    let mut kv = server.kv().await.unwrap();
    let mut model = Model { rev: 1, ..Default::default() };

    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(WatchConn::open(&server, rng.chance(50)).await.unwrap());
    }
    let mut creates = [0usize; STREAMS];
    let mut next_id = [0i64; STREAMS];
    let mut watchers: Vec<Watcher> = Vec::new();
    let mut paused: Option<(usize, usize)> = None;

    for step in 0..steps {
        // Watchers come and go.
        if rng.chance(6) || watchers.len() < 4 {
            let s = rng.below(STREAMS as u64) as usize;
            let spec = random_spec(&mut rng, &model);
            streams[s].create(spec.request()).await;
            watchers.push(Watcher { stream: s, nth_create: creates[s], watch_id: next_id[s], spec, canceled: false });
            creates[s] += 1;
            next_id[s] += 1;
        }
        if rng.chance(1) && !watchers.is_empty() {
            let n = rng.below(watchers.len() as u64) as usize;
            watchers[n].canceled = true;
            streams[watchers[n].stream].cancel(watchers[n].watch_id).await;
        }
        if rng.chance(3) {
            streams[rng.below(STREAMS as u64) as usize].progress().await;
        }
        // A stream stops reading for a while, during a burst of writes to one key range.
        if paused.is_none() && rng.chance(1) {
            let s = rng.below(STREAMS as u64) as usize;
            streams[s].pause(true);
            paused = Some((s, step + 150 + rng.below(200) as usize));
        }
        if let Some((s, until)) = paused {
            if step >= until {
                streams[s].pause(false);
                paused = None;
            }
        }

        // One write.
        let roll = rng.below(100);
        let value = |rng: &mut Rng| format!("v{step}-{}", rng.below(1000)).into_bytes();
        let (ops, result) = if roll < 55 {
            let k = key_name(rng.below(KEYS));
            let v = value(&mut rng);
            let r = kv.put(PutRequest { key: k.clone(), value: v.clone(), ..Default::default() }).await;
            (vec![Op::Put(k, v)], r.map(|r| r.into_inner().header))
        } else if roll < 70 {
            let k = key_name(rng.below(KEYS));
            let r = kv.delete_range(DeleteRangeRequest { key: k.clone(), ..Default::default() }).await;
            (vec![Op::Delete(k, Vec::new())], r.map(|r| r.into_inner().header))
        } else if roll < 75 {
            let a = rng.below(KEYS);
            let (k, end) = (key_name(a), key_name(a + 1 + rng.below(4)));
            let r = kv
                .delete_range(DeleteRangeRequest { key: k.clone(), range_end: end.clone(), ..Default::default() })
                .await;
            (vec![Op::Delete(k, end)], r.map(|r| r.into_inner().header))
        } else if roll < 97 {
            // A txn touching distinct keys: puts, and single-key deletes of other keys.
            let mut keys: Vec<u64> = (0..KEYS).collect();
            let n = 2 + rng.below(4) as usize;
            let mut ops = Vec::new();
            let mut req_ops = Vec::new();
            for _ in 0..n {
                let k = key_name(keys.swap_remove(rng.below(keys.len() as u64) as usize));
                if rng.chance(70) {
                    let v = value(&mut rng);
                    req_ops.push(RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: k.clone(),
                            value: v.clone(),
                            ..Default::default()
                        })),
                    });
                    ops.push(Op::Put(k, v));
                } else {
                    req_ops.push(RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                            key: k.clone(),
                            ..Default::default()
                        })),
                    });
                    ops.push(Op::Delete(k, Vec::new()));
                }
            }
            let r = kv.txn(TxnRequest { compare: vec![], success: req_ops, failure: vec![] }).await;
            (ops, r.map(|r| r.into_inner().header))
        } else {
            let lowest = model.compacted() + 1;
            if model.rev > lowest + 5 {
                let target = model.rev - rng.below((model.rev - lowest).min(60) as u64) as i64;
                if target > model.compacted() {
                    kv.compact(CompactionRequest { revision: target, physical: rng.chance(50) }).await.unwrap();
                    model.compactions.push(target);
                }
            }
            continue;
        };
        let header = result.expect("write").expect("header");
        model.apply(header.revision, &ops);
    }
    if let Some((s, _)) = paused {
        streams[s].pause(false);
    }

    // Let everything arrive.
    for s in &streams {
        s.wait_quiet(Duration::from_millis(500), Duration::from_secs(60)).await;
    }
    let mut checked = 0;
    let mut compacted = 0;
    for (n, w) in watchers.iter().enumerate() {
        let responses = streams[w.stream].responses();
        let name = format!("watcher #{n} (stream {}, id {})", w.stream, w.watch_id);
        let Some(seen) = seen_by(&responses, w.watch_id, w.nth_create) else {
            panic!("{name}: no created answer");
        };
        checked += check(&name, &w.spec, &seen, &model, w.canceled);
        compacted += usize::from(seen.compacted.is_some());
    }
    for s in &streams {
        assert_eq!(s.ended(), None, "a stream ended");
    }

    // Resumable: a watch from any revision replays exactly the model's history from there.
    let resume = WatchConn::open(&server, false).await.unwrap();
    let mut resumed = Vec::new();
    for i in 0..20 {
        let start = 1 + rng.below(model.rev as u64) as i64;
        let spec = Spec { key: vec![0], end: vec![0], start, no_put: false, no_delete: false, prev_kv: true };
        resume.create(spec.request()).await;
        resumed.push((i, spec));
    }
    resume.wait_quiet(Duration::from_millis(500), Duration::from_secs(60)).await;
    let responses = resume.responses();
    for (i, spec) in resumed {
        let name = format!("resume #{i} from {}", spec.start);
        let seen = seen_by(&responses, i, i as usize).expect("created");
        check(&name, &spec, &seen, &model, false);
        assert_eq!(seen.compacted.is_some(), spec.start < model.compacted(), "{name}: compacted iff below");
    }
    eprintln!(
        "watch guarantees on {kind}: {} revisions, {} watchers, {checked} events checked, {compacted} canceled by \
         compaction, {} compactions",
        model.rev,
        watchers.len(),
        model.compactions.len()
    );
}

/// A client that stops reading while big revisions pile up: the server must not block writes,
/// and once the client reads again every watcher gets every event once, in order (through the
/// server's fall-behind-and-catch-up path: far more data than any buffer holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_client_catches_up_exactly_once() {
    let kind = ServerKind::from_env_or(ServerKind::Keel);
    let revisions: usize = if soak() { 1200 } else { 400 };
    let server = Server::start(kind).await.unwrap();
    let mut kv = server.kv().await.unwrap();
    let mut model = Model { rev: 1, ..Default::default() };
    let conn = WatchConn::open(&server, true).await.unwrap();
    let specs = [
        Spec { key: b"s/".to_vec(), end: prefix_end(b"s/"), start: 0, no_put: false, no_delete: false, prev_kv: true },
        Spec { key: b"s/0".to_vec(), end: Vec::new(), start: 0, no_put: false, no_delete: false, prev_kv: false },
        Spec { key: b"s/".to_vec(), end: vec![0], start: 0, no_put: false, no_delete: true, prev_kv: true },
    ];
    for spec in &specs {
        conn.create(spec.request()).await;
    }
    assert!(conn.wait_for(Duration::from_secs(10), |rs| rs.iter().filter(|r| r.created).count() == 3).await);
    conn.pause(true);
    let big = "x".repeat(4096);
    let started = std::time::Instant::now();
    for i in 0..revisions {
        let mut ops = Vec::new();
        let mut req_ops = Vec::new();
        for k in 0..5 {
            let key = format!("s/{k}").into_bytes();
            if k == 1 && i % 10 == 9 {
                req_ops.push(RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    })),
                });
                ops.push(Op::Delete(key, Vec::new()));
            } else {
                let value = format!("{i}-{big}").into_bytes();
                req_ops.push(RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        ..Default::default()
                    })),
                });
                ops.push(Op::Put(key, value));
            }
        }
        let resp = kv.txn(TxnRequest { compare: vec![], success: req_ops, failure: vec![] }).await.unwrap();
        model.apply(resp.into_inner().header.unwrap().revision, &ops);
    }
    let wrote = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = conn.received();
    conn.pause(false);
    // Catch-up passes over a lot of history can be quiet for a while: wait for the count.
    let due: usize =
        specs.iter().map(|spec| model.history.iter().filter(|e| e.rev >= 2 && spec.wants(e)).count()).sum();
    conn.wait_for(Duration::from_secs(300), |rs| rs.iter().map(|r| r.events.len()).sum::<usize>() >= due).await;
    conn.wait_quiet(Duration::from_millis(300), Duration::from_secs(10)).await;
    let responses = conn.responses();
    let mut checked = 0;
    for (i, spec) in specs.iter().enumerate() {
        let seen = seen_by(&responses, i as i64, i).expect("created");
        assert_eq!(seen.compacted, None);
        checked += check(&format!("stalled watcher {i}"), spec, &seen, &model, false);
    }
    eprintln!(
        "stalled client on {kind}: {revisions} revisions of 20 KB written in {wrote:?} while not reading \
         ({before} responses had arrived), then {checked} events checked in {} responses",
        responses.len()
    );
}

/// A member asked to stop (SIGTERM) with watch streams open must not wait for the clients to hang
/// up: Keel ends each stream with etcd's `etcdserver: server stopped` (Unavailable), so clients move
/// on to another member. etcd's own graceful stop closes its streams as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_ends_open_watch_streams() {
    for kind in [ServerKind::Etcd, ServerKind::Keel] {
        let mut server = Server::start(kind).await.unwrap();
        let conn = WatchConn::open(&server, false).await.unwrap();
        conn.create(WatchCreateRequest { key: b"a".to_vec(), ..Default::default() }).await;
        assert!(conn.wait_for(Duration::from_secs(10), |rs| rs.iter().any(|r| r.created)).await);
        let started = std::time::Instant::now();
        server.stop().await.unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{kind}: a graceful stop with an open watch took {took:?}");
        for _ in 0..100 {
            if conn.ended().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ended = conn.ended().unwrap_or_default();
        eprintln!("{kind}: stopped in {took:?}, watch stream ended with: {ended}");
        assert!(!ended.is_empty(), "{kind}: the stream must end when the member stops");
        if kind == ServerKind::Keel {
            assert!(ended.contains("etcdserver: server stopped"), "{ended}");
        }
    }
}
