//! Differential KV scenarios: every scenario in `compat_tests::scenarios` runs on a fresh reference
//! etcd 3.5.16 and on a fresh candidate server, and the two transcripts must be identical.
//! `KEEL_SCENARIO=name,prefix*` selects scenarios; `KEEL_COMPAT_CANDIDATE=etcd` checks etcd against
//! itself (proves the normalisation); `KEEL_COMPAT_JOBS` sets the parallelism.

use compat_tests::runner;
use compat_tests::scenario::run_differential;
use compat_tests::scenarios;
use compat_tests::ServerKind;

/// The server checked against etcd: the one line to switch (KEEL_COMPAT_CANDIDATE overrides it).
const CANDIDATE: ServerKind = ServerKind::Keel;

async fn check_all(selected: Vec<compat_tests::Scenario>, candidate: ServerKind) -> Result<(), String> {
    let items = selected.into_iter().map(|s| (s.name.to_string(), s)).collect();
    let what = format!("kv scenarios (etcd vs {candidate})");
    runner::check_all(&what, items, move |scenario| async move {
        run_differential(&scenario, ServerKind::Etcd, candidate).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_scenarios_match_etcd() {
    let candidate = ServerKind::from_env_or(CANDIDATE);
    if let Err(report) = check_all(scenarios::selected(), candidate).await {
        panic!("{report}");
    }
}

/// Two etcd members must always agree after normalisation; if they do not, the harness is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalisation_is_deterministic_on_etcd() {
    let picked = scenarios::filter_by(
        scenarios::all_scenarios(),
        "range_at_past_revisions,txn_nested,compact_keeps_latest_and_tombstones",
    );
    assert_eq!(picked.len(), 3);
    if let Err(report) = check_all(picked, ServerKind::Etcd).await {
        panic!("{report}");
    }
}
