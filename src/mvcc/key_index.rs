//! The in-memory key index (etcd's `treeIndex` of `keyIndex`es): for every key, the revisions at
//! which it changed, grouped into generations that a delete closes. It holds keys and revisions
//! only; values stay in the `"kv"` table and are fetched by revision.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use super::revision::Revision;
use crate::error::{Error, Result};

/// Lower and upper bound of a key range, as `BTreeMap::range` takes them.
pub(crate) type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The keys a request names, decoded from etcd's `(key, range_end)` convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyRange<'a> {
    /// `range_end` empty: just `key`.
    Single(&'a [u8]),
    /// `range_end == "\0"`: every key `>= key`.
    From(&'a [u8]),
    /// Half-open `[key, range_end)`; empty when `range_end <= key`.
    Span(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    pub(crate) fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Span(key, end),
        }
    }

    /// Bounds for a `BTreeMap::range`, or None when the range is empty (an inverted range would
    /// make `BTreeMap::range` panic).
    pub(crate) fn bounds(&self) -> Option<KeyBounds<'a>> {
        match *self {
            KeyRange::Single(key) => Some((Bound::Included(key), Bound::Included(key))),
            KeyRange::From(start) => Some((Bound::Included(start), Bound::Unbounded)),
            KeyRange::Span(start, end) if end > start => Some((Bound::Included(start), Bound::Excluded(end))),
            KeyRange::Span(..) => None,
        }
    }
}

/// One life of a key: from the put that created it up to and including the delete that ended
/// it (the last generation of a key is open and has no tombstone).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Generation {
    /// Revision of the put that created this life.
    created: Revision,
    /// Version of the newest revision in `revs`. After compaction trims older revisions this
    /// still counts them, so `ver` is not `revs.len()`.
    ver: i64,
    revs: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Position of the newest revision whose main revision is `<= at`.
    fn newest_at_or_before(&self, at: i64) -> Option<usize> {
        self.revs.iter().rposition(|r| r.main <= at)
    }
}

/// The history of one key. Always has at least one generation; the last one is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyIndex {
    generations: Vec<Generation>,
}

/// What a read at some revision needs to know about a live key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyAt {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

impl KeyIndex {
    fn new() -> Self {
        KeyIndex { generations: vec![Generation::default()] }
    }

    /// A key rebuilt from storage whose first surviving row is `modified`: compaction may have
    /// removed the rows before it, so creation and version come from the row's own value.
    fn restored(created: Revision, modified: Revision, version: i64) -> Self {
        KeyIndex { generations: vec![Generation { created, ver: version, revs: vec![modified] }] }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    fn last_mut(&mut self) -> &mut Generation {
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let n = self.generations.len() - 1;
        &mut self.generations[n]
    }

    fn put(&mut self, rev: Revision) {
        let g = self.last_mut();
        if g.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
    }

    fn tombstone(&mut self, rev: Revision) -> bool {
        if self.last_mut().is_empty() {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// Index of the generation alive at `at`, if the key existed then.
    fn generation_index_at(&self, at: i64) -> Option<usize> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(newest)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            // A closed generation whose tombstone is at or before `at` means the key was
            // deleted then (and not re-created, or a later generation would have matched).
            if i != last && newest.main <= at {
                return None;
            }
            if first.main <= at {
                return Some(i);
            }
        }
        None
    }

    fn generation_at(&self, at: i64) -> Option<&Generation> {
        self.generation_index_at(at).map(|i| &self.generations[i])
    }

    /// The key's state as a read at revision `at` sees it, or None if it did not exist then.
    pub(crate) fn get(&self, at: i64) -> Option<KeyAt> {
        let g = self.generation_at(at)?;
        let n = g.newest_at_or_before(at)?;
        Some(KeyAt { modified: g.revs[n], created: g.created, version: g.ver - (g.revs.len() - n - 1) as i64 })
    }

    /// Drop history a compaction at `at` makes unreachable, adding the revisions whose rows must
    /// survive to `keep`. Mirrors etcd 3.5.16: per key the newest revision `<= at` is kept, and a
    /// tombstone sitting exactly at `at` is kept too (so a watch from `at` still sees that delete);
    /// older closed generations vanish. Returns true when nothing of the key is left.
    ///
    /// One deliberate difference: when a key was deleted and re-created within revision `at`
    /// itself (possible in one txn, e.g. a delete up to `"\0"` then a put), etcd picks the
    /// generation by main revision only, keeps the tombstone and drops the re-created value's
    /// row, after which reading `at` kills etcd 3.5.16 ("range failed to find revision pair").
    /// We keep the value that is alive at `at` instead.
    fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) -> bool {
        let last = self.generations.len().saturating_sub(1);
        let mut gi = 0;
        while gi < last {
            let tomb = self.generations[gi].revs.last().map_or(i64::MIN, |r| r.main);
            if tomb >= at {
                break;
            }
            gi += 1;
        }
        if let Some(alive) = self.generation_index_at(at) {
            gi = gi.max(alive);
        }
        if let Some(g) = self.generations.get_mut(gi) {
            if let Some(n) = g.newest_at_or_before(at) {
                keep.insert(g.revs[n]);
                g.revs.drain(..n);
            }
        }
        self.generations.drain(..gi);
        self.is_empty()
    }
}

