//! Scale: 10,000 watchers over 100 watch streams on one server (10 streams per connection), with
//! the server's memory per stream and per watcher measured from its resident set size and
//! printed (etcd 3.5: about 18 KB per stream and 350 bytes per watcher). Then every watcher must
//! get its event. `KEEL_COMPAT_CANDIDATE=etcd` prints etcd's numbers for comparison.

use std::time::{Duration, Instant};

use compat_tests::watch_client::WatchConn;
use compat_tests::{Server, ServerKind};
use keel::proto::etcdserverpb::{PutRequest, WatchCreateRequest};

const CONNECTIONS: usize = 10;
const STREAMS: usize = 100;
const WATCHERS: usize = 10_000;
const KEYS: usize = 1_000;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// RSS after letting the server settle (allocations of the last step finished).
async fn settled_rss(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_millis(700)).await;
    rss_bytes(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_watchers_over_a_hundred_streams() {
    let kind = ServerKind::from_env_or(ServerKind::Keel);
    let server = Server::start(kind).await.unwrap();
    let pid = server.pid().expect("server pid");
    let mut kv = server.kv().await.unwrap();
    // Warm up the KV path and one watch stream, so their one-off allocations are not counted.
    let warm = WatchConn::open(&server, false).await.unwrap();
    warm.create(WatchCreateRequest { key: b"warm".to_vec(), ..Default::default() }).await;
    // The put must follow the created reply: a put racing the create may precede the watcher.
    assert!(warm.wait_for(Duration::from_secs(5), |rs| rs.iter().any(|r| r.created)).await);
    kv.put(PutRequest { key: b"warm".to_vec(), value: b"1".to_vec(), ..Default::default() }).await.unwrap();
    assert!(warm.wait_for(Duration::from_secs(5), |rs| rs.iter().any(|r| !r.events.is_empty())).await);

    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(server.watch().await.unwrap());
    }
    let base = settled_rss(pid).await;
    let streams: Vec<WatchConn> =
        (0..STREAMS).map(|i| WatchConn::open_on(clients[i % CONNECTIONS].clone(), true)).collect();
    // A stream exists on the server once its first message arrived; a progress request on a
    // stream without watchers is answered with nothing.
    for s in &streams {
        s.progress().await;
    }
    let with_streams = settled_rss(pid).await;

    let started = Instant::now();
    for w in 0..WATCHERS {
        let key = format!("scale/{:04}", w % KEYS).into_bytes();
        streams[w % STREAMS].create(WatchCreateRequest { key, prev_kv: w % 2 == 0, ..Default::default() }).await;
    }
    for s in &streams {
        let want = WATCHERS / STREAMS;
        assert!(
            s.wait_for(Duration::from_secs(60), |rs| rs.iter().filter(|r| r.created).count() == want).await,
            "every create answered"
        );
    }
    let created_in = started.elapsed();
    let with_watchers = settled_rss(pid).await;

    let started = Instant::now();
    for k in 0..KEYS {
        let key = format!("scale/{k:04}").into_bytes();
        kv.put(PutRequest { key, value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    }
    for s in &streams {
        let want = WATCHERS / STREAMS;
        assert!(
            s.wait_for(Duration::from_secs(60), |rs| rs.iter().filter(|r| r.events.len() == 1).count() == want).await,
            "every watcher got its event"
        );
    }
    let delivered_in = started.elapsed();
    for s in &streams {
        assert_eq!(s.ended(), None);
    }
    let per_stream = with_streams.saturating_sub(base) as f64 / STREAMS as f64;
    let per_watcher = with_watchers.saturating_sub(with_streams) as f64 / WATCHERS as f64;
    eprintln!(
        "watch scale on {kind}: RSS {:.1} MB base, +{:.1} KB per stream ({STREAMS} streams on {CONNECTIONS} \
         connections), +{per_watcher:.0} B per watcher ({WATCHERS} watchers, created in {created_in:?}); \
         {KEYS} puts delivered to all {WATCHERS} watchers in {delivered_in:?}; RSS now {:.1} MB",
        base as f64 / 1e6,
        per_stream / 1024.0,
        rss_bytes(pid) as f64 / 1e6
    );
    if kind == ServerKind::Keel {
        // Generous bounds (RSS moves in pages and allocator arenas); the point is the order of
        // magnitude: etcd needs about 18 KB per stream and 350 B per watcher.
        assert!(per_stream < 64.0 * 1024.0, "memory per stream: {per_stream} B");
        assert!(per_watcher < 2048.0, "memory per watcher: {per_watcher} B");
    }
}
