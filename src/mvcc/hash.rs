//! `HashKV`: etcd 3.5.16's `hashByRev` and `kvHasher` (server/mvcc/hash.go). A CRC-32C over the
//! name of the key bucket, then every row of it (17-byte revision key, marshalled
//! `mvccpb.KeyValue`) up to the hashed revision, leaving out rows a compaction has doomed. Our
//! `"kv"` rows are byte for byte etcd's, so for the same history the hash equals real etcd's.

use std::collections::HashSet;
use std::sync::Mutex;

use super::revision::Revision;
use super::{MvccStore, KV_TABLE};
use crate::error::{Error, Result};
use crate::storage::checksum::Crc32c;

/// What etcd's `KeyValueHash` plus the store revision tell a HashKV caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// etcd's `compactMainRev` when the hash began: -1 if the store was never compacted.
    pub compact_revision: i64,
    /// The revision the hash covers (the current one when 0 was asked).
    pub hash_revision: i64,
    /// The store revision, for the response header.
    pub current_revision: i64,
}

/// etcd names its bucket "key"; the hash starts with that name.
const KEY_BUCKET_NAME: &[u8] = b"key";

impl MvccStore {
    /// Hash the key-value history up to `rev` (0 = current). Errors as etcd: a revision below the
    /// compaction is `Compacted`, one past the current revision `FutureRevision`.
    pub fn hash_kv(&self, rev: i64) -> Result<KvHash> {
        // etcd looks in its compaction hashes first, with the revision as asked (0 never matches).
        if let Some(stored) = self.compactor.hashes().get(rev) {
            return Ok(KvHash { current_revision: self.current_revision(), ..stored });
        }
        // Timed from here, as etcd's `hashRevSec` times only hashes it computes.
        let began = std::time::Instant::now();
        // No compaction may start while we scan: it would delete rows the hash counts. Writes go
        // on; their rows lie above `rev` and are skipped.
        let _no_compaction = self.hash_gate.lock().unwrap_or_else(|p| p.into_inner());
        let (compacted, current, at, keep) = {
            let st = self.read_state();
            if rev > 0 && rev < st.compacted {
                return Err(Error::Compacted);
            }
            if rev > 0 && rev > st.current {
                return Err(Error::FutureRevision);
            }
            let at = if rev == 0 { st.current } else { rev };
            (st.compacted, st.current, at, st.index.keep(at))
        };
        let mut hasher = KvHasher::new(compacted, at, &keep);
        let end = Revision::row_key_floor(at.saturating_add(1));
        crate::storage::try_scan(self.engine.as_ref(), KV_TABLE, &[], Some(&end), &mut |k, v| {
            hasher.row(k, v)?;
            Ok::<_, Error>(true)
        })?;
        crate::metrics::HASH_REV.observe(began.elapsed());
        Ok(KvHash { current_revision: current, ..hasher.finish() })
    }
}

/// etcd's `kvHasher`: fed the key rows in order, hashes those [`counts`] admits.
pub(crate) struct KvHasher<'a> {
    crc: Crc32c,
    compacted: i64,
    at: i64,
    keep: &'a HashSet<Revision>,
}

impl<'a> KvHasher<'a> {
    pub(crate) fn new(compacted: i64, at: i64, keep: &'a HashSet<Revision>) -> Self {
        let mut crc = Crc32c::default();
        crc.update(KEY_BUCKET_NAME);
        KvHasher { crc, compacted, at, keep }
    }

    pub(crate) fn row(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let (row, tombstone) = Revision::from_row_key(key)?;
        if row.main <= self.at && counts(row, tombstone, self.compacted, self.keep) {
            self.crc.update(key);
            self.crc.update(value);
        }
        Ok(())
    }

    /// The hash; `current_revision` is left 0 for the caller to fill.
    pub(crate) fn finish(&self) -> KvHash {
        KvHash {
            hash: self.crc.finish(),
            compact_revision: self.compacted,
            hash_revision: self.at,
            current_revision: 0,
        }
    }
}

/// etcd's `hashStorage`: the hashes its compactions computed, the last ten, by revision. A HashKV
/// at exactly one of those revisions answers the stored hash (with the compaction revision before
/// that compaction), not a fresh one — which differs, since the stored one also counted the rows
/// that compaction deleted.
#[derive(Default)]
pub(crate) struct HashCache(Mutex<Vec<KvHash>>);

impl HashCache {
    /// etcd's `hashStorageMaxSize`.
    const MAX: usize = 10;

    pub(crate) fn store(&self, hash: KvHash) {
        let mut hashes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        hashes.push(hash);
        hashes.sort_by_key(|h| h.hash_revision);
        let excess = hashes.len().saturating_sub(Self::MAX);
        hashes.drain(..excess);
    }

    fn get(&self, rev: i64) -> Option<KvHash> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|h| h.hash_revision == rev).copied()
    }
}

