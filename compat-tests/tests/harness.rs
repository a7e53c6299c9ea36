//! The harness's own process management, checked on the reference etcd: start, pid, restart on the
//! same data dir and ports, kill -9, and cleanup on drop.

use compat_tests::Server;
use keel::proto::etcdserverpb::{PutRequest, RangeRequest};

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
}

#[tokio::test]
async fn etcd_lifecycle() {
    let mut server = Server::etcd().await.unwrap();
    let endpoint = server.endpoint();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    let pid = server.pid().unwrap();
    assert!(alive(pid));

    let mut kv = server.kv().await.unwrap();
    let put = PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() };
    let rev = kv.put(put).await.unwrap().into_inner().header.unwrap().revision;
    assert_eq!(rev, 2);

    server.restart().await.unwrap();
    assert_eq!(server.endpoint(), endpoint, "restart keeps the ports");
    let pid2 = server.pid().unwrap();
    assert_ne!(pid, pid2);
    assert!(!alive(pid));

    server.kill9().unwrap();
    assert!(server.pid().is_none());
    assert!(!alive(pid2));
    server.restart().await.unwrap();

    let mut kv = server.kv().await.unwrap();
    let got = kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(got.kvs.len(), 1, "data survives stop and kill -9");
    assert_eq!(got.header.unwrap().revision, 2);

    let pid3 = server.pid().unwrap();
    let log = server.log_path();
    assert!(log.exists());
    drop(server);
    assert!(!alive(pid3), "drop kills the child");
    assert!(!log.exists(), "drop removes the temp dir");
}
