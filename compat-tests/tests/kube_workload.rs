//! A kube-apiserver-shaped workload (see reference/kube-apiserver.md): 50 resources, each with its
//! own connection and watch stream (`hasleader`, prefix watch from list revision + 1, prev_kv,
//! progress_notify), concurrent creates/updates/deletes as Txns with mod_revision compares (with
//! the Range fallback), paginated lists with limit and revision, count_only, the
//! `compact_rev_key` Txn followed by Compact, progress requests on every stream, two streams
//! that stop reading for a while, and Event-like objects created on short leases that expire
//! (kube-apiserver attaches Events to leases it shares between objects). Afterwards every watcher must have seen exactly the committed
//! writes of its prefix, in order, with the right prev_kv; every progress notification must come
//! after all events up to its revision; every list must match the write log at its revision.
//!
//! Runs against Keel (`KEEL_COMPAT_CANDIDATE=etcd` runs it against etcd to check the test itself).
//! `KEEL_SOAK=1` runs a ten times longer version; `KEEL_SEED` replays a run.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use compat_tests::watch_client::{
    kube_compact_key, kube_create, kube_delete, kube_update, prefix_end, seed, soak, Rng, WatchConn,
};
use compat_tests::{Server, ServerKind};
use keel::proto::etcdserverpb::kv_client::KvClient;
use keel::proto::etcdserverpb::{
    response_op, CompactionRequest, LeaseGrantRequest, RangeRequest, TxnResponse, WatchCreateRequest,
};
use keel::proto::mvccpb::event::EventType;
use tonic::transport::Channel;

const RESOURCES: usize = 50;
const WRITERS: usize = 6;
const INITIAL_PER_RESOURCE: usize = 3;
/// Keys per resource the writers choose from.
const NAMES: u64 = 12;

/// Where the objects on expiring leases live (as kube-apiserver's `/registry/events/`).
const EVENTS: &[u8] = b"/registry/events/";
/// The shortest TTL etcd grants with default timing (1.5 election timeouts, rounded up).
const EVENT_TTL: i64 = 2;
const EVENTS_PER_LEASE: usize = 3;

fn prefix(r: usize) -> Vec<u8> {
    format!("/registry/res{r:02}/").into_bytes()
}

#[derive(Clone, Debug, PartialEq)]
enum Change {
    Put(Vec<u8>),
    Delete,
}

/// The test's own record of what was committed: revision → (key, change). Each kube write
/// changes exactly one key.
#[derive(Default)]
struct Log {
    writes: BTreeMap<i64, (Vec<u8>, Change)>,
    /// Best known (mod revision, value) of each live key, for choosing the next write.
    current: HashMap<Vec<u8>, (i64, Vec<u8>)>,
}

impl Log {
    fn committed(&mut self, rev: i64, key: &[u8], change: Change) {
        self.writes.insert(rev, (key.to_vec(), change.clone()));
        self.learn(key, rev, change);
    }

    fn learn(&mut self, key: &[u8], rev: i64, change: Change) {
        let newer = self.current.get(key).is_none_or(|(r, _)| *r < rev);
        if newer {
            match change {
                Change::Put(v) => {
                    self.current.insert(key.to_vec(), (rev, v));
                }
                Change::Delete => {
                    self.current.remove(key);
                }
            }
        }
    }
}

/// What the log says a watcher of `[key, end)` from `start` must see: (rev, key, change, prev).
type Expected = (i64, Vec<u8>, Change, Option<(i64, Vec<u8>)>);

fn expected_events(log: &Log, key: &[u8], end: &[u8], start: i64) -> Vec<Expected> {
    let mut last: HashMap<Vec<u8>, Option<(i64, Vec<u8>)>> = HashMap::new();
    let mut out = Vec::new();
    for (rev, (k, change)) in &log.writes {
        if k.as_slice() < key || k.as_slice() >= end {
            continue;
        }
        let prev = last.get(k).cloned().flatten();
        if *rev >= start {
            out.push((*rev, k.clone(), change.clone(), prev));
        }
        let now = match change {
            Change::Put(v) => Some((*rev, v.clone())),
            Change::Delete => None,
        };
        last.insert(k.clone(), now);
    }
    out
}

