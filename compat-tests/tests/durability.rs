//! Durability: no acknowledged write is ever lost. Writers hammer Keel concurrently, the server is
//! SIGKILLed in the middle, restarted, and every write that was acknowledged before the kill must be
//! there — on both storage engines, and also after a torn (half-written) record at the WAL's tail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use compat_tests::server::Server;
use keel::proto::etcdserverpb::{PutRequest, RangeRequest};

/// What the WAL logs when it cuts a partial record off the end of its last segment.
const TORN_TAIL_WARNING: &str = "wal: truncating a torn tail";

/// Rounds of write-kill-restart per engine; more with KEEL_SOAK=1.
fn rounds() -> usize {
    if std::env::var_os("KEEL_SOAK").is_some() {
        10
    } else {
        2
    }
}

/// Writers put `w<writer>-<n>` = `<n>` until told to stop; returns the acknowledged keys.
async fn write_until_killed(server: &Server, writers: usize, run_for: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut kv = server.kv().await.expect("client");
        let (acked, stop) = (acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("w{w}-{n}").into_bytes();
                let value = n.to_string().into_bytes();
                let put = PutRequest { key: key.clone(), value: value.clone(), ..Default::default() };
                match kv.put(put).await {
                    Ok(_) => acked.lock().unwrap().push((key, value)),
                    Err(_) => break,
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(run_for).await;
    // Snapshot what was acknowledged *before* the kill: anything acked later raced the kill.
    let before_kill = acked.lock().unwrap().clone();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    before_kill
}

async fn assert_all_present(server: &Server, acked: &[(Vec<u8>, Vec<u8>)]) {
    let mut kv = server.kv().await.expect("client");
    // One prefix read per writer would be faster, but a point read per key is the plainest check.
    let all = kv
        .range(RangeRequest { key: b"w".to_vec(), range_end: b"x".to_vec(), ..Default::default() })
        .await
        .expect("range")
        .into_inner();
    let stored: std::collections::HashMap<Vec<u8>, Vec<u8>> =
        all.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let mut missing = Vec::new();
    for (key, value) in acked {
        match stored.get(key) {
            Some(v) if v == value => {}
            other => missing.push(format!(
                "{} -> {:?}",
                String::from_utf8_lossy(key),
                other.map(|v| String::from_utf8_lossy(v).into_owned())
            )),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
}

fn last_wal_segment(data_dir: &Path) -> PathBuf {
    let wal = data_dir.join("member").join("wal");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&wal)
        .expect("wal dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().map(|x| x == "wal").unwrap_or(false))
        .collect();
    segments.sort();
    segments.pop().expect("a wal segment")
}

async fn kill_and_recover(engine: &str, tear_tail: bool) {
    kill_and_recover_with(&[("KEEL_STORAGE_ENGINE", engine)], tear_tail).await;
}

async fn kill_and_recover_with(env: &[(&str, &str)], tear_tail: bool) {
    let engine = env.iter().find(|(k, _)| *k == "KEEL_STORAGE_ENGINE").map_or("redb", |(_, v)| *v);
    let mut server = Server::keel_with_env(env).await.expect("start keel");
    let mut total = Vec::new();
    for round in 0..rounds() {
        let acked = write_until_killed(&server, 8, Duration::from_millis(1500)).await;
        server.kill9().expect("kill -9");
        assert!(!acked.is_empty(), "round {round}: no write was acknowledged");
        if tear_tail {
            // A crash mid-append leaves a partial record: a length prefix promising more than follows.
            let segment = last_wal_segment(&server.data_dir());
            let mut f = std::fs::OpenOptions::new().append(true).open(&segment).expect("open segment");
            f.write_all(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]).expect("tear");
            f.sync_all().expect("sync");
        }
        server
            .restart()
            .await
            .unwrap_or_else(|e| panic!("{engine} round {round}: restart failed: {e}\n{}", server.log_tail(40)));
        if tear_tail {
            let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
            assert!(
                log.contains(TORN_TAIL_WARNING),
                "round {round}: the torn tail was not repaired:\n{}",
                server.log_tail(20)
            );
        }
        total.extend(acked);
        assert_all_present(&server, &total).await;
    }
    // And it keeps serving writes after recovery.
    let mut kv = server.kv().await.expect("client");
    kv.put(PutRequest { key: b"after".to_vec(), value: b"ok".to_vec(), ..Default::default() })
        .await
        .expect("put after recovery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill9_redb() {
    kill_and_recover("redb", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill9_sled() {
    kill_and_recover("sled", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_torn_wal_tail() {
    kill_and_recover("redb", true).await;
}

/// Raft snapshots every 200 entries: the log is purged behind them while writes go on, and a
/// restart must rebuild from the snapshot point plus what the WAL still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill9_across_log_purges() {
    kill_and_recover_with(&[("KEEL_STORAGE_ENGINE", "redb"), ("ETCD_SNAPSHOT_COUNT", "200")], false).await;
}
