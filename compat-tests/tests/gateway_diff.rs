//! The client port's HTTP side against real etcd 3.5.16: the same JSON gateway requests (KV, lease,
//! cluster, maintenance, watch and keep-alive streams, errors), `/health`, `/version`, the probes and
//! `/metrics`, on a fresh etcd and a fresh Keel, answers compared as JSON after masking what differs
//! between two etcd members (ids, terms, raft indexes, sizes, URLs).

use compat_tests::http::{self, Reply};
use compat_tests::{HarnessError, Server, ServerKind};
use serde_json::Value;

/// Fields that legitimately differ between two single-member clusters.
const MEMBER_SPECIFIC: &[&str] = &[
    "cluster_id",
    "member_id",
    "raft_term",
    "leader",
    "raftIndex",
    "raftTerm",
    "raftAppliedIndex",
    "dbSize",
    "dbSizeInUse",
    "peerURLs",
    "clientURLs",
];

/// `value` with every field named in `MEMBER_SPECIFIC` or `extra` replaced by a marker, and member
/// ids (the `ID` of a `members` entry) too.
fn masked(value: &Value, extra: &[&str]) -> Value {
    fn walk(v: &mut Value, extra: &[&str], in_members: bool) {
        match v {
            Value::Object(map) => {
                for (k, field) in map.iter_mut() {
                    let member_id = in_members && k == "ID";
                    if MEMBER_SPECIFIC.contains(&k.as_str()) || extra.contains(&k.as_str()) || member_id {
                        *field = Value::String("<masked>".into());
                    } else {
                        walk(field, extra, k == "members");
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, extra, in_members)),
            _ => {}
        }
    }
    let mut v = value.clone();
    walk(&mut v, extra, false);
    v
}

/// How a step's answers are compared.
#[derive(Clone, Copy)]
enum Compare {
    /// Status and the whole masked JSON body.
    Json(&'static [&'static str]),
    /// Status and the error's `code` only: the message is Go's JSON decoder's own text.
    StatusAndCode,
}

struct Step {
    method: &'static str,
    path: &'static str,
    body: &'static str,
    compare: Compare,
}

const fn post(path: &'static str, body: &'static str) -> Step {
    Step { method: "POST", path, body, compare: Compare::Json(&[]) }
}

