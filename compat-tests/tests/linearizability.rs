//! Linearizability and watch guarantees of a cluster under faults (leader kill + restart, member
//! pause, leader partition + heal), checked offline on recorded histories. The fault scenarios run
//! on a three-member Keel cluster; `KEEL_LINZ_TARGET=etcd` runs them on a real three-member etcd
//! 3.5.16 instead, which re-proves the harness (it passes there too). A fault-free smoke run checks
//! a single member with the same traffic and checks. `KEEL_SOAK=1` adds a long mixed-fault run
//! (`KEEL_LINZ_SOAK_SECS`, default 300).

use std::time::Duration;

use compat_tests::history::Traffic;
use compat_tests::linz::{run, Fault, RunConfig};
use compat_tests::server::ServerKind;
use compat_tests::watch_client::{seed, soak};

/// The runs share two cores: one cluster at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Implementation under test for the cluster scenarios.
fn target() -> ServerKind {
    match std::env::var("KEEL_LINZ_TARGET").as_deref() {
        Ok("etcd") => ServerKind::Etcd,
        _ => ServerKind::Keel,
    }
}

async fn scenario(kind: ServerKind, size: usize, fault: Fault, secs: u64) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cfg = RunConfig {
        kind,
        size,
        duration: Duration::from_secs(secs),
        fault,
        traffic: Traffic::default(),
        seed: seed(),
        keep_failures: true,
    };
    eprintln!("linz: {kind} x{size}, {fault:?}, {secs} s, seed {} (KEEL_SEED)", cfg.seed);
    let report = run(&cfg).await.expect("run");
    eprintln!("{report}");
    assert!(report.violations.is_empty(), "{kind} x{size} under {fault:?}:\n{report}");
    // A run that recorded nearly nothing proves nothing.
    assert!(report.ops > 200 && report.final_rev > 50, "too little traffic:\n{report}");
    if fault != Fault::None {
        assert!(!report.faults.is_empty(), "no fault was injected:\n{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_and_restart() {
    scenario(target(), 3, Fault::KillLeader, 18).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_pause() {
    scenario(target(), 3, Fault::PauseMember, 18).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_partition_then_heal() {
    scenario(target(), 3, Fault::PartitionLeader, 18).await;
}

/// Single-member Keel, no faults: the same traffic, model and watch checks (etcd with
/// `KEEL_LINZ_TARGET=etcd`, to re-prove the harness).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_member_smoke() {
    let kind = match std::env::var("KEEL_LINZ_TARGET").as_deref() {
        Ok("etcd") => ServerKind::Etcd,
        _ => ServerKind::Keel,
    };
    scenario(kind, 1, Fault::None, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_mixed_faults() {
    if !soak() {
        eprintln!("skipped: set KEEL_SOAK=1");
        return;
    }
    let secs = std::env::var("KEEL_LINZ_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    scenario(target(), 3, Fault::Mixed, secs).await;
}

/// The checks have teeth on a real cluster: serializable reads, which etcd serves from a member's
/// local state, lag behind acknowledged writes on followers (already without faults; for seconds on
/// a partitioned member), and the run must report them as not linearizable. Always against etcd,
/// whose behaviour here is documented. Whether a stale read happens within one short run is up to
/// timing (a CI run once saw none), so this runs with `KEEL_SOAK=1`; in CI the checker's rejections
/// are pinned by its unit tests on constructed histories (`compat_tests::porcupine`, `linz_watch`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_serializable_reads_are_caught() {
    if !soak() {
        eprintln!("skipped: set KEEL_SOAK=1 (a stale read within one short run depends on timing)");
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let cfg = RunConfig {
        kind: ServerKind::Etcd,
        size: 3,
        duration: Duration::from_secs(8),
        fault: Fault::PartitionLeader,
        traffic: Traffic { stale_reads: true, ..Traffic::default() },
        seed: seed(),
        keep_failures: false,
    };
    let report = run(&cfg).await.expect("run");
    eprintln!("{report}");
    assert!(
        report.violations.iter().any(|v| v.starts_with("global model: not linearizable")),
        "stale reads from a partitioned member went unnoticed:\n{report}"
    );
    // Only the reads were wrong: writes, watches and final states still check out.
    assert!(
        report.violations.iter().all(|v| v.contains("model: not linearizable")),
        "unexpected violations:\n{report}"
    );
}
