//! The auth store through the applier: mutations, their errors and revision bumps, apply-time
//! checks of writes, and the state surviving a reopen (it lives in the `auth` table).

use std::sync::Arc;

use crate::apply::applier::Applier;
use crate::apply::command::{ApplyError, CommandHeader, RaftCommand, Request, Response};
use crate::auth::request::{AuthRequest, AuthResponse};
use crate::auth::token::{SimpleTokens, TokenProvider};
use crate::auth::AuthInfo;
use crate::error::AuthError;
use crate::mvcc::mem_engine::MemEngine;
use crate::proto::authpb::{permission::Type as PermType, Permission, UserAddOptions};
use crate::proto::etcdserverpb as rpc;

fn run(a: &Applier, user: &str, revision: u64, request: Request) -> Result<Response, ApplyError> {
    let header = CommandHeader { id: 1, username: user.into(), auth_revision: revision };
    a.apply(Some(&RaftCommand { header, request }), vec![1]).unwrap().outcome
}

fn auth(a: &Applier, user: &str, req: AuthRequest) -> Result<AuthResponse, AuthError> {
    let revision = a.auth().revision();
    match run(a, user, revision, Request::Auth(req)) {
        Ok(Response::Auth(r)) => Ok(r),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(ApplyError::Auth(e)) => Err(e),
        Err(other) => panic!("unexpected {other:?}"),
    }
}

fn user_add(a: &Applier, as_user: &str, name: &str) -> Result<AuthResponse, AuthError> {
    let hashed = a.auth().hash_password("pw").unwrap();
    auth(
        a,
        as_user,
        AuthRequest::UserAdd(rpc::AuthUserAddRequest {
            name: name.into(),
            hashed_password: hashed,
            ..Default::default()
        }),
    )
}

fn grant_role(a: &Applier, as_user: &str, user: &str, role: &str) -> Result<AuthResponse, AuthError> {
    auth(a, as_user, AuthRequest::UserGrantRole(rpc::AuthUserGrantRoleRequest { user: user.into(), role: role.into() }))
}

fn grant_perm(a: &Applier, role: &str, kind: PermType, key: &str, end: &str) -> Result<AuthResponse, AuthError> {
    let perm = Permission { perm_type: kind as i32, key: key.into(), range_end: end.into() };
    auth(
        a,
        "root",
        AuthRequest::RoleGrantPermission(rpc::AuthRoleGrantPermissionRequest { name: role.into(), perm: Some(perm) }),
    )
}

fn role_add(a: &Applier, name: &str) -> Result<AuthResponse, AuthError> {
    auth(a, "root", AuthRequest::RoleAdd(rpc::AuthRoleAddRequest { name: name.into() }))
}

fn put(a: &Applier, user: &str, key: &str) -> Result<Response, ApplyError> {
    let revision = a.auth().revision();
    run(
        a,
        user,
        revision,
        Request::Put(rpc::PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() }),
    )
}

/// An applier whose auth store hashes at bcrypt's lowest cost (tests run unoptimised).
fn open(engine: Arc<MemEngine>) -> Applier {
    let a = Applier::open(engine).unwrap();
    let tokens = TokenProvider::Simple(SimpleTokens::new(std::time::Duration::from_secs(60)));
    a.auth().configure(tokens, 4);
    a
}

/// root with the root role, auth enabled, and alice with role r (readwrite on [a, c)).
fn enabled(engine: Arc<MemEngine>) -> Applier {
    let a = open(engine);
    user_add(&a, "", "root").unwrap();
    assert_eq!(auth(&a, "", AuthRequest::Enable), Err(AuthError::RootRoleNotExist));
    grant_role(&a, "", "root", "root").unwrap();
    auth(&a, "", AuthRequest::Enable).unwrap();
    user_add(&a, "root", "alice").unwrap();
    role_add(&a, "r").unwrap();
    grant_perm(&a, "r", PermType::Readwrite, "a", "c").unwrap();
    grant_role(&a, "root", "alice", "r").unwrap();
    a
}

#[test]
fn enable_needs_root_with_root_role_and_does_not_bump_the_revision() {
    let a = open(Arc::new(MemEngine::default()));
    assert_eq!(a.auth().revision(), 1);
    assert_eq!(auth(&a, "", AuthRequest::Enable), Err(AuthError::RootUserNotExist));
    user_add(&a, "", "root").unwrap();
    grant_role(&a, "", "root", "root").unwrap();
    assert_eq!(a.auth().revision(), 3);
    auth(&a, "", AuthRequest::Enable).unwrap();
    assert_eq!(a.auth().revision(), 3);
    // Enabling again is fine; disabling bumps the revision.
    auth(&a, "root", AuthRequest::Enable).unwrap();
    auth(&a, "root", AuthRequest::Disable).unwrap();
    assert_eq!(a.auth().revision(), 4);
    assert!(!a.auth().is_enabled());
}

