//! The auth store: users, roles, key-range permissions, the auth revision and the enabled flag,
//! persisted in the `auth` table and changed only by apply (etcd 3.5's `server/auth/store.go`).
//! Also the checks etcd makes with it (`isOpPermitted`, `IsAdminPermitted`, `CheckPassword`) and
//! the member's token provider.

pub mod perms;
pub mod request;
pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use prost::Message;

use crate::error::{AuthError, Error, Result};
use crate::proto::authpb::{permission::Type as PermType, Role, User, UserAddOptions};
use crate::proto::etcdserverpb as rpc;
use crate::storage::{Engine, WriteBatch};
use perms::RangePerms;
use request::{AuthRequest, AuthResponse};
use token::TokenProvider;

use crate::storage::auth_rows::{ENABLED as KEY_ENABLED, REVISION as KEY_REVISION, ROLE_PREFIX, TABLE, USER_PREFIX};

/// The root user and role: holders of the root role may do anything.
pub const ROOT: &str = "root";

/// Who a request runs as: the token's user and the auth revision the token (or, for simple
/// tokens, the store at check time) had. etcd's `AuthInfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
}

#[derive(Clone, Debug, Default)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

impl State {
    fn load(engine: &dyn Engine) -> Result<State> {
        let mut state = State { revision: 1, ..Default::default() };
        let mut failure = None;
        engine.scan(TABLE, b"", None, &mut |key, value| {
            let decoded = if key == KEY_ENABLED {
                state.enabled = value == [1];
                Ok(())
            } else if key == KEY_REVISION {
                <[u8; 8]>::try_from(value)
                    .map(|b| state.revision = u64::from_be_bytes(b))
                    .map_err(|_| "revision".into())
            } else if let Some(name) = key.strip_prefix(USER_PREFIX) {
                User::decode(value)
                    .map(|u| {
                        state.users.insert(String::from_utf8_lossy(name).into_owned(), u);
                    })
                    .map_err(|e| e.to_string())
            } else if let Some(name) = key.strip_prefix(ROLE_PREFIX) {
                Role::decode(value)
                    .map(|r| {
                        state.roles.insert(String::from_utf8_lossy(name).into_owned(), r);
                    })
                    .map_err(|e| e.to_string())
            } else {
                Ok(())
            };
            if let Err(e) = decoded {
                failure = Some(e);
                return false;
            }
            true
        })?;
        match failure {
            Some(e) => Err(Error::Storage(format!("corrupt auth table: {e}"))),
            None => Ok(state),
        }
    }

    fn has_role(&self, username: &str, role: &str) -> bool {
        self.users.get(username).is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    fn merged_perms(&self, user: &User) -> RangePerms {
        RangePerms::from_permissions(
            user.roles.iter().filter_map(|r| self.roles.get(r)).flat_map(|role| role.key_permission.iter()),
        )
    }
}

/// The auth state of this member. Reads (checks) take a read lock; apply takes the write lock.
pub struct AuthStore {
    state: RwLock<State>,
    tokens: RwLock<Arc<TokenProvider>>,
    bcrypt_cost: AtomicU32,
    /// Each user's merged ranges (etcd's `rangePermCache`), dropped whenever users or roles change.
    perm_cache: Mutex<HashMap<String, Arc<RangePerms>>>,
}

impl AuthStore {
    /// Load the persisted state. Tokens default to simple ones with etcd's 300 s TTL until
    /// `configure` installs the member's `--auth-token` choice.
    pub fn open(engine: &dyn Engine) -> Result<AuthStore> {
        let simple = TokenProvider::Simple(token::SimpleTokens::new(std::time::Duration::from_secs(300)));
        Ok(AuthStore {
            state: RwLock::new(State::load(engine)?),
            tokens: RwLock::new(Arc::new(simple)),
            bcrypt_cost: AtomicU32::new(bcrypt::DEFAULT_COST),
            perm_cache: Mutex::new(HashMap::new()),
        })
    }

    /// Install this member's token provider and bcrypt cost (from its flags).
    pub fn configure(&self, tokens: TokenProvider, bcrypt_cost: u32) {
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
        self.bcrypt_cost.store(bcrypt_cost, Ordering::Relaxed);
    }

    /// Replace the state with what a raft snapshot brought. Tokens are kept, as etcd's `Recover`
    /// keeps them: one naming a user that is gone is simply refused at its next check.
    pub fn reload(&self, engine: &dyn Engine) -> Result<()> {
        let fresh = State::load(engine)?;
        *self.write() = fresh;
        self.perm_cache().clear();
        Ok(())
    }

