//! The watch scenario catalogue (see `watch.rs` for the step model): keys, ranges and prefixes,
//! ids, start revisions, prev_kv, filters, atomic revisions, compaction, cancel, progress,
//! fragments, half-closed streams, several streams, and etcd's error answers.

use std::time::Duration;

use keel::proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};

use crate::watch::{
    collect, compact, create, create_prefix, del, open, put, send_cancel, send_create, send_progress, WStep,
    WatchScenario,
};

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

fn op_del(key: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    }
}

fn txn(ops: Vec<RequestOp>) -> WStep {
    WStep::Txn(TxnRequest { compare: vec![], success: ops, failure: vec![] })
}

fn big(n: usize) -> String {
    "x".repeat(n)
}

pub fn all_scenarios() -> Vec<WatchScenario> {
    vec![
        WatchScenario::new(
            "watch_key_prefix_range_fromkey",
            vec![
                put("a", "0"),
                open(0),
                send_create(0, create("a", "")),
                send_create(0, create_prefix("p/")),
                send_create(0, create("b", "d")),
                send_create(0, create("m", "\0")),
                collect(0),
                put("a", "1"),
                put("p/x", "1"),
                put("p", "no"),
                put("b", "1"),
                put("c", "1"),
                put("d", "no"),
                put("m", "1"),
                put("zz", "1"),
                del("a", ""),
                del("b", "z"),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_ids_auto_and_chosen",
            vec![
                open(0),
                send_create(0, create("a", "")),
                send_create(0, with_id(create("a", ""), 2)),
                send_create(0, create("a", "")),
                send_create(0, create("a", "")),
                send_create(0, with_id(create("b", ""), 3)),
                send_create(0, with_id(create("b", ""), -7)),
                send_create(0, with_id(create("b", ""), 100)),
                send_create(0, with_id(create("b", ""), -1)),
                collect(0),
                send_cancel(0, 1),
                send_cancel(0, 1),
                send_cancel(0, 99),
                send_create(0, create("a", "")),
                collect(0),
                put("a", "1"),
                put("b", "1"),
                collect(0),
                open(1),
                send_create(1, create("a", "")),
                collect(1),
            ],
        ),
        WatchScenario::new(
            "watch_key_rules_and_empty_ranges",
            vec![
                put("a", "1"),
                open(0),
                send_create(0, create("", "")),
                send_create(0, create("", "\0")),
                send_create(0, create("b", "a")),
                send_create(0, create("b", "b")),
                send_create(0, create("\0", "\0")),
                collect(0),
                put("\0", "zero"),
                put("b", "1"),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_start_revisions",
            vec![
                put("a", "1"),
                put("a", "2"),
                put("b", "1"),
                del("a", ""),
                open(0),
                send_create(0, from_rev(create("a", "c"), 1)),
                send_create(0, from_rev(create("a", "c"), 3)),
                send_create(0, from_rev(create("a", "c"), 5)),
                send_create(0, from_rev(create("a", "c"), 6)),
                send_create(0, from_rev(create("a", "c"), 8)),
                collect(0),
                put("a", "3"),
                put("b", "2"),
                put("a", "4"),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_negative_start_revision",
            vec![
                put("a", "1"),
                put("a", "2"),
                // Before any compaction -1 is not "compacted": no history, then new events.
                // (Alone on purpose: etcd also skips the history of any other watcher that
                // catches up in the same pass; Keel does not copy that.)
                open(1),
                send_create(1, from_rev(create("a", ""), -1)),
                collect(1),
                open(0),
                send_create(0, from_rev(create("a", ""), -5)),
                collect(0),
                put("a", "2"),
                collect(0),
                compact(2),
                send_create(0, from_rev(create("a", ""), -1)),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_prev_kv",
            vec![
                put("k", "v1"),
                open(0),
                send_create(0, with_prev(create_prefix("k"))),
                send_create(0, create_prefix("k")),
                collect(0),
                put("k", "v2"),
                del("k", ""),
                put("k", "v3"),
                put("k2", "x"),
                txn(vec![op_put("k", "v4"), op_del("k2", "")]),
                collect(0),
                send_create(0, from_rev(with_prev(create_prefix("k")), 1)),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_filters",
            vec![
                open(0),
                send_create(0, with_filters(create_prefix("f"), vec![0])),
                send_create(0, with_filters(create_prefix("f"), vec![1])),
                send_create(0, with_filters(create_prefix("f"), vec![0, 1])),
                send_create(0, with_filters(create_prefix("f"), vec![5])),
                collect(0),
                put("f1", "a"),
                put("f2", "b"),
                del("f1", ""),
                txn(vec![op_put("f3", "c"), op_del("f2", "")]),
                collect(0),
                send_create(0, from_rev(with_filters(create_prefix("f"), vec![0]), 1)),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_txn_is_one_response",
            vec![
                put("t1", "a"),
                put("t2", "b"),
                put("t3", "c"),
                open(0),
                send_create(0, with_prev(create_prefix("t"))),
                send_create(0, create("t2", "")),
                collect(0),
                txn(vec![op_put("t4", "d"), op_del("t1", ""), op_put("t2", "B"), op_put("t5", "e")]),
                del("t", "u"),
                collect(0),
                send_create(0, from_rev(create_prefix("t"), 2)),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_compacted_start_revision",
            vec![
                put("c", "1"),
                put("c", "2"),
                put("c", "3"),
                del("c", ""),
                put("c", "4"),
                compact(4),
                open(0),
                send_create(0, from_rev(create("c", ""), 2)),
                collect(0),
                send_create(0, from_rev(create("c", ""), 3)),
                send_create(0, from_rev(with_prev(create("c", "")), 4)),
                collect(0),
                // The compacted watcher keeps its id: a progress request waits for it...
                send_progress(0),
                collect(0),
                put("c", "5"),
                collect(0),
                // ...and canceling it answers like any cancel.
                send_cancel(0, 0),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_cancel",
            vec![
                open(0),
                send_create(0, create("x", "")),
                send_create(0, create("x", "")),
                collect(0),
                put("x", "1"),
                collect(0),
                send_cancel(0, 0),
                collect(0),
                put("x", "2"),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_progress_requests",
            vec![
                put("a", "1"),
                open(0),
                send_progress(0),
                collect(0),
                send_create(0, create("a", "")),
                send_create(0, create_prefix("z")),
                collect(0),
                send_progress(0),
                collect(0),
                put("a", "2"),
                put("q", "1"),
                collect(0),
                send_progress(0),
                collect(0),
                send_create(0, from_rev(create("a", ""), 1)),
                send_progress(0),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_fragment",
            vec![
                open(0),
                // Five 500 KB values: one catch-up response of 2.5 MB, above etcd's 2 MiB
                // fragment threshold (max-request-bytes + 512 KiB).
                put("big1", &big(500_000)),
                put("big2", &big(500_000)),
                put("big3", &big(500_000)),
                put("big4", &big(500_000)),
                put("big5", &big(500_000)),
                send_create(0, with_fragment(from_rev(create_prefix("big"), 1))),
                collect(0),
                send_create(0, from_rev(create_prefix("big"), 1)),
                collect(0),
                // Each synced revision is small: no fragments.
                send_create(0, with_fragment(create_prefix("big"))),
                collect(0),
                txn(vec![op_put("big6", &big(400_000)), op_put("big7", &big(400_000)), op_put("big8", &big(400_000))]),
                collect(0),
                // With prev_kv the next synced revision is 2.4 MB: fragmented when asked.
                send_create(0, with_fragment(with_prev(create_prefix("big")))),
                send_create(0, with_prev(create_prefix("big"))),
                collect(0),
                txn(vec![op_put("big6", &big(400_001)), op_put("big7", &big(400_001)), op_put("big8", &big(400_001))]),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_half_closed_stream_keeps_delivering",
            vec![
                open(0),
                send_create(0, create("h", "")),
                collect(0),
                WStep::CloseSend { stream: 0 },
                put("h", "1"),
                put("h", "2"),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_streams_are_independent",
            vec![
                open(0),
                open(1),
                WStep::Open { stream: 2, require_leader: true },
                send_create(0, create("s", "")),
                send_create(1, create("s", "")),
                send_create(1, create("s", "")),
                send_create(2, with_prev(create("s", ""))),
                collect(0),
                collect(1),
                collect(2),
                put("s", "1"),
                put("s", "2"),
                collect(0),
                collect(1),
                collect(2),
                send_cancel(1, 0),
                send_progress(2),
                collect(1),
                collect(2),
            ],
        ),
        WatchScenario::new(
            "watch_empty_request_is_ignored",
            vec![
                open(0),
                WStep::Send { stream: 0, request: WatchRequest { request_union: None } },
                send_create(0, create("e", "")),
                collect(0),
                put("e", "1"),
                collect(0),
            ],
        ),
        WatchScenario::new(
            "watch_catch_up_batches_1000_revisions",
            std::iter::once(open(0))
                .chain((0..1010).map(|i| put(if i % 2 == 0 { "r" } else { "s" }, &i.to_string())))
                .chain([
                    send_create(0, from_rev(create("r", "t"), 1)),
                    send_create(0, from_rev(create("r", ""), 1)),
                    collect(0),
                ])
                .collect(),
        ),
        WatchScenario::new(
            "watch_progress_notify_periodic",
            vec![
                put("p", "0"),
                open(0),
                send_create(0, with_progress(create("p", ""))),
                send_create(0, create("p", "")),
                // First tick after 1 s (+ up to 10 % jitter).
                WStep::CollectFor { stream: 0, duration: Duration::from_millis(1600) },
                put("p", "1"),
                // Events since the last tick suppress the next notification.
                WStep::CollectFor { stream: 0, duration: Duration::from_millis(600) },
                WStep::CollectFor { stream: 0, duration: Duration::from_millis(1100) },
            ],
        )
        .with_flags(&["--experimental-watch-progress-notify-interval=1s"]),
    ]
}

fn with_id(mut c: WatchCreateRequest, id: i64) -> WatchCreateRequest {
    c.watch_id = id;
    c
}

fn from_rev(mut c: WatchCreateRequest, rev: i64) -> WatchCreateRequest {
    c.start_revision = rev;
    c
}

fn with_prev(mut c: WatchCreateRequest) -> WatchCreateRequest {
    c.prev_kv = true;
    c
}

fn with_filters(mut c: WatchCreateRequest, filters: Vec<i32>) -> WatchCreateRequest {
    c.filters = filters;
    c
}

fn with_fragment(mut c: WatchCreateRequest) -> WatchCreateRequest {
    c.fragment = true;
    c
}

fn with_progress(mut c: WatchCreateRequest) -> WatchCreateRequest {
    c.progress_notify = true;
    c
}

/// Scenarios chosen by `KEEL_SCENARIO` (same syntax as the KV scenarios), or all.
pub fn selected() -> Vec<WatchScenario> {
    all_scenarios().into_iter().filter(|s| crate::chosen(s.name)).collect()
}
