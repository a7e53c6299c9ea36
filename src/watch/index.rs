//! Which watchers a changed key concerns (etcd's `watcherGroup`: a map for single-key watchers and
//! an interval tree for range watchers). Single keys are a hash lookup; ranges sit in an array
//! sorted by start with a max-end segment tree over it, rebuilt lazily after creates and cancels,
//! so a lookup costs O(log n) plus the matches.

use std::collections::HashMap;

/// The keys one watcher covers, after etcd's request conventions were applied (see
/// `api/watch.rs`): one key, every key from `key` on, or the half-open `[key, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySpan {
    Key(Vec<u8>),
    From(Vec<u8>),
    Range(Vec<u8>, Vec<u8>),
}

impl KeySpan {
    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeySpan::Key(key) => key.as_slice() == k,
            KeySpan::From(key) => k >= key.as_slice(),
            KeySpan::Range(key, end) => k >= key.as_slice() && k < end.as_slice(),
        }
    }

    /// etcd refuses a watch whose range end is not after its key (`mvcc: watcher range is empty`).
    pub fn is_empty(&self) -> bool {
        matches!(self, KeySpan::Range(key, end) if end <= key)
    }

    /// Heap bytes held, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        match self {
            KeySpan::Key(k) | KeySpan::From(k) => k.capacity(),
            KeySpan::Range(k, e) => k.capacity() + e.capacity(),
        }
    }
}

/// Upper end of a range entry; `Unbounded` sorts above every key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    Unbounded,
}

impl End {
    fn above(&self, k: &[u8]) -> bool {
        match self {
            End::Key(e) => e.as_slice() > k,
            End::Unbounded => true,
        }
    }
}

#[derive(Default)]
pub(crate) struct WatcherIndex {
    single: HashMap<Vec<u8>, Vec<u64>>,
    /// Range watchers by id; the sorted view below is rebuilt from it when `dirty`.
    ranges: HashMap<u64, (Vec<u8>, End)>,
    sorted: Vec<(Vec<u8>, End, u64)>,
    /// Segment tree (1-based, node i covers a slice of `sorted`): the largest end in the slice.
    max_end: Vec<End>,
    dirty: bool,
}

impl WatcherIndex {
    pub(crate) fn insert(&mut self, id: u64, span: &KeySpan) {
        match span {
            KeySpan::Key(k) => self.single.entry(k.clone()).or_default().push(id),
            KeySpan::From(k) => {
                self.ranges.insert(id, (k.clone(), End::Unbounded));
                self.dirty = true;
            }
            KeySpan::Range(k, e) => {
                self.ranges.insert(id, (k.clone(), End::Key(e.clone())));
                self.dirty = true;
            }
        }
    }

    pub(crate) fn remove(&mut self, id: u64, span: &KeySpan) {
        match span {
            KeySpan::Key(k) => {
                if let Some(ids) = self.single.get_mut(k) {
                    ids.retain(|x| *x != id);
                    if ids.is_empty() {
                        self.single.remove(k);
                    }
                }
            }
            KeySpan::From(_) | KeySpan::Range(..) => {
                if self.ranges.remove(&id).is_some() {
                    self.dirty = true;
                }
            }
        }
    }

    /// Call `hit` with every watcher whose span contains `key` (each once).
    pub(crate) fn for_each_match(&mut self, key: &[u8], mut hit: impl FnMut(u64)) {
        if let Some(ids) = self.single.get(key) {
            ids.iter().for_each(|id| hit(*id));
        }
        if self.ranges.is_empty() {
            return;
        }
        if self.dirty {
            self.rebuild();
        }
        // Only entries starting at or before `key` can contain it.
        let candidates = self.sorted.partition_point(|(start, _, _)| start.as_slice() <= key);
        if candidates > 0 {
            self.visit(1, 0, self.sorted.len(), candidates, key, &mut hit);
        }
    }

    fn visit(&self, node: usize, lo: usize, hi: usize, limit: usize, key: &[u8], hit: &mut impl FnMut(u64)) {
        if lo >= limit || !self.max_end[node].above(key) {
            return;
        }
        if hi - lo == 1 {
            hit(self.sorted[lo].2);
            return;
        }
        let mid = lo + (hi - lo) / 2;
        self.visit(2 * node, lo, mid, limit, key, hit);
        self.visit(2 * node + 1, mid, hi, limit, key, hit);
    }

    fn rebuild(&mut self) {
        self.sorted = self.ranges.iter().map(|(id, (start, end))| (start.clone(), end.clone(), *id)).collect();
        self.sorted.sort_unstable();
        let n = self.sorted.len();
        self.max_end = vec![End::Key(Vec::new()); 4 * n.max(1)];
        if n > 0 {
            self.build(1, 0, n);
        }
        self.dirty = false;
    }

