//! The one place an [`Error`] becomes a gRPC status: etcd's code and etcd's exact message
//! (`api/v3rpc/rpctypes`), because clients match on the text.

use tonic::{Code, Status};

use crate::error::{AuthError, Error};

/// etcd's gRPC code and message for `e`.
pub fn code_and_message(e: &Error) -> (Code, String) {
    let (code, msg): (Code, &str) = match e {
        Error::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
        Error::KeyNotFound => (Code::InvalidArgument, "etcdserver: key not found"),
        Error::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
        Error::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
        Error::TooManyOps => (Code::InvalidArgument, "etcdserver: too many operations in txn request"),
        Error::DuplicateKey => (Code::InvalidArgument, "etcdserver: duplicate key given in txn request"),
        Error::RequestTooLarge => (Code::InvalidArgument, "etcdserver: request is too large"),
        Error::InvalidSortOption => (Code::InvalidArgument, "etcdserver: invalid sort option"),
        Error::Compacted => (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"),
        Error::FutureRevision => (Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision"),
        Error::NoSpace => (Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
        Error::LeaseNotFound => (Code::NotFound, "etcdserver: requested lease not found"),
        Error::LeaseExists => (Code::FailedPrecondition, "etcdserver: lease already exists"),
        Error::LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
        Error::TooManyRequests => (Code::ResourceExhausted, "etcdserver: too many requests"),
        Error::NoLeader => (Code::Unavailable, "etcdserver: no leader"),
        Error::NotLeader => (Code::FailedPrecondition, "etcdserver: not leader"),
        Error::LeaderChanged => (Code::Unavailable, "etcdserver: leader changed"),
        Error::Timeout => (Code::Unavailable, "etcdserver: request timed out"),
        Error::Stopped => (Code::Unavailable, "etcdserver: server stopped"),
        Error::Corrupt => (Code::DataLoss, "etcdserver: corrupt cluster"),
        Error::WrongDowngradeVersionFormat => {
            (Code::InvalidArgument, "etcdserver: wrong downgrade target version format")
        }
        Error::InvalidDowngradeTargetVersion => (Code::InvalidArgument, "etcdserver: invalid downgrade target version"),
        Error::DowngradeInProcess => (Code::FailedPrecondition, "etcdserver: cluster has a downgrade job in progress"),
        Error::NoInflightDowngrade => (Code::FailedPrecondition, "etcdserver: no inflight downgrade job"),
        // Not in etcd's gRPC error table, so it reaches clients untranslated (Unknown).
        Error::UnknownMethod => (Code::Unknown, "etcdserver: unknown method"),
        Error::Auth(a) => auth_code_and_message(a),
        Error::TimeoutConnectionLost => {
            (Code::Unavailable, "etcdserver: request timed out, possibly due to connection lost")
        }
        // grpc-go turns the context error etcd's handler returns into this code and text.
        Error::ProposalDeadline => (Code::DeadlineExceeded, "context deadline exceeded"),
        Error::MemberExists => (Code::FailedPrecondition, "etcdserver: member ID already exist"),
        Error::PeerUrlExists => (Code::FailedPrecondition, "etcdserver: Peer URLs already exists"),
        Error::MemberNotEnoughStarted => {
            (Code::FailedPrecondition, "etcdserver: re-configuration failed due to not enough started members")
        }
        Error::MemberBadUrls => (Code::InvalidArgument, "etcdserver: given member URLs are invalid"),
        Error::MemberNotFound => (Code::NotFound, "etcdserver: member not found"),
        Error::MemberNotLearner => (Code::FailedPrecondition, "etcdserver: can only promote a learner member"),
        Error::LearnerNotReady => {
            (Code::FailedPrecondition, "etcdserver: can only promote a learner member which is in sync with leader")
        }
        Error::TooManyLearners => (Code::FailedPrecondition, "etcdserver: too many learner members in cluster"),
        Error::Unhealthy => (Code::Unavailable, "etcdserver: unhealthy cluster"),
        Error::NotSupportedForLearner => (Code::Unavailable, "etcdserver: rpc not supported for learner"),
        Error::BadLeaderTransferee => (Code::FailedPrecondition, "etcdserver: bad leader transferee"),
        // etcd returns this one unmapped, so clients see code Unknown.
        Error::LeaderTransferTimeout => (Code::Unknown, "etcdserver: request timed out, leader transfer took too long"),
        // Never a call status in etcd: watch answers carry the text as `cancel_reason`.
        Error::WatcherRangeEmpty => (Code::InvalidArgument, "mvcc: watcher range is empty"),
        Error::DuplicateWatchId => (Code::InvalidArgument, "mvcc: duplicate watch ID provided on the WatchStream"),
        // Plain Go errors of etcd's lock and election servers: grpc-go sends them as Unknown.
        Error::MutexSessionExpired => (Code::Unknown, "mutex: session is expired"),
        Error::ElectionNotLeader => (Code::Unknown, "election: not leader"),
        Error::ElectionNoLeader => (Code::Unknown, "election: no leader"),
        Error::MissingLeaderKey => (Code::Unknown, "\"leader\" field must be provided"),
        // etcd quirk: clientv3 turns a refused watch into an error whose text is the whole cancel
        // reason, i.e. Go's rendering of the watch server's status (`rpc error: code = ...`).
        Error::RecipeWatchRefused(refusal) => return (Code::Unknown, go_status_text(refusal)),
        // etcd returns errors it has no mapping for as Unknown with their own text.
        Error::Storage(_) | Error::Io(_) | Error::Internal(_) => return (Code::Unknown, e.to_string()),
    };
    (code, msg.to_string())
}

/// etcd's rpctypes translation of its auth errors. The one etcd leaves untranslated
/// (`NoPasswordUser`) reaches clients as Unknown with the auth package's own text.
fn auth_code_and_message(e: &AuthError) -> (Code, &'static str) {
    match e {
        AuthError::RootUserNotExist => (Code::FailedPrecondition, "etcdserver: root user does not exist"),
        AuthError::RootRoleNotExist => (Code::FailedPrecondition, "etcdserver: root user does not have root role"),
        AuthError::UserAlreadyExist => (Code::FailedPrecondition, "etcdserver: user name already exists"),
        AuthError::UserEmpty => (Code::InvalidArgument, "etcdserver: user name is empty"),
        AuthError::UserNotFound => (Code::FailedPrecondition, "etcdserver: user name not found"),
        AuthError::RoleAlreadyExist => (Code::FailedPrecondition, "etcdserver: role name already exists"),
        AuthError::RoleNotFound => (Code::FailedPrecondition, "etcdserver: role name not found"),
        AuthError::RoleEmpty => (Code::InvalidArgument, "etcdserver: role name is empty"),
        AuthError::PermissionNotGiven => (Code::InvalidArgument, "etcdserver: permission not given"),
        AuthError::AuthFailed => {
            (Code::InvalidArgument, "etcdserver: authentication failed, invalid user ID or password")
        }
        AuthError::NoPasswordUser => {
            (Code::Unknown, "auth: authentication failed, password was given for no password user")
        }
        AuthError::PermissionDenied => (Code::PermissionDenied, "etcdserver: permission denied"),
        AuthError::RoleNotGranted => (Code::FailedPrecondition, "etcdserver: role is not granted to the user"),
        AuthError::PermissionNotGranted => {
            (Code::FailedPrecondition, "etcdserver: permission is not granted to the role")
        }
        AuthError::AuthNotEnabled => (Code::FailedPrecondition, "etcdserver: authentication is not enabled"),
        AuthError::AuthOldRevision => (Code::InvalidArgument, "etcdserver: revision of auth store is old"),
        AuthError::InvalidAuthToken => (Code::Unauthenticated, "etcdserver: invalid auth token"),
        AuthError::InvalidAuthMgmt => (Code::InvalidArgument, "etcdserver: invalid auth management"),
    }
}

/// etcd's Maintenance admin checks (Defragment, Hash, HashKV, Snapshot) return the auth
/// package's error as is, so clients see gRPC Unknown with `auth: ...` text (e.g.
/// `auth: permission denied`), not the translated `etcdserver: ...` form.
pub fn untranslated_auth_status(e: Error) -> Status {
    match e {
        Error::Auth(a) => Status::new(Code::Unknown, a.to_string()),
        other => to_status(other),
    }
}

/// A gRPC status as Go's `status.Error(...).Error()` prints it: etcd puts this whole text in a
/// watch's `cancel_reason` when auth refuses the create (e.g. `rpc error: code = PermissionDenied
/// desc = etcdserver: permission denied`).
pub fn go_status_text(e: &Error) -> String {
    let (code, message) = code_and_message(e);
    let name = match code {
        Code::Cancelled => "Canceled".to_string(),
        other => format!("{other:?}"),
    };
    format!("rpc error: code = {name} desc = {message}")
}

/// The HTTP status etcd's grpc-gateway (v1.16 `HTTPStatusFromCode`) answers a gRPC code with.
pub fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as H;
    match code {
        Code::Ok => H::OK,
        Code::Cancelled => H::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => H::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => H::BAD_REQUEST,
        Code::DeadlineExceeded => H::GATEWAY_TIMEOUT,
        Code::NotFound => H::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => H::CONFLICT,
        Code::PermissionDenied => H::FORBIDDEN,
        Code::Unauthenticated => H::UNAUTHORIZED,
        Code::ResourceExhausted => H::TOO_MANY_REQUESTS,
        Code::Unimplemented => H::NOT_IMPLEMENTED,
        Code::Unavailable => H::SERVICE_UNAVAILABLE,
    }
}

/// The text etcd puts in a watch response's `cancel_reason` for `e`.
pub fn cancel_reason(e: &Error) -> String {
    code_and_message(e).1
}

pub fn to_status(e: Error) -> Status {
    let (code, msg) = code_and_message(&e);
    Status::new(code, msg)
}

/// The status of a Lock or Election call that failed. etcd serves those services through its own
/// clientv3 client, which turns every etcd status it receives into a plain error carrying the same
/// text (`rpctypes.EtcdError`); grpc-go sends a plain error as Unknown. So a lock on a missing lease
/// fails with Unknown `etcdserver: requested lease not found`, not the NotFound that Put gives.
pub fn to_recipe_status(e: Error) -> Status {
    Status::new(Code::Unknown, code_and_message(&e).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_http_statuses_are_grpc_gateways() {
        // Pinned against etcd 3.5.16: an empty key is 400, a lease not found 404, NOSPACE 429.
        assert_eq!(http_status(code_and_message(&Error::EmptyKey).0), http::StatusCode::BAD_REQUEST);
        assert_eq!(http_status(code_and_message(&Error::Compacted).0), http::StatusCode::BAD_REQUEST);
        assert_eq!(http_status(code_and_message(&Error::LeaseNotFound).0), http::StatusCode::NOT_FOUND);
        assert_eq!(http_status(code_and_message(&Error::NoSpace).0), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(Code::Unimplemented), http::StatusCode::NOT_IMPLEMENTED);
    }

    #[test]
    fn messages_are_etcds() {
        let s = to_status(Error::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(s.message(), "etcdserver: mvcc: required revision has been compacted");
        assert_eq!(cancel_reason(&Error::WatcherRangeEmpty), "mvcc: watcher range is empty");
        assert_eq!(cancel_reason(&Error::DuplicateWatchId), "mvcc: duplicate watch ID provided on the WatchStream");
        let s = to_status(Error::EmptyKey);
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "etcdserver: key is not provided"));
        let s = to_recipe_status(Error::LeaseNotFound);
        assert_eq!((s.code(), s.message()), (Code::Unknown, "etcdserver: requested lease not found"));
        let refused = Error::RecipeWatchRefused(Box::new(Error::Auth(AuthError::PermissionDenied)));
        let s = to_recipe_status(refused);
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unknown, "rpc error: code = PermissionDenied desc = etcdserver: permission denied")
        );
        let s = to_recipe_status(Error::MissingLeaderKey);
        assert_eq!((s.code(), s.message()), (Code::Unknown, "\"leader\" field must be provided"));
        // Membership errors and etcd's bare context error for a proposal without a leader.
        let s = to_status(Error::LearnerNotReady);
        assert_eq!(
            (s.code(), s.message()),
            (Code::FailedPrecondition, "etcdserver: can only promote a learner member which is in sync with leader")
        );
        let s = to_status(Error::MemberNotFound);
        assert_eq!((s.code(), s.message()), (Code::NotFound, "etcdserver: member not found"));
        let s = to_status(Error::ProposalDeadline);
        assert_eq!((s.code(), s.message()), (Code::DeadlineExceeded, "context deadline exceeded"));
        let s = to_status(Error::LeaderTransferTimeout);
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unknown, "etcdserver: request timed out, leader transfer took too long")
        );
    }
}