    fn perm_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<RangePerms>>> {
        self.perm_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn tokens(&self) -> Arc<TokenProvider> {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_enabled(&self) -> bool {
        self.read().enabled
    }

    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// etcd's `AuthInfoFromCtx` for a token the client sent: an unknown, expired or forged token
    /// is `invalid auth token` even while auth is disabled (etcd checks the token whenever one
    /// is sent; the permission checks are what auth-disabled skips).
    pub fn info_from_token(&self, token: &str) -> Result<AuthInfo, AuthError> {
        let current = self.revision();
        self.tokens().info(token, current).ok_or(AuthError::InvalidAuthToken)
    }

    /// etcd's `isOpPermitted`: auth disabled permits all; no user (revision 0) is `user name is
    /// empty`; a token older than the store is `revision in header is old`; an unknown user is
    /// denied; the root role permits all; otherwise the user's merged ranges must cover the request.
    pub fn check_op(&self, info: &AuthInfo, key: &[u8], range_end: &[u8], kind: PermType) -> Result<(), AuthError> {
        let state = self.read();
        if !state.enabled {
            return Ok(());
        }
        if info.revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if info.revision < state.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let Some(user) = state.users.get(&info.username) else {
            return Err(AuthError::PermissionDenied);
        };
        if user.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        let perms = {
            let mut cache = self.perm_cache();
            cache.entry(info.username.clone()).or_insert_with(|| Arc::new(state.merged_perms(user))).clone()
        };
        if perms.permits(kind, key, range_end) {
            return Ok(());
        }
        Err(AuthError::PermissionDenied)
    }

    /// etcd's `checkLeaseTimeToLive`: with auth enabled, a caller without a token is `user name
    /// is empty`, and every key must be readable.
    pub fn check_keys_readable(&self, info: Option<&AuthInfo>, keys: &[Vec<u8>]) -> Result<(), AuthError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let info = info.ok_or(AuthError::UserEmpty)?;
        keys.iter().try_for_each(|key| self.check_op(info, key, &[], PermType::Read))
    }

    /// etcd's `IsAdminPermitted`: the user must exist and hold the root role (no revision check).
    pub fn check_admin(&self, info: &AuthInfo) -> Result<(), AuthError> {
        let state = self.read();
        if !state.enabled {
            return Ok(());
        }
        if info.username.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        match state.users.get(&info.username) {
            None => Err(AuthError::UserNotFound),
            Some(u) if u.roles.iter().any(|r| r == ROOT) => Ok(()),
            Some(_) => Err(AuthError::PermissionDenied),
        }
    }

    pub fn has_role(&self, username: &str, role: &str) -> bool {
        self.read().has_role(username, role)
    }

    /// etcd's `CheckPassword`, done by the member that received Authenticate before proposing.
    /// Slow on purpose (bcrypt): call it off the async runtime.
    pub fn check_password(&self, name: &str, password: &str) -> Result<(), AuthError> {
        let hash = {
            let state = self.read();
            if !state.enabled {
                return Err(AuthError::AuthNotEnabled);
            }
            let user = state.users.get(name).ok_or(AuthError::AuthFailed)?;
            if user.options.as_ref().is_some_and(|o| o.no_password) {
                return Err(AuthError::NoPasswordUser);
            }
            user.password.clone()
        };
        let hash = std::str::from_utf8(&hash).map_err(|_| AuthError::AuthFailed)?;
        match bcrypt::verify(password, hash) {
            Ok(true) => Ok(()),
            _ => Err(AuthError::AuthFailed),
        }
    }

    /// The bcrypt hash of `password` at this member's cost, base64-encoded as etcd 3.5 puts it in
    /// `hashedPassword` before proposing. `$2a$` like Go's bcrypt, so exported hashes match etcd's.
    pub fn hash_password(&self, password: &str) -> Result<String, Error> {
        let cost = self.bcrypt_cost.load(Ordering::Relaxed);
        let hashed = bcrypt::hash_with_result(password, cost).map_err(|e| Error::Internal(format!("bcrypt: {e}")))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(hashed.format_for_version(bcrypt::Version::TwoA)))
    }