/// base64: foo=Zm9v bar=YmFy baz=YmF6 a=YQ== b=Yg== fop=Zm9w w=dw== 1=MQ==
const STEPS: &[Step] = &[
    post("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
    post("/v3/kv/put", r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#),
    post("/v3/kv/range", r#"{"key":"Zm9v"}"#),
    // Numbers or strings for 64-bit integers, enum names, camelCase names, unknown fields ignored.
    post(
        "/v3/kv/range",
        r#"{"key":"Zm9v","range_end":"Zm9w","sortOrder":"DESCEND","sort_target":"MOD","limit":1,"nope":1}"#,
    ),
    post("/v3/kv/range", r#"{"key":"Zm9v","sort_order":2,"keys_only":true,"revision":"2"}"#),
    post("/v3/kv/range", r#"{"key":""}"#),
    Step { method: "POST", path: "/v3/kv/range", body: "{bad", compare: Compare::StatusAndCode },
    Step { method: "POST", path: "/v3/kv/put", body: r#"{"key":"Zm9v","value":5}"#, compare: Compare::StatusAndCode },
    post(
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9v","target":"VERSION","result":"EQUAL","version":"2"}],
            "success":[{"request_range":{"key":"Zm9v"}},{"request_put":{"key":"YQ==","value":"Yg=="}}],
            "failure":[{"request_delete_range":{"key":"Zm9v"}}]}"#,
    ),
    post(
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9v","target":"VALUE","result":"EQUAL","value":"eA=="}],"failure":[{"request_range":{"key":"YQ=="}}]}"#,
    ),
    post("/v3/kv/deleterange", r#"{"key":"YQ==","prev_kv":true}"#),
    post("/v3/kv/deleterange", r#"{"key":"YQ=="}"#),
    post("/v3/kv/compaction", r#"{"revision":"3"}"#),
    post("/v3/kv/compaction", r#"{"revision":"3"}"#),
    post("/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#),
    post("/v3/kv/range", r#"{"key":"Zm9v","revision":"99"}"#),
    post("/v3/lease/grant", r#"{"TTL":"60","ID":"12345"}"#),
    post("/v3/lease/grant", r#"{"TTL":60,"ID":12345}"#),
    post("/v3/kv/put", r#"{"key":"dw==","value":"MQ==","lease":"12345"}"#),
    // The remaining TTL may already be 59 on one and 60 on the other.
    Step {
        method: "POST",
        path: "/v3/lease/timetolive",
        body: r#"{"ID":12345,"keys":true}"#,
        compare: Compare::Json(&["TTL"]),
    },
    Step { method: "POST", path: "/v3/kv/lease/timetolive", body: r#"{"ID":12345}"#, compare: Compare::Json(&["TTL"]) },
    post("/v3/lease/leases", ""),
    post("/v3/kv/lease/leases", "{}"),
    post("/v3/lease/revoke", r#"{"ID":12345}"#),
    post("/v3/kv/lease/revoke", r#"{"ID":12345}"#),
    post("/v3/lease/timetolive", r#"{"ID":12345}"#),
    post("/v3/cluster/member/list", "{}"),
    post("/v3/maintenance/status", "{}"),
    post("/v3/maintenance/alarm", "{}"),
    // etcd 3.5 still serves the 3.4 prefix.
    post("/v3beta/kv/range", r#"{"key":"Zm9v"}"#),
    post("/v3/kv/nothing", "{}"),
    Step { method: "GET", path: "/v3/kv/range", body: "", compare: Compare::Json(&[]) },
    Step { method: "GET", path: "/version", body: "", compare: Compare::Json(&[]) },
    Step { method: "GET", path: "/health", body: "", compare: Compare::Json(&[]) },
    Step { method: "GET", path: "/health?serializable=true", body: "", compare: Compare::Json(&[]) },
];

async fn start_pair() -> (Server, Server) {
    let (etcd, keel) = tokio::join!(Server::etcd(), Server::start(ServerKind::from_env_or(ServerKind::Keel)));
    (etcd.expect("etcd starts"), keel.expect("keel starts"))
}

async fn answer(server: &Server, step: &Step) -> Reply {
    http::call(&server.client_addr(), step.method, step.path, &[], step.body.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{} {} on {}: {e}", step.method, step.path, server.kind()))
}

fn comparable(reply: &Reply, compare: Compare) -> (u16, Value) {
    let json = reply.json().unwrap_or_else(|e| panic!("{e}"));
    match compare {
        Compare::Json(extra) => (reply.status, masked(&json, extra)),
        Compare::StatusAndCode => (reply.status, json.get("code").cloned().unwrap_or(Value::Null)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_match_etcd() {
    let (etcd, keel) = start_pair().await;
    let mut differences = Vec::new();
    for (i, step) in STEPS.iter().enumerate() {
        let want = comparable(&answer(&etcd, step).await, step.compare);
        let got = comparable(&answer(&keel, step).await, step.compare);
        if want != got {
            differences.push(format!(
                "step {i}: {} {} {}\n  etcd: {} {}\n  keel: {} {}",
                step.method, step.path, step.body, want.0, want.1, got.0, got.1
            ));
        }
    }
    assert!(differences.is_empty(), "gateway answers differ from etcd's:\n{}", differences.join("\n"));
}

/// Streams answer one `{"result":...}` line per message; a watch reports writes made after it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_streams_match_etcd() {
    let (etcd, keel) = start_pair().await;
    let mut seen = Vec::new();
    for server in [&etcd, &keel] {
        let addr = server.client_addr();
        http::post(&addr, "/v3/kv/put", r#"{"key":"dw==","value":"MA=="}"#).await.unwrap();
        let put_after_create = || async {
            let reply = http::post(&addr, "/v3/kv/put", r#"{"key":"dw==","value":"MQ=="}"#).await?;
            match reply.status {
                200 => Ok(()),
                other => Err(HarnessError::Other(format!("put answered {other}: {}", reply.text()))),
            }
        };
        // Watching from now: created, then the event of a put made after it.
        let from_now = r#"{"create_request":{"key":"dw==","prev_kv":true}}"#;
        let (status, live) = http::stream_lines(&addr, "/v3/watch", from_now, 2, put_after_create).await.unwrap();
        // Watching from revision 2: created, then both past events in one catch-up message.
        let from_past = r#"{"create_request":{"key":"dw==","start_revision":"2"}}"#;
        let nothing = || async { Ok(()) };
        let (_, past) = http::stream_lines(&addr, "/v3/watch", from_past, 2, nothing).await.unwrap();
        http::post(&addr, "/v3/lease/grant", r#"{"TTL":60,"ID":777}"#).await.unwrap();
        let (ka_status, keep_alive) =
            http::stream_lines(&addr, "/v3/lease/keepalive", r#"{"ID":777}"#, 1, || async { Ok(()) }).await.unwrap();
        let (unknown_status, unknown) =
            http::stream_lines(&addr, "/v3/lease/keepalive", r#"{"ID":1}"#, 1, || async { Ok(()) }).await.unwrap();
        let all_masked = |lines: &[Value]| lines.iter().map(|l| masked(l, &[])).collect::<Vec<_>>();
        seen.push((
            status,
            all_masked(&live),
            all_masked(&past),
            (ka_status, masked(&keep_alive[0], &[])),
            (unknown_status, masked(&unknown[0], &[])),
        ));
    }
    let (etcd_seen, keel_seen) = (&seen[0], &seen[1]);
    assert_eq!(etcd_seen.0, 200);
    assert_eq!(etcd_seen, keel_seen, "streams differ:\netcd: {etcd_seen:#?}\nkeel: {keel_seen:#?}");
}

/// The metric names dashboards and alerts use, on both servers.
const METRIC_NAMES: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_failed_total",
    "etcd_server_version{server_version=\"3.5.16\"}",
    "etcd_server_is_learner",
    "etcd_server_health_success",
    "etcd_server_health_failures",
    "etcd_cluster_version{cluster_version=\"3.5\"}",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "etcd_debugging_mvcc_keys_total",
    "etcd_debugging_mvcc_watcher_total",
    "etcd_debugging_mvcc_watch_stream_total",
    "etcd_debugging_mvcc_current_revision",
    "etcd_debugging_mvcc_compact_revision",
    "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"}",
    "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"}",
    "etcd_disk_wal_fsync_duration_seconds_count",
    "etcd_disk_backend_commit_duration_seconds_bucket{le=\"0.001\"}",
    "etcd_disk_backend_commit_duration_seconds_sum",
    "grpc_server_started_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}",
    "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}",
    "grpc_server_handled_total{grpc_code=\"InvalidArgument\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}",
    "process_resident_memory_bytes",
    "process_open_fds",
    "os_fd_limit",
    "os_fd_used",
    "etcd_server_quota_backend_bytes",
    "etcd_server_slow_apply_total",
    "etcd_server_read_indexes_failed_total",
    "etcd_server_slow_read_indexes_total",
    "etcd_server_heartbeat_send_failures_total",
    "etcd_server_learner_promote_successes",
    "etcd_server_snapshot_apply_in_progress_total",
    "etcd_server_client_requests_total{client_api_version=\"unknown\",type=\"unary\"}",
    "etcd_network_client_grpc_received_bytes_total",
    "etcd_network_client_grpc_sent_bytes_total",
    "grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}",
    "grpc_server_msg_sent_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}",
    "etcd_mvcc_range_total",
    "etcd_mvcc_txn_total",
    "etcd_mvcc_db_open_read_transactions",
    "etcd_mvcc_hash_duration_seconds_count",
    "etcd_mvcc_hash_rev_duration_seconds_bucket{le=\"163.84\"}",
    "etcd_debugging_mvcc_range_total",
    "etcd_debugging_mvcc_events_total",
    "etcd_debugging_mvcc_pending_events_total",
    "etcd_debugging_mvcc_slow_watcher_total",
    "etcd_debugging_mvcc_total_put_size_in_bytes",
    "etcd_debugging_mvcc_db_compaction_keys_total",
    "etcd_debugging_mvcc_db_compaction_last",
    "etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds_bucket{le=\"4096\"}",
    "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_bucket{le=\"819200\"}",
    "etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds_bucket{le=\"0.5\"}",
    "etcd_disk_wal_write_bytes_total",
    "etcd_disk_wal_write_duration_seconds_bucket{le=\"8.192\"}",
    "etcd_disk_backend_defrag_duration_seconds_bucket{le=\"409.6\"}",
    "etcd_disk_backend_snapshot_duration_seconds_bucket{le=\"655.36\"}",
    "etcd_disk_defrag_inflight",
    "etcd_snap_db_fsync_duration_seconds_count",
    "etcd_snap_db_save_total_duration_seconds_bucket{le=\"51.2\"}",
    "etcd_snap_fsync_duration_seconds_count",
    "etcd_debugging_lease_granted_total",
    "etcd_debugging_lease_renewed_total",
    "etcd_debugging_lease_revoked_total",
    "etcd_debugging_lease_ttl_total_bucket{le=\"8.388608e+06\"}",
    "etcd_debugging_server_lease_expired_total",
    "etcd_debugging_auth_revision",
];

/// The value of the sample whose name (with labels) is exactly `series`.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics_page(addr: &str) -> String {
    let reply = http::get(addr, "/metrics").await.unwrap();
    assert_eq!(reply.status, 200);
    reply.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_etcds_names_and_move_with_writes() {
    let (etcd, keel) = start_pair().await;
    for server in [&etcd, &keel] {
        let addr = server.client_addr();
        // A Range through the gateway and a refused Put: the gateway's calls count as gRPC calls.
        http::post(&addr, "/v3/kv/range", r#"{"key":"Zm9v"}"#).await.unwrap();
        http::post(&addr, "/v3/kv/put", r#"{"key":""}"#).await.unwrap();
        let before = metrics_page(&addr).await;
        let missing: Vec<&&str> = METRIC_NAMES.iter().filter(|n| sample(&before, n).is_none()).collect();
        assert!(missing.is_empty(), "{}: metrics missing: {missing:?}", server.kind());
        assert_eq!(sample(&before, "etcd_server_has_leader"), Some(1.0), "{}", server.kind());
        assert_eq!(sample(&before, "etcd_server_is_leader"), Some(1.0), "{}", server.kind());
        assert!(before.lines().any(|l| l.starts_with("etcd_server_id{server_id=\"")), "{}", server.kind());
        // etcd's default quota (2 GiB) when --quota-backend-bytes is 0.
        assert_eq!(sample(&before, "etcd_server_quota_backend_bytes"), Some(2147483648.0), "{}", server.kind());

        for value in ["YQ==", "Yg=="] {
            let body = format!(r#"{{"key":"Zm9v","value":"{value}"}}"#);
            assert_eq!(http::post(&addr, "/v3/kv/put", &body).await.unwrap().status, 200);
        }
        http::post(&addr, "/v3/kv/deleterange", r#"{"key":"Zm9v"}"#).await.unwrap();
        let after = metrics_page(&addr).await;
        let moved = |series: &str| sample(&after, series).unwrap_or(0.0) - sample(&before, series).unwrap_or(0.0);
        let kind = server.kind();
        assert_eq!(moved("etcd_mvcc_put_total"), 2.0, "{kind}");
        assert_eq!(moved("etcd_mvcc_delete_total"), 1.0, "{kind}");
        // One key put and deleted again: the live-key gauge is back where it was.
        assert_eq!(moved("etcd_debugging_mvcc_keys_total"), 0.0, "{kind}");
        assert_eq!(moved("etcd_debugging_mvcc_current_revision"), 3.0, "{kind}");
        assert!(moved("etcd_server_proposals_committed_total") >= 3.0, "{kind}");
        assert!(moved("etcd_server_proposals_applied_total") >= 3.0, "{kind}");
        assert!(moved("etcd_disk_wal_fsync_duration_seconds_count") >= 1.0, "{kind}");
        let put_ok = "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}";
        assert_eq!(moved(put_ok), 2.0, "{kind}");
    }
}

/// Series whose movement under the same traffic must be the same on both servers.
const MOVING_ALIKE: &[&str] = &[
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "etcd_mvcc_range_total",
    "etcd_mvcc_txn_total",
    "etcd_debugging_mvcc_range_total",
    "etcd_debugging_mvcc_total_put_size_in_bytes",
    "etcd_debugging_mvcc_events_total",
    "etcd_debugging_mvcc_db_compaction_keys_total",
    "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_count",
    "etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds_count",
    "etcd_debugging_lease_granted_total",
    "etcd_debugging_lease_renewed_total",
    "etcd_debugging_lease_revoked_total",
    "etcd_debugging_lease_ttl_total_count",
    "etcd_debugging_lease_ttl_total_sum",
    "etcd_mvcc_hash_duration_seconds_count",
    "etcd_mvcc_hash_rev_duration_seconds_count",
    "etcd_disk_backend_defrag_duration_seconds_count",
    "etcd_disk_backend_snapshot_duration_seconds_count",
    "etcd_server_apply_duration_seconds_count{op=\"Put\",success=\"true\",version=\"v3\"}",
    "etcd_server_apply_duration_seconds_count{op=\"Put\",success=\"false\",version=\"v3\"}",
    "etcd_server_apply_duration_seconds_count{op=\"Txn\",success=\"true\",version=\"v3\"}",
    "etcd_server_apply_duration_seconds_count{op=\"DeleteRange\",success=\"true\",version=\"v3\"}",
    "etcd_server_apply_duration_seconds_count{op=\"LeaseGrant\",success=\"true\",version=\"v3\"}",
    "etcd_server_apply_duration_seconds_count{op=\"LeaseRevoke\",success=\"true\",version=\"v3\"}",
    "etcd_server_apply_duration_seconds_count{op=\"Compaction\",success=\"true\",version=\"v3\"}",
    "etcd_server_client_requests_total{client_api_version=\"3.5\",type=\"unary\"}",
    "etcd_server_client_requests_total{client_api_version=\"unknown\",type=\"stream\"}",
    "grpc_server_msg_received_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}",
    "grpc_server_msg_sent_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}",
    "grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}",
    "grpc_server_msg_sent_total{grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}",
    "grpc_server_msg_received_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"}",
    "grpc_server_msg_received_total{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"}",
    "grpc_server_msg_sent_total{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"}",
];

/// Series that must move (by any amount) on both servers under the same traffic.
const MOVING: &[&str] = &[
    "etcd_network_client_grpc_received_bytes_total",
    "etcd_network_client_grpc_sent_bytes_total",
    "etcd_disk_wal_write_bytes_total",
    "etcd_disk_wal_write_duration_seconds_count",
    "etcd_server_client_requests_total{client_api_version=\"unknown\",type=\"unary\"}",
    "grpc_server_msg_sent_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"}",
];

/// The same KV, txn, lease, watch, maintenance and compaction calls on a fresh etcd and a fresh
/// Keel move the families dashboards and alerts read the same way: mvcc counts as etcd's
/// transactions count them (a put reading its previous value is a range too and makes a txn; a
/// writing txn's compares are a transaction of their own), applies by op and outcome, leases,
/// watch events, hashes, defragmentation, snapshots, compaction, client versions from the
/// `client-api-version` metadata, gRPC messages and bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_etcds_under_the_same_traffic() {
    let (etcd, keel) = start_pair().await;
    let mut moves = Vec::new();
    for server in [&etcd, &keel] {
        let addr = server.client_addr();
        let kind = server.kind();
        let before = metrics_page(&addr).await;
        let ok = |reply: Reply, what: &str| {
            assert_eq!(reply.status, 200, "{kind}: {what}: {}", reply.text());
            reply.json().unwrap()
        };
        // foo=a, foo=c reading the previous value, a range, a txn (compare; put bar, range foo),
        // a put that fails at apply (ignore_value on a missing key), a delete.
        ok(http::post(&addr, "/v3/kv/put", r#"{"key":"Zm9v","value":"YQ=="}"#).await.unwrap(), "put");
        ok(http::post(&addr, "/v3/kv/put", r#"{"key":"Zm9v","value":"Yw==","prev_kv":true}"#).await.unwrap(), "put");
        ok(http::post(&addr, "/v3/kv/range", r#"{"key":"Zm9v"}"#).await.unwrap(), "range");
        let txn = r#"{"compare":[{"key":"Zm9v","target":"VALUE","result":"EQUAL","value":"Yw=="}],
            "success":[{"request_put":{"key":"YmFy","value":"eA=="}},{"request_range":{"key":"Zm9v"}}]}"#;
        ok(http::post(&addr, "/v3/kv/txn", txn).await.unwrap(), "txn");
        let refused = http::post(&addr, "/v3/kv/put", r#"{"key":"bWlzc2luZw==","ignore_value":true}"#).await.unwrap();
        assert_eq!(refused.status, 400, "{kind}: {}", refused.text());
        ok(http::post(&addr, "/v3/kv/deleterange", r#"{"key":"Zm9v"}"#).await.unwrap(), "delete");
        // A lease granted, kept alive once, revoked.
        ok(http::post(&addr, "/v3/lease/grant", r#"{"TTL":60,"ID":777}"#).await.unwrap(), "grant");
        http::stream_lines(&addr, "/v3/lease/keepalive", r#"{"ID":777}"#, 1, || async { Ok(()) }).await.unwrap();
        ok(http::post(&addr, "/v3/lease/revoke", r#"{"ID":777}"#).await.unwrap(), "revoke");
        // A watch that sees one put.
        let watched = || {
            let addr = addr.clone();
            async move { http::post(&addr, "/v3/kv/put", r#"{"key":"dw==","value":"MQ=="}"#).await.map(|_| ()) }
        };
        let (_, lines) =
            http::stream_lines(&addr, "/v3/watch", r#"{"create_request":{"key":"dw=="}}"#, 2, watched).await.unwrap();
        assert_eq!(lines[1]["result"]["events"].as_array().map(Vec::len), Some(1), "{kind}: {lines:?}");
        // A gRPC client naming its API version, as etcd's clientv3 does.
        let mut kv = keel::proto::etcdserverpb::kv_client::KvClient::new(server.channel().await.unwrap());
        let mut range =
            tonic::Request::new(keel::proto::etcdserverpb::RangeRequest { key: b"bar".to_vec(), ..Default::default() });
        range.metadata_mut().insert("client-api-version", "3.5".parse().unwrap());
        let revision = kv.range(range).await.unwrap().into_inner().header.unwrap().revision;
        // Maintenance: hashes, defragmentation, a snapshot, a physical compaction.
        ok(http::post(&addr, "/v3/maintenance/hash", "{}").await.unwrap(), "hash");
        ok(http::post(&addr, "/v3/maintenance/hashkv", "{}").await.unwrap(), "hashkv");
        ok(http::post(&addr, "/v3/maintenance/defragment", "{}").await.unwrap(), "defragment");
        assert_eq!(http::post(&addr, "/v3/maintenance/snapshot", "{}").await.unwrap().status, 200, "{kind}");
        let compact = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        ok(http::post(&addr, "/v3/kv/compaction", &compact).await.unwrap(), "compaction");

        // A backend snapshot is timed until its stream is done with it, just after the last byte.
        let snapshot = "etcd_disk_backend_snapshot_duration_seconds_count";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let after = loop {
            let page = metrics_page(&addr).await;
            if sample(&page, snapshot) > sample(&before, snapshot) || std::time::Instant::now() > deadline {
                break page;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let moved = |series: &str| sample(&after, series).unwrap_or(0.0) - sample(&before, series).unwrap_or(0.0);
        for series in MOVING {
            assert!(moved(series) > 0.0, "{kind}: {series} did not move");
        }
        // Five in the KV calls, one in the gRPC Range, one in the compaction (etcd reads the
        // revision for its header with a Range).
        assert_eq!(moved("etcd_mvcc_range_total"), 7.0, "{kind}");
        assert_eq!(moved("etcd_mvcc_txn_total"), 2.0, "{kind}");
        assert!(sample(&after, "etcd_debugging_mvcc_db_compaction_last").unwrap_or(0.0) > 0.0, "{kind}");
        assert_eq!(sample(&after, "etcd_debugging_mvcc_pending_events_total"), Some(0.0), "{kind}");
        assert_eq!(sample(&after, "etcd_debugging_mvcc_slow_watcher_total"), Some(0.0), "{kind}");
        assert_eq!(sample(&after, "etcd_disk_defrag_inflight"), Some(0.0), "{kind}");
        moves.push(MOVING_ALIKE.iter().map(|series| (*series, moved(series))).collect::<Vec<_>>());
    }
    let differences: Vec<String> = moves[0]
        .iter()
        .zip(&moves[1])
        .filter(|(e, k)| e != k)
        .map(|((series, e), (_, k))| format!("{series}: etcd moved {e}, keel {k}"))
        .collect();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    // The totals are not all zero: the traffic did reach these families.
    assert!(moves[0].iter().all(|(_, n)| *n > 0.0), "etcd: {:?}", moves[0]);
}

/// `--listen-metrics-urls` adds an HTTP listener with `/metrics` and `/health` and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_serves_metrics_and_health() {
    let mut seen = Vec::new();
    for kind in [ServerKind::Etcd, ServerKind::from_env_or(ServerKind::Keel)] {
        let port = compat_tests::server::free_port().unwrap();
        let flag = format!("--listen-metrics-urls=http://127.0.0.1:{port}");
        let server = Server::start_with(kind, &[&flag]).await.unwrap();
        let addr = format!("127.0.0.1:{port}");
        let page = metrics_page(&addr).await;
        assert_eq!(sample(&page, "etcd_server_has_leader"), Some(1.0), "{kind}");
        let health = http::get(&addr, "/health").await.unwrap();
        let version = http::get(&addr, "/version").await.unwrap();
        let gateway = http::post(&addr, "/v3/kv/range", r#"{"key":"Zm9v"}"#).await.unwrap();
        seen.push((health.status, health.json().unwrap(), version.status, gateway.status));
        drop(server);
    }
    assert_eq!(seen[0], seen[1], "etcd vs keel");
    assert_eq!(seen[0].0, 200);
}

/// Plain HTTP answers compared byte for byte with their content type: the probes (`/livez`,
/// `/readyz`, one check at a time, verbose, excluded), refused methods, unknown paths.
const PLAIN: &[(&str, &str)] = &[
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/livez?verbose"),
    ("GET", "/readyz?verbose"),
    ("GET", "/livez?exclude=serializable_read&verbose"),
    ("GET", "/readyz?exclude=linearizable_read&exclude=nonexistent"),
    ("GET", "/livez/serializable_read"),
    ("GET", "/readyz/data_corruption"),
    ("GET", "/readyz/linearizable_read?verbose"),
    ("GET", "/readyz/nonexistent"),
    ("GET", "/health"),
    ("POST", "/health"),
    ("POST", "/livez"),
    ("POST", "/version"),
    ("GET", "/version"),
    ("GET", "/foo"),
    ("GET", "/v2/keys"),
    ("POST", "/v3alpha/kv/range"),
    ("OPTIONS", "/v3/kv/range"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_matches_etcd() {
    let (etcd, keel) = start_pair().await;
    let mut seen = Vec::new();
    for server in [&etcd, &keel] {
        let addr = server.client_addr();
        let mut answers = Vec::new();
        for (method, path) in PLAIN {
            let reply = http::call(&addr, method, path, &[], b"").await.unwrap();
            let content_type = reply.headers.get("content-type").map(|v| v.to_str().unwrap_or("?").to_string());
            let cors = reply.headers.get("access-control-allow-origin").is_some();
            let mut text = reply.text();
            // etcd lists a probe's checks in Go map order, which varies from call to call.
            if path.contains("verbose") {
                let mut lines: Vec<&str> = text.lines().collect();
                lines.sort_unstable();
                text = lines.join("\n");
            }
            answers.push(format!("{method} {path} -> {} {content_type:?} cors={cors} {text:?}", reply.status));
        }
        seen.push(answers);
    }
    let differences: Vec<String> =
        seen[0].iter().zip(&seen[1]).filter(|(e, k)| e != k).map(|(e, k)| format!("etcd: {e}\nkeel: {k}")).collect();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// A value of 1.4 MiB (under the 1.5 MiB request limit) passes the gateway as it passes etcd's, and one
/// over the limit is refused with etcd's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_pass_the_gateway_as_on_etcd() {
    // base64 of n bytes of 0xff is "////" repeated; 1,468,005 bytes -> 1,957,340 characters.
    let body = |n: usize| format!(r#"{{"key":"Zm9v","value":"{}"}}"#, "/".repeat(n.div_ceil(3) * 4));
    let (etcd, keel) = start_pair().await;
    let mut seen = Vec::new();
    for server in [&etcd, &keel] {
        let addr = server.client_addr();
        let fits = http::post(&addr, "/v3/kv/put", &body(1_468_005)).await.unwrap();
        let too_big = http::post(&addr, "/v3/kv/put", &body(2 * 1024 * 1024)).await.unwrap();
        seen.push((fits.status, too_big.status, masked(&too_big.json().unwrap(), &[])));
    }
    assert_eq!(seen[0].0, 200);
    assert_eq!(seen[0], seen[1], "etcd vs keel");
}

/// A gateway watch whose HTTP client goes away leaves no watcher behind (on etcd neither).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_watchers_go_when_their_client_does() {
    let (etcd, keel) = start_pair().await;
    for server in [&etcd, &keel] {
        let addr = server.client_addr();
        let watch = r#"{"create_request":{"key":"Zm9v"}}"#;
        let (_, created) = http::stream_lines(&addr, "/v3/watch", watch, 1, || async { Ok(()) }).await.unwrap();
        assert_eq!(created[0]["result"]["created"], Value::Bool(true));
        // stream_lines has closed its connection; the watcher must follow within a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let watchers = sample(&metrics_page(&addr).await, "etcd_debugging_mvcc_watcher_total");
            if watchers == Some(0.0) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{}: {watchers:?} watchers left", server.kind());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