/// tonic's words for a request over the receive limit, and grpc-go's (which etcd clients see):
/// `grpc: received message larger than max (N vs. M)` with code ResourceExhausted.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// tonic's prefix for a request that is not valid protobuf.
const PROST_DECODE_FAILED: &str = "failed to decode Protobuf message: ";

/// etcd decodes requests with gogoproto's generated code, whose errors read differently from
/// prost's; clients see them after grpc-go's `grpc: error unmarshalling request: `. Translate the
/// common cases (a field with the wrong wire type, a truncated message); pass others through.
fn gogo_decode_error(prost_detail: &str) -> String {
    // prost: "<Message>.<field>: invalid wire type: <Name> (expected <Name>)", innermost field last.
    if let Some((path, rest)) = prost_detail.rsplit_once(": invalid wire type: ") {
        let field = path.rsplit(": ").next().unwrap_or(path).rsplit('.').next().unwrap_or(path);
        let found = rest.split_whitespace().next().unwrap_or("");
        let number = match found {
            "Varint" => 0,
            "SixtyFourBit" => 1,
            "LengthDelimited" => 2,
            "StartGroup" => 3,
            "EndGroup" => 4,
            "ThirtyTwoBit" => 5,
            _ => return prost_detail.to_string(),
        };
        return format!("proto: wrong wireType = {number} for field {}", go_field_name(field));
    }
    if prost_detail.ends_with("buffer underflow") {
        // Go's io.ErrUnexpectedEOF.
        return "unexpected EOF".to_string();
    }
    prost_detail.to_string()
}