impl KeyIndex {
    /// The revision a compaction at `at` would keep for this key, as etcd's `keyIndex.keep`
    /// (used by HashKV) picks it, without changing anything: the newest revision `<= at` of the
    /// first generation not closed by then; none if that revision is the tombstone closing its
    /// generation.
    fn keep(&self, at: i64, keep: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let last = self.generations.len() - 1;
        let mut gi = 0;
        while gi < last {
            let tomb = self.generations[gi].revs.last().map_or(i64::MIN, |r| r.main);
            if tomb > at {
                break;
            }
            gi += 1;
        }
        let g = &self.generations[gi];
        if let Some(n) = g.newest_at_or_before(at) {
            let closing_tombstone = n + 1 == g.revs.len() && gi != last;
            if !closing_tombstone {
                keep.insert(g.revs[n]);
            }
        }
    }
}

/// All keys' histories, ordered by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TreeIndex {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
}

impl TreeIndex {
    pub(crate) fn put(&mut self, key: &[u8], rev: Revision) {
        match self.keys.get_mut(key) {
            Some(ki) => ki.put(rev),
            None => {
                let mut ki = KeyIndex::new();
                ki.put(rev);
                self.keys.insert(key.to_vec(), ki);
            }
        }
    }

    /// Close the key's current generation. Deleting a key that is not live is a bug of ours (the
    /// write path only deletes keys it found live).
    pub(crate) fn tombstone(&mut self, key: &[u8], rev: Revision) -> Result<()> {
        let closed = self.keys.get_mut(key).is_some_and(|ki| ki.tombstone(rev));
        if closed {
            Ok(())
        } else {
            Err(Error::Internal(format!("tombstone at {rev} for a key that is not live: {key:02x?}")))
        }
    }

    /// Rebuild one row read back from storage, in revision order (etcd's `restoreIntoIndex`).
    /// A tombstone for a key we have not seen is skipped: its earlier history was compacted away
    /// and a read can never find the key through it.
    pub(crate) fn restore_row(&mut self, key: &[u8], rev: Revision, tombstone: bool, created: i64, version: i64) {
        match self.keys.get_mut(key) {
            Some(ki) => {
                if tombstone {
                    // A second tombstone in a row cannot come from a consistent store; etcd
                    // logs and ignores it, and so do we.
                    ki.tombstone(rev);
                } else {
                    ki.put(rev);
                }
            }
            None if !tombstone => {
                self.keys.insert(key.to_vec(), KeyIndex::restored(Revision::new(created, 0), rev, version));
            }
            None => {}
        }
    }

