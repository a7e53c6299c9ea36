//! Shared by the snapshot tests (`tests/snapshot.rs`, `tests/encrypted_backup.rs`): one scripted
//! history with leases, many versions, a txn, deletes, a value spanning overflow pages and a
//! compaction; running etcdctl/etcdutl/keel snapshot commands; starting a server on a restored
//! data directory; and comparing what two servers answer at every retained revision.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::server::{etcd_bin_dir, etcdctl_path, HarnessError, Server, ServerKind, MEMBER_NAME};
use keel::proto::etcdserverpb::{
    request_op, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseLeasesRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// A lease the history grants and puts a key on; it must survive the snapshot both ways.
pub const LEASE_ID: i64 = 0x7e57;

/// The history, identical on both servers; returns the revision it compacted at.
pub async fn script(server: &Server) -> i64 {
    let mut kv = server.kv().await.expect("client");
    let put = |key: String, value: Vec<u8>| PutRequest { key: key.into_bytes(), value, ..Default::default() };
    let mut lease = server.lease().await.expect("lease client");
    lease.lease_grant(LeaseGrantRequest { id: LEASE_ID, ttl: 3600 }).await.expect("grant");
    kv.put(PutRequest { lease: LEASE_ID, ..put("leased".into(), b"v".to_vec()) }).await.expect("put on lease");
    for round in 0..3 {
        for i in 0..40 {
            kv.put(put(format!("key/{i:02}"), vec![b'a' + round; 300])).await.expect("put");
        }
    }
    let op =
        |key: &str| RequestOp { request: Some(request_op::Request::RequestPut(put(key.to_string(), b"txn".to_vec()))) };
    let del = RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: b"key/05".to_vec(),
            ..Default::default()
        })),
    };
    let txn = TxnRequest { success: vec![op("t/1"), op("t/2"), del, op("t/3")], ..Default::default() };
    kv.txn(txn).await.expect("txn");
    kv.put(put("big".into(), (0..200_000u32).map(|i| (i % 251) as u8).collect())).await.expect("big put");
    let range_delete =
        DeleteRangeRequest { key: b"key/1".to_vec(), range_end: b"key/2".to_vec(), ..Default::default() };
    kv.delete_range(range_delete).await.expect("delete range");
    let compact_at = kv.range(RangeRequest { key: b"x".to_vec(), ..Default::default() }).await.expect("rev");
    let compact_at = compact_at.into_inner().header.expect("header").revision - 20;
    kv.compact(CompactionRequest { revision: compact_at, physical: true }).await.expect("compact");
    for i in 10..14 {
        kv.put(put(format!("key/{i:02}"), b"again".to_vec())).await.expect("put after compact");
    }
    kv.delete_range(DeleteRangeRequest { key: b"t/2".to_vec(), ..Default::default() }).await.expect("delete");
    compact_at
}

