//! Differential watch scenarios (`compat_tests::watch_scenarios`): each runs on a fresh reference
//! etcd 3.5.16 and a fresh candidate, and what every stream received must be identical.
//! `KEEL_SCENARIO`, `KEEL_COMPAT_CANDIDATE`, `KEEL_COMPAT_JOBS` and `KEEL_COMPAT_DUMP` work as in
//! kv_diff.

use compat_tests::runner::check_all;
use compat_tests::watch::run_differential;
use compat_tests::watch_scenarios::selected;
use compat_tests::ServerKind;

/// The server checked against etcd: the one line to switch (KEEL_COMPAT_CANDIDATE overrides it).
const CANDIDATE: ServerKind = ServerKind::Keel;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_scenarios_match_etcd() {
    let candidate = ServerKind::from_env_or(CANDIDATE);
    let items = selected().into_iter().map(|s| (s.name.to_string(), s)).collect();
    let checked = check_all(&format!("watch scenarios (etcd vs {candidate})"), items, move |scenario| async move {
        run_differential(&scenario, ServerKind::Etcd, candidate).await
    })
    .await;
    if let Err(report) = checked {
        panic!("{report}");
    }
}
