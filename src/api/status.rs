//! The one place an [`Error`] becomes a gRPC status: etcd's code and etcd's exact message
//! (`api/v3rpc/rpctypes`), because clients match on the text.

use tonic::{Code, Status};

use crate::error::Error;

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
        // etcd returns errors it has no mapping for as Unknown with their own text.
        Error::Storage(_) | Error::Io(_) | Error::Internal(_) => return (Code::Unknown, e.to_string()),
    };
    (code, msg.to_string())
}

pub fn to_status(e: Error) -> Status {
    let (code, msg) = code_and_message(&e);
    Status::new(code, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_etcds() {
        let s = to_status(Error::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(s.message(), "etcdserver: mvcc: required revision has been compacted");
        let s = to_status(Error::EmptyKey);
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "etcdserver: key is not provided"));
    }
}
