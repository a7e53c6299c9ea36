//! Key-range permission matching: does the union of a user's granted ranges cover a request's key
//! or range? Mirrors etcd 3.5's `auth/range_perm_cache.go` over its `pkg/adt` interval tree with
//! "bytes-affine" bounds, including its quirks (see the tests).

use std::cmp::Ordering;

use crate::proto::authpb::{permission::Type as PermType, Permission};

/// etcd's `BytesAffineComparable` order: plain byte order, except that the EMPTY byte string is
/// larger than everything. An empty end therefore means "to the end of the key space".
fn affine_cmp(a: &[u8], b: &[u8]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

/// A half-open interval [begin, end) under the affine order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    /// A single key: [key, key + "\0").
    fn point(key: &[u8]) -> Self {
        let mut end = key.to_vec();
        end.push(0);
        Interval { begin: key.to_vec(), end }
    }

    /// etcd's `Interval.Compare`: overlapping intervals compare equal. Written out rather than
    /// as a plain overlap test because etcd's version answers differently for inverted
    /// query ranges (end before begin), and requests may carry those.
    fn overlaps(&self, stored: &Interval) -> bool {
        let left_of = affine_cmp(&self.begin, &stored.begin) == Ordering::Less
            && affine_cmp(&self.end, &stored.begin) != Ordering::Greater;
        let right_of = affine_cmp(&self.begin, &stored.end) != Ordering::Less;
        !left_of && !right_of
    }
}

/// The ranges one user may read and write: the union over all of the user's roles.
#[derive(Clone, Debug, Default)]
pub struct RangePerms {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

impl RangePerms {
    /// Merge granted permissions the way etcd's `getMergedPerms` builds its interval trees: a
    /// permission without range_end is one key; range_end "\0" means "from key on"; READWRITE
    /// lands in both sets.
    pub fn from_permissions<'a>(perms: impl IntoIterator<Item = &'a Permission>) -> Self {
        let mut out = RangePerms::default();
        for perm in perms {
            let interval = if perm.range_end.is_empty() {
                Interval::point(&perm.key)
            } else if perm.range_end == [0] {
                Interval { begin: perm.key.clone(), end: Vec::new() }
            } else {
                Interval { begin: perm.key.clone(), end: perm.range_end.clone() }
            };
            match PermType::try_from(perm.perm_type).unwrap_or(PermType::Read) {
                PermType::Read => out.read.push(interval),
                PermType::Write => out.write.push(interval),
                PermType::Readwrite => {
                    out.read.push(interval.clone());
                    out.write.push(interval);
                }
            }
        }
        // The interval tree visits in begin order; coverage below depends on that order.
        for set in [&mut out.read, &mut out.write] {
            set.sort_by(|a, b| affine_cmp(&a.begin, &b.begin));
        }
        out
    }

    /// May the user do `kind` on `key` (or on [key, range_end) when range_end is non-empty)?
    /// A single key needs any granted interval holding it; a range needs the granted intervals
    /// overlapping it to be contiguous and to cover it entirely (etcd's `Contains`).
    pub fn permits(&self, kind: PermType, key: &[u8], range_end: &[u8]) -> bool {
        let set = match kind {
            PermType::Read => &self.read,
            PermType::Write => &self.write,
            PermType::Readwrite => {
                return self.permits(PermType::Read, key, range_end) && self.permits(PermType::Write, key, range_end)
            }
        };
        if range_end.is_empty() {
            let point = Interval::point(key);
            return set.iter().any(|granted| point.overlaps(granted));
        }
        // range_end "\0" asks for everything from key on: an open end.
        let end = if range_end == [0] { Vec::new() } else { range_end.to_vec() };
        let query = Interval { begin: key.to_vec(), end };
        let mut covered: Option<(&[u8], &[u8])> = None; // (min begin, max end) so far
        for granted in set.iter().filter(|g| query.overlaps(g)) {
            match covered {
                None => covered = Some((&granted.begin, &granted.end)),
                Some((min_begin, max_end)) => {
                    if affine_cmp(max_end, &granted.begin) == Ordering::Less {
                        return false; // a gap
                    }
                    let end =
                        if affine_cmp(&granted.end, max_end) == Ordering::Greater { &granted.end } else { max_end };
                    covered = Some((min_begin, end));
                }
            }
        }
        match covered {
            None => false,
            Some((min_begin, max_end)) => {
                affine_cmp(max_end, &query.end) != Ordering::Less
                    && affine_cmp(min_begin, &query.begin) != Ordering::Greater
            }
        }
    }
}