/// etcd 3.5.16's `kvHasher.WriteKeyValue` filter for a row at or below the hashed revision:
/// - rows at or below the compaction count only if compaction at the hashed revision would keep
///   them; quirk kept from etcd: when nothing at all would be kept (`keep` empty) they all count;
/// - a tombstone exactly at the compaction revision never counts: 3.5.16 keeps that row where
///   3.5.15 deleted it, and skips it so both releases hash alike.
fn counts(row: Revision, tombstone: bool, compacted: i64, keep: &HashSet<Revision>) -> bool {
    if tombstone && row.main == compacted {
        return false;
    }
    row.main > compacted || keep.is_empty() || keep.contains(&row)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mvcc::mem_engine::MemEngine;
    use crate::proto::etcdserverpb::PutRequest;
    use crate::storage::WriteBatch;

    fn put(s: &MvccStore, key: &str, value: &str) {
        let mut w = s.write();
        w.put(&PutRequest { key: key.into(), value: value.into(), ..Default::default() }).unwrap();
        w.commit(WriteBatch::default()).unwrap();
    }

    fn delete(s: &MvccStore, key: &str) {
        let mut w = s.write();
        w.delete_range_count(key.as_bytes(), &[]).unwrap();
        w.commit(WriteBatch::default()).unwrap();
    }

    #[test]
    fn fresh_store_hashes_like_a_fresh_etcd() {
        let s = MvccStore::open(Arc::new(MemEngine::default())).unwrap();
        let h = s.hash_kv(0).unwrap();
        // `etcdctl endpoint hashkv -w json` on a fresh 3.5.16: hash 1084519789, compact -1.
        assert_eq!(h, KvHash { hash: 1_084_519_789, compact_revision: -1, hash_revision: 1, current_revision: 1 });
    }

    #[test]
    fn a_single_put_hashes_like_etcd() {
        // etcd 3.5.16 after `put a 1` on a fresh member: hash 2587454935 at revision 2.
        let s = MvccStore::open(Arc::new(MemEngine::default())).unwrap();
        put(&s, "a", "1");
        assert_eq!(s.hash_kv(0).unwrap().hash, 2_587_454_935);
    }

    #[test]
    fn hash_at_a_revision_ignores_later_rows_and_checks_bounds() {
        let s = MvccStore::open(Arc::new(MemEngine::default())).unwrap();
        put(&s, "a", "1");
        let at2 = s.hash_kv(0).unwrap();
        put(&s, "b", "2");
        let later = s.hash_kv(2).unwrap();
        assert_eq!((later.hash, later.hash_revision, later.current_revision), (at2.hash, 2, 3));
        assert!(matches!(s.hash_kv(4), Err(Error::FutureRevision)));
        put(&s, "a", "3");
        delete(&s, "b");
        s.compact(4, true).unwrap().wait().unwrap();
        assert!(matches!(s.hash_kv(3), Err(Error::Compacted)));
        // At the compaction revision itself the answer is the hash the compaction stored, which
        // reports the compaction before it (none: -1), as etcd's hashStorage does.
        let h = s.hash_kv(4).unwrap();
        assert_eq!((h.compact_revision, h.hash_revision, h.current_revision), (-1, 4, 5));
    }

    /// CRC-32C of "key" and the named rows as the engine holds them.
    fn expected(s: &MvccStore, rows: &[(i64, bool)]) -> u32 {
        let mut crc = Crc32c::default();
        crc.update(KEY_BUCKET_NAME);
        for (main, tombstone) in rows {
            let k = Revision::new(*main, 0).to_row_key(*tombstone);
            let v = s.engine.get(KV_TABLE, &k).unwrap().expect("row kept");
            crc.update(&k);
            crc.update(&v);
        }
        crc.finish()
    }

    #[test]
    fn after_compaction_only_rows_kept_at_the_hashed_revision_count() {
        let s = MvccStore::open(Arc::new(MemEngine::default())).unwrap();
        for v in ["1", "2", "3"] {
            put(&s, "a", v); // revisions 2, 4, 6
            put(&s, "b", v); // revisions 3, 5, 7
        }
        delete(&s, "b"); // 8
        put(&s, "c", "x"); // 9
        let at7_before = s.hash_kv(7).unwrap();
        s.compact(7, true).unwrap().wait().unwrap();
        // Left at or below 7: a@6 and b@7. At revision 9, compaction would keep a@6 but not b@7
        // (b was deleted at 8), so b@7 is skipped though its row still exists.
        let h = s.hash_kv(0).unwrap();
        assert_eq!(h.hash, expected(&s, &[(6, false), (8, true), (9, false)]));
        // At 7 the compaction's stored hash answers: it counted every row up to 7 as it went,
        // like a hash taken just before.
        assert_eq!(s.hash_kv(7).unwrap().hash, at7_before.hash);
        // A second compaction hashes from the first on: rows at or below 7 count only if kept.
        s.compact(8, true).unwrap().wait().unwrap();
        let h8 = s.hash_kv(8).unwrap();
        assert_eq!(h8.compact_revision, 7);
        // Of the rows it saw, b@7 is below the first compaction and not kept by this one.
        assert_eq!(h8.hash, expected(&s, &[(6, false), (8, true)]));
    }

    #[test]
    fn nothing_to_keep_means_every_row_counts() {
        // etcd's `len(keep) > 0` condition: with no live key at the hashed revision, the value a
        // compaction kept is hashed although the key was deleted since.
        let s = MvccStore::open(Arc::new(MemEngine::default())).unwrap();
        put(&s, "a", "1");
        s.compact(2, true).unwrap().wait().unwrap();
        delete(&s, "a");
        assert_eq!(s.hash_kv(0).unwrap().hash, expected(&s, &[(2, false), (3, true)]));
        // With another key alive, keep is not empty and the deleted key's value is skipped.
        put(&s, "b", "1");
        assert_eq!(s.hash_kv(0).unwrap().hash, expected(&s, &[(3, true), (4, false)]));
    }

    #[test]
    fn a_tombstone_at_the_compaction_revision_never_counts() {
        // etcd 3.5.16 after `put x 1; del x; compact 3`: hash 1084519789, just "key".
        let s = MvccStore::open(Arc::new(MemEngine::default())).unwrap();
        put(&s, "x", "1");
        delete(&s, "x");
        s.compact(3, true).unwrap().wait().unwrap();
        assert_eq!(s.hash_kv(0).unwrap().hash, 1_084_519_789);
    }
}
