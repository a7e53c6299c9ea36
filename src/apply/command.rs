//! The one command that travels through the raft log (etcd's `InternalRaftRequest`): a header naming
//! who asked, and exactly one write request. Its result is what apply hands back to the proposer.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    DowngradeRequest, DowngradeResponse, LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use crate::proto::serde_pb as pb;

/// Who proposed a command. Mirrors etcd's `RequestHeader` inside `InternalRaftRequest`: the id lets
/// the proposer match the applied result; username and auth revision are checked at apply time
/// (`apply/auth_gate.rs`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommandHeader {
    pub id: u64,
    pub username: String,
    pub auth_revision: u64,
}

/// One client write. Requests travel as their protobuf encoding so the log holds exactly what the
/// client sent, and so the log format is the wire format clients already depend on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Request {
    Put(#[serde(with = "pb")] PutRequest),
    DeleteRange(#[serde(with = "pb")] DeleteRangeRequest),
    Txn(#[serde(with = "pb")] TxnRequest),
    Compaction(#[serde(with = "pb")] CompactionRequest),
    /// Always carries the id (the proposer picks one when the client sent 0, as etcd's server
    /// does before proposing) and a TTL already raised to the minimum, so apply needs neither
    /// randomness nor this member's configuration.
    LeaseGrant(#[serde(with = "pb")] LeaseGrantRequest),
    LeaseRevoke(#[serde(with = "pb")] LeaseRevokeRequest),
    /// The leader's remaining-TTL snapshot of its leases (etcd's internal `LeaseCheckpoint`).
    LeaseCheckpoint(#[serde(with = "pb")] LeaseCheckpointRequest),
    /// etcd's `Alarm` (GET, ACTIVATE, DEACTIVATE): alarms are cluster state, so even a listing
    /// goes through the log, as in etcd.
    Alarm(#[serde(with = "pb")] AlarmRequest),
    /// etcd's internal `DowngradeInfoSet`, carried as the client's request after the edge
    /// validated it: ENABLE with the target already normalised to `major.minor.0`, or CANCEL.
    Downgrade(#[serde(with = "pb")] DowngradeRequest),
    /// Every auth change and auth query (etcd 3.5 sends them all through raft).
    Auth(crate::auth::request::AuthRequest),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RaftCommand {
    pub header: CommandHeader,
    pub request: Request,
}

impl fmt::Display for RaftCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.request {
            Request::Put(_) => "put",
            Request::DeleteRange(_) => "delete_range",
            Request::Txn(_) => "txn",
            Request::Compaction(_) => "compaction",
            Request::LeaseGrant(_) => "lease_grant",
            Request::LeaseRevoke(_) => "lease_revoke",
            Request::LeaseCheckpoint(_) => "lease_checkpoint",
            Request::Alarm(_) => "alarm",
            Request::Downgrade(_) => "downgrade",
            Request::Auth(_) => "auth",
        };
        write!(f, "{kind}#{}", self.header.id)
    }
}

impl RaftCommand {
    /// Size of the command as etcd measures it against `--max-request-bytes`: the marshalled internal
    /// raft request, i.e. the request plus a small header envelope.
    pub fn encoded_len(&self) -> usize {
        use prost::Message;
        let body = match &self.request {
            Request::Put(r) => r.encoded_len(),
            Request::DeleteRange(r) => r.encoded_len(),
            Request::Txn(r) => r.encoded_len(),
            Request::Compaction(r) => r.encoded_len(),
            Request::LeaseGrant(r) => r.encoded_len(),
            Request::LeaseRevoke(r) => r.encoded_len(),
            Request::LeaseCheckpoint(r) => r.encoded_len(),
            Request::Alarm(r) => r.encoded_len(),
            Request::Downgrade(r) => r.encoded_len(),
            Request::Auth(r) => r.encoded_len(),
        };
        // field key + length prefix of the request, plus the header message
        // (2-byte key for field 100, its length, and the id as a varint), plus the username and
        // auth revision when a user is named.
        let user = if self.header.username.is_empty() {
            0
        } else {
            2 + self.header.username.len() + 1 + prost::encoding::encoded_len_varint(self.header.auth_revision)
        };
        body + 1
            + prost::length_delimiter_len(body)
            + 3
            + 1
            + prost::encoding::encoded_len_varint(self.header.id)
            + user
    }
}

/// The successful result of applying one command.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Response {
    Put(#[serde(with = "pb")] PutResponse),
    DeleteRange(#[serde(with = "pb")] DeleteRangeResponse),
    Txn(#[serde(with = "pb")] TxnResponse),
    Compaction(#[serde(with = "pb")] CompactionResponse),
    /// Entries that carry no client command (blank, membership).
    None,
    LeaseGrant(#[serde(with = "pb")] LeaseGrantResponse),
    LeaseRevoke(#[serde(with = "pb")] LeaseRevokeResponse),
    LeaseCheckpoint(#[serde(with = "pb")] LeaseCheckpointResponse),
    Alarm(#[serde(with = "pb")] AlarmResponse),
    Downgrade(#[serde(with = "pb")] DowngradeResponse),
    Auth(crate::auth::request::AuthResponse),
}

/// What apply produced for one entry. A client-caused failure is a *result* (the same on every
/// member), so it is carried here rather than reported to raft as a storage error.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CommandResult {
    pub outcome: Result<Response, ApplyError>,
}

impl fmt::Display for CommandResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(_) => write!(f, "ok"),
            Err(e) => write!(f, "err({e:?})"),
        }
    }
}

/// The client-caused errors apply can end in, in a form that can be logged and replicated.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ApplyError {
    KeyNotFound,
    ValueProvided,
    LeaseProvided,
    LeaseNotFound,
    DuplicateKey,
    TooManyOps,
    EmptyKey,
    Compacted,
    FutureRevision,
    NoSpace,
    /// Anything else, by message (storage failures end apply instead; see applier.rs).
    Other(String),
    LeaseExists,
    LeaseTtlTooLarge,
    Corrupt,
    Auth(crate::error::AuthError),
}

impl From<Error> for ApplyError {
    fn from(e: Error) -> Self {
        match e {
            Error::KeyNotFound => ApplyError::KeyNotFound,
            Error::ValueProvided => ApplyError::ValueProvided,
            Error::LeaseProvided => ApplyError::LeaseProvided,
            Error::LeaseNotFound => ApplyError::LeaseNotFound,
            Error::DuplicateKey => ApplyError::DuplicateKey,
            Error::TooManyOps => ApplyError::TooManyOps,
            Error::EmptyKey => ApplyError::EmptyKey,
            Error::Compacted => ApplyError::Compacted,
            Error::FutureRevision => ApplyError::FutureRevision,
            Error::NoSpace => ApplyError::NoSpace,
            Error::LeaseExists => ApplyError::LeaseExists,
            Error::LeaseTtlTooLarge => ApplyError::LeaseTtlTooLarge,
            Error::Corrupt => ApplyError::Corrupt,
            Error::Auth(a) => ApplyError::Auth(a),
            other => ApplyError::Other(other.to_string()),
        }
    }
}

impl From<ApplyError> for Error {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::KeyNotFound => Error::KeyNotFound,
            ApplyError::ValueProvided => Error::ValueProvided,
            ApplyError::LeaseProvided => Error::LeaseProvided,
            ApplyError::LeaseNotFound => Error::LeaseNotFound,
            ApplyError::DuplicateKey => Error::DuplicateKey,
            ApplyError::TooManyOps => Error::TooManyOps,
            ApplyError::EmptyKey => Error::EmptyKey,
            ApplyError::Compacted => Error::Compacted,
            ApplyError::FutureRevision => Error::FutureRevision,
            ApplyError::NoSpace => Error::NoSpace,
            ApplyError::Other(m) => Error::Internal(m),
            ApplyError::LeaseExists => Error::LeaseExists,
            ApplyError::LeaseTtlTooLarge => Error::LeaseTtlTooLarge,
            ApplyError::Corrupt => Error::Corrupt,
            ApplyError::Auth(a) => Error::Auth(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips_through_postcard() {
        let cmd = RaftCommand {
            header: CommandHeader { id: 7, username: "root".into(), auth_revision: 3 },
            request: Request::Put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }),
        };
        let bytes = postcard::to_allocvec(&cmd).unwrap();
        let back: RaftCommand = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, cmd);
    }
}
