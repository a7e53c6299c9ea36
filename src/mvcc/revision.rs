//! Revisions and the byte layout of rows in the `"kv"` table, which is exactly etcd's bbolt `key`
//! bucket: 8-byte big-endian main revision, `_`, 8-byte big-endian sub revision, and a trailing `t`
//! on tombstones. Keeping etcd's layout lets snapshots move between Keel and etcd row for row.

use std::fmt;

use crate::error::{Error, Result};

/// Length of a row key for a live value (`main` + `_` + `sub`).
pub(crate) const ROW_KEY_LEN: usize = 17;
/// Length of a row key for a tombstone (the same plus the `t` marker).
pub(crate) const TOMBSTONE_ROW_KEY_LEN: usize = 18;
const SEPARATOR: u8 = b'_';
const TOMBSTONE_MARK: u8 = b't';

/// One change's position in history: `main` is the store revision of the write request, `sub`
/// the index of the change inside that request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// The row key for this revision. etcd writes the signed numbers as their two's-complement
    /// bit patterns, so the same cast keeps byte order equal to revision order for every revision
    /// it can produce (all are >= 0).
    pub fn to_row_key(self, tombstone: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(TOMBSTONE_ROW_KEY_LEN);
        out.extend_from_slice(&(self.main as u64).to_be_bytes());
        out.push(SEPARATOR);
        out.extend_from_slice(&(self.sub as u64).to_be_bytes());
        if tombstone {
            out.push(TOMBSTONE_MARK);
        }
        out
    }

    /// Parse a row key, returning the revision and whether it marks a tombstone. Anything else
    /// in the table means the data was not written by us (or by etcd) and is reported as corrupt.
    pub fn from_row_key(key: &[u8]) -> Result<(Revision, bool)> {
        let tombstone = match key.len() {
            ROW_KEY_LEN => false,
            TOMBSTONE_ROW_KEY_LEN if key[ROW_KEY_LEN] == TOMBSTONE_MARK => true,
            _ => return Err(corrupt_key(key)),
        };
        if key[8] != SEPARATOR {
            return Err(corrupt_key(key));
        }
        let mut main = [0u8; 8];
        main.copy_from_slice(&key[0..8]);
        let mut sub = [0u8; 8];
        sub.copy_from_slice(&key[9..17]);
        Ok((Revision { main: u64::from_be_bytes(main) as i64, sub: u64::from_be_bytes(sub) as i64 }, tombstone))
    }

    /// The smallest row key of main revision `main`; used as a scan bound.
    pub(crate) fn row_key_floor(main: i64) -> Vec<u8> {
        Revision::new(main, 0).to_row_key(false)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.main, self.sub)
    }
}

fn corrupt_key(key: &[u8]) -> Error {
    Error::Storage(format!("corrupt mvcc row key {key:02x?}"))
}

/// The `meta` encoding of a compaction revision: etcd stores it as a full row key with sub 0.
pub(crate) fn encode_meta_rev(main: i64) -> Vec<u8> {
    Revision::new(main, 0).to_row_key(false)
}

pub(crate) fn decode_meta_rev(bytes: &[u8]) -> Result<i64> {
    let (rev, tombstone) = Revision::from_row_key(bytes)?;
    if tombstone {
        return Err(Error::Storage(format!("corrupt compaction revision {bytes:02x?}")));
    }
    Ok(rev.main)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_key_layout_is_etcds() {
        let k = Revision::new(2, 1).to_row_key(false);
        assert_eq!(k, vec![0, 0, 0, 0, 0, 0, 0, 2, b'_', 0, 0, 0, 0, 0, 0, 0, 1]);
        let t = Revision::new(0x0102, 3).to_row_key(true);
        assert_eq!(t.len(), 18);
        assert_eq!(&t[..9], &[0, 0, 0, 0, 0, 0, 1, 2, b'_']);
        assert_eq!(t[17], b't');
    }

    #[test]
    fn row_keys_round_trip_and_sort_by_revision() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 5),
            Revision::new(2, 0),
            Revision::new(300, 2),
            Revision::new(1 << 40, 0),
        ];
        let mut keys = Vec::new();
        for (i, r) in revs.iter().enumerate() {
            let tomb = i % 2 == 1;
            let k = r.to_row_key(tomb);
            assert_eq!(Revision::from_row_key(&k).unwrap(), (*r, tomb));
            keys.push(k);
        }
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
    }

    #[test]
    fn malformed_row_keys_are_errors() {
        assert!(Revision::from_row_key(b"").is_err());
        assert!(Revision::from_row_key(&[0u8; 17]).is_err()); // no separator
        let mut k = Revision::new(1, 1).to_row_key(true);
        k[17] = b'x';
        assert!(Revision::from_row_key(&k).is_err());
        assert!(decode_meta_rev(&Revision::new(1, 0).to_row_key(true)).is_err());
        assert_eq!(decode_meta_rev(&encode_meta_rev(42)).unwrap(), 42);
    }
}