#[test]
fn management_errors_match_etcds_order() {
    let a = enabled(Arc::new(MemEngine::default()));
    assert_eq!(user_add(&a, "", "bob"), Err(AuthError::UserEmpty));
    assert_eq!(user_add(&a, "alice", "bob"), Err(AuthError::PermissionDenied));
    assert_eq!(user_add(&a, "ghost", "bob"), Err(AuthError::UserNotFound));
    assert_eq!(user_add(&a, "root", "alice"), Err(AuthError::UserAlreadyExist));
    assert_eq!(user_add(&a, "root", ""), Err(AuthError::UserEmpty));
    assert_eq!(role_add(&a, "r"), Err(AuthError::RoleAlreadyExist));
    assert_eq!(role_add(&a, ""), Err(AuthError::RoleEmpty));
    assert_eq!(grant_role(&a, "root", "alice", "nope"), Err(AuthError::RoleNotFound));
    assert_eq!(grant_perm(&a, "r", PermType::Read, "b", "a"), Err(AuthError::InvalidAuthMgmt));
    assert_eq!(grant_perm(&a, "nope", PermType::Read, "b", ""), Err(AuthError::RoleNotFound));
    let no_perm =
        AuthRequest::RoleGrantPermission(rpc::AuthRoleGrantPermissionRequest { name: "r".into(), perm: None });
    assert_eq!(auth(&a, "root", no_perm), Err(AuthError::PermissionNotGiven));
    let delete_root = AuthRequest::UserDelete(rpc::AuthUserDeleteRequest { name: "root".into() });
    assert_eq!(auth(&a, "root", delete_root), Err(AuthError::InvalidAuthMgmt));
    let revoke_root =
        AuthRequest::UserRevokeRole(rpc::AuthUserRevokeRoleRequest { name: "root".into(), role: "root".into() });
    assert_eq!(auth(&a, "root", revoke_root), Err(AuthError::InvalidAuthMgmt));
    let revoke_missing =
        AuthRequest::UserRevokeRole(rpc::AuthUserRevokeRoleRequest { name: "alice".into(), role: "x".into() });
    assert_eq!(auth(&a, "root", revoke_missing), Err(AuthError::RoleNotGranted));
    let revoke_perm = AuthRequest::RoleRevokePermission(rpc::AuthRoleRevokePermissionRequest {
        role: "r".into(),
        key: b"zz".to_vec(),
        range_end: vec![],
    });
    assert_eq!(auth(&a, "root", revoke_perm), Err(AuthError::PermissionNotGranted));
    // A user may read itself; a role holder may read its role.
    let get_self = AuthRequest::UserGet(rpc::AuthUserGetRequest { name: "alice".into() });
    assert!(matches!(auth(&a, "alice", get_self), Ok(AuthResponse::UserGet(r)) if r.roles == ["r"]));
    let get_root = AuthRequest::UserGet(rpc::AuthUserGetRequest { name: "root".into() });
    assert_eq!(auth(&a, "alice", get_root), Err(AuthError::PermissionDenied));
    let get_role = AuthRequest::RoleGet(rpc::AuthRoleGetRequest { role: "r".into() });
    assert!(matches!(auth(&a, "alice", get_role), Ok(AuthResponse::RoleGet(r)) if r.perm.len() == 1));
}

#[test]
fn granting_the_same_range_replaces_its_type_and_held_roles_do_not_bump() {
    let a = enabled(Arc::new(MemEngine::default()));
    let before = a.auth().revision();
    grant_role(&a, "root", "alice", "r").unwrap();
    assert_eq!(a.auth().revision(), before);
    grant_perm(&a, "r", PermType::Read, "a", "c").unwrap();
    grant_perm(&a, "r", PermType::Write, "0", "").unwrap();
    let get = AuthRequest::RoleGet(rpc::AuthRoleGetRequest { role: "r".into() });
    let Ok(AuthResponse::RoleGet(r)) = auth(&a, "root", get) else { panic!() };
    let perms: Vec<(i32, Vec<u8>)> = r.perm.iter().map(|p| (p.perm_type, p.key.clone())).collect();
    assert_eq!(perms, vec![(PermType::Write as i32, b"0".to_vec()), (PermType::Read as i32, b"a".to_vec())]);
    assert_eq!(a.auth().revision(), before + 2);
}

