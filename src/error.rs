//! Domain errors shared by every layer. Nothing here knows about gRPC: `api/status.rs` is the one
//! place that turns an [`Error`] into etcd's gRPC code and exact message.

use std::io;

/// Every error a request can end in. Variants a client caused (bad input, compare targets, missing
/// lease) are produced deterministically at validation or apply time; the others come from the
/// server's own machinery (storage, consensus, shutdown).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- request validation (etcd's rpctypes, InvalidArgument) ---
    #[error("key is not provided")]
    EmptyKey,
    #[error("key not found")]
    KeyNotFound,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("request is too large")]
    RequestTooLarge,
    #[error("invalid sort option")]
    InvalidSortOption,

    // --- mvcc ---
    #[error("required revision has been compacted")]
    Compacted,
    #[error("required revision is a future revision")]
    FutureRevision,
    #[error("database space exceeded")]
    NoSpace,

    // --- watch (etcd's mvcc watch errors; they reach clients as a `cancel_reason`) ---
    #[error("watcher range is empty")]
    WatcherRangeEmpty,
    #[error("duplicate watch ID provided on the WatchStream")]
    DuplicateWatchId,

    // --- lease ---
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,

    // --- server / consensus ---
    #[error("too many requests")]
    TooManyRequests,
    #[error("no leader")]
    NoLeader,
    #[error("not leader")]
    NotLeader,
    #[error("leader changed")]
    LeaderChanged,
    #[error("request timed out")]
    Timeout,
    #[error("server stopped")]
    Stopped,
    #[error("corrupt cluster")]
    Corrupt,

    // --- failures of our own machinery (not the client's fault) ---
    #[error("storage: {0}")]
    Storage(String),
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
