//! The Lease scenario catalogue (etcd-api.md §4): grants with and without an id, the minimum and
//! maximum TTL, duplicate ids, revokes (attached keys deleted in one revision), TimeToLive with
//! keys, Leases, keep-alive streams, expiry, and leases across restarts — each on a fresh
//! single-member server, outcomes compared with etcd 3.5.16's. Server-picked ids are named with
//! [`auto_lease`]; TimeToLive keys are compared as sets (etcd lists them in Go map order).

use std::time::Duration;

use keel::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel::proto::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};

use crate::lease_ids::auto_lease;
use crate::scenario::{Scenario, Step};

fn grant(id: i64, ttl: i64) -> Step {
    Step::LeaseGrant(LeaseGrantRequest { ttl, id })
}

fn revoke(id: i64) -> Step {
    Step::LeaseRevoke(LeaseRevokeRequest { id })
}

fn ttl(id: i64) -> Step {
    Step::LeaseTimeToLive(LeaseTimeToLiveRequest { id, keys: false })
}

fn ttl_keys(id: i64) -> Step {
    Step::LeaseTimeToLive(LeaseTimeToLiveRequest { id, keys: true })
}

fn keep_alive(ids: &[i64]) -> Step {
    Step::LeaseKeepAlive(ids.to_vec())
}

fn pr(key: &str, value: &str, lease: i64) -> PutRequest {
    PutRequest { key: key.into(), value: value.into(), lease, ..Default::default() }
}

fn put(key: &str, lease: i64) -> Step {
    Step::Put(pr(key, "v", lease))
}

fn get(key: &str) -> Step {
    Step::Range(RangeRequest { key: key.into(), ..Default::default() })
}

fn all() -> Step {
    Step::Range(RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() })
}

fn wait_ms(ms: u64) -> Step {
    Step::Wait(Duration::from_millis(ms))
}

fn op_put(key: &str, lease: i64) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestPut(pr(key, "t", lease))) }
}

pub fn lease_scenarios() -> Vec<Scenario> {
    let a0 = auto_lease(0);
    let a1 = auto_lease(1);
    vec![
        Scenario::new(
            "lease_grant_with_id",
            vec![grant(100, 60), ttl(100), Step::LeaseLeases, grant(100, 60), grant(100, 30), get("x")],
        ),
        Scenario::new(
            "lease_grant_ttl_limits",
            vec![
                // Raised to the minimum (2 s by default).
                grant(200, 1),
                grant(201, 0),
                grant(202, -5),
                ttl(200),
                grant(203, 9_000_000_000),
                ttl(203),
                grant(204, 9_000_000_001),
                // The TTL limit is checked before the id is taken.
                grant(203, 9_000_000_001),
                ttl(204),
            ],
        ),
        Scenario::new(
            "lease_grant_without_id",
            vec![
                grant(0, 30),
                grant(0, 40),
                put("k", a0),
                put("j", a1),
                ttl_keys(a0),
                ttl(a1),
                Step::LeaseLeases,
                all(),
                revoke(a0),
                all(),
                Step::LeaseLeases,
            ],
        ),
        Scenario::new(
            "lease_negative_id",
            vec![grant(-5, 10), ttl(-5), put("k", -5), ttl_keys(-5), revoke(-5), get("k")],
        ),
        Scenario::new(
            "lease_revoke_deletes_keys_in_one_revision",
            vec![
                grant(300, 60),
                put("b", 300),
                put("a", 300),
                put("x", 0),
                put("c", 300),
                put("d", 300),
                // A put without lease detaches; a delete detaches.
                put("d", 0),
                Step::DeleteRange(DeleteRangeRequest { key: "c".into(), ..Default::default() }),
                ttl_keys(300),
                revoke(300),
                all(),
                Step::Range(RangeRequest { key: "a".into(), revision: 7, ..Default::default() }),
                revoke(300),
                ttl_keys(300),
            ],
        ),
        Scenario::new(
            "lease_revoke_unknown_and_empty",
            vec![revoke(12345), revoke(0), put("k", 0), grant(301, 60), revoke(301), revoke(301), get("k")],
        ),
        Scenario::new(
            "lease_timetolive_keys",
            vec![
                grant(400, 60),
                put("k3", 400),
                put("k1", 400),
                put("k2", 400),
                put("other", 0),
                ttl_keys(400),
                ttl(400),
                ttl(999),
                ttl_keys(999),
                ttl(0),
            ],
        ),
        Scenario::new(
            "lease_put_moves_key_between_leases",
            vec![
                grant(401, 60),
                grant(402, 60),
                put("k", 401),
                put("k", 402),
                ttl_keys(401),
                ttl_keys(402),
                revoke(401),
                get("k"),
                Step::Put(PutRequest { ignore_lease: true, ..pr("k", "v2", 0) }),
                ttl_keys(402),
                revoke(402),
                get("k"),
            ],
        ),
        Scenario::new(
            "lease_txn_attaches_committed_branch_only",
            vec![
                grant(403, 60),
                put("flag", 0),
                Step::Txn(TxnRequest {
                    compare: vec![Compare {
                        key: "flag".into(),
                        target: CompareTarget::Version as i32,
                        result: CompareResult::Equal as i32,
                        target_union: Some(TargetUnion::Version(9)),
                        ..Default::default()
                    }],
                    success: vec![op_put("s", 403)],
                    failure: vec![op_put("f1", 403), op_put("f2", 403)],
                }),
                // Fails as a whole: nothing attached.
                Step::Txn(TxnRequest { success: vec![op_put("g", 403), op_put("h", 77)], ..Default::default() }),
                ttl_keys(403),
                revoke(403),
                all(),
            ],
        ),
        Scenario::new(
            "lease_leases_list",
            vec![
                Step::LeaseLeases,
                grant(501, 60),
                grant(502, 60),
                grant(503, 60),
                Step::LeaseLeases,
                revoke(502),
                Step::LeaseLeases,
            ],
        ),
        Scenario::new(
            "lease_keepalive_replies",
            vec![
                grant(600, 10),
                put("k", 600),
                keep_alive(&[600, 600, 600]),
                ttl(600),
                // Unknown leases get TTL 0 and the stream stays open.
                keep_alive(&[99999, 600, 0, 600]),
                revoke(600),
                keep_alive(&[600]),
            ],
        ),
        Scenario::new(
            "lease_keepalive_extends_life",
            vec![
                // Each wait leaves a second before the 2 s lease would expire.
                grant(601, 2),
                put("k", 601),
                wait_ms(1000),
                keep_alive(&[601]),
                wait_ms(1000),
                keep_alive(&[601]),
                wait_ms(1000),
                get("k"),
                ttl(601),
            ],
        ),
        Scenario::new(
            "lease_expiry_deletes_keys",
            vec![
                grant(700, 2),
                grant(701, 60),
                put("a", 700),
                put("b", 700),
                put("c", 701),
                wait_ms(3500),
                all(),
                ttl(700),
                keep_alive(&[700]),
                Step::LeaseLeases,
                Step::Range(RangeRequest { key: "a".into(), revision: 5, ..Default::default() }),
            ],
        ),
        Scenario::new(
            "lease_restart_keeps_leases_and_keys",
            vec![
                grant(800, 600),
                grant(0, 600),
                put("k", 800),
                put("j", a0),
                Step::Restart,
                all(),
                ttl_keys(800),
                ttl_keys(a0),
                keep_alive(&[800]),
                revoke(800),
                all(),
                Step::CrashRestart,
                ttl_keys(a0),
                revoke(a0),
                all(),
                Step::LeaseLeases,
            ],
        ),
    ]
}