/// etcd's `isValidPermissionRange` for RoleGrantPermission: a non-empty key, and a range_end that
/// is empty (one key), "\0" (from key on), or after the key.
pub fn is_valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    range_end.is_empty() || range_end == [0] || affine_cmp(key, range_end) == Ordering::Less
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(kind: PermType, key: &str, end: &[u8]) -> Permission {
        Permission { perm_type: kind as i32, key: key.as_bytes().to_vec(), range_end: end.to_vec() }
    }

    #[test]
    fn single_key_grant_covers_only_that_key() {
        let p = RangePerms::from_permissions(&[perm(PermType::Read, "foo", b"")]);
        assert!(p.permits(PermType::Read, b"foo", b""));
        assert!(!p.permits(PermType::Read, b"foo0", b""));
        assert!(!p.permits(PermType::Write, b"foo", b""));
        // A range of exactly that key is covered too: [foo, foo\0).
        assert!(p.permits(PermType::Read, b"foo", b"foo\0"));
        assert!(!p.permits(PermType::Read, b"foo", b"fop"));
    }

    #[test]
    fn prefix_grant_covers_keys_and_subranges() {
        // `role grant-permission r readwrite --prefix foo` sends [foo, fop).
        let p = RangePerms::from_permissions(&[perm(PermType::Readwrite, "foo", b"fop")]);
        for kind in [PermType::Read, PermType::Write] {
            assert!(p.permits(kind, b"foo", b""));
            assert!(p.permits(kind, b"foo/bar", b""));
            assert!(p.permits(kind, b"foo", b"fop"));
            assert!(p.permits(kind, b"foo/a", b"foo/b"));
            assert!(!p.permits(kind, b"fop", b""));
            assert!(!p.permits(kind, b"fo", b"fop"));
            assert!(!p.permits(kind, b"foo", b"foq"));
            assert!(!p.permits(kind, b"foo", b"\0"));
        }
    }

    #[test]
    fn open_ended_grants_and_requests() {
        // `--from-key k` sends range_end "\0"; `--prefix ""` is sent by etcdctl as ["\0", "\0").
        let from_k = RangePerms::from_permissions(&[perm(PermType::Read, "k", b"\0")]);
        assert!(from_k.permits(PermType::Read, b"zzz", b""));
        assert!(from_k.permits(PermType::Read, b"k", b"\0"));
        assert!(from_k.permits(PermType::Read, b"m", b"\0"));
        assert!(!from_k.permits(PermType::Read, b"a", b"\0"));
        let all = RangePerms::from_permissions(&[perm(PermType::Read, "\0", b"\0")]);
        assert!(all.permits(PermType::Read, b"\0", b"\0"));
        assert!(all.permits(PermType::Read, b"anything", b""));
    }

    #[test]
    fn coverage_may_come_from_several_contiguous_grants() {
        let p = RangePerms::from_permissions(&[
            perm(PermType::Read, "a", b"c"),
            perm(PermType::Read, "c", b"e"),
            perm(PermType::Read, "g", b"\0"),
        ]);
        assert!(p.permits(PermType::Read, b"a", b"e"));
        assert!(p.permits(PermType::Read, b"b", b"d"));
        // [e, g) is not granted: a gap.
        assert!(!p.permits(PermType::Read, b"a", b"h"));
        assert!(p.permits(PermType::Read, b"g", b"\0"));
    }

    #[test]
    fn overlapping_grants_of_different_types() {
        let p = RangePerms::from_permissions(&[perm(PermType::Read, "a", b"z"), perm(PermType::Write, "m", b"n")]);
        assert!(p.permits(PermType::Read, b"m1", b""));
        assert!(p.permits(PermType::Write, b"m1", b""));
        assert!(!p.permits(PermType::Write, b"a", b""));
        assert!(!p.permits(PermType::Write, b"m", b"o"));
    }

    #[test]
    fn nothing_granted_permits_nothing() {
        let p = RangePerms::default();
        assert!(!p.permits(PermType::Read, b"a", b""));
        assert!(!p.permits(PermType::Read, b"a", b"\0"));
    }

    #[test]
    fn permission_range_validation_matches_etcd() {
        assert!(is_valid_permission_range(b"a", b""));
        assert!(is_valid_permission_range(b"a", b"\0"));
        assert!(is_valid_permission_range(b"a", b"b"));
        assert!(!is_valid_permission_range(b"b", b"a"));
        assert!(!is_valid_permission_range(b"a", b"a"));
        assert!(!is_valid_permission_range(b"", b""));
    }
}
