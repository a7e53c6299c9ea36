//! Maintenance against etcd 3.5.16: the same requests on a fresh etcd and a fresh Keel must give
//! the same answers.
//! - `etcdctl endpoint hashkv`: the same history gives the same hash (our key rows are etcd's byte
//!   for byte), before and after a compaction, at a past revision, and etcd's errors out of range;
//! - alarms: `alarm list` / `alarm disarm` on a healthy member, and a member with a small
//!   `--quota-backend-bytes` filled until NOSPACE (error text, `alarm list`, Status errors, what is
//!   refused and what is still served, `endpoint health`, disarm), the alarm surviving a restart;
//! - `etcdctl defrag` output;
//! - Downgrade validate/enable/cancel (etcdctl 3.5 has no downgrade command: gRPC directly);
//! - `etcdctl check perf --load=s` (a minute per server: only with `KEEL_SOAK=1`).

use std::time::Duration;

use compat_tests::etcdctl::{cmd, cmd_args, run_case, run_cmd, Case, CmdOutput};
use compat_tests::server::{connect, Server, ServerKind};
use keel::proto::etcdserverpb::downgrade_request::DowngradeAction;
use keel::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel::proto::etcdserverpb::{DowngradeRequest, HashKvRequest, PutRequest, StatusRequest};
use tonic::transport::Channel;

/// Runs `case` on a fresh etcd and a fresh Keel (each started with `flags`) and requires the same
/// masked outputs; returns both servers for further checks.
async fn same_on_both(case: &Case, flags: &[&str]) -> (Server, Server) {
    let (etcd, keel) =
        tokio::join!(Server::start_with(ServerKind::Etcd, flags), Server::start_with(ServerKind::Keel, flags));
    let (etcd, keel) = (etcd.expect("start etcd"), keel.expect("start keel"));
    compare_case(case, &etcd, &keel).await;
    (etcd, keel)
}

async fn compare_case(case: &Case, etcd: &Server, keel: &Server) {
    let (want, got) = tokio::join!(run_case(etcd, case), run_case(keel, case));
    let (want, got) = (want.expect("etcdctl on etcd"), got.expect("etcdctl on keel"));
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(
            g,
            w,
            "case `{}`: command {} (etcdctl {}) differs (left keel, right etcd)\n--- keel log ---\n{}",
            case.name,
            i + 1,
            case.cmds[i].args.join(" "),
            keel.log_tail(15)
        );
    }
}

