//! The Auth service (etcd's `v3rpc/auth.go` + `v3_server.go` auth methods) and the token
//! interception every other service uses: the `token` gRPC metadata names the caller.
//! As in etcd 3.5, every Auth call goes through raft; permission checks happen at apply.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::api::header;
use crate::api::status::{to_status, untranslated_auth_status};
use crate::apply::command::{Request as Cmd, Response as Applied};
use crate::auth::request::{AuthRequest, AuthResponse};
use crate::auth::token::simple_token_prefix;
use crate::auth::AuthInfo;
use crate::error::Error;
use crate::node::Node;
use crate::propose;
use crate::proto::etcdserverpb as pb;

/// The metadata key clients put their token under (etcd's `rpctypes.TokenFieldNameGRPC`); the
/// gateway passes `Authorization` (etcd's `TokenFieldNameSwagger`).
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// Metadata naming the CN of the verified client certificate a request came with. Only the edge
/// layer sets it (`client_certificate_layer`), after removing whatever a client sent under it.
pub const CLIENT_CN_KEY: &str = "keel-client-certificate-cn";

/// Who a request says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// An auth token (simple or JWT). A value that is not text becomes one no token can equal,
    /// so it is refused as invalid.
    Token(String),
    /// No token, but a verified client certificate with this CN (etcd's `AuthInfoFromTLS`).
    Certificate(String),
}

/// The credentials a request carries: its token, or else its client certificate's CN.
pub fn credentials(metadata: &MetadataMap) -> Option<Credentials> {
    if let Some(value) = TOKEN_KEYS.iter().find_map(|k| metadata.get(*k)) {
        return Some(Credentials::Token(value.to_str().unwrap_or("\u{0}").to_string()));
    }
    let cn = metadata.get(CLIENT_CN_KEY)?.to_str().ok()?;
    Some(Credentials::Certificate(cn.to_string()))
}

/// The user behind `credentials`. A certificate's CN is taken as the user name at the current auth
/// revision without looking the user up, as etcd does; permission checks then refuse an unknown one.
pub fn resolve(node: &Node, credentials: &Credentials) -> Result<AuthInfo, Error> {
    let auth = node.applier.auth();
    match credentials {
        Credentials::Token(token) => Ok(auth.info_from_token(token)?),
        Credentials::Certificate(cn) => Ok(AuthInfo { username: cn.clone(), revision: auth.revision() }),
    }
}

/// etcd's `AuthInfoFromCtx` then `AuthInfoFromTLS`: no credentials is no user (None); a token that
/// does not check out is `invalid auth token`, whether or not auth is enabled.
pub fn identity(node: &Node, metadata: &MetadataMap) -> Result<Option<AuthInfo>, Error> {
    credentials(metadata).map(|c| resolve(node, &c)).transpose()
}

/// Puts the verified client certificate's CN (if the connection has one and `certificate_users`)
/// into the request's metadata under [`CLIENT_CN_KEY`], first dropping any value the client sent
/// under that name.
pub fn attach_client_certificate<B>(mut request: http::Request<B>, certificate_users: bool) -> http::Request<B> {
    request.headers_mut().remove(CLIENT_CN_KEY);
    if !certificate_users {
        return request;
    }
    let cn = request
        .extensions()
        .get::<crate::api::tls::ClientConnInfo>()
        .and_then(|info| info.common_name.as_deref())
        .and_then(|cn| http::HeaderValue::from_str(cn).ok());
    if let Some(cn) = cn {
        request.headers_mut().insert(CLIENT_CN_KEY, cn);
    }
    request
}

/// etcd's `checkMembershipOperationPermission` (MemberAdd, MemberRemove, MemberUpdate,
/// MemberPromote): root only, with the usual translated errors (`etcdserver: permission denied`).
pub fn require_membership_admin(node: &Node, metadata: &MetadataMap) -> Result<(), Status> {
    let user = identity(node, metadata).map_err(to_status)?.unwrap_or_default();
    node.applier.auth().check_admin(&user).map_err(|e| to_status(e.into()))
}

/// etcd's `authMaintenanceServer.isAuthenticated`, used by Defragment, Hash, HashKV and Snapshot:
/// the caller must hold the root role. Its errors reach the client untranslated (gRPC Unknown,
/// `auth: permission denied`), an etcd quirk.
pub fn require_admin(node: &Node, metadata: &MetadataMap) -> Result<(), Status> {
    let user = identity(node, metadata).map_err(untranslated_auth_status)?.unwrap_or_default();
    node.applier.auth().check_admin(&user).map_err(|e| untranslated_auth_status(e.into()))
}