/// The Go struct field gogoproto generates for a proto field: `range_end` → `RangeEnd`.
fn go_field_name(proto_field: &str) -> String {
    proto_field
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Rewrite a transport-level status that tonic produced into what etcd's grpc-go server sends.
/// Works on the trailers-only response headers of a failed call.
pub fn rewrite_transport_status(headers: &mut http::HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if let Some(detail) = status.message().strip_prefix(PROST_DECODE_FAILED) {
        let text = format!("grpc: error unmarshalling request: {}", gogo_decode_error(detail));
        let _ = Status::internal(text).add_header(headers);
        return;
    }
    let Some(rest) = status.message().strip_prefix(TONIC_TOO_LARGE) else {
        return;
    };
    // "<N> bytes, the limit is: <M> bytes"
    let numbers: Vec<&str> = rest.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).collect();
    if numbers.len() != 2 {
        return;
    }
    let text = format!("grpc: received message larger than max ({} vs. {})", numbers[0], numbers[1]);
    let _ = Status::resource_exhausted(text).add_header(headers);
}

#[cfg(test)]
mod transport_tests {
    use super::*;

    #[test]
    fn undecodable_request_reads_as_gogoproto() {
        assert_eq!(
            gogo_decode_error("PutRequest.key: invalid wire type: Varint (expected LengthDelimited)"),
            "proto: wrong wireType = 0 for field Key"
        );
        assert_eq!(
            gogo_decode_error("RangeRequest.range_end: invalid wire type: ThirtyTwoBit (expected LengthDelimited)"),
            "proto: wrong wireType = 5 for field RangeEnd"
        );
        assert_eq!(gogo_decode_error("PutRequest.value: buffer underflow"), "unexpected EOF");
    }

    #[test]
    fn oversized_request_reads_as_grpc_go() {
        let mut h = http::HeaderMap::new();
        let tonic_says = "Error, decoded message length too large: found 2200011 bytes, the limit is: 2097152 bytes";
        Status::out_of_range(tonic_says).add_header(&mut h).unwrap();
        rewrite_transport_status(&mut h);
        let status = Status::from_header_map(&h).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "grpc: received message larger than max (2200011 vs. 2097152)");
    }
}