async fn maintenance(server: &Server) -> MaintenanceClient<Channel> {
    MaintenanceClient::new(connect(&server.endpoint()).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hashkv_equals_etcds_for_the_same_history() {
    let case = Case {
        name: "hashkv",
        cmds: vec![
            cmd("endpoint hashkv -w json"),
            cmd("put a 1"),                                                    // 2
            cmd("put b 2"),                                                    // 3
            cmd("put a 3"),                                                    // 4
            cmd("del b"),                                                      // 5
            cmd("put c 4"),                                                    // 6
            cmd("put a 5"),                                                    // 7
            cmd_args(&["put", "spaced key", "a value with\ttabs and \u{e9}"]), // 8
            cmd("endpoint hashkv -w json"),
            cmd("endpoint hashkv --rev=4 -w json"),
            cmd("compact 5 --physical"),
            cmd("endpoint hashkv -w json"),
            // etcd answers the hash its compaction stored (with the compaction before it).
            cmd("endpoint hashkv --rev=5 -w json"),
            cmd("compact 7 --physical"),
            cmd("endpoint hashkv --rev=7 -w json"),
            cmd("endpoint hashkv --rev=5 -w json"),
            cmd("endpoint hashkv --rev=6 -w json"),
            cmd("endpoint hashkv --rev=8"),
            cmd("endpoint hashkv --rev=3"),
            cmd("endpoint hashkv --rev=100"),
            cmd("put c 9"),
            cmd("endpoint hashkv"),
        ],
    };
    let (etcd, keel) = same_on_both(&case, &[]).await;
    // The gRPC answer too: hash, compact revision and the hashed revision field.
    for rev in [0, 5, 8] {
        let want = maintenance(&etcd).await.hash_kv(HashKvRequest { revision: rev }).await.expect("etcd").into_inner();
        let got = maintenance(&keel).await.hash_kv(HashKvRequest { revision: rev }).await.expect("keel").into_inner();
        assert_eq!(
            (got.hash, got.compact_revision, got.hash_revision, got.header.map(|h| h.revision)),
            (want.hash, want.compact_revision, want.hash_revision, want.header.map(|h| h.revision)),
            "HashKV at {rev} (left keel, right etcd)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hashkv_counts_every_row_when_compaction_keeps_nothing() {
    // etcd's quirks: a tombstone at the compaction revision never counts; with no key alive at
    // the hashed revision, a value the compaction kept counts though its key was deleted since.
    let case = Case {
        name: "hashkv-empty-keep",
        cmds: vec![
            cmd("put x 1"),
            cmd("del x"),
            cmd("compact 3 --physical"),
            cmd("endpoint hashkv -w json"),
            cmd("put y 1"), // 4
            cmd("endpoint hashkv -w json"),
            cmd("compact 4 --physical"),
            cmd("del y"), // 5
            cmd("endpoint hashkv -w json"),
            cmd("put z 1"),
            cmd("endpoint hashkv -w json"),
        ],
    };
    same_on_both(&case, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alarms_and_defrag_on_a_healthy_member() {
    let case = Case {
        name: "alarm-defrag",
        cmds: vec![
            cmd("alarm list"),
            cmd("alarm list -w json"),
            cmd("alarm disarm"),
            cmd("put k v"),
            cmd("defrag"),
            cmd("get k"),
            cmd("defrag -w json"),
            cmd("endpoint health"),
        ],
    };
    same_on_both(&case, &[]).await;
}

/// Put 20 KB values until the server refuses; returns how many were accepted and the refusal.
async fn fill_until_refused(server: &Server) -> (usize, tonic::Status) {
    let mut kv = server.kv().await.expect("kv client");
    let value = vec![b'x'; 20_000];
    for i in 0..400 {
        let put = PutRequest { key: format!("fill/{i:04}").into_bytes(), value: value.clone(), ..Default::default() };
        if let Err(status) = kv.put(put).await {
            return (i, status);
        }
    }
    panic!("{} accepted 400 puts of 20 KB under a 1 MB quota", server.kind());
}

/// The `errors` a Status reports.
async fn status_errors(server: &Server) -> Vec<String> {
    maintenance(server).await.status(StatusRequest {}).await.expect("status").into_inner().errors
}

/// Member ids differ between the servers; compare the alarm texts with them masked.
fn mask_members(texts: &[String], member: u64) -> Vec<String> {
    texts.iter().map(|t| t.replace(&member.to_string(), "<member>")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_quota_raises_nospace_as_etcd_does() {
    let quota = ["--quota-backend-bytes=1000000"];
    let (etcd, keel) =
        tokio::join!(Server::start_with(ServerKind::Etcd, &quota), Server::start_with(ServerKind::Keel, &quota));
    let (etcd, mut keel) = (etcd.expect("start etcd"), keel.expect("start keel"));
    let ((etcd_n, etcd_refusal), (keel_n, keel_refusal)) =
        tokio::join!(fill_until_refused(&etcd), fill_until_refused(&keel));
    eprintln!("accepted before NOSPACE: etcd {etcd_n}, keel {keel_n} (sizes differ by engine)");
    assert_eq!(
        (keel_refusal.code(), keel_refusal.message()),
        (etcd_refusal.code(), etcd_refusal.message()),
        "the refusal (left keel, right etcd)"
    );

    let member = |s: &Server| {
        let s = s.endpoint();
        async move {
            let mut m = MaintenanceClient::new(connect(&s).await.expect("connect"));
            m.status(StatusRequest {}).await.expect("status").into_inner().header.expect("header").member_id
        }
    };
    let (etcd_id, keel_id) = (member(&etcd).await, member(&keel).await);
    assert_eq!(
        mask_members(&status_errors(&keel).await, keel_id),
        mask_members(&status_errors(&etcd).await, etcd_id),
        "Status errors (left keel, right etcd)"
    );

    let while_full = Case {
        name: "nospace",
        cmds: vec![
            cmd("alarm list"),
            cmd("put x y"),
            cmd("get fill/0000 --keys-only"),
            cmd("del fill/0000"),
            cmd("lease grant 100"),
            cmd_args(&["txn"]).stdin("\n\nput t 1\n\n"),
            cmd_args(&["txn"]).stdin("\n\ndel fill/0001\n\n"),
            cmd("compact 3"),
            cmd("endpoint health"),
        ],
    };
    let masked = |outs: Vec<CmdOutput>, id: u64| -> Vec<CmdOutput> {
        outs.into_iter()
            .map(|mut o| {
                o.stdout = o.stdout.replace(&id.to_string(), "<member>");
                o.stderr = o.stderr.replace(&id.to_string(), "<member>");
                o
            })
            .collect()
    };
    let compare =
        |name: &'static str, want: Vec<CmdOutput>, got: Vec<CmdOutput>, cmds: &[compat_tests::etcdctl::Cmd]| {
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert_eq!(g, w, "case `{name}`: etcdctl {} differs (left keel, right etcd)", cmds[i].args.join(" "));
            }
        };
    let (want, got) = tokio::join!(run_case(&etcd, &while_full), run_case(&keel, &while_full));
    compare(
        while_full.name,
        masked(want.expect("etcd"), etcd_id),
        masked(got.expect("keel"), keel_id),
        &while_full.cmds,
    );

    // The alarm is replicated state: it survives a restart.
    keel.restart().await.expect("restart keel");
    let after_restart = run_cmd(&keel, &cmd("alarm list")).await.expect("alarm list");
    assert_eq!(after_restart.stdout.replace(&keel_id.to_string(), "<member>"), "memberID:<member> alarm:NOSPACE \n");

    // Disarming lists what was deactivated; the database is still too big, so the next put
    // raises the alarm again on both.
    let disarm =
        Case { name: "disarm", cmds: vec![cmd("alarm disarm"), cmd("alarm list"), cmd("put x y"), cmd("alarm list")] };
    let (want, got) = tokio::join!(run_case(&etcd, &disarm), run_case(&keel, &disarm));
    compare(disarm.name, masked(want.expect("etcd"), etcd_id), masked(got.expect("keel"), keel_id), &disarm.cmds);
}

/// A Downgrade answer reduced to what a client can compare: the version or the error.
async fn downgrade(server: &Server, action: i32, version: &str) -> Result<String, (tonic::Code, String)> {
    let req = DowngradeRequest { action, version: version.to_string() };
    match maintenance(server).await.downgrade(req).await {
        Ok(resp) => {
            let resp = resp.into_inner();
            Ok(format!("version {:?}, header revision {:?}", resp.version, resp.header.map(|h| h.revision)))
        }
        Err(status) => Err((status.code(), status.message().to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downgrade_answers_as_etcd() {
    let (etcd, keel) = tokio::join!(Server::start(ServerKind::Etcd), Server::start(ServerKind::Keel));
    let (etcd, keel) = (etcd.expect("start etcd"), keel.expect("start keel"));
    let validate = DowngradeAction::Validate as i32;
    let enable = DowngradeAction::Enable as i32;
    let cancel = DowngradeAction::Cancel as i32;
    let steps: &[(i32, &str)] = &[
        (validate, "3.4"),
        (validate, "3.4.0"),
        (validate, "3.4.7-rc.1"),
        (validate, "3.5"),
        (validate, "3.6.0"),
        (validate, "2.4"),
        (validate, "abc"),
        (validate, ""),
        (validate, "v3.4"),
        (cancel, ""),
        (enable, "3.3"),
        (enable, "bad"),
        (enable, "3.4"),
        (validate, "3.4"),
        (enable, "3.4"),
        (cancel, ""),
        (cancel, ""),
        (validate, "3.4"),
        (7, "3.4"),
    ];
    // A new etcd member starts at cluster version 3.0 and moves to 3.5 a moment after its first
    // election; until then VALIDATE fails. Keel is at 3.5 from the start: compare after that.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while downgrade(&etcd, validate, "3.4").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "etcd's cluster version never reached 3.5");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (action, version) in steps {
        // Together: ENABLE and CANCEL wait out etcd's 7 s request timeout on both.
        let (want, got) = tokio::join!(downgrade(&etcd, *action, version), downgrade(&keel, *action, version));
        assert_eq!(got, want, "Downgrade action {action} version {version:?} (left keel, right etcd)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_perf_small_load_passes_as_on_etcd() {
    if std::env::var("KEEL_SOAK").as_deref() != Ok("1") {
        eprintln!("skipped: `etcdctl check perf` runs a minute per server (set KEEL_SOAK=1)");
        return;
    }
    let (etcd, keel) = tokio::join!(Server::start(ServerKind::Etcd), Server::start(ServerKind::Keel));
    let (etcd, keel) = (etcd.expect("start etcd"), keel.expect("start keel"));
    // One at a time: they share two cores and the check measures throughput.
    let want = check_perf(&etcd).await;
    let got = check_perf(&keel).await;
    eprintln!("etcd:\n{}{}\nkeel:\n{}{}", want.stdout, want.stderr, got.stdout, got.stderr);
    assert_eq!(got.exit_code, want.exit_code, "exit code (left keel, right etcd)");
    // The progress bar shares a line with the first verdict; pick the verdicts out by pattern.
    let pattern = regex::Regex::new(r"(PASS|FAIL)(: (Throughput|Slowest request|Stddev))?").expect("pattern");
    let verdicts =
        |o: &CmdOutput| -> Vec<String> { pattern.find_iter(&o.stdout).map(|m| m.as_str().to_string()).collect() };
    assert_eq!(verdicts(&got), verdicts(&want), "check perf verdicts (left keel, right etcd)");
}

/// `etcdctl check perf --load=s`: about a minute, longer than the harness's etcdctl deadline.
async fn check_perf(server: &Server) -> CmdOutput {
    let run = tokio::process::Command::new(compat_tests::server::etcdctl_path())
        .arg(format!("--endpoints={}", server.client_addr()))
        .args(["check", "perf", "--load=s"])
        .env("ETCDCTL_API", "3")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run).await.expect("check perf finished").expect("etcdctl");
    CmdOutput {
        exit_code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What one defragmentation under write load looked like.
struct DefragRun {
    defrag: Duration,
    /// Latency of every put that was in flight while the defragmentation ran.
    during: Vec<Duration>,
    size_before: i64,
    size_after: i64,
}

/// Fill, delete and compact (so there is space to give back), then defragment while one client
/// keeps putting; every acknowledged put must be readable afterwards.
async fn defrag_under_load(server: &Server) -> DefragRun {
    use keel::proto::etcdserverpb::{
        request_op, CompactionRequest, DefragmentRequest, DeleteRangeRequest, RangeRequest, RequestOp, TxnRequest,
    };
    let mut kv = server.kv().await.expect("kv");
    for chunk in 0..12 {
        let ops = (0..100)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: format!("bulk/{chunk:02}/{i:03}").into_bytes(),
                    value: vec![b'b'; 2048],
                    ..Default::default()
                })),
            })
            .collect();
        kv.txn(TxnRequest { success: ops, ..Default::default() }).await.expect("bulk txn");
    }
    let deleted = kv
        .delete_range(DeleteRangeRequest { key: b"bulk/".to_vec(), range_end: b"bulk0".to_vec(), ..Default::default() })
        .await
        .expect("delete bulk")
        .into_inner();
    let rev = deleted.header.expect("header").revision;
    kv.compact(CompactionRequest { revision: rev, physical: true }).await.expect("compact");
    let size = |s: &Server| {
        let endpoint = s.endpoint();
        async move {
            let mut m = MaintenanceClient::new(connect(&endpoint).await.expect("connect"));
            m.status(StatusRequest {}).await.expect("status").into_inner().db_size
        }
    };
    // Both engines report a size that trails their writes a little.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let size_before = size(server).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (mut kv, stop) = (server.kv().await.expect("kv"), stop.clone());
        tokio::spawn(async move {
            let mut puts = Vec::new();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let started = std::time::Instant::now();
                let put = PutRequest {
                    key: format!("live/{n:06}").into_bytes(),
                    value: n.to_be_bytes().to_vec(),
                    ..Default::default()
                };
                kv.put(put).await.expect("put during defrag");
                puts.push((started, started.elapsed()));
                n += 1;
            }
            puts
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let defrag_start = std::time::Instant::now();
    maintenance(server).await.defragment(DefragmentRequest {}).await.expect("defragment");
    let defrag = defrag_start.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let puts = writer.await.expect("writer");

    let got = kv
        .range(RangeRequest { key: b"live/".to_vec(), range_end: b"live0".to_vec(), ..Default::default() })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(got.kvs.len(), puts.len(), "{}: every acknowledged put is there", server.kind());
    for (n, kv) in got.kvs.iter().enumerate() {
        assert_eq!(kv.value, (n as u32).to_be_bytes().to_vec(), "{}: live/{n:06}", server.kind());
    }
    let during = puts
        .iter()
        .filter(|(started, took)| *started + *took >= defrag_start && *started <= defrag_start + defrag)
        .map(|(_, took)| *took)
        .collect();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    DefragRun { defrag, during, size_before, size_after: size(server).await }
}

fn describe(kind: &str, run: &DefragRun) -> String {
    let mut during = run.during.clone();
    during.sort();
    let max = during.last().copied().unwrap_or_default();
    let p50 = during.get(during.len() / 2).copied().unwrap_or_default();
    format!(
        "{kind}: defrag took {:?}; {} puts overlapped it, p50 {p50:?}, max {max:?}; db size {} -> {} bytes",
        run.defrag,
        during.len(),
        run.size_before,
        run.size_after
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn defragment_under_write_load_loses_nothing_and_gives_space_back() {
    // One server at a time: they share two cores and the numbers compare their pauses.
    let etcd = Server::start(ServerKind::Etcd).await.expect("start etcd");
    let etcd_run = defrag_under_load(&etcd).await;
    drop(etcd);
    let keel = Server::start(ServerKind::Keel).await.expect("start keel");
    let keel_run = defrag_under_load(&keel).await;
    eprintln!("{}\n{}", describe("etcd", &etcd_run), describe("keel", &keel_run));
    assert!(
        keel_run.size_after < keel_run.size_before,
        "keel's database did not shrink: {} -> {}",
        keel_run.size_before,
        keel_run.size_after
    );
}

/// An Alarm answer reduced to what compares across servers: (member is self, alarm type) pairs.
async fn alarm(server: &Server, me: u64, action: i32, member: u64, alarm: i32) -> Result<Vec<(bool, i32)>, String> {
    use keel::proto::etcdserverpb::AlarmRequest;
    let req = AlarmRequest { action, member_id: member, alarm };
    match maintenance(server).await.alarm(req).await {
        Ok(resp) => {
            // etcd lists alarms by walking a Go map, so their order is random there: compare sets.
            let mut alarms: Vec<(bool, i32)> =
                resp.into_inner().alarms.iter().map(|a| (a.member_id == me, a.alarm)).collect();
            alarms.sort();
            Ok(alarms)
        }
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// What each kind of request answers while the alarms stand, as (operation, outcome) pairs.
async fn writes_under_alarm(server: &Server) -> Vec<(&'static str, String)> {
    use keel::proto::etcdserverpb::{
        request_op, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, RangeRequest,
        RequestOp, TxnRequest,
    };
    fn outcome<T>(r: Result<tonic::Response<T>, tonic::Status>) -> String {
        match r {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        }
    }
    let mut kv = server.kv().await.expect("kv");
    let mut lease = server.lease().await.expect("lease");
    let put = PutRequest { key: b"p".to_vec(), value: b"v".to_vec(), ..Default::default() };
    let del_op = RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: b"zz".to_vec(),
            ..Default::default()
        })),
    };
    let put_op = RequestOp { request: Some(request_op::Request::RequestPut(put.clone())) };
    vec![
        ("put", outcome(kv.put(put.clone()).await)),
        ("range", outcome(kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await)),
        ("delete", outcome(kv.delete_range(DeleteRangeRequest { key: b"k".to_vec(), ..Default::default() }).await)),
        ("txn without puts", outcome(kv.txn(TxnRequest { success: vec![del_op], ..Default::default() }).await)),
        ("txn with a put", outcome(kv.txn(TxnRequest { failure: vec![put_op], ..Default::default() }).await)),
        ("compact", outcome(kv.compact(CompactionRequest { revision: 2, physical: false }).await)),
        ("lease grant", outcome(lease.lease_grant(LeaseGrantRequest { id: 77, ttl: 60 }).await)),
        ("lease revoke", outcome(lease.lease_revoke(LeaseRevokeRequest { id: 78 }).await)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alarm_rpc_and_gated_writes_match_etcd() {
    use keel::proto::etcdserverpb::alarm_request::AlarmAction;
    use keel::proto::etcdserverpb::{AlarmType, LeaseGrantRequest};
    let (etcd, keel) = tokio::join!(Server::start(ServerKind::Etcd), Server::start(ServerKind::Keel));
    let (etcd, keel) = (etcd.expect("start etcd"), keel.expect("start keel"));
    let (get, on, off) = (AlarmAction::Get as i32, AlarmAction::Activate as i32, AlarmAction::Deactivate as i32);
    let (none, nospace, corrupt) = (AlarmType::None as i32, AlarmType::Nospace as i32, AlarmType::Corrupt as i32);
    for server in [&etcd, &keel] {
        let mut kv = server.kv().await.expect("kv");
        kv.put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.expect("put");
        let mut lease = server.lease().await.expect("lease");
        lease.lease_grant(LeaseGrantRequest { id: 78, ttl: 60 }).await.expect("grant");
    }
    let id = |s: &Server| {
        let endpoint = s.endpoint();
        async move {
            let mut m = MaintenanceClient::new(connect(&endpoint).await.expect("connect"));
            m.status(StatusRequest {}).await.expect("status").into_inner().header.expect("header").member_id
        }
    };
    let (etcd_id, keel_id) = (id(&etcd).await, id(&keel).await);
    // (action, member: true = this member, false = member 42, alarm); then which writes pass.
    let steps: &[(i32, bool, i32)] = &[
        (get, true, none),
        (on, true, none),
        (off, true, nospace),
        (on, true, nospace),
        (on, true, nospace),
        (on, false, corrupt),
        (get, true, none),
        (get, true, corrupt),
        (get, true, nospace),
    ];
    for &(action, mine, kind) in steps {
        let want = alarm(&etcd, etcd_id, action, if mine { etcd_id } else { 42 }, kind).await;
        let got = alarm(&keel, keel_id, action, if mine { keel_id } else { 42 }, kind).await;
        assert_eq!(got, want, "Alarm action {action} alarm {kind} (left keel, right etcd)");
    }
    let (want, got) = (writes_under_alarm(&etcd).await, writes_under_alarm(&keel).await);
    assert_eq!(got, want, "writes under NOSPACE + CORRUPT (left keel, right etcd)");
    for (action, mine, kind) in [(off, false, corrupt), (get, true, none)] {
        let want = alarm(&etcd, etcd_id, action, if mine { etcd_id } else { 42 }, kind).await;
        let got = alarm(&keel, keel_id, action, if mine { keel_id } else { 42 }, kind).await;
        assert_eq!(got, want, "Alarm action {action} alarm {kind} (left keel, right etcd)");
    }
    let (want, got) = (writes_under_alarm(&etcd).await, writes_under_alarm(&keel).await);
    assert_eq!(got, want, "writes under NOSPACE (left keel, right etcd)");
    alarm(&etcd, etcd_id, off, etcd_id, nospace).await.expect("disarm etcd");
    alarm(&keel, keel_id, off, keel_id, nospace).await.expect("disarm keel");
    let (want, got) = (writes_under_alarm(&etcd).await, writes_under_alarm(&keel).await);
    assert_eq!(got, want, "writes after disarming (left keel, right etcd)");
    // etcd keeps one applier: CORRUPT then NOSPACE leaves only the capped one in place.
    for (action, mine, kind) in [(on, false, corrupt), (on, true, nospace), (get, true, none)] {
        let want = alarm(&etcd, etcd_id, action, if mine { etcd_id } else { 42 }, kind).await;
        let got = alarm(&keel, keel_id, action, if mine { keel_id } else { 42 }, kind).await;
        assert_eq!(got, want, "Alarm action {action} alarm {kind} (left keel, right etcd)");
    }
    let (want, got) = (writes_under_alarm(&etcd).await, writes_under_alarm(&keel).await);
    assert_eq!(got, want, "writes after CORRUPT then NOSPACE (left keel, right etcd)");
}
