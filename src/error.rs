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
    #[error("request timed out, possibly due to connection lost")]
    TimeoutConnectionLost,
    /// A proposal made while there is no leader: etcd's raft blocks it until the request timeout
    /// and the handler returns the bare context error (an etcd quirk: not `request timed out`).
    #[error("context deadline exceeded")]
    ProposalDeadline,

    // --- membership (etcd's membership errors behind `Cluster`, `MoveLeader`) ---
    #[error("member ID already exist")]
    MemberExists,
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    #[error("re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    #[error("given member URLs are invalid")]
    MemberBadUrls,
    #[error("member not found")]
    MemberNotFound,
    #[error("can only promote a learner member")]
    MemberNotLearner,
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("too many learner members in cluster")]
    TooManyLearners,
    #[error("rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("unhealthy cluster")]
    Unhealthy,
    #[error("bad leader transferee")]
    BadLeaderTransferee,
    #[error("request timed out, leader transfer took too long")]
    LeaderTransferTimeout,

    // --- failures of our own machinery (not the client's fault) ---
    #[error("storage: {0}")]
    Storage(String),
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error whose text is `text`, for errors that crossed a boundary as text (a batched read
    /// round, an answer from the leader): the server and membership errors come back as
    /// themselves, anything else as `Internal`.
    pub fn from_text(text: &str) -> Error {
        let known = [
            Error::TooManyRequests,
            Error::NoLeader,
            Error::NotLeader,
            Error::LeaderChanged,
            Error::Timeout,
            Error::TimeoutConnectionLost,
            Error::ProposalDeadline,
            Error::Stopped,
            Error::Corrupt,
            Error::RequestTooLarge,
            Error::LeaseNotFound,
            Error::MemberExists,
            Error::PeerUrlExists,
            Error::MemberNotEnoughStarted,
            Error::MemberBadUrls,
            Error::MemberNotFound,
            Error::MemberNotLearner,
            Error::LearnerNotReady,
            Error::TooManyLearners,
            Error::Unhealthy,
            Error::BadLeaderTransferee,
            Error::LeaderTransferTimeout,
        ];
        known.into_iter().find(|e| e.to_string() == text).unwrap_or_else(|| Error::Internal(text.to_string()))
    }
}

/// Failures reading or writing etcd's snapshot file (a bbolt database with a sha256 trailer).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not a bbolt database we can read: bad meta pages, out-of-range page ids,
    /// element offsets past their page, or a tree deeper than any real file.
    #[error("invalid bbolt file: {0}")]
    Format(String),
    /// etcdutl's wording for a trailer that does not match the database bytes.
    #[error("expected sha256 {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
    /// etcdutl refuses a file without the trailer unless `--skip-hash-check` is given.
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    /// A required etcd bucket or row is absent or malformed.
    #[error("invalid etcd snapshot: {0}")]
    Schema(String),
    /// Keys handed to the writer must ascend strictly within a bucket.
    #[error("bbolt writer: keys out of order in a bucket")]
    Unsorted,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("storage: {0}")]
    Storage(String),
}

impl SnapshotError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        SnapshotError::Io { context: context.into(), source }
    }
}

impl From<SnapshotError> for Error {
    fn from(e: SnapshotError) -> Self {
        Error::Internal(format!("snapshot: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_that_cross_members_as_text_come_back_as_themselves() {
        for e in [Error::NotLeader, Error::MemberNotFound, Error::LearnerNotReady, Error::ProposalDeadline] {
            let text = e.to_string();
            assert_eq!(Error::from_text(&text).to_string(), text);
            assert!(!matches!(Error::from_text(&text), Error::Internal(_)), "{text} came back as Internal");
        }
        assert!(matches!(Error::from_text("disk on fire"), Error::Internal(m) if m == "disk on fire"));
    }
}
