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

    // --- lock and election (etcd serves them with clientv3's concurrency recipes) ---
    #[error("mutex: session is expired")]
    MutexSessionExpired,
    #[error("election: not leader")]
    ElectionNotLeader,
    #[error("election: no leader")]
    ElectionNoLeader,
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// A watch a lock or election recipe opened was refused at creation (auth). etcd's in-process
    /// clientv3 gets the watch server's cancel reason and hands it on as a plain error.
    #[error("recipe watch refused: {0}")]
    RecipeWatchRefused(Box<Error>),
    // --- auth (etcd's `auth` package errors) ---
    #[error(transparent)]
    Auth(#[from] AuthError),

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

    // --- downgrade (etcd's `Downgrade` RPC) ---
    #[error("wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
    #[error("invalid downgrade target version")]
    InvalidDowngradeTargetVersion,
    #[error("cluster has a downgrade job in progress")]
    DowngradeInProcess,
    #[error("no inflight downgrade job")]
    NoInflightDowngrade,
    /// etcd's `ErrUnknownMethod`, e.g. a Downgrade action it does not know.
    #[error("unknown method")]
    UnknownMethod,

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

/// etcd's auth errors (server/auth/store.go), with etcd's own `auth: ...` text. Most reach clients
/// translated to their `etcdserver: ...` form by `api/status.rs`; a few calls (Maintenance's admin
/// checks, Authenticate of a no-password user) send this text untranslated, as etcd does. They are
/// results of apply too, so they serialize into the replicated outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum AuthError {
    #[error("auth: root user does not exist")]
    RootUserNotExist,
    #[error("auth: root user does not have root role")]
    RootRoleNotExist,
    #[error("auth: user already exists")]
    UserAlreadyExist,
    #[error("auth: user name is empty")]
    UserEmpty,
    #[error("auth: user not found")]
    UserNotFound,
    #[error("auth: role already exists")]
    RoleAlreadyExist,
    #[error("auth: role not found")]
    RoleNotFound,
    #[error("auth: role name is empty")]
    RoleEmpty,
    #[error("auth: permission not given")]
    PermissionNotGiven,
    #[error("auth: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    #[error("auth: permission denied")]
    PermissionDenied,
    #[error("auth: role is not granted to the user")]
    RoleNotGranted,
    #[error("auth: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("auth: authentication is not enabled")]
    AuthNotEnabled,
    #[error("auth: revision in header is old")]
    AuthOldRevision,
    #[error("auth: invalid auth token")]
    InvalidAuthToken,
    #[error("auth: invalid auth management")]
    InvalidAuthMgmt,
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
    /// `keel snapshot save` could not get a snapshot from its endpoint.
    #[error("{0}")]
    Fetch(String),
    /// An encrypted backup could not be read or written (`snapshot::envelope`).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

/// Failures of Keel's encrypted backup envelope (`snapshot::envelope`). AEAD cannot tell a wrong
/// key from a modified file, so both are one error naming the chunk that failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not an encrypted Keel backup (no envelope magic at its start)")]
    NotEnvelope,
    #[error("{0} is an encrypted Keel backup: pass --decrypt-key-file")]
    KeyRequired(String),
    #[error("encrypted backup has format version {0}; this Keel reads version 1")]
    UnsupportedVersion(u8),
    #[error("encrypted backup uses algorithm {0}; this Keel knows 1 (XChaCha20-Poly1305)")]
    UnsupportedAlgorithm(u8),
    #[error("encrypted backup header is invalid: {0}")]
    BadHeader(String),
    #[error("encrypted backup is truncated: {0}")]
    Truncated(String),
    #[error(
        "encrypted backup failed authentication at chunk {chunk}: wrong key, or the file was damaged or tampered with"
    )]
    Authentication { chunk: u64 },
    #[error("encrypted backup would need more than {max} chunks")]
    TooManyChunks { max: u64 },
    #[error("key file {path}: {reason}")]
    BadKey { path: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl EnvelopeError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        EnvelopeError::Io { context: context.into(), source }
    }
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

/// Failures turning etcd's TLS settings into a rustls configuration, at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// etcd's wording (its `tlsutil.GetCipherSuite` lookup failing) for a name Go does not know.
    #[error("unexpected TLS cipher suite {0:?}")]
    UnknownCipherSuite(String),
    /// Every named TLS 1.2 suite is one Go knows but rustls does not implement (CBC, RSA key
    /// exchange, RC4, 3DES), so TLS 1.2 would have no suite left.
    #[error("none of the TLS 1.2 cipher suites {0:?} is supported by keel (only ECDHE with AES-GCM or ChaCha20-Poly1305 is)")]
    NoSupportedCipherSuite(Vec<String>),
    /// Go would fall back to the system's CA store; Keel does not read it.
    /// The field is the side's flag prefix (`peer-` for the peer port), so the message names the
    /// flags actually given.
    #[error("--{0}client-cert-auth needs --{0}trusted-ca-file: keel does not use the system certificate store")]
    ClientAuthWithoutCa(&'static str),
    /// `Config::validate` words this as etcd does for client URLs; this is the builder's own check.
    #[error("TLS key/cert (--cert-file, --key-file) must both be provided")]
    MissingCertOrKey,
    #[error("{what} {path}: {reason}")]
    File { what: &'static str, path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    /// An `https://` peer URL must be dialed with a CA to verify the peer against; Go would use the
    /// system store, which Keel does not read.
    #[error("https peer URL {0} needs --peer-trusted-ca-file: keel does not use the system certificate store")]
    PeerDialWithoutCa(String),
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
