//! The auth requests that travel through raft and their applied answers (etcd's `InternalRaftRequest`
//! fields `auth_enable` .. `auth_role_revoke_permission`, and `InternalAuthenticateRequest`).

use serde::{Deserialize, Serialize};

use crate::proto::etcdserverpb as rpc;
use crate::proto::serde_pb as pb;

/// One auth request. Passwords never travel: UserAdd and UserChangePassword carry only the bcrypt
/// hash the proposing member computed (as etcd 3.5 does), and Authenticate carries the
/// simple-token prefix the proposer chose, so apply needs no randomness and no hashing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum AuthRequest {
    Enable,
    Disable,
    Status,
    Authenticate { name: String, simple_token_prefix: String },
    UserAdd(#[serde(with = "pb")] rpc::AuthUserAddRequest),
    UserGet(#[serde(with = "pb")] rpc::AuthUserGetRequest),
    UserList,
    UserDelete(#[serde(with = "pb")] rpc::AuthUserDeleteRequest),
    UserChangePassword(#[serde(with = "pb")] rpc::AuthUserChangePasswordRequest),
    UserGrantRole(#[serde(with = "pb")] rpc::AuthUserGrantRoleRequest),
    UserRevokeRole(#[serde(with = "pb")] rpc::AuthUserRevokeRoleRequest),
    RoleAdd(#[serde(with = "pb")] rpc::AuthRoleAddRequest),
    RoleGet(#[serde(with = "pb")] rpc::AuthRoleGetRequest),
    RoleList,
    RoleDelete(#[serde(with = "pb")] rpc::AuthRoleDeleteRequest),
    RoleGrantPermission(#[serde(with = "pb")] rpc::AuthRoleGrantPermissionRequest),
    RoleRevokePermission(#[serde(with = "pb")] rpc::AuthRoleRevokePermissionRequest),
}

impl AuthRequest {
    /// Size of the request's protobuf body (for `--max-request-bytes`).
    pub fn encoded_len(&self) -> usize {
        use prost::Message;
        match self {
            AuthRequest::Enable | AuthRequest::Disable | AuthRequest::Status => 0,
            AuthRequest::UserList | AuthRequest::RoleList => 0,
            AuthRequest::Authenticate { name, simple_token_prefix } => name.len() + simple_token_prefix.len() + 4,
            AuthRequest::UserAdd(r) => r.encoded_len(),
            AuthRequest::UserGet(r) => r.encoded_len(),
            AuthRequest::UserDelete(r) => r.encoded_len(),
            AuthRequest::UserChangePassword(r) => r.encoded_len(),
            AuthRequest::UserGrantRole(r) => r.encoded_len(),
            AuthRequest::UserRevokeRole(r) => r.encoded_len(),
            AuthRequest::RoleAdd(r) => r.encoded_len(),
            AuthRequest::RoleGet(r) => r.encoded_len(),
            AuthRequest::RoleDelete(r) => r.encoded_len(),
            AuthRequest::RoleGrantPermission(r) => r.encoded_len(),
            AuthRequest::RoleRevokePermission(r) => r.encoded_len(),
        }
    }

    /// etcd's `needAdminPermission`: every auth request but Authenticate, UserGet and RoleGet
    /// needs the root role (those two have their own rule, see `apply/auth_gate.rs`).
    pub fn needs_admin(&self) -> bool {
        !matches!(self, AuthRequest::Authenticate { .. } | AuthRequest::UserGet(_) | AuthRequest::RoleGet(_))
    }
}

/// The applied answer; headers are left empty for the edge to fill (etcd's `newHeader`: the
/// current store revision).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum AuthResponse {
    Enable(#[serde(with = "pb")] rpc::AuthEnableResponse),
    Disable(#[serde(with = "pb")] rpc::AuthDisableResponse),
    Status(#[serde(with = "pb")] rpc::AuthStatusResponse),
    Authenticate(#[serde(with = "pb")] rpc::AuthenticateResponse),
    UserAdd(#[serde(with = "pb")] rpc::AuthUserAddResponse),
    UserGet(#[serde(with = "pb")] rpc::AuthUserGetResponse),
    UserList(#[serde(with = "pb")] rpc::AuthUserListResponse),
    UserDelete(#[serde(with = "pb")] rpc::AuthUserDeleteResponse),
    UserChangePassword(#[serde(with = "pb")] rpc::AuthUserChangePasswordResponse),
    UserGrantRole(#[serde(with = "pb")] rpc::AuthUserGrantRoleResponse),
    UserRevokeRole(#[serde(with = "pb")] rpc::AuthUserRevokeRoleResponse),
    RoleAdd(#[serde(with = "pb")] rpc::AuthRoleAddResponse),
    RoleGet(#[serde(with = "pb")] rpc::AuthRoleGetResponse),
    RoleList(#[serde(with = "pb")] rpc::AuthRoleListResponse),
    RoleDelete(#[serde(with = "pb")] rpc::AuthRoleDeleteResponse),
    RoleGrantPermission(#[serde(with = "pb")] rpc::AuthRoleGrantPermissionResponse),
    RoleRevokePermission(#[serde(with = "pb")] rpc::AuthRoleRevokePermissionResponse),
}
