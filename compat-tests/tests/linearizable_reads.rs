//! Linearizable reads (the default) never miss a write that was acknowledged before the read
//! began, even when many reads share one read-index round. Writers publish the revision of each
//! acknowledged put; every reader notes the highest published revision before it reads and checks
//! that the revision its read reports is at least that.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use compat_tests::server::Server;
use keel::proto::etcdserverpb::{PutRequest, RangeRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_every_write_acknowledged_before_them() {
    let server = Server::keel().await.expect("start keel");
    let acked = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut kv = server.kv().await.expect("client");
        let (acked, stop) = (acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let put = PutRequest {
                    key: format!("k{w}").into_bytes(),
                    value: n.to_string().into_bytes(),
                    ..Default::default()
                };
                let resp = kv.put(put).await.expect("put").into_inner();
                acked.fetch_max(resp.header.expect("header").revision, Ordering::SeqCst);
                n += 1;
            }
            0u64
        }));
    }
    for _ in 0..16 {
        let mut kv = server.kv().await.expect("client");
        let (acked, stop) = (acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let floor = acked.load(Ordering::SeqCst);
                let req = RangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), ..Default::default() };
                let resp = kv.range(req).await.expect("range").into_inner();
                let seen = resp.header.expect("header").revision;
                assert!(seen >= floor, "a read that began after revision {floor} was acknowledged saw only {seen}");
                let newest = resp.kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0);
                assert!(newest <= seen, "a key at revision {newest} in a read reporting revision {seen}");
                reads += 1;
            }
            reads
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for t in tasks {
        reads += t.await.expect("task");
    }
    assert!(reads > 100, "only {reads} reads ran");
    assert!(acked.load(Ordering::SeqCst) > 100, "too few writes ran");
}
