//! etcdctl 3.5.16 against the reference etcd and the candidate: the same command sequences must print
//! the same stdout/stderr and exit with the same code, after masking ids, ports and timings.
//! `KEEL_SCENARIO` and `KEEL_COMPAT_CANDIDATE` work as in kv_diff.

use compat_tests::etcdctl::{run_differential, selected_cases};
use compat_tests::runner::check_all;
use compat_tests::ServerKind;

/// The server checked against etcd: the one line to switch (KEEL_COMPAT_CANDIDATE overrides it).
const CANDIDATE: ServerKind = ServerKind::Keel;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_outputs_match_etcd() {
    let candidate = ServerKind::from_env_or(CANDIDATE);
    let items = selected_cases().into_iter().map(|c| (c.name.to_string(), c)).collect();
    let checked = check_all(&format!("etcdctl cases (etcd vs {candidate})"), items, move |case| async move {
        run_differential(&case, ServerKind::Etcd, candidate).await
    })
    .await;
    if let Err(report) = checked {
        panic!("{report}");
    }
}
