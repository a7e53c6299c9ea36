//! Keel: an etcd v3 server. Clients speak etcd 3.5's gRPC API to `api` (the edge), which validates
//! and maps errors; writes become one raft command each (`propose`) that openraft (`raft`) makes
//! durable in our write-ahead log (`wal`) and hands, once committed, to `apply`, which runs it
//! deterministically against the revisioned store (`mvcc`) kept behind one storage trait
//! (`storage`, sled or redb). Reads (`read`) confirm leadership through raft's read index and then
//! read `mvcc` directly, never through the log. `node` is the handle every service shares, `server`
//! boots and stops it all, `config` speaks etcd's flags, and `auto_compact` is the leader's
//! periodic Compact proposer. After each commit `apply` publishes the revision's events to the watch
//! hub (`watch`), which feeds synced watchers at once and lets the others catch up from `mvcc`
//! history; `api/watch.rs` serves the streams.
//!
//! Clusters: members reach each other over the peer service (`raft/network.rs` client,
//! `raft/peer_service.rs` server); a follower hands what only the leader can do (writes, read
//! indexes, keep-alives, membership changes) to it through `forward`; `membership` maps etcd's
//! member operations onto openraft's replicated membership.
//!
//! Leases: `apply` keeps the replicated lease state in `lease` (the lessor: TTLs, checkpoints,
//! attached keys); the leader's `lease_clock` holds the deadlines, answers keep-alives without
//! raft and proposes revokes and remaining-TTL checkpoints through `propose`.
//!
//! Auth: `auth` holds users, roles, permissions and tokens; `apply` changes it in log order and
//! checks writes against it (`apply/auth_gate.rs`); the edge reads the `token` metadata
//! (`api/auth.rs`) and `read` checks reads before serving them.
//! HTTP on the client port: `api/gateway.rs` serves etcd's JSON gateway by calling the gRPC
//! services in-process, plus `/health`, `/version` and `/metrics`; `metrics` holds the counters
//! that the WAL, `propose`, `mvcc` and a gRPC layer bump, and renders them in Prometheus's format.

pub mod api;
pub mod apply;
pub mod auth;
pub mod auto_compact;
pub mod config;
pub mod error;
pub mod forward;
pub mod lease;
pub mod lease_clock;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod propose;
pub mod proto;
pub mod raft;
pub mod read;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod storage;
pub mod wal;
pub mod watch;
