//! Compatibility harness: starts the reference etcd 3.5.16 and Keel as child processes, replays the same
//! client requests (gRPC KV scenarios, etcdctl command sequences) on each, and compares what a client
//! sees, after masking only what legitimately differs between two etcd members.

pub mod client_text;
pub mod cluster;
pub mod diff;
pub mod etcdctl;
pub mod etcdctl_watch;
pub mod history;
pub mod http;
pub mod lease_ids;
pub mod lease_scenarios;
pub mod linz;
pub mod linz_cluster;
pub mod linz_watch;
pub mod porcupine;
pub mod proxy;
pub mod runner;
pub mod scenario;
pub mod scenarios;
pub mod server;
pub mod snapshots;
pub mod watch;
pub mod watch_client;
pub mod watch_scenarios;

pub use scenario::{run_differential, Outcome, Scenario, Step};
pub use server::{HarnessError, Server, ServerKind};

/// Whether a scenario or case called `name` runs: `KEEL_SCENARIO` holds comma-separated names, each
/// exact or a `prefix*`; unset or empty runs everything. One rule for every kind of scenario.
pub fn chosen(name: &str) -> bool {
    name_matches(&std::env::var("KEEL_SCENARIO").unwrap_or_default(), name)
}

/// `chosen` against an explicit filter.
pub fn name_matches(filter: &str, name: &str) -> bool {
    let mut patterns = filter.split(',').map(str::trim).filter(|p| !p.is_empty()).peekable();
    patterns.peek().is_none()
        || patterns.any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        })
}
