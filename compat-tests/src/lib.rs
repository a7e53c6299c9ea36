//! Compatibility harness: starts the reference etcd 3.5.16 and Keel as child processes, replays the same
//! client requests (gRPC KV scenarios, etcdctl command sequences) on each, and compares what a client
//! sees, after masking only what legitimately differs between two etcd members.

pub mod diff;
pub mod etcdctl;
pub mod etcdctl_watch;
pub mod lease_ids;
pub mod lease_scenarios;
pub mod runner;
pub mod scenario;
pub mod scenarios;
pub mod server;
pub mod watch;
pub mod watch_client;
pub mod watch_scenarios;

pub use scenario::{run_differential, Outcome, Scenario, Step};
pub use server::{HarnessError, Server, ServerKind};