    fn build(&mut self, node: usize, lo: usize, hi: usize) {
        if hi - lo == 1 {
            self.max_end[node] = self.sorted[lo].1.clone();
            return;
        }
        let mid = lo + (hi - lo) / 2;
        self.build(2 * node, lo, mid);
        self.build(2 * node + 1, mid, hi);
        self.max_end[node] = self.max_end[2 * node].clone().max(self.max_end[2 * node + 1].clone());
    }

    /// Heap bytes held, for memory accounting.
    pub(crate) fn heap_bytes(&self) -> usize {
        let single: usize = self.single.iter().map(|(k, v)| k.capacity() + v.capacity() * 8 + 48).sum();
        let ranges: usize = self.ranges.values().map(|(k, e)| k.capacity() + end_bytes(e) + 64).sum();
        let sorted: usize = self.sorted.iter().map(|(k, e, _)| k.capacity() + end_bytes(e) + 64).sum();
        let tree: usize = self.max_end.iter().map(|e| end_bytes(e) + 32).sum();
        single + ranges + sorted + tree
    }
}

fn end_bytes(e: &End) -> usize {
    match e {
        End::Key(k) => k.capacity(),
        End::Unbounded => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(ix: &mut WatcherIndex, key: &str) -> Vec<u64> {
        let mut out = Vec::new();
        ix.for_each_match(key.as_bytes(), |id| out.push(id));
        out.sort_unstable();
        out
    }

    #[test]
    fn spans() {
        assert!(KeySpan::Key(b"a".to_vec()).contains(b"a"));
        assert!(!KeySpan::Key(b"a".to_vec()).contains(b"ab"));
        assert!(KeySpan::From(b"b".to_vec()).contains(b"zz"));
        assert!(!KeySpan::From(b"b".to_vec()).contains(b"a"));
        let r = KeySpan::Range(b"b".to_vec(), b"d".to_vec());
        assert!(r.contains(b"b") && r.contains(b"c\xff") && !r.contains(b"d"));
        assert!(KeySpan::Range(b"b".to_vec(), b"b".to_vec()).is_empty());
        assert!(KeySpan::Range(b"b".to_vec(), b"a".to_vec()).is_empty());
        assert!(!r.is_empty());
    }

    #[test]
    fn finds_every_covering_watcher() {
        let mut ix = WatcherIndex::default();
        ix.insert(1, &KeySpan::Key(b"a".to_vec()));
        ix.insert(2, &KeySpan::Key(b"a".to_vec()));
        ix.insert(3, &KeySpan::Range(b"a".to_vec(), b"c".to_vec()));
        ix.insert(4, &KeySpan::From(b"\0".to_vec()));
        ix.insert(5, &KeySpan::Range(b"b".to_vec(), b"b\0".to_vec()));
        ix.insert(6, &KeySpan::From(b"c".to_vec()));
        assert_eq!(matches(&mut ix, "a"), vec![1, 2, 3, 4]);
        assert_eq!(matches(&mut ix, "b"), vec![3, 4, 5]);
        assert_eq!(matches(&mut ix, "c"), vec![4, 6]);
        assert_eq!(matches(&mut ix, ""), Vec::<u64>::new());
        ix.remove(1, &KeySpan::Key(b"a".to_vec()));
        ix.remove(3, &KeySpan::Range(b"a".to_vec(), b"c".to_vec()));
        assert_eq!(matches(&mut ix, "a"), vec![2, 4]);
        assert_eq!(matches(&mut ix, "b"), vec![4, 5]);
    }

    #[test]
    fn agrees_with_a_linear_scan() {
        // Deterministic pseudo-random spans over a small alphabet.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let word = |n: u64| -> Vec<u8> { (0..(n % 3 + 1)).map(|i| b'a' + ((n >> (i * 4)) % 5) as u8).collect() };
        let mut ix = WatcherIndex::default();
        let mut all = Vec::new();
        for id in 0..300u64 {
            let (a, b) = (word(next()), word(next()));
            let span = match next() % 3 {
                0 => KeySpan::Key(a),
                1 => KeySpan::From(a),
                _ => KeySpan::Range(a.clone().min(b.clone()), a.max(b)),
            };
            ix.insert(id, &span);
            all.push((id, span));
            if id % 7 == 0 {
                let (gone, span) = all.remove((next() % all.len() as u64) as usize);
                ix.remove(gone, &span);
            }
            let key = word(next());
            let mut got = Vec::new();
            ix.for_each_match(&key, |id| got.push(id));
            got.sort_unstable();
            let want: Vec<u64> = all.iter().filter(|(_, s)| s.contains(&key)).map(|(id, _)| *id).collect();
            assert_eq!(got, want, "key {key:?}");
        }
    }
}