pub struct AuthService {
    node: Arc<Node>,
}

impl AuthService {
    pub fn new(node: Arc<Node>) -> Self {
        AuthService { node }
    }

    /// Propose `req` as the caller and return what apply answered.
    async fn call(&self, metadata: &MetadataMap, req: AuthRequest) -> Result<AuthResponse, Status> {
        let user = identity(&self.node, metadata).map_err(to_status)?;
        match propose::propose_as(&self.node, Cmd::Auth(req), user.as_ref()).await.map_err(to_status)? {
            (Applied::Auth(resp), _) => Ok(resp),
            _ => Err(to_status(Error::Internal("apply returned an unexpected response to an auth request".into()))),
        }
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(header::complete(&self.node, None))
    }

    /// The bcrypt hash of a new password, computed here before raft as etcd 3.5 does (so every
    /// member stores the same hash and apply stays cheap and deterministic).
    async fn hash(&self, password: String) -> Result<String, Status> {
        let auth = self.node.applier.auth().clone();
        tokio::task::spawn_blocking(move || auth.hash_password(&password))
            .await
            .map_err(|e| to_status(Error::Internal(e.to_string())))?
            .map_err(to_status)
    }
}

/// One Auth method: propose the request and fill the header of the matching answer.
macro_rules! auth_call {
    ($self:ident, $metadata:expr, $req:expr, $variant:ident) => {{
        match $self.call($metadata, $req).await? {
            AuthResponse::$variant(mut resp) => {
                resp.header = $self.header();
                Ok(Response::new(resp))
            }
            _ => Err(to_status(Error::Internal("apply returned a mismatched auth response".into()))),
        }
    }};
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        auth_call!(self, request.metadata(), AuthRequest::Enable, Enable)
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        auth_call!(self, request.metadata(), AuthRequest::Disable, Disable)
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        auth_call!(self, request.metadata(), AuthRequest::Status, Status)
    }

    /// etcd checks the password on the member that received the call (bcrypt, off the event
    /// loop), then proposes; the token is made when the entry applies.
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let auth = self.node.applier.auth().clone();
        let (name, password) = (req.name.clone(), req.password);
        tokio::task::spawn_blocking(move || auth.check_password(&name, &password))
            .await
            .map_err(|e| to_status(Error::Internal(e.to_string())))?
            .map_err(|e| to_status(e.into()))?;
        let simple_token_prefix = simple_token_prefix();
        auth_call!(self, &metadata, AuthRequest::Authenticate { name: req.name, simple_token_prefix }, Authenticate)
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let (metadata, _, mut req) = request.into_parts();
        // etcd hashes whatever password came (empty included) and replaces any hashedPassword
        // the client sent, unless the user has no password.
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password {
            req.hashed_password = self.hash(std::mem::take(&mut req.password)).await?;
        }
        req.password.clear();
        auth_call!(self, &metadata, AuthRequest::UserAdd(req), UserAdd)
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        auth_call!(self, &metadata, AuthRequest::UserGet(req), UserGet)
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        auth_call!(self, request.metadata(), AuthRequest::UserList, UserList)
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        auth_call!(self, &metadata, AuthRequest::UserDelete(req), UserDelete)
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let (metadata, _, mut req) = request.into_parts();
        // Here etcd hashes only a non-empty password; otherwise the client's hashedPassword (maybe
        // empty, leaving a hash no password matches) is stored as sent.
        if !req.password.is_empty() {
            req.hashed_password = self.hash(std::mem::take(&mut req.password)).await?;
        }
        auth_call!(self, &metadata, AuthRequest::UserChangePassword(req), UserChangePassword)
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        auth_call!(self, &metadata, AuthRequest::UserGrantRole(req), UserGrantRole)
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        auth_call!(self, &metadata, AuthRequest::UserRevokeRole(req), UserRevokeRole)
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        auth_call!(self, &metadata, AuthRequest::RoleAdd(req), RoleAdd)
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        auth_call!(self, &metadata, AuthRequest::RoleGet(req), RoleGet)
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        auth_call!(self, request.metadata(), AuthRequest::RoleList, RoleList)
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        auth_call!(self, &metadata, AuthRequest::RoleDelete(req), RoleDelete)
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        auth_call!(self, &metadata, AuthRequest::RoleGrantPermission(req), RoleGrantPermission)
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        auth_call!(self, &metadata, AuthRequest::RoleRevokePermission(req), RoleRevokePermission)
    }
}
