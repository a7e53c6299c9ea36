//! `--auto-compaction-mode periodic` with a short retention compacts history on Keel as it does on
//! etcd: after the retention has passed, the oldest revisions read as compacted on both.

use std::time::Duration;

use compat_tests::server::{Server, ServerKind};
use keel::proto::etcdserverpb::{PutRequest, RangeRequest};

async fn compacted_after_retention(kind: ServerKind) -> (tonic::Code, String) {
    let env = [("ETCD_AUTO_COMPACTION_MODE", "periodic"), ("ETCD_AUTO_COMPACTION_RETENTION", "1s")];
    let server = Server::start_with_env(kind, &env).await.expect("start");
    let mut kv = server.kv().await.expect("client");
    for i in 0..10 {
        let put = PutRequest { key: format!("k{i}").into_bytes(), value: b"v".to_vec(), ..Default::default() };
        kv.put(put).await.expect("put");
    }
    // The first compaction comes one retention after start, to a revision sampled a retention
    // earlier; a few retentions later revision 2 is certainly gone.
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let old = RangeRequest { key: b"k0".to_vec(), revision: 2, ..Default::default() };
        if let Err(status) = kv.range(old).await {
            return (status.code(), status.message().to_string());
        }
    }
    panic!("{kind}: revision 2 still readable 10 s after start with a 1 s retention");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn periodic_auto_compaction_matches_etcd() {
    let (etcd, keel) =
        tokio::join!(compacted_after_retention(ServerKind::Etcd), compacted_after_retention(ServerKind::Keel));
    assert_eq!(keel, etcd);
    assert_eq!(etcd.1, "etcdserver: mvcc: required revision has been compacted");
}
