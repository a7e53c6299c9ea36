//! The row layout of the `auth` table, shared by the auth store (which owns the rows) and the
//! snapshot writer and reader (which map them to etcd's `auth`, `authUsers` and `authRoles`
//! buckets). Values are etcd's own encodings: `authpb.User` / `authpb.Role` protobufs, the
//! revision as 8 big-endian bytes, the enabled flag as one byte (1 on, 0 off).

/// The table every auth row lives in.
pub const TABLE: &str = "auth";
/// Whether auth is enabled (etcd's `auth/authEnabled`).
pub const ENABLED: &[u8] = b"enabled";
/// The auth revision (etcd's `auth/authRevision`).
pub const REVISION: &[u8] = b"revision";
/// `user/<name>` → `authpb.User` (etcd's `authUsers/<name>`).
pub const USER_PREFIX: &[u8] = b"user/";
/// `role/<name>` → `authpb.Role` (etcd's `authRoles/<name>`).
pub const ROLE_PREFIX: &[u8] = b"role/";

/// Where one `auth` table row goes in etcd's buckets: (bucket, key).
pub fn to_etcd(key: &[u8]) -> Option<(&'static [u8], Vec<u8>)> {
    if key == ENABLED {
        Some((b"auth", b"authEnabled".to_vec()))
    } else if key == REVISION {
        Some((b"auth", b"authRevision".to_vec()))
    } else if let Some(name) = key.strip_prefix(USER_PREFIX) {
        Some((b"authUsers", name.to_vec()))
    } else {
        key.strip_prefix(ROLE_PREFIX).map(|name| (&b"authRoles"[..], name.to_vec()))
    }
}

/// The `auth` table key for a row of etcd's bucket `bucket`, if Keel keeps it.
pub fn from_etcd(bucket: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    match bucket {
        b"auth" if key == b"authEnabled" => Some(ENABLED.to_vec()),
        b"auth" if key == b"authRevision" => Some(REVISION.to_vec()),
        b"authUsers" => Some([USER_PREFIX, key].concat()),
        b"authRoles" => Some([ROLE_PREFIX, key].concat()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_map_to_etcds_buckets_and_back() {
        for key in [&b"enabled"[..], b"revision", b"user/alice", b"role/r1"] {
            let (bucket, etcd_key) = to_etcd(key).unwrap();
            assert_eq!(from_etcd(bucket, &etcd_key).as_deref(), Some(key));
        }
        assert_eq!(to_etcd(b"user/root"), Some((&b"authUsers"[..], b"root".to_vec())));
        assert_eq!(to_etcd(b"other"), None);
    }
}