    pub(crate) fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.keys.get(key).and_then(|ki| ki.get(at))
    }

    /// Keys in `range` that exist at revision `at`, in key order, with their state then.
    pub(crate) fn live_in<'s>(&'s self, range: KeyRange<'s>, at: i64) -> impl Iterator<Item = (&'s [u8], KeyAt)> + 's {
        let entries = range.bounds().map(|bounds| self.keys.range::<[u8], _>(bounds));
        entries.into_iter().flatten().filter_map(move |(k, ki)| ki.get(at).map(|s| (k.as_slice(), s)))
    }

    /// Compact every key at `at` (see [`KeyIndex::compact`]) and return the revisions whose rows
    /// must be kept among those `<= at`.
    pub(crate) fn compact(&mut self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        self.keys.retain(|_, ki| !ki.compact(at, &mut keep));
        keep
    }

    /// What a compaction at `at` would keep, over every key (etcd's `treeIndex.Keep`).
    pub(crate) fn keep(&self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for ki in self.keys.values() {
            ki.keep(at, &mut keep);
        }
        keep
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Keys alive now (their open generation has revisions), for etcd's `keys_total` gauge.
    pub(crate) fn live_len(&self) -> usize {
        self.keys.values().filter(|ki| ki.generations.last().is_some_and(|g| !g.is_empty())).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64, sub: i64) -> Revision {
        Revision::new(main, sub)
    }

    /// put(2), put(3), delete(4), put(6), put(7), delete(8), put(10): the history used below.
    fn sample() -> KeyIndex {
        let mut ki = KeyIndex::new();
        ki.put(r(2, 0));
        ki.put(r(3, 0));
        assert!(ki.tombstone(r(4, 0)));
        ki.put(r(6, 0));
        ki.put(r(7, 1));
        assert!(ki.tombstone(r(8, 0)));
        ki.put(r(10, 0));
        ki
    }

    #[test]
    fn keep_is_etcds_choice_without_tombstones() {
        let ki = sample();
        let kept = |at| {
            let mut k = HashSet::new();
            ki.keep(at, &mut k);
            let mut v: Vec<_> = k.into_iter().collect();
            v.sort();
            v
        };
        assert_eq!(kept(1), vec![]);
        assert_eq!(kept(3), vec![r(3, 0)]);
        // The tombstone closing a generation is never kept by `keep` (etcd's keyIndex.keep).
        assert_eq!(kept(4), vec![]);
        assert_eq!(kept(5), vec![]);
        assert_eq!(kept(7), vec![r(7, 1)]);
        assert_eq!(kept(9), vec![]);
        assert_eq!(kept(12), vec![r(10, 0)]);
        // `keep` changes nothing.
        assert_eq!(ki, sample());
    }

    #[test]
    fn get_follows_generations() {
        let ki = sample();
        assert_eq!(ki.get(1), None);
        let at = |rev| ki.get(rev).map(|s| (s.modified, s.created, s.version));
        assert_eq!(at(2), Some((r(2, 0), r(2, 0), 1)));
        assert_eq!(at(3), Some((r(3, 0), r(2, 0), 2)));
        assert_eq!(at(4), None);
        assert_eq!(at(5), None);
        assert_eq!(at(6), Some((r(6, 0), r(6, 0), 1)));
        assert_eq!(at(7), Some((r(7, 1), r(6, 0), 2)));
        assert_eq!(at(8), None);
        assert_eq!(at(9), None);
        assert_eq!(at(10), Some((r(10, 0), r(10, 0), 1)));
        assert_eq!(at(100), Some((r(10, 0), r(10, 0), 1)));
    }

    #[test]
    fn tombstone_needs_a_live_key() {
        let mut ki = KeyIndex::new();
        assert!(!ki.tombstone(r(2, 0)));
        ki.put(r(2, 0));
        assert!(ki.tombstone(r(3, 0)));
        assert!(!ki.tombstone(r(4, 0)));
    }

    fn compacted(at: i64) -> (KeyIndex, HashSet<Revision>, bool) {
        let mut ki = sample();
        let mut keep = HashSet::new();
        let empty = ki.compact(at, &mut keep);
        (ki, keep, empty)
    }

    #[test]
    fn compaction_keeps_the_newest_revision_at_or_before() {
        let (ki, keep, empty) = compacted(3);
        assert!(!empty);
        assert_eq!(keep, HashSet::from([r(3, 0)]));
        assert_eq!(ki.get(3).map(|s| (s.modified, s.version)), Some((r(3, 0), 2)));
        assert_eq!(ki.get(7).map(|s| s.modified), Some(r(7, 1)));

        // Between generations: only the later ones survive, nothing of the first is kept.
        let (ki, keep, _) = compacted(5);
        assert_eq!(keep, HashSet::new());
        assert_eq!(ki.get(5), None);
        assert_eq!(ki.get(6).map(|s| s.modified), Some(r(6, 0)));
    }

    #[test]
    fn compaction_keeps_a_tombstone_exactly_at_the_revision() {
        // etcd 3.5.16 keeps the delete at the compaction revision (checked against the real
        // binary: a watch from that revision still reports the DELETE).
        let (ki, keep, empty) = compacted(4);
        assert!(!empty);
        assert_eq!(keep, HashSet::from([r(4, 0)]));
        assert_eq!(ki.get(4), None);
        assert_eq!(ki.get(6).map(|s| s.modified), Some(r(6, 0)));

        // A later compaction removes it.
        let mut ki = ki;
        let mut keep = HashSet::new();
        ki.compact(5, &mut keep);
        assert_eq!(keep, HashSet::new());
        assert_eq!(ki.generations.len(), 2);
    }

    #[test]
    fn compaction_keeps_a_value_re_created_in_the_compaction_revision() {
        // put(2), then in one txn at 4: delete (4.0) and put again (4.1).
        let mut ki = KeyIndex::new();
        ki.put(r(2, 0));
        assert!(ki.tombstone(r(4, 0)));
        ki.put(r(4, 1));
        ki.put(r(5, 0));
        let mut keep = HashSet::new();
        assert!(!ki.compact(4, &mut keep));
        assert_eq!(keep, HashSet::from([r(4, 1)]));
        assert_eq!(ki.get(4).map(|s| (s.modified, s.version)), Some((r(4, 1), 1)));
        assert_eq!(ki.get(5).map(|s| (s.modified, s.version)), Some((r(5, 0), 2)));

        // Deleted, re-created and deleted again within 4: not alive at 4, etcd's choice stands.
        let mut ki = KeyIndex::new();
        ki.put(r(2, 0));
        assert!(ki.tombstone(r(4, 0)));
        ki.put(r(4, 1));
        assert!(ki.tombstone(r(4, 2)));
        let mut keep = HashSet::new();
        ki.compact(4, &mut keep);
        assert_eq!(keep, HashSet::from([r(4, 0)]));
        assert_eq!(ki.get(4), None);
    }

    #[test]
    fn compaction_past_the_last_delete_empties_the_key() {
        let mut ki = KeyIndex::new();
        ki.put(r(2, 0));
        ki.tombstone(r(3, 0));
        let mut keep = HashSet::new();
        assert!(!ki.clone().compact(3, &mut keep));
        assert_eq!(keep, HashSet::from([r(3, 0)]));
        keep.clear();
        assert!(ki.compact(4, &mut keep));
        assert!(keep.is_empty());
    }

    #[test]
    fn compaction_inside_the_open_generation() {
        let (ki, keep, _) = compacted(11);
        assert_eq!(keep, HashSet::from([r(10, 0)]));
        assert_eq!(ki.generations.len(), 1);
        assert_eq!(ki.get(11).map(|s| (s.modified, s.version)), Some((r(10, 0), 1)));
    }

    #[test]
    fn restore_uses_the_rows_own_creation_and_version() {
        let mut t = TreeIndex::default();
        // The first surviving row of "a" is version 5, created at 2.
        t.restore_row(b"a", r(9, 0), false, 2, 5);
        t.restore_row(b"a", r(11, 0), false, 2, 6);
        // A leading tombstone for an unknown key is skipped.
        t.restore_row(b"b", r(12, 0), true, 0, 0);
        t.restore_row(b"a", r(13, 0), true, 0, 0);
        t.restore_row(b"a", r(14, 0), false, 14, 1);
        assert_eq!(t.len(), 1);
        let s = t.get(b"a", 11).unwrap();
        assert_eq!((s.modified, s.created, s.version), (r(11, 0), r(2, 0), 6));
        assert_eq!(t.get(b"a", 13), None);
        assert_eq!(t.get(b"a", 14).unwrap().version, 1);
        assert_eq!(t.get(b"b", 12), None);
    }

    #[test]
    fn key_ranges() {
        let mut t = TreeIndex::default();
        for (i, k) in [&b"a"[..], b"b", b"c", b"d"].iter().enumerate() {
            t.put(k, r(i as i64 + 2, 0));
        }
        let keys = |range| t.live_in(range, 10).map(|(k, _)| k.to_vec()).collect::<Vec<_>>();
        assert_eq!(keys(KeyRange::new(b"b", b"")), vec![b"b".to_vec()]);
        assert_eq!(keys(KeyRange::new(b"b", b"\0")).len(), 3);
        assert_eq!(keys(KeyRange::new(b"b", b"d")).len(), 2);
        assert_eq!(keys(KeyRange::new(b"d", b"b")).len(), 0);
        assert_eq!(keys(KeyRange::new(b"b", b"b")).len(), 0);
        assert_eq!(keys(KeyRange::new(b"\0", b"\0")).len(), 4);
        assert_eq!(t.live_in(KeyRange::new(b"a", b"\0"), 3).count(), 2);
    }
}