    /// Apply one auth request (permission checks already done by `apply/auth_gate.rs`). Changed
    /// rows are staged into `batch`, which the caller writes; `index` is the raft index of the
    /// entry (part of a simple token).
    pub fn apply(&self, req: &AuthRequest, index: u64, batch: &mut WriteBatch) -> Result<AuthResponse, AuthError> {
        let mut state = self.write();
        // Checks take the state's read lock before the cache's, so none can refill the cache
        // from the old state while this holds the write lock.
        if !matches!(
            req,
            AuthRequest::Status
                | AuthRequest::Authenticate { .. }
                | AuthRequest::UserGet(_)
                | AuthRequest::UserList
                | AuthRequest::RoleGet(_)
                | AuthRequest::RoleList
        ) {
            self.perm_cache().clear();
        }
        let st = &mut *state;
        let tokens = self.tokens();
        let resp = match req {
            AuthRequest::Enable => {
                // Enabling twice is accepted and changes nothing (etcd logs and ignores it).
                if !st.enabled {
                    let root = st.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                    if !root.roles.iter().any(|r| r == ROOT) {
                        return Err(AuthError::RootRoleNotExist);
                    }
                    st.enabled = true;
                    batch.put(TABLE, KEY_ENABLED.to_vec(), vec![1]);
                }
                AuthResponse::Enable(Default::default())
            }
            AuthRequest::Disable => {
                // Unlike enabling, disabling bumps the auth revision (etcd's `AuthDisable` commits
                // one), so tokens issued before it are stale if auth comes back.
                if st.enabled {
                    st.enabled = false;
                    batch.put(TABLE, KEY_ENABLED.to_vec(), vec![0]);
                    commit_revision(st, batch);
                    tokens.disable();
                }
                AuthResponse::Disable(Default::default())
            }
            AuthRequest::Status => AuthResponse::Status(rpc::AuthStatusResponse {
                header: None,
                enabled: st.enabled,
                auth_revision: st.revision,
            }),
            AuthRequest::Authenticate { name, simple_token_prefix } => {
                if !st.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                let user = st.users.get(name).ok_or(AuthError::AuthFailed)?;
                if user.options.as_ref().is_some_and(|o| o.no_password) {
                    return Err(AuthError::AuthFailed);
                }
                // A JWT provider with only a public key cannot sign; etcd fails the call too.
                let token =
                    tokens.assign(name, st.revision, simple_token_prefix, index).ok_or(AuthError::AuthFailed)?;
                AuthResponse::Authenticate(rpc::AuthenticateResponse { header: None, token })
            }
            AuthRequest::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if st.users.contains_key(&r.name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let options = r.options.unwrap_or(UserAddOptions { no_password: false });
                let password = if options.no_password { Vec::new() } else { decode_hash(&r.hashed_password)? };
                let user =
                    User { name: r.name.clone().into_bytes(), password, roles: Vec::new(), options: Some(options) };
                put_user(st, batch, user);
                commit_revision(st, batch);
                AuthResponse::UserAdd(Default::default())
            }
            AuthRequest::UserGet(r) => {
                let user = st.users.get(&r.name).ok_or(AuthError::UserNotFound)?;
                AuthResponse::UserGet(rpc::AuthUserGetResponse { header: None, roles: user.roles.clone() })
            }
            AuthRequest::UserList => AuthResponse::UserList(rpc::AuthUserListResponse {
                header: None,
                users: st.users.keys().cloned().collect(),
            }),
            AuthRequest::UserDelete(r) => {
                if st.enabled && r.name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if st.users.remove(&r.name).is_none() {
                    return Err(AuthError::UserNotFound);
                }
                batch.delete(TABLE, row_key(USER_PREFIX, &r.name));
                commit_revision(st, batch);
                tokens.invalidate_user(&r.name);
                AuthResponse::UserDelete(Default::default())
            }
            AuthRequest::UserChangePassword(r) => {
                let mut user = st.users.get(&r.name).cloned().ok_or(AuthError::UserNotFound)?;
                if !user.options.as_ref().is_some_and(|o| o.no_password) {
                    user.password = decode_hash(&r.hashed_password)?;
                }
                put_user(st, batch, user);
                commit_revision(st, batch);
                tokens.invalidate_user(&r.name);
                AuthResponse::UserChangePassword(Default::default())
            }
            AuthRequest::UserGrantRole(r) => {
                let mut user = st.users.get(&r.user).cloned().ok_or(AuthError::UserNotFound)?;
                // etcd quirk: the root role may be granted without ever being created.
                if r.role != ROOT && !st.roles.contains_key(&r.role) {
                    return Err(AuthError::RoleNotFound);
                }
                match user.roles.binary_search(&r.role) {
                    // Granting a held role succeeds and changes nothing (no revision bump).
                    Ok(_) => {}
                    Err(at) => {
                        user.roles.insert(at, r.role.clone());
                        put_user(st, batch, user);
                        commit_revision(st, batch);
                    }
                }
                AuthResponse::UserGrantRole(Default::default())
            }
            AuthRequest::UserRevokeRole(r) => {
                if st.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let mut user = st.users.get(&r.name).cloned().ok_or(AuthError::UserNotFound)?;
                let at = user.roles.iter().position(|x| x == &r.role).ok_or(AuthError::RoleNotGranted)?;
                user.roles.remove(at);
                put_user(st, batch, user);
                commit_revision(st, batch);
                AuthResponse::UserRevokeRole(Default::default())
            }
            AuthRequest::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if st.roles.contains_key(&r.name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                put_role(st, batch, Role { name: r.name.clone().into_bytes(), key_permission: Vec::new() });
                commit_revision(st, batch);
                AuthResponse::RoleAdd(Default::default())
            }
            AuthRequest::RoleGet(r) => {
                let role = st.roles.get(&r.role).ok_or(AuthError::RoleNotFound)?;
                AuthResponse::RoleGet(rpc::AuthRoleGetResponse { header: None, perm: role.key_permission.clone() })
            }
            AuthRequest::RoleList => AuthResponse::RoleList(rpc::AuthRoleListResponse {
                header: None,
                roles: st.roles.keys().cloned().collect(),
            }),
            AuthRequest::RoleDelete(r) => {
                if st.enabled && r.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if st.roles.remove(&r.role).is_none() {
                    return Err(AuthError::RoleNotFound);
                }
                batch.delete(TABLE, row_key(ROLE_PREFIX, &r.role));
                // Every holder loses the role, in the same revision.
                let holders: Vec<User> = st.users.values().filter(|u| u.roles.contains(&r.role)).cloned().collect();
                for mut user in holders {
                    user.roles.retain(|x| x != &r.role);
                    put_user(st, batch, user);
                }
                commit_revision(st, batch);
                AuthResponse::RoleDelete(Default::default())
            }
            AuthRequest::RoleGrantPermission(r) => {
                let perm = r.perm.as_ref().ok_or(AuthError::PermissionNotGiven)?;
                if !perms::is_valid_permission_range(&perm.key, &perm.range_end) {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let mut role = st.roles.get(&r.name).cloned().ok_or(AuthError::RoleNotFound)?;
                // etcd looks only at the FIRST permission whose key is >= the new key: the same
                // (key, range_end) there has its type replaced; otherwise the permission is added
                // and the list re-sorted by key (so a second range on one key can be duplicated).
                let at = role.key_permission.partition_point(|p| p.key < perm.key);
                match role.key_permission.get_mut(at) {
                    Some(existing) if existing.key == perm.key && existing.range_end == perm.range_end => {
                        existing.perm_type = perm.perm_type;
                    }
                    _ => {
                        role.key_permission.push(perm.clone());
                        role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                put_role(st, batch, role);
                commit_revision(st, batch);
                AuthResponse::RoleGrantPermission(Default::default())
            }
            AuthRequest::RoleRevokePermission(r) => {
                let mut role = st.roles.get(&r.role).cloned().ok_or(AuthError::RoleNotFound)?;
                let at = role
                    .key_permission
                    .iter()
                    .position(|p| p.key == r.key && p.range_end == r.range_end)
                    .ok_or(AuthError::PermissionNotGranted)?;
                role.key_permission.remove(at);
                put_role(st, batch, role);
                commit_revision(st, batch);
                AuthResponse::RoleRevokePermission(Default::default())
            }
        };
        Ok(resp)
    }
}

fn row_key(prefix: &[u8], name: &str) -> Vec<u8> {
    [prefix, name.as_bytes()].concat()
}

fn put_user(st: &mut State, batch: &mut WriteBatch, user: User) {
    let name = String::from_utf8_lossy(&user.name).into_owned();
    batch.put(TABLE, row_key(USER_PREFIX, &name), user.encode_to_vec());
    st.users.insert(name, user);
}

fn put_role(st: &mut State, batch: &mut WriteBatch, role: Role) {
    let name = String::from_utf8_lossy(&role.name).into_owned();
    batch.put(TABLE, row_key(ROLE_PREFIX, &name), role.encode_to_vec());
    st.roles.insert(name, role);
}

/// Every change to users or roles bumps the auth revision (etcd's `commitRevision`).
fn commit_revision(st: &mut State, batch: &mut WriteBatch) {
    st.revision += 1;
    batch.put(TABLE, KEY_REVISION.to_vec(), st.revision.to_be_bytes().to_vec());
}

/// The stored hash from a request's base64 `hashedPassword`. Keel's edge always fills it; a client
/// sending an undecodable one gets `invalid auth management` (etcd answers with Go's base64 error
/// text, which has no typed equivalent).
fn decode_hash(hashed: &str) -> Result<Vec<u8>, AuthError> {
    base64::engine::general_purpose::STANDARD.decode(hashed).map_err(|_| AuthError::InvalidAuthMgmt)
}

#[cfg(test)]
mod tests;