fn live_at(log: &Log, key: &[u8], end: &[u8], at: i64) -> BTreeMap<Vec<u8>, i64> {
    let mut live = BTreeMap::new();
    for (rev, (k, change)) in log.writes.range(..=at) {
        if k.as_slice() < key || k.as_slice() >= end {
            continue;
        }
        match change {
            Change::Put(_) => {
                live.insert(k.clone(), *rev);
            }
            Change::Delete => {
                live.remove(k);
            }
        }
    }
    live
}

fn header_rev(h: &Option<keel::proto::etcdserverpb::ResponseHeader>) -> i64 {
    h.as_ref().map(|h| h.revision).unwrap_or(0)
}

/// The kv of a failed compare's Range fallback, as kube-apiserver reads it.
fn fallback_kv(resp: &TxnResponse) -> Option<keel::proto::mvccpb::KeyValue> {
    match resp.responses.first()?.response.as_ref()? {
        response_op::Response::ResponseRange(r) => r.kvs.first().cloned(),
        _ => None,
    }
}

/// A paginated list at one revision, as kube-apiserver pages: limit, then `lastKey + "\0"`.
async fn list(kv: &mut KvClient<Channel>, key: &[u8], end: &[u8], limit: i64) -> (i64, BTreeMap<Vec<u8>, i64>, i64) {
    let mut from = key.to_vec();
    let mut revision = 0;
    let mut listed = BTreeMap::new();
    let mut first_count = -1;
    loop {
        let req = RangeRequest { key: from.clone(), range_end: end.to_vec(), limit, revision, ..Default::default() };
        let resp = kv.range(req).await.expect("list page").into_inner();
        if revision == 0 {
            revision = header_rev(&resp.header);
            first_count = resp.count;
        }
        for kv in &resp.kvs {
            listed.insert(kv.key.clone(), kv.mod_revision);
        }
        // kube-apiserver: hasMore = len(kvs) < count.
        assert_eq!(resp.more, (resp.kvs.len() as i64) < resp.count, "more vs count on a page");
        if !resp.more {
            break;
        }
        let mut next = resp.kvs.last().expect("a page with more has kvs").key.clone();
        next.push(0);
        from = next;
    }
    assert_eq!(first_count, listed.len() as i64, "count of the first page is the whole list");
    (revision, listed, first_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kube_apiserver_shaped_workload() {
    let kind = ServerKind::from_env_or(ServerKind::Keel);
    let seed = seed();
    let total_ops: usize = if soak() { 20_000 } else { 1_500 };
    eprintln!("kube workload on {kind}: seed {seed} (KEEL_SEED), {total_ops} writes");
    let server = Server::start_with(kind, &["--experimental-watch-progress-notify-interval=1s"]).await.unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let mut kv = server.kv().await.unwrap();

    // Initial objects, then one list per resource (as the cacher does before watching).
    for r in 0..RESOURCES {
        for n in 0..INITIAL_PER_RESOURCE {
            let key = [prefix(r), format!("obj{n}").into_bytes()].concat();
            let value = format!("init-{r}-{n}").into_bytes();
            let resp = kv.txn(kube_create(&key, &value, 0)).await.unwrap().into_inner();
            assert!(resp.succeeded);
            log.lock().unwrap().committed(header_rev(&resp.header), &key, Change::Put(value));
        }
    }
    let mut streams = Vec::new();
    for r in 0..RESOURCES {
        let (key, end) = (prefix(r), prefix_end(&prefix(r)));
        let (list_rev, listed, _) = list(&mut kv, &key, &end, 2).await;
        assert_eq!(listed, live_at(&log.lock().unwrap(), &key, &end, list_rev));
        let conn = WatchConn::open(&server, true).await.unwrap();
        conn.create(WatchCreateRequest {
            key: key.clone(),
            range_end: end.clone(),
            start_revision: list_rev + 1,
            prev_kv: true,
            progress_notify: true,
            ..Default::default()
        })
        .await;
        streams.push((key, end, list_rev + 1, conn));
    }
    for (_, _, _, conn) in &streams {
        assert!(conn.wait_for(Duration::from_secs(10), |rs| rs.iter().any(|r| r.created)).await, "created");
    }
    let streams = Arc::new(streams);
    let events_watch = WatchConn::open(&server, true).await.unwrap();
    let events_from = header_rev(
        &kv.range(RangeRequest { key: b"x".to_vec(), ..Default::default() }).await.unwrap().into_inner().header,
    ) + 1;
    events_watch
        .create(WatchCreateRequest {
            key: EVENTS.to_vec(),
            range_end: prefix_end(EVENTS),
            start_revision: events_from,
            prev_kv: true,
            ..Default::default()
        })
        .await;
    assert!(events_watch.wait_for(Duration::from_secs(10), |rs| rs.iter().any(|r| r.created)).await, "created");

    // Writers.
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (log, mut kv) = (log.clone(), server.kv().await.unwrap());
        let mut rng = Rng::new(seed.wrapping_add(w as u64 * 7919));
        let ops = total_ops / WRITERS;
        tasks.push(tokio::spawn(async move {
            for i in 0..ops {
                let r = rng.below(RESOURCES as u64) as usize;
                let key = [prefix(r), format!("obj{}", rng.below(NAMES)).into_bytes()].concat();
                let value = format!("w{w}-{i}-{}", "x".repeat(rng.below(200) as usize)).into_bytes();
                let known = log.lock().unwrap().current.get(&key).cloned();
                let (req, change) = match known {
                    None => (kube_create(&key, &value, 0), Change::Put(value)),
                    Some((rev, _)) if rng.chance(25) => (kube_delete(&key, rev), Change::Delete),
                    Some((rev, _)) => (kube_update(&key, rev, &value, 0), Change::Put(value)),
                };
                let resp = kv.txn(req).await.expect("txn").into_inner();
                let rev = header_rev(&resp.header);
                let mut log = log.lock().unwrap();
                if resp.succeeded {
                    log.committed(rev, &key, change);
                } else {
                    // Conflict: kube-apiserver retries from the current object in Responses[0].
                    match fallback_kv(&resp) {
                        Some(kv) => log.learn(&key, kv.mod_revision, Change::Put(kv.value)),
                        None => {
                            if let Some((r, _)) = log.current.get(&key).cloned() {
                                log.learn(&key, r + 1, Change::Delete);
                            }
                        }
                    }
                }
            }
        }));
    }

    // Objects on short leases, shared by a few objects each as kube-apiserver shares a lease
    // between Events; the server's expiry deletes them.
    let event_writer = {
        let (mut kv, mut lease) = (server.kv().await.unwrap(), server.lease().await.unwrap());
        let leases = (total_ops / 300).max(4);
        tokio::spawn(async move {
            let mut created: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            for l in 0..leases {
                let grant = lease.lease_grant(LeaseGrantRequest { ttl: EVENT_TTL, id: 0 }).await.unwrap().into_inner();
                assert!(grant.error.is_empty() && grant.ttl >= EVENT_TTL, "{grant:?}");
                for n in 0..EVENTS_PER_LEASE {
                    let key = [EVENTS, format!("ev{l}-{n}").as_bytes()].concat();
                    let resp = kv.txn(kube_create(&key, format!("lease {l}").as_bytes(), grant.id)).await;
                    assert!(resp.unwrap().into_inner().succeeded);
                    created.insert(key, grant.id);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            created
        })
    };

    // Lists, counts and the health Get, concurrently with the writes.
    let lists = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (lists, mut kv) = (lists.clone(), server.kv().await.unwrap());
        let mut rng = Rng::new(seed ^ 0xabcdef);
        tokio::spawn(async move {
            for _ in 0..(total_ops / 30).max(20) {
                let r = rng.below(RESOURCES as u64) as usize;
                let (key, end) = (prefix(r), prefix_end(&prefix(r)));
                let (rev, listed, _) = list(&mut kv, &key, &end, 1 + rng.below(4) as i64).await;
                let count = kv
                    .range(RangeRequest {
                        key: key.clone(),
                        range_end: end.clone(),
                        revision: rev,
                        count_only: true,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(count.kvs.is_empty() && !count.more);
                assert_eq!(count.count, listed.len() as i64, "count_only at the list revision");
                let health = kv.range(RangeRequest { key: b"/registry/health".to_vec(), ..Default::default() }).await;
                assert!(health.is_ok());
                lists.lock().unwrap().push((key, end, rev, listed));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Progress requests on every stream, and two streams that stop reading for a while.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = {
        let (streams, stop) = (streams.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for (_, _, _, conn) in streams.iter() {
                    conn.progress().await;
                }
                round += 1;
                // Against etcd 3.5.16 the paused streams lose events for good (seen with this
                // test: a slow watcher missed 3 of 32 events and never answered progress again),
                // so the check of the test itself on etcd leaves them out.
                let pausing = kind != ServerKind::Etcd;
                if pausing && round == 4 {
                    streams[3].3.pause(true);
                    streams[17].3.pause(true);
                }
                if pausing && round == 8 {
                    streams[3].3.pause(false);
                    streams[17].3.pause(false);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            // A fast run can end before round 8: the paused streams must read again either way,
            // or their final progress answers are never read.
            streams[3].3.pause(false);
            streams[17].3.pause(false);
        })
    };

    // Compaction as kube-apiserver does it: bump compact_rev_key, then compact the revision
    // recorded one interval earlier.
    let compactor = {
        let (stop, mut kv) = (stop.clone(), server.kv().await.unwrap());
        tokio::spawn(async move {
            let mut version = 0;
            let mut previous: Option<i64> = None;
            let mut compactions = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let resp = kv.txn(kube_compact_key(version, 0)).await.unwrap().into_inner();
                let rev = header_rev(&resp.header);
                if resp.succeeded {
                    version += 1;
                    if let Some(target) = previous {
                        kv.compact(CompactionRequest { revision: target, physical: false }).await.unwrap();
                        compactions += 1;
                    }
                    previous = Some(rev);
                } else if let Some(kv) = fallback_kv(&resp) {
                    version = kv.version;
                }
            }
            compactions
        })
    };

    for t in tasks {
        t.await.unwrap();
    }
    reader.await.unwrap();
    let event_leases = event_writer.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    progress.await.unwrap();
    let compactions = compactor.await.unwrap();

    // Drain: every stream quiet, then a progress request answered on each.
    let final_rev = kv.range(RangeRequest { key: b"x".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    let final_rev = header_rev(&final_rev.header);
    for (n, (_, _, _, conn)) in streams.iter().enumerate() {
        conn.wait_quiet(Duration::from_millis(300), Duration::from_secs(30)).await;
        let mut answered = false;
        for _ in 0..50 {
            conn.progress().await;
            let ok = conn
                .wait_for(Duration::from_millis(200), |rs| {
                    rs.iter().any(|r| r.watch_id == -1 && r.header.as_ref().is_some_and(|h| h.revision >= final_rev))
                })
                .await;
            if ok {
                answered = true;
                break;
            }
        }
        if !answered {
            let rs = conn.responses();
            let tail: Vec<String> = rs
                .iter()
                .rev()
                .take(3)
                .map(|r| {
                    let revs: Vec<i64> =
                        r.events.iter().filter_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision)).collect();
                    format!("id {} header {:?} events {revs:?}", r.watch_id, r.header.as_ref().map(|h| h.revision))
                })
                .collect();
            let msg = format!("stream {n}: final progress request (rev {final_rev}) not answered; last: {tail:?}");
            // etcd 3.5.16 sometimes leaves a watcher that was slow outside its synced group for
            // good, and then never answers progress requests on that stream again (seen in this
            // test against the real binary); Keel must answer.
            if kind == ServerKind::Etcd {
                eprintln!("etcd quirk: {msg}");
            } else {
                panic!("{msg}");
            }
        }
    }

    check_expired_events(&mut kv, &events_watch, &event_leases).await;
    let log = log.lock().unwrap();
    let mut events_seen = 0;
    let mut progress_seen = 0;
    for (key, end, start, conn) in streams.iter() {
        assert_eq!(conn.ended(), None, "stream ended");
        let expected = expected_events(&log, key, end, *start);
        let mut got: Vec<Expected> = Vec::new();
        let mut watch_id = None;
        for resp in conn.responses() {
            let header = header_rev(&resp.header);
            assert!(!resp.canceled, "no watcher may be canceled here: {resp:?}");
            if resp.created {
                watch_id = Some(resp.watch_id);
                continue;
            }
            if resp.events.is_empty() {
                // A progress notification (-1 for a request, the watch id for a periodic one):
                // everything up to its revision has been received before it.
                assert!(resp.watch_id == -1 || Some(resp.watch_id) == watch_id);
                let due = expected.iter().filter(|e| e.0 <= header).count();
                assert_eq!(got.len(), due, "progress at {header} came before all its events ({:?})", key);
                progress_seen += 1;
                continue;
            }
            assert_eq!(Some(resp.watch_id), watch_id);
            for ev in &resp.events {
                let kv = ev.kv.clone().unwrap();
                assert!(kv.mod_revision <= header, "no event from the future");
                let change = if ev.r#type == EventType::Delete as i32 { Change::Delete } else { Change::Put(kv.value) };
                let create = ev.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision;
                if !create {
                    assert!(ev.prev_kv.is_some(), "kube-apiserver needs prev_kv on every non-create event");
                }
                let prev = ev.prev_kv.as_ref().map(|p| (p.mod_revision, p.value.clone()));
                got.push((kv.mod_revision, kv.key, change, prev));
            }
        }
        assert_eq!(got.len(), expected.len(), "events of {:?}", String::from_utf8_lossy(key));
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g, e, "event of {:?}", String::from_utf8_lossy(key));
        }
        events_seen += got.len();
    }
    for (key, end, rev, listed) in lists.lock().unwrap().iter() {
        assert_eq!(listed, &live_at(&log, key, end, *rev), "list of {:?} at {rev}", String::from_utf8_lossy(key));
    }
    eprintln!(
        "kube workload on {kind}: {} writes, {events_seen} events checked, {progress_seen} progress notifications, \
         {} lists, {compactions} compactions",
        log.writes.len(),
        lists.lock().unwrap().len()
    );
    assert!(compactions >= 1 || !soak(), "the run is long enough to compact");
}

/// Every object created on a lease must be deleted by the lease's expiry: the watcher sees its
/// create, then one DELETE carrying the created value as prev_kv, and all objects of one lease
/// go in the same revision (a revoke is one transaction).
async fn check_expired_events(kv: &mut KvClient<Channel>, watch: &WatchConn, leases: &BTreeMap<Vec<u8>, i64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(EVENT_TTL as u64 * 10);
    loop {
        let left = kv
            .range(RangeRequest {
                key: EVENTS.to_vec(),
                range_end: prefix_end(EVENTS),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .count;
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{left} objects outlived their leases");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_seen = |rs: &[keel::proto::etcdserverpb::WatchResponse]| {
        rs.iter().flat_map(|r| &r.events).filter(|e| e.r#type == EventType::Delete as i32).count() == leases.len()
    };
    assert!(watch.wait_for(Duration::from_secs(10), all_seen).await, "every expiry reached the watcher");
    let mut put_rev: HashMap<Vec<u8>, (i64, Vec<u8>)> = HashMap::new();
    let mut delete_rev_of_lease: HashMap<i64, i64> = HashMap::new();
    for resp in watch.responses() {
        assert!(!resp.canceled, "{resp:?}");
        for ev in &resp.events {
            let kv = ev.kv.clone().unwrap();
            let lease = leases[&kv.key];
            if ev.r#type == EventType::Put as i32 {
                assert_eq!(kv.lease, lease, "object stored with its lease");
                assert!(put_rev.insert(kv.key.clone(), (kv.mod_revision, kv.value)).is_none(), "created once");
            } else {
                let (created_at, value) = put_rev.get(&kv.key).cloned().expect("deleted after its create");
                let prev = ev.prev_kv.as_ref().expect("expiry DELETE carries prev_kv");
                assert_eq!((prev.mod_revision, &prev.value), (created_at, &value));
                assert!(kv.mod_revision > created_at);
                let same = *delete_rev_of_lease.entry(lease).or_insert(kv.mod_revision);
                assert_eq!(same, kv.mod_revision, "a lease's objects are deleted in one revision");
            }
        }
    }
    assert_eq!(put_rev.len(), leases.len(), "every object's create was watched");
}
