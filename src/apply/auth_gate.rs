//! Permission checks at apply time (etcd 3.5's `authApplierV3`): writes are checked against the
//! auth state in log order, as the user and auth revision in the command header, so a permission
//! change and a write can never race differently on different members.

use crate::apply::command::{RaftCommand, Request};
use crate::auth::request::AuthRequest;
use crate::auth::{AuthInfo, AuthStore};
use crate::error::AuthError;
use crate::lease::Lessor;
use crate::proto::authpb::permission::Type as PermType;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{RequestOp, TxnRequest};

/// May `command` run? Auth disabled permits everything.
pub fn check(auth: &AuthStore, lessor: &Lessor, command: &RaftCommand) -> Result<(), AuthError> {
    if !auth.is_enabled() {
        return Ok(());
    }
    let info = AuthInfo { username: command.header.username.clone(), revision: command.header.auth_revision };
    match &command.request {
        Request::Put(r) => {
            auth.check_op(&info, &r.key, &[], PermType::Write)?;
            lease_keys_writable(auth, lessor, &info, r.lease)?;
            if r.prev_kv {
                auth.check_op(&info, &r.key, &[], PermType::Read)?;
            }
            Ok(())
        }
        Request::DeleteRange(r) => {
            auth.check_op(&info, &r.key, &r.range_end, PermType::Write)?;
            if r.prev_kv {
                auth.check_op(&info, &r.key, &r.range_end, PermType::Read)?;
            }
            Ok(())
        }
        Request::Txn(r) => check_txn(auth, &info, r),
        // Revoking deletes the attached keys: the user must be able to write every one.
        Request::LeaseRevoke(r) => lease_keys_writable(auth, lessor, &info, r.id),
        Request::Auth(req) => check_auth_request(auth, &info, req),
        // etcd 3.5 checks neither compaction nor lease grants and checkpoints at apply; alarms and
        // downgrades are guarded at the edge only.
        Request::Compaction(_)
        | Request::LeaseGrant(_)
        | Request::LeaseCheckpoint(_)
        | Request::Alarm(_)
        | Request::Downgrade(_) => Ok(()),
    }
}

/// etcd's `checkTxnAuth`: READ on every compare, then each branch's operations, nested txns
/// included. Quirk kept: a Put's `prev_kv` inside a txn is not checked for READ (only a
/// standalone Put's is), while a DeleteRange's `prev_kv` is.
pub fn check_txn(auth: &AuthStore, info: &AuthInfo, txn: &TxnRequest) -> Result<(), AuthError> {
    for c in &txn.compare {
        auth.check_op(info, &c.key, &c.range_end, PermType::Read)?;
    }
    check_ops(auth, info, &txn.success)?;
    check_ops(auth, info, &txn.failure)
}

fn check_ops(auth: &AuthStore, info: &AuthInfo, ops: &[RequestOp]) -> Result<(), AuthError> {
    for op in ops {
        match &op.request {
            Some(Op::RequestRange(r)) => auth.check_op(info, &r.key, &r.range_end, PermType::Read)?,
            Some(Op::RequestPut(r)) => auth.check_op(info, &r.key, &[], PermType::Write)?,
            Some(Op::RequestDeleteRange(r)) => {
                if r.prev_kv {
                    auth.check_op(info, &r.key, &r.range_end, PermType::Read)?;
                }
                auth.check_op(info, &r.key, &r.range_end, PermType::Write)?;
            }
            Some(Op::RequestTxn(t)) => check_txn(auth, info, t)?,
            None => {}
        }
    }
    Ok(())
}

/// etcd's `checkLeasePuts`: every key already attached to the lease must be writable.
fn lease_keys_writable(auth: &AuthStore, lessor: &Lessor, info: &AuthInfo, lease: i64) -> Result<(), AuthError> {
    if lease == 0 {
        return Ok(());
    }
    for key in lessor.keys(lease).unwrap_or_default() {
        auth.check_op(info, &key, &[], PermType::Write)?;
    }
    Ok(())
}

/// Admin requests need the root role; UserGet is also allowed for the user itself and RoleGet
/// for holders of the role (etcd's `authApplierV3.UserGet`/`RoleGet`).
fn check_auth_request(auth: &AuthStore, info: &AuthInfo, req: &AuthRequest) -> Result<(), AuthError> {
    match req {
        AuthRequest::UserGet(r) => match auth.check_admin(info) {
            Err(e) if r.name != info.username => Err(e),
            _ => Ok(()),
        },
        AuthRequest::RoleGet(r) => match auth.check_admin(info) {
            Err(e) if !auth.has_role(&info.username, &r.role) => Err(e),
            _ => Ok(()),
        },
        other if other.needs_admin() => auth.check_admin(info),
        _ => Ok(()),
    }
}