#[test]
fn writes_are_checked_at_apply_with_the_header_user_and_revision() {
    let a = enabled(Arc::new(MemEngine::default()));
    assert!(put(&a, "alice", "b").is_ok());
    assert_eq!(put(&a, "alice", "x"), Err(ApplyError::Auth(AuthError::PermissionDenied)));
    // No token: no user and auth revision 0.
    let anonymous = Request::Put(rpc::PutRequest { key: "b".into(), ..Default::default() });
    assert_eq!(run(&a, "", 0, anonymous), Err(ApplyError::Auth(AuthError::UserEmpty)));
    assert!(put(&a, "root", "x").is_ok());
    // A proposal made before an auth change is refused after it.
    let stale = a.auth().revision();
    role_add(&a, "r2").unwrap();
    let req = Request::Put(rpc::PutRequest { key: "b".into(), ..Default::default() });
    assert_eq!(run(&a, "alice", stale, req), Err(ApplyError::Auth(AuthError::AuthOldRevision)));
    // Txn: a denied compare refuses the whole txn, and nothing is written.
    let rev = a.mvcc().current_revision();
    let txn = rpc::TxnRequest {
        compare: vec![rpc::Compare { key: "x".into(), ..Default::default() }],
        success: vec![rpc::RequestOp {
            request: Some(rpc::request_op::Request::RequestPut(rpc::PutRequest {
                key: "b".into(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    let now = a.auth().revision();
    assert_eq!(run(&a, "alice", now, Request::Txn(txn)), Err(ApplyError::Auth(AuthError::PermissionDenied)));
    assert_eq!(a.mvcc().current_revision(), rev);
    // Deleting a role takes it from its holders.
    auth(&a, "root", AuthRequest::RoleDelete(rpc::AuthRoleDeleteRequest { role: "r".into() })).unwrap();
    assert_eq!(put(&a, "alice", "b"), Err(ApplyError::Auth(AuthError::PermissionDenied)));
}

#[test]
fn state_survives_a_reopen_and_passwords_check() {
    let engine = Arc::new(MemEngine::default());
    let revision = {
        let a = enabled(engine.clone());
        let no_pw = rpc::AuthUserAddRequest {
            name: "cert".into(),
            options: Some(UserAddOptions { no_password: true }),
            ..Default::default()
        };
        auth(&a, "root", AuthRequest::UserAdd(no_pw)).unwrap();
        a.flush().unwrap();
        a.auth().revision()
    };
    let a = open(engine);
    assert!(a.auth().is_enabled());
    assert_eq!(a.auth().revision(), revision);
    let store = a.auth();
    assert_eq!(store.check_password("alice", "pw"), Ok(()));
    assert_eq!(store.check_password("alice", "nope"), Err(AuthError::AuthFailed));
    assert_eq!(store.check_password("ghost", "pw"), Err(AuthError::AuthFailed));
    assert_eq!(store.check_password("cert", ""), Err(AuthError::NoPasswordUser));
    let alice = AuthInfo { username: "alice".into(), revision };
    assert_eq!(store.check_op(&alice, b"a", b"c", PermType::Read), Ok(()));
    assert_eq!(store.check_op(&alice, b"a", b"d", PermType::Read), Err(AuthError::PermissionDenied));
    // Stored hashes are `$2a$`, as Go's bcrypt writes them.
    let hash = store.hash_password("x").unwrap();
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(hash).unwrap();
    assert!(raw.starts_with(b"$2a$04$"));
}

#[test]
fn authenticate_issues_simple_tokens_named_by_prefix_and_index() {
    let a = enabled(Arc::new(MemEngine::default()));
    a.note_index(77);
    let req = AuthRequest::Authenticate { name: "alice".into(), simple_token_prefix: "abcdefghijklmnop".into() };
    let Ok(AuthResponse::Authenticate(r)) = auth(&a, "", req) else { panic!() };
    assert_eq!(r.token, "abcdefghijklmnop.77");
    let info = a.auth().info_from_token(&r.token).unwrap();
    assert_eq!(info, AuthInfo { username: "alice".into(), revision: a.auth().revision() });
    // Changing the password drops the user's tokens.
    let hashed = a.auth().hash_password("new").unwrap();
    let change =
        rpc::AuthUserChangePasswordRequest { name: "alice".into(), hashed_password: hashed, ..Default::default() };
    auth(&a, "root", AuthRequest::UserChangePassword(change)).unwrap();
    assert_eq!(a.auth().info_from_token(&r.token), Err(AuthError::InvalidAuthToken));
}
