//! The KV scenario catalogue (etcd-api.md §1.3 revisions, §1.4 key ranges, §2 KV service): each one a
//! fresh single-member server and a list of requests whose outcomes must match etcd 3.5.16's exactly.
//! Select some with `KEEL_SCENARIO=name[,name…]` (a trailing `*` matches a prefix).

use std::time::Duration;

use keel::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel::proto::etcdserverpb::{
    request_op, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

use crate::scenario::{Scenario, Step};

// ---------------------------------------------------------------------------------------------------
// Request builders. Byte fields go through `b`, so the same code works whether the generated types
// use Vec<u8> or bytes::Bytes.
// ---------------------------------------------------------------------------------------------------

fn b<T: From<Vec<u8>>>(s: impl AsRef<[u8]>) -> T {
    s.as_ref().to_vec().into()
}

fn rr(key: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> RangeRequest {
    RangeRequest { key: b(key), range_end: b(end), ..Default::default() }
}

fn get(key: impl AsRef<[u8]>) -> Step {
    Step::Range(rr(key, ""))
}

fn get_at(key: impl AsRef<[u8]>, revision: i64) -> Step {
    Step::Range(RangeRequest { revision, ..rr(key, "") })
}

fn range(key: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> Step {
    Step::Range(rr(key, end))
}

fn all_at(revision: i64) -> Step {
    Step::Range(RangeRequest { revision, ..rr("\0", "\0") })
}

fn all() -> Step {
    all_at(0)
}

fn pr(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> PutRequest {
    PutRequest { key: b(key), value: b(value), ..Default::default() }
}

fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Step {
    Step::Put(pr(key, value))
}

fn dr(key: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> DeleteRangeRequest {
    DeleteRangeRequest { key: b(key), range_end: b(end), ..Default::default() }
}

fn del(key: impl AsRef<[u8]>) -> Step {
    Step::DeleteRange(dr(key, ""))
}

fn del_range(key: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> Step {
    Step::DeleteRange(dr(key, end))
}

fn compact(revision: i64) -> Step {
    Step::Compact(CompactionRequest { revision, physical: false })
}

fn compact_physical(revision: i64) -> Step {
    Step::Compact(CompactionRequest { revision, physical: true })
}

fn grant(id: i64, ttl: i64) -> Step {
    Step::LeaseGrant(LeaseGrantRequest { ttl, id })
}

fn tr(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest { compare, success, failure }
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Step {
    Step::Txn(tr(compare, success, failure))
}

fn cmp(key: impl AsRef<[u8]>, result: CompareResult, target: TargetUnion) -> Compare {
    let kind = match &target {
        TargetUnion::Version(_) => CompareTarget::Version,
        TargetUnion::CreateRevision(_) => CompareTarget::Create,
        TargetUnion::ModRevision(_) => CompareTarget::Mod,
        TargetUnion::Value(_) => CompareTarget::Value,
        TargetUnion::Lease(_) => CompareTarget::Lease,
    };
    Compare { result: result as i32, target: kind as i32, key: b(key), range_end: b(""), target_union: Some(target) }
}

fn cmp_range(key: impl AsRef<[u8]>, end: impl AsRef<[u8]>, result: CompareResult, target: TargetUnion) -> Compare {
    Compare { range_end: b(end), ..cmp(key, result, target) }
}

fn version(v: i64) -> TargetUnion {
    TargetUnion::Version(v)
}
fn create(v: i64) -> TargetUnion {
    TargetUnion::CreateRevision(v)
}
fn modrev(v: i64) -> TargetUnion {
    TargetUnion::ModRevision(v)
}
fn value(v: &str) -> TargetUnion {
    TargetUnion::Value(b(v))
}
fn lease(v: i64) -> TargetUnion {
    TargetUnion::Lease(v)
}

use CompareResult::{Equal as EQ, Greater as GT, Less as LT, NotEqual as NE};

fn op(request: request_op::Request) -> RequestOp {
    RequestOp { request: Some(request) }
}
fn op_put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> RequestOp {
    op(request_op::Request::RequestPut(pr(key, value)))
}
fn op_put_req(req: PutRequest) -> RequestOp {
    op(request_op::Request::RequestPut(req))
}
fn op_get(key: impl AsRef<[u8]>) -> RequestOp {
    op(request_op::Request::RequestRange(rr(key, "")))
}
fn op_range(key: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> RequestOp {
    op(request_op::Request::RequestRange(rr(key, end)))
}
fn op_range_req(req: RangeRequest) -> RequestOp {
    op(request_op::Request::RequestRange(req))
}
fn op_del(key: impl AsRef<[u8]>) -> RequestOp {
    op(request_op::Request::RequestDeleteRange(dr(key, "")))
}
fn op_del_range(key: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> RequestOp {
    op(request_op::Request::RequestDeleteRange(dr(key, end)))
}
fn op_del_req(req: DeleteRangeRequest) -> RequestOp {
    op(request_op::Request::RequestDeleteRange(req))
}
fn op_txn(req: TxnRequest) -> RequestOp {
    op(request_op::Request::RequestTxn(req))
}

fn sorted(order: SortOrder, target: SortTarget) -> RangeRequest {
    RangeRequest { sort_order: order as i32, sort_target: target as i32, ..rr("\0", "\0") }
}

/// a..e = 1..5 at revisions 2..6.
fn five_keys() -> Vec<Step> {
    vec![put("a", "1"), put("b", "2"), put("c", "3"), put("d", "4"), put("e", "5")]
}

/// Keys whose order differs by every sort target, with ties in VERSION (stable-order check):
/// k1 create 3 mod 8 ver 2 "e"; k2 5/5/1 "d"; k3 2/9/3 "c3"; k4 6/6/1 "b"; k5 4/4/1 "a".
fn sort_data() -> Vec<Step> {
    vec![
        put("k3", "c"),
        put("k1", "e"),
        put("k5", "a"),
        put("k2", "d"),
        put("k4", "b"),
        put("k3", "c2"),
        put("k1", "e"),
        put("k3", "c3"),
    ]
}

fn with(mut base: Vec<Step>, more: Vec<Step>) -> Vec<Step> {
    base.extend(more);
    base
}

fn sort_scenario(name: &'static str, target: SortTarget) -> Scenario {
    Scenario::new(
        name,
        with(
            sort_data(),
            vec![
                Step::Range(sorted(SortOrder::None, target)),
                Step::Range(sorted(SortOrder::Ascend, target)),
                Step::Range(sorted(SortOrder::Descend, target)),
                Step::Range(RangeRequest { limit: 2, ..sorted(SortOrder::Descend, target) }),
                Step::Range(RangeRequest { limit: 3, keys_only: true, ..sorted(SortOrder::Ascend, target) }),
            ],
        ),
    )
}

/// Every scenario, in a stable order.
pub fn all_scenarios() -> Vec<Scenario> {
    let mut v = Vec::new();
    v.extend(range_scenarios());
    v.extend(put_scenarios());
    v.extend(delete_scenarios());
    v.extend(txn_scenarios());
    v.extend(compact_scenarios());
    v.extend(restart_scenarios());
    v.extend(crate::lease_scenarios::lease_scenarios());
    v
}

/// Scenarios chosen by `KEEL_SCENARIO` (comma-separated names; `prefix*` matches a prefix), or all.
pub fn selected() -> Vec<Scenario> {
    all_scenarios().into_iter().filter(|s| crate::chosen(s.name)).collect()
}

pub fn filter_by(scenarios: Vec<Scenario>, filter: &str) -> Vec<Scenario> {
    scenarios.into_iter().filter(|s| crate::name_matches(filter, s.name)).collect()
}

fn range_scenarios() -> Vec<Scenario> {
    vec![
        Scenario::new("range_empty_store", vec![get("foo"), range("\0", "\0"), range("a", "z")]),
        Scenario::new(
            "range_single_key",
            vec![
                put("foo", "bar"),
                put("foo2", "baz"),
                put("fo", "x"),
                get("foo"),
                get("fo"),
                get("missing"),
                get("\0"),
            ],
        ),
        Scenario::new(
            "range_half_open",
            with(
                five_keys(),
                vec![range("b", "d"), range("a", "e"), range("a", "z"), range("0", "a"), range("bb", "dd")],
            ),
        ),
        Scenario::new(
            "range_all_and_from_key",
            with(
                five_keys(),
                vec![range("\0", "\0"), range("a", "\0"), range("c", "\0"), range("cc", "\0"), range("z", "\0")],
            ),
        ),
        Scenario::new(
            "range_end_not_after_key",
            with(five_keys(), vec![range("c", "b"), range("c", "c"), range("e", "a"), range("\0", "")]),
        ),
        Scenario::new(
            "range_prefix_ends_with_ff",
            vec![
                put("a", "1"),
                put(b"a\xff", "2"),
                put(b"a\xff\xff", "3"),
                put(b"a\xff\x00", "4"),
                put("ab", "5"),
                put("b", "6"),
                put(b"\xff", "7"),
                put(b"\xff\xff", "8"),
                put(b"\xff\xff\x01", "9"),
                // Prefix "a" and prefix "a\xff" both end at "b"; "ab" ends at "ac".
                range("a", "b"),
                range(b"a\xff", "b"),
                range("ab", "ac"),
                // All-0xff prefixes end at "\0", i.e. from the key on.
                range(b"\xff", "\0"),
                range(b"\xff\xff", "\0"),
                range(b"\xff\xff\xff", "\0"),
            ],
        ),
        Scenario::new(
            "range_limit_and_more",
            with(
                five_keys(),
                vec![
                    Step::Range(RangeRequest { limit: 2, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest { limit: 5, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest { limit: 6, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest { limit: 1, ..rr("c", "\0") }),
                    Step::Range(RangeRequest { limit: 1, ..rr("c", "") }),
                    Step::Range(RangeRequest { limit: -1, ..rr("\0", "\0") }),
                ],
            ),
        ),
        Scenario::new(
            "range_count_only",
            with(
                five_keys(),
                vec![
                    Step::Range(RangeRequest { count_only: true, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest { count_only: true, limit: 2, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest { count_only: true, ..rr("x", "z") }),
                    Step::Range(RangeRequest { count_only: true, keys_only: true, ..rr("b", "d") }),
                    Step::Range(RangeRequest { count_only: true, ..rr("c", "") }),
                ],
            ),
        ),
        Scenario::new(
            "range_keys_only",
            with(
                five_keys(),
                vec![
                    Step::Range(RangeRequest { keys_only: true, ..rr("c", "") }),
                    Step::Range(RangeRequest { keys_only: true, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest { keys_only: true, limit: 2, ..rr("b", "\0") }),
                ],
            ),
        ),
        Scenario::new(
            "range_mod_revision_filters_keep_count",
            with(
                sort_data(),
                vec![
                    Step::Range(RangeRequest { min_mod_revision: 6, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest { max_mod_revision: 5, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest { min_mod_revision: 5, max_mod_revision: 8, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest { min_mod_revision: 100, ..rr("\0", "\0") }),
                ],
            ),
        ),
        Scenario::new(
            "range_create_revision_filters_keep_count",
            with(
                sort_data(),
                vec![
                    Step::Range(RangeRequest { min_create_revision: 4, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest { max_create_revision: 3, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest {
                        min_create_revision: 3,
                        max_create_revision: 5,
                        count_only: true,
                        ..rr("\0", "\0")
                    }),
                ],
            ),
        ),
        Scenario::new(
            "range_filters_with_limit_and_sort",
            with(
                sort_data(),
                vec![
                    Step::Range(RangeRequest { min_mod_revision: 5, limit: 1, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest {
                        max_create_revision: 5,
                        limit: 2,
                        ..sorted(SortOrder::Descend, SortTarget::Mod)
                    }),
                    Step::Range(RangeRequest {
                        min_create_revision: 3,
                        limit: 10,
                        ..sorted(SortOrder::Ascend, SortTarget::Value)
                    }),
                    Step::Range(RangeRequest { limit: 2, ..sorted(SortOrder::Ascend, SortTarget::Key) }),
                ],
            ),
        ),
        sort_scenario("range_sort_by_key", SortTarget::Key),
        sort_scenario("range_sort_by_version", SortTarget::Version),
        sort_scenario("range_sort_by_create", SortTarget::Create),
        sort_scenario("range_sort_by_mod", SortTarget::Mod),
        sort_scenario("range_sort_by_value", SortTarget::Value),
        Scenario::new(
            "range_at_past_revisions",
            vec![
                put("x", "1"),
                put("x", "2"),
                put("y", "1"),
                del("x"),
                put("x", "3"),
                get_at("x", 1),
                get_at("x", 2),
                get_at("x", 3),
                get_at("x", 4),
                get_at("x", 5),
                get_at("x", 6),
                get_at("x", 0),
                all_at(3),
                all_at(5),
                Step::Range(RangeRequest { revision: 4, count_only: true, ..rr("\0", "\0") }),
            ],
        ),
        Scenario::new(
            "range_future_and_negative_revision",
            vec![
                put("x", "1"),
                get_at("x", 3),
                get_at("x", 1000),
                get_at("x", 2),
                get_at("x", -1),
                get_at("x", i64::MIN),
            ],
        ),
        Scenario::new(
            "range_compacted_revisions",
            vec![
                put("x", "1"),
                put("x", "2"),
                put("x", "3"),
                put("y", "1"),
                compact(3),
                get_at("x", 1),
                get_at("x", 2),
                get_at("x", 3),
                get_at("x", 4),
                all_at(3),
                get_at("x", 0),
            ],
        ),
        Scenario::new(
            "range_serializable",
            with(
                five_keys(),
                vec![
                    Step::Range(RangeRequest { serializable: true, ..rr("c", "") }),
                    Step::Range(RangeRequest { serializable: true, revision: 3, ..rr("\0", "\0") }),
                    Step::Range(RangeRequest { serializable: true, revision: 100, ..rr("c", "") }),
                ],
            ),
        ),
        Scenario::new(
            "range_empty_key",
            vec![
                put("a", "1"),
                get(""),
                range("", "z"),
                range("", "\0"),
                Step::Range(RangeRequest { count_only: true, ..rr("", "") }),
            ],
        ),
    ]
}

fn put_scenarios() -> Vec<Scenario> {
    vec![
        Scenario::new(
            "put_create_and_update",
            vec![put("k", "v1"), get("k"), put("k", "v2"), get("k"), put("other", "o"), put("k", "v3"), all()],
        ),
        Scenario::new(
            "put_prev_kv",
            vec![
                Step::Put(PutRequest { prev_kv: true, ..pr("k", "v1") }),
                Step::Put(PutRequest { prev_kv: true, ..pr("k", "v2") }),
                del("k"),
                Step::Put(PutRequest { prev_kv: true, ..pr("k", "v3") }),
            ],
        ),
        Scenario::new("put_same_value_twice", vec![put("k", "v"), put("k", "v"), get("k")]),
        Scenario::new("put_lease_zero", vec![Step::Put(PutRequest { lease: 0, ..pr("k", "v") }), get("k")]),
        Scenario::new(
            "put_unknown_lease",
            vec![
                put("a", "1"),
                Step::Put(PutRequest { lease: 12345, ..pr("k", "v") }),
                get("k"),
                Step::Put(PutRequest { lease: -1, ..pr("k", "v") }),
                get("a"),
            ],
        ),
        Scenario::new(
            "put_with_lease_then_without",
            vec![
                grant(1000, 600),
                Step::Put(PutRequest { lease: 1000, ..pr("k", "v") }),
                get("k"),
                Step::Put(PutRequest { prev_kv: true, ..pr("k", "v2") }),
                get("k"),
            ],
        ),
        Scenario::new(
            "put_ignore_value",
            vec![
                put("k", "v"),
                Step::Put(PutRequest { ignore_value: true, ..pr("k", "") }),
                get("k"),
                Step::Put(PutRequest { ignore_value: true, prev_kv: true, ..pr("k", "") }),
                get("k"),
            ],
        ),
        Scenario::new(
            "put_ignore_value_errors",
            vec![
                put("k", "v"),
                Step::Put(PutRequest { ignore_value: true, ..pr("k", "new") }),
                Step::Put(PutRequest { ignore_value: true, ..pr("missing", "") }),
                Step::Put(PutRequest { ignore_value: true, ..pr("missing", "new") }),
                get("k"),
            ],
        ),
        Scenario::new(
            "put_ignore_lease",
            vec![
                grant(1001, 600),
                Step::Put(PutRequest { lease: 1001, ..pr("k", "v") }),
                Step::Put(PutRequest { ignore_lease: true, ..pr("k", "v2") }),
                get("k"),
                put("plain", "p"),
                Step::Put(PutRequest { ignore_lease: true, prev_kv: true, ..pr("plain", "p2") }),
                get("plain"),
            ],
        ),
        Scenario::new(
            "put_ignore_lease_errors",
            vec![
                grant(1002, 600),
                put("k", "v"),
                Step::Put(PutRequest { ignore_lease: true, lease: 1002, ..pr("k", "v2") }),
                Step::Put(PutRequest { ignore_lease: true, ..pr("missing", "v") }),
                Step::Put(PutRequest { ignore_lease: true, lease: 999_999, ..pr("missing", "v") }),
                get("k"),
            ],
        ),
        Scenario::new(
            "put_ignore_value_and_lease",
            vec![
                grant(1003, 600),
                Step::Put(PutRequest { lease: 1003, ..pr("k", "v") }),
                Step::Put(PutRequest { ignore_value: true, ignore_lease: true, prev_kv: true, ..pr("k", "") }),
                get("k"),
            ],
        ),
        Scenario::new("put_empty_key", vec![put("", "v"), put("", ""), all()]),
        Scenario::new("put_empty_value", vec![put("k", ""), get("k"), put("k", "x"), put("k", ""), get("k")]),
        Scenario::new(
            "put_after_delete_restarts_version",
            vec![put("k", "1"), put("k", "2"), del("k"), put("k", "3"), get("k"), get_at("k", 3)],
        ),
        Scenario::new(
            "put_binary_keys_and_values",
            vec![
                put("\0", "zero"),
                put(b"\xff", b"\x00\x01\xfe\xff"),
                put(b"a\x00b", "nul inside"),
                put("a", "plain"),
                all(),
                get(b"a\x00b"),
            ],
        ),
        Scenario::new("put_large_value_accepted", vec![put("big", vec![b'v'; 1_400_000]), get("big")]),
        Scenario::new(
            "put_request_too_large",
            vec![put("a", "1"), put("big", vec![b'v'; 1_600_000]), get("big"), get("a")],
        ),
        Scenario::new(
            "put_over_grpc_limit",
            vec![put("a", "1"), put("huge", vec![b'v'; 2_200_000]), get("huge"), put("a", "2")],
        ),
    ]
}

fn delete_scenarios() -> Vec<Scenario> {
    vec![
        Scenario::new("delete_single", with(five_keys(), vec![del("b"), get("b"), all()])),
        Scenario::new("delete_range", with(five_keys(), vec![del_range("b", "d"), all()])),
        Scenario::new(
            "delete_prefix",
            vec![
                put("a/1", "1"),
                put("a/2", "2"),
                put("a/3", "3"),
                put("a0", "x"),
                put("b", "y"),
                del_range("a/", "a0"),
                all(),
            ],
        ),
        Scenario::new("delete_all", with(five_keys(), vec![del_range("\0", "\0"), all(), del_range("\0", "\0")])),
        Scenario::new("delete_from_key", with(five_keys(), vec![del_range("c", "\0"), all()])),
        Scenario::new(
            "delete_prev_kv",
            with(
                five_keys(),
                vec![
                    Step::DeleteRange(DeleteRangeRequest { prev_kv: true, ..dr("a", "") }),
                    Step::DeleteRange(DeleteRangeRequest { prev_kv: true, ..dr("b", "\0") }),
                    Step::DeleteRange(DeleteRangeRequest { prev_kv: true, ..dr("a", "") }),
                ],
            ),
        ),
        Scenario::new(
            "delete_nothing_keeps_revision",
            with(
                five_keys(),
                vec![
                    del("missing"),
                    del_range("x", "z"),
                    Step::DeleteRange(DeleteRangeRequest { prev_kv: true, ..dr("missing", "") }),
                    get("a"),
                    put("f", "6"),
                ],
            ),
        ),
        Scenario::new(
            "delete_end_not_after_key",
            with(five_keys(), vec![del_range("c", "b"), del_range("c", "c"), all()]),
        ),
        Scenario::new("delete_empty_key", with(five_keys(), vec![del(""), del_range("", "z"), all()])),
        Scenario::new(
            "delete_twice_and_recreate",
            vec![put("k", "1"), del("k"), del("k"), put("k", "2"), get("k"), get_at("k", 2), get_at("k", 3)],
        ),
    ]
}

fn txn_scenarios() -> Vec<Scenario> {
    let yes = || vec![op_put("r", "success")];
    let no = || vec![op_put("r", "failure")];
    let mut v = vec![
        Scenario::new(
            "txn_compare_version",
            vec![
                put("k", "v"),
                put("k", "v"),
                txn(vec![cmp("k", EQ, version(2))], yes(), no()),
                txn(vec![cmp("k", GT, version(1))], yes(), no()),
                txn(vec![cmp("k", LT, version(2))], yes(), no()),
                txn(vec![cmp("k", NE, version(2))], yes(), no()),
                txn(vec![cmp("k", LT, version(3))], yes(), no()),
                get("r"),
            ],
        ),
        Scenario::new(
            "txn_compare_create",
            vec![
                put("x", "0"),
                put("k", "v"),
                put("k", "v2"),
                txn(vec![cmp("k", EQ, create(3))], yes(), no()),
                txn(vec![cmp("k", GT, create(3))], yes(), no()),
                txn(vec![cmp("k", LT, create(4))], yes(), no()),
                txn(vec![cmp("k", NE, create(2))], yes(), no()),
            ],
        ),
        Scenario::new(
            "txn_compare_mod",
            vec![
                put("k", "v"),
                put("k", "v2"),
                txn(vec![cmp("k", EQ, modrev(3))], yes(), no()),
                txn(vec![cmp("k", EQ, modrev(2))], yes(), no()),
                txn(vec![cmp("k", GT, modrev(2))], yes(), no()),
                txn(vec![cmp("k", LT, modrev(3))], yes(), no()),
                txn(vec![cmp("k", NE, modrev(0))], yes(), no()),
            ],
        ),
        Scenario::new(
            "txn_compare_value",
            vec![
                put("k", "bb"),
                txn(vec![cmp("k", EQ, value("bb"))], yes(), no()),
                txn(vec![cmp("k", EQ, value("b"))], yes(), no()),
                txn(vec![cmp("k", GT, value("b"))], yes(), no()),
                txn(vec![cmp("k", GT, value("bc"))], yes(), no()),
                txn(vec![cmp("k", LT, value("c"))], yes(), no()),
                txn(vec![cmp("k", LT, value("bba"))], yes(), no()),
                txn(vec![cmp("k", NE, value("bb"))], yes(), no()),
                txn(vec![cmp("k", NE, value(""))], yes(), no()),
            ],
        ),
        Scenario::new(
            "txn_compare_lease",
            vec![
                grant(2000, 600),
                Step::Put(PutRequest { lease: 2000, ..pr("k", "v") }),
                put("plain", "p"),
                txn(vec![cmp("k", EQ, lease(2000))], yes(), no()),
                txn(vec![cmp("k", EQ, lease(0))], yes(), no()),
                txn(vec![cmp("k", GT, lease(1999))], yes(), no()),
                txn(vec![cmp("k", LT, lease(1999))], yes(), no()),
                txn(vec![cmp("plain", EQ, lease(0))], yes(), no()),
                txn(vec![cmp("plain", NE, lease(2000))], yes(), no()),
            ],
        ),
        Scenario::new(
            "txn_compare_missing_key",
            vec![
                put("other", "o"),
                txn(vec![cmp("k", EQ, version(0))], yes(), no()),
                txn(vec![cmp("k", EQ, create(0))], yes(), no()),
                txn(vec![cmp("k", EQ, modrev(0))], yes(), no()),
                txn(vec![cmp("k", EQ, lease(0))], yes(), no()),
                txn(vec![cmp("k", EQ, value(""))], yes(), no()),
                txn(vec![cmp("k", NE, value("x"))], yes(), no()),
                txn(vec![cmp("k", LT, version(1))], yes(), no()),
                txn(vec![cmp("k", GT, create(0))], yes(), no()),
            ],
        ),
        Scenario::new(
            "txn_compare_deleted_key",
            vec![
                put("k", "v"),
                del("k"),
                txn(vec![cmp("k", EQ, version(0))], yes(), no()),
                txn(vec![cmp("k", EQ, modrev(0))], yes(), no()),
                txn(vec![cmp("k", EQ, value("v"))], yes(), no()),
            ],
        ),
        Scenario::new(
            "txn_compare_range",
            vec![
                put("a1", "same"),
                put("a2", "same"),
                put("a3", "same"),
                put("a2", "same"),
                put("b", "other"),
                txn(vec![cmp_range("a", "b", GT, version(0))], yes(), no()),
                txn(vec![cmp_range("a", "b", EQ, version(1))], yes(), no()),
                txn(vec![cmp_range("a", "b", EQ, value("same"))], yes(), no()),
                txn(vec![cmp_range("a", "\0", EQ, value("same"))], yes(), no()),
                txn(vec![cmp_range("a", "b", LT, modrev(6))], yes(), no()),
                txn(vec![cmp_range("x", "z", EQ, version(0))], yes(), no()),
                txn(vec![cmp_range("x", "z", EQ, value(""))], yes(), no()),
                txn(vec![cmp_range("b", "a", EQ, version(0))], yes(), no()),
            ],
        ),
        Scenario::new(
            "txn_compare_unset_or_mismatched_target",
            vec![
                put("empty", ""),
                put("k", "v"),
                txn(
                    vec![Compare {
                        result: EQ as i32,
                        target: CompareTarget::Value as i32,
                        key: b("empty"),
                        ..Default::default()
                    }],
                    yes(),
                    no(),
                ),
                txn(
                    vec![Compare {
                        result: EQ as i32,
                        target: CompareTarget::Value as i32,
                        key: b("k"),
                        ..Default::default()
                    }],
                    yes(),
                    no(),
                ),
                txn(
                    vec![Compare {
                        result: GT as i32,
                        target: CompareTarget::Version as i32,
                        key: b("k"),
                        ..Default::default()
                    }],
                    yes(),
                    no(),
                ),
                txn(
                    vec![Compare {
                        result: EQ as i32,
                        target: CompareTarget::Version as i32,
                        key: b("k"),
                        range_end: b(""),
                        target_union: Some(TargetUnion::ModRevision(3)),
                    }],
                    yes(),
                    no(),
                ),
            ],
        ),
        Scenario::new(
            "txn_multiple_compares_are_anded",
            vec![
                put("a", "1"),
                put("b", "2"),
                txn(vec![cmp("a", EQ, value("1")), cmp("b", EQ, value("2"))], yes(), no()),
                txn(vec![cmp("a", EQ, value("1")), cmp("b", EQ, value("3"))], yes(), no()),
                txn(vec![cmp("a", EQ, version(1)), cmp("missing", EQ, create(0))], yes(), no()),
            ],
        ),
        Scenario::new(
            "txn_success_branch_ops",
            vec![
                put("a", "1"),
                put("d", "4"),
                txn(
                    vec![cmp("a", EQ, value("1"))],
                    vec![op_put("b", "2"), op_get("a"), op_del("d"), op_range("\0", "\0")],
                    vec![op_put("never", "x")],
                ),
                all(),
            ],
        ),
        Scenario::new(
            "txn_failure_branch_ops",
            vec![
                put("a", "1"),
                put("d", "4"),
                txn(
                    vec![cmp("a", EQ, value("nope"))],
                    vec![op_put("never", "x")],
                    vec![op_put("b", "2"), op_del("d"), op_get("b"), op_range("\0", "\0")],
                ),
                all(),
                txn(vec![cmp("a", EQ, value("nope"))], vec![op_put("never", "x")], vec![]),
            ],
        ),
        Scenario::new(
            "txn_nested",
            vec![
                put("a", "1"),
                txn(
                    vec![cmp("a", EQ, value("1"))],
                    vec![
                        op_put("b", "2"),
                        op_txn(tr(
                            vec![cmp("b", EQ, value("2"))],
                            vec![op_put("c", "3"), op_get("b")],
                            vec![op_put("c", "never")],
                        )),
                        op_txn(tr(
                            vec![cmp("a", EQ, value("x"))],
                            vec![op_put("d", "never")],
                            vec![op_put("d", "4"), op_txn(tr(vec![], vec![op_get("d"), op_del("a")], vec![]))],
                        )),
                    ],
                    vec![],
                ),
                all(),
            ],
        ),
        Scenario::new(
            "txn_reads_see_earlier_writes",
            vec![
                put("x", "0"),
                txn(
                    vec![],
                    vec![
                        op_put("a", "1"),
                        op_get("a"),
                        op_put("a", "2"),
                        op_get("a"),
                        op_del("x"),
                        op_get("x"),
                        op_range("\0", "\0"),
                        op_del("a"),
                        op_range("\0", "\0"),
                        op_put("a", "3"),
                        op_get("a"),
                    ],
                    vec![],
                ),
                all(),
            ],
        ),
        Scenario::new(
            "txn_read_only_keeps_revision",
            with(
                five_keys(),
                vec![
                    txn(vec![cmp("a", EQ, value("1"))], vec![op_get("a"), op_range("b", "d")], vec![]),
                    txn(vec![cmp("a", EQ, value("2"))], vec![], vec![op_get("e")]),
                    txn(vec![], vec![op_del("missing")], vec![]),
                    get("a"),
                ],
            ),
        ),
        Scenario::new("txn_empty", vec![put("a", "1"), txn(vec![], vec![], vec![]), get("a")]),
        Scenario::new(
            "txn_too_many_ops",
            vec![
                put("a", "1"),
                txn(vec![], (0..129).map(|i| op_put(format!("k{i:03}"), "v")).collect(), vec![]),
                txn(vec![], vec![], (0..129).map(|i| op_put(format!("k{i:03}"), "v")).collect()),
                txn((0..129).map(|_| cmp("a", EQ, value("1"))).collect(), vec![], vec![]),
                txn(vec![], (0..128).map(|i| op_put(format!("k{i:03}"), "v")).collect(), vec![]),
                Step::Range(RangeRequest { count_only: true, ..rr("\0", "\0") }),
            ],
        ),
        Scenario::new(
            "txn_duplicate_put_put",
            vec![
                txn(vec![], vec![op_put("a", "1"), op_put("a", "2")], vec![]),
                txn(vec![], vec![], vec![op_put("a", "1"), op_put("a", "2")]),
                get("a"),
            ],
        ),
        Scenario::new(
            "txn_duplicate_put_in_delete_range",
            vec![
                txn(vec![], vec![op_put("b", "1"), op_del_range("a", "c")], vec![]),
                txn(vec![], vec![op_del_range("a", "c"), op_put("b", "1")], vec![]),
                txn(vec![], vec![op_del("b"), op_put("b", "1")], vec![]),
                txn(vec![], vec![op_put("c", "1"), op_del_range("a", "c")], vec![]),
                txn(vec![], vec![op_put("z", "1"), op_del_range("a", "\0")], vec![]),
                all(),
            ],
        ),
        Scenario::new(
            "txn_delete_delete_same_key_ok",
            vec![
                put("a", "1"),
                txn(vec![], vec![op_del("a"), op_del("a")], vec![]),
                put("b", "1"),
                txn(vec![], vec![op_del_range("a", "z"), op_del("b")], vec![]),
                all(),
            ],
        ),
        Scenario::new(
            "txn_same_key_in_both_branches_ok",
            vec![
                txn(vec![cmp("a", EQ, version(0))], vec![op_put("a", "s")], vec![op_put("a", "f")]),
                txn(vec![cmp("a", EQ, version(0))], vec![op_put("a", "s")], vec![op_put("a", "f")]),
                get("a"),
            ],
        ),
        Scenario::new(
            "txn_duplicate_rules_in_nested_txns",
            vec![
                txn(vec![], vec![op_put("a", "1"), op_txn(tr(vec![], vec![op_put("a", "2")], vec![]))], vec![]),
                txn(vec![], vec![op_txn(tr(vec![], vec![op_put("a", "s")], vec![op_put("a", "f")]))], vec![]),
                txn(vec![], vec![op_del_range("a", "z"), op_txn(tr(vec![], vec![op_put("b", "1")], vec![]))], vec![]),
                txn(
                    vec![],
                    vec![
                        op_txn(tr(vec![], vec![op_put("c", "1")], vec![])),
                        op_txn(tr(vec![], vec![op_put("c", "2")], vec![])),
                    ],
                    vec![],
                ),
                all(),
            ],
        ),
        Scenario::new(
            "txn_empty_request_op",
            vec![
                put("a", "1"),
                txn(vec![], vec![RequestOp { request: None }], vec![]),
                txn(vec![], vec![], vec![RequestOp { request: None }]),
                txn(vec![], vec![op_txn(tr(vec![], vec![RequestOp { request: None }], vec![]))], vec![]),
                get("a"),
            ],
        ),
        Scenario::new(
            "txn_empty_keys",
            vec![
                put("a", "1"),
                txn(vec![cmp("", EQ, version(0))], vec![], vec![]),
                txn(vec![], vec![op_put("", "v")], vec![]),
                txn(vec![], vec![op_get("")], vec![]),
                txn(vec![], vec![], vec![op_del("")]),
                txn(vec![], vec![op_txn(tr(vec![cmp("", EQ, version(0))], vec![], vec![]))], vec![]),
                get("a"),
            ],
        ),
        Scenario::new(
            "txn_put_option_errors",
            vec![
                put("a", "1"),
                txn(vec![], vec![op_put_req(PutRequest { lease: 4242, ..pr("b", "1") })], vec![]),
                txn(vec![], vec![op_put_req(PutRequest { ignore_value: true, ..pr("missing", "") })], vec![]),
                txn(vec![], vec![op_put_req(PutRequest { ignore_value: true, ..pr("a", "new") })], vec![]),
                txn(vec![], vec![op_put_req(PutRequest { ignore_lease: true, lease: 7, ..pr("a", "new") })], vec![]),
                txn(
                    vec![],
                    vec![op_put_req(PutRequest {
                        ignore_value: true,
                        ignore_lease: true,
                        prev_kv: true,
                        ..pr("a", "")
                    })],
                    vec![],
                ),
                all(),
            ],
        ),
        Scenario::new(
            "txn_range_options_inside",
            with(
                sort_data(),
                vec![txn(
                    vec![],
                    vec![
                        op_range_req(RangeRequest { limit: 2, ..rr("\0", "\0") }),
                        op_range_req(RangeRequest { count_only: true, ..rr("\0", "\0") }),
                        op_range_req(RangeRequest {
                            keys_only: true,
                            ..sorted(SortOrder::Descend, SortTarget::Version)
                        }),
                        op_range_req(RangeRequest { revision: 4, ..rr("\0", "\0") }),
                        op_range_req(RangeRequest { min_mod_revision: 6, ..rr("\0", "\0") }),
                    ],
                    vec![],
                )],
            ),
        ),
        Scenario::new(
            "txn_range_at_bad_revisions",
            vec![
                put("a", "1"),
                put("a", "2"),
                put("a", "3"),
                compact(3),
                txn(vec![], vec![op_range_req(RangeRequest { revision: 2, ..rr("a", "") })], vec![]),
                txn(vec![], vec![op_range_req(RangeRequest { revision: 50, ..rr("a", "") })], vec![]),
                txn(vec![], vec![op_put("b", "1"), op_range_req(RangeRequest { revision: 2, ..rr("a", "") })], vec![]),
                txn(vec![], vec![op_range_req(RangeRequest { revision: 3, ..rr("a", "") })], vec![]),
                all(),
            ],
        ),
        Scenario::new(
            "txn_prev_kv_inside",
            vec![
                put("a", "1"),
                put("b", "2"),
                txn(
                    vec![],
                    vec![
                        op_put_req(PutRequest { prev_kv: true, ..pr("a", "10") }),
                        op_del_req(DeleteRangeRequest { prev_kv: true, ..dr("b", "") }),
                        op_put_req(PutRequest { prev_kv: true, ..pr("c", "3") }),
                    ],
                    vec![],
                ),
            ],
        ),
    ];
    v.push(Scenario::new(
        "txn_compare_after_failed_writes",
        vec![
            put("k", "v"),
            txn(vec![cmp("k", EQ, value("v"))], vec![op_put("k", "w")], vec![]),
            txn(vec![cmp("k", EQ, value("v"))], vec![op_put("k", "x")], vec![op_get("k")]),
            txn(vec![cmp("k", EQ, version(2))], vec![op_del("k")], vec![]),
            txn(vec![cmp("k", EQ, version(0))], vec![op_put("k", "again")], vec![]),
            get("k"),
        ],
    ));
    v
}

fn compact_scenarios() -> Vec<Scenario> {
    vec![
        Scenario::new(
            "compact_basic",
            vec![
                put("x", "1"),
                put("x", "2"),
                put("x", "3"),
                compact(3),
                get_at("x", 2),
                get_at("x", 3),
                get("x"),
                put("x", "4"),
                get("x"),
            ],
        ),
        Scenario::new(
            "compact_physical",
            vec![put("x", "1"), put("y", "1"), put("x", "2"), compact_physical(3), get_at("x", 2), all_at(3), all()],
        ),
        Scenario::new(
            "compact_twice_and_lower",
            vec![
                put("x", "1"),
                put("x", "2"),
                put("x", "3"),
                compact(3),
                compact(3),
                compact(2),
                compact_physical(3),
                compact(4),
                get_at("x", 3),
                get_at("x", 4),
            ],
        ),
        Scenario::new(
            "compact_future_and_current",
            vec![put("x", "1"), put("x", "2"), compact(4), compact(100), compact(3), get("x")],
        ),
        Scenario::new(
            "compact_small_revisions",
            vec![put("x", "1"), compact(0), compact(1), compact(1), compact(-1), get("x")],
        ),
        Scenario::new(
            "compact_keeps_latest_and_tombstones",
            vec![
                put("x", "1"),
                put("x", "2"),
                del("x"),
                put("y", "1"),
                put("z", "1"),
                del("z"),
                compact(5),
                get_at("x", 5),
                get_at("y", 5),
                all_at(5),
                all_at(6),
                compact(7),
                all_at(7),
                all(),
            ],
        ),
        Scenario::new(
            "compact_then_writes_and_history",
            vec![
                put("x", "1"),
                put("x", "2"),
                compact(2),
                put("x", "3"),
                put("y", "1"),
                get_at("x", 2),
                get_at("x", 3),
                get_at("x", 4),
                get_at("x", 1),
                Step::Range(RangeRequest { revision: 3, count_only: true, ..rr("\0", "\0") }),
            ],
        ),
        Scenario::new(
            "compact_then_wait",
            vec![
                put("x", "1"),
                put("x", "2"),
                put("x", "3"),
                compact(3),
                Step::Wait(Duration::from_millis(300)),
                get_at("x", 2),
                get_at("x", 3),
                compact(3),
            ],
        ),
    ]
}

fn restart_scenarios() -> Vec<Scenario> {
    vec![
        Scenario::new(
            "restart_preserves_state",
            vec![
                put("a", "1"),
                put("b", "2"),
                put("a", "3"),
                del("b"),
                put("c", "4"),
                compact(3),
                Step::Restart,
                all(),
                get_at("a", 3),
                get_at("a", 2),
                get_at("b", 4),
                compact(3),
                put("d", "5"),
                get("d"),
                get("a"),
            ],
        ),
        Scenario::new(
            "crash_restart_preserves_state",
            vec![
                grant(3000, 600),
                Step::Put(PutRequest { lease: 3000, ..pr("leased", "l") }),
                put("a", "1"),
                txn(vec![cmp("a", EQ, version(1))], vec![op_put("b", "2"), op_del("a")], vec![]),
                Step::CrashRestart,
                all(),
                get_at("a", 3),
                txn(vec![cmp("leased", EQ, lease(3000))], vec![op_put("c", "3")], vec![]),
                all(),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_plenty() {
        let scenarios = all_scenarios();
        let mut names: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate scenario names");
        assert!(before >= 60, "only {before} scenarios");
    }

    #[test]
    fn filter_matches_names_and_prefixes() {
        let picked = filter_by(all_scenarios(), "txn_empty, range_sort_*");
        let names: Vec<&str> = picked.iter().map(|s| s.name).collect();
        assert!(names.contains(&"txn_empty"));
        assert!(names.contains(&"range_sort_by_mod"));
        assert!(!names.contains(&"txn_empty_keys"));
        assert_eq!(filter_by(all_scenarios(), "").len(), all_scenarios().len());
    }
}