pub fn run(program: &Path, args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| HarnessError::Other(format!("running {}: {e}", program.display())))?;
    if !out.status.success() {
        return Err(HarnessError::Other(format!(
            "{} {args:?} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn snapshot_save(server: &Server, file: &Path) {
    let file = file.to_str().expect("utf-8 path");
    run(&etcdctl_path(), &["--endpoints", &server.client_addr(), "snapshot", "save", file])
        .unwrap_or_else(|e| panic!("etcdctl snapshot save from {}: {e}", server.kind()));
}

pub fn etcdutl_status(file: &Path) -> serde_json::Value {
    let out = run(&etcd_bin_dir().join("etcdutl"), &["snapshot", "status", "-w", "json", file.to_str().unwrap()])
        .expect("etcdutl snapshot status");
    serde_json::from_str(&out).expect("status json")
}

/// The restore flags both tools take, for the harness's member name and the given peer URL.
pub fn restore_args<'a>(file: &'a str, dir: &'a str, peer: &'a str, cluster: &'a str) -> Vec<&'a str> {
    vec![
        "snapshot",
        "restore",
        file,
        "--data-dir",
        dir,
        "--name",
        MEMBER_NAME,
        "--initial-cluster",
        cluster,
        "--initial-advertise-peer-urls",
        peer,
    ]
}

pub async fn start_restored(kind: ServerKind, tool: PathBuf, file: &Path, extra: &[&str]) -> Server {
    let file = file.to_str().expect("utf-8 path").to_string();
    let mut prepare = |dir: &Path, peer: &str| {
        let dir = dir.to_str().expect("utf-8 path");
        let cluster = format!("{MEMBER_NAME}={peer}");
        let mut args = restore_args(&file, dir, peer, &cluster);
        args.extend_from_slice(extra);
        run(&tool, &args).map(|_| ())
    };
    Server::start_prepared(kind, &[], &mut prepare).await.unwrap_or_else(|e| panic!("start restored {kind}: {e}"))
}

/// What a client sees of a Range over every key at `rev`.
pub async fn range_at(server: &Server, rev: i64) -> RangeSeen {
    let mut kv = server.kv().await.map_err(|e| e.to_string())?;
    let req = RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() };
    match kv.range(req).await {
        Ok(resp) => {
            let r = resp.into_inner();
            Ok((r.header.map(|h| h.revision).unwrap_or(-1), r.count, r.more, r.kvs))
        }
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

pub type RangeSeen = Result<(i64, i64, bool, Vec<keel::proto::mvccpb::KeyValue>), String>;

/// A Range answer without the values' bytes, for failure messages.
pub fn brief(r: &RangeSeen) -> String {
    match r {
        Err(e) => e.clone(),
        Ok((rev, count, more, kvs)) => {
            let kvs: Vec<String> = kvs
                .iter()
                .map(|kv| {
                    let (key, c, m, v, n, l) = (
                        String::from_utf8_lossy(&kv.key),
                        kv.create_revision,
                        kv.mod_revision,
                        kv.version,
                        kv.value.len(),
                        kv.lease,
                    );
                    format!("{key}@c{c}/m{m}/v{v}/{n}B/l{l}")
                })
                .collect();
            format!("revision {rev} count {count} more {more} [{}]", kvs.join(" "))
        }
    }
}

/// `restored` answers like `source` at every retained revision, one below the compaction, and the
/// newest.
pub async fn assert_same_history(source: &Server, restored: &Server, compacted: i64, what: &str) {
    let current = range_at(source, 0).await.expect("range").0;
    assert!(current - compacted > 20, "{what}: the history keeps {} revisions", current - compacted);
    let below = range_at(source, compacted - 1).await;
    assert!(below.as_ref().is_err_and(|e| e.contains("compacted")), "{what}: below the compaction: {below:?}");
    for rev in [0, compacted - 1].into_iter().chain(compacted..=current) {
        let (a, b) = (range_at(source, rev).await, range_at(restored, rev).await);
        if a != b {
            panic!("{what}: Range at revision {rev} differs:\n source: {}\n restored: {}", brief(&a), brief(&b));
        }
    }
}

/// Both servers take the next write at the same revision, with the same version for a key they
/// both hold.
pub async fn assert_same_next_write(a: &Server, b: &Server, what: &str) {
    let put = PutRequest { key: b"key/00".to_vec(), value: b"v".to_vec(), prev_kv: true, ..Default::default() };
    let ra = a.kv().await.unwrap().put(put.clone()).await.expect("put").into_inner();
    let rb = b.kv().await.unwrap().put(put).await.expect("put").into_inner();
    assert_eq!(ra.header.unwrap().revision, rb.header.unwrap().revision, "{what}: the next write's revision");
    assert_eq!(ra.prev_kv, rb.prev_kv, "{what}: prev_kv of the next write");
    assert_eq!(range_at(a, 0).await, range_at(b, 0).await, "{what}: state after the next write");
}

/// The leases a server knows: ids, and the scripted lease's granted TTL and attached keys.
pub async fn leases_seen(server: &Server) -> (Vec<i64>, i64, Vec<Vec<u8>>) {
    let mut lease = server.lease().await.expect("lease client");
    let leases = lease.lease_leases(LeaseLeasesRequest {}).await.expect("leases").into_inner();
    let ids = leases.leases.iter().map(|l| l.id).collect();
    let req = LeaseTimeToLiveRequest { id: LEASE_ID, keys: true };
    let ttl = lease.lease_time_to_live(req).await.expect("timetolive").into_inner();
    (ids, ttl.granted_ttl, ttl.keys)
}

/// The restored server knows the same leases, with the same granted TTL and attached keys.
pub async fn assert_same_leases(source: &Server, restored: &Server, what: &str) {
    let (a, b) = (leases_seen(source).await, leases_seen(restored).await);
    assert_eq!(a, b, "{what}: leases (ids, granted TTL, keys)");
    assert_eq!(a.0, vec![LEASE_ID], "{what}: the scripted lease");
}
