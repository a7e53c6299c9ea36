//! The MVCC store: revisions, the key index, reads at any retained revision, the single write
//! transaction, and compaction — etcd 3.5.16's `server/mvcc` (`store`, `treeIndex`,
//! `storeTxnRead`/`storeTxnWrite`) plus the Range post-processing of `apply.go`.
//!
//! Every change is a row in the `"kv"` table keyed by its revision (etcd's bbolt `key` bucket
//! layout, see [`revision`]); the in-memory [`key_index`] maps keys to those revisions and is
//! rebuilt from the rows on [`MvccStore::open`]. Reads resolve revisions in the index and fetch
//! the rows in one `get_many`. Writes go through one [`WriteTxn`] at a time that buffers its
//! changes and lands them, with the caller's extra rows, in one atomic engine batch; only then do
//! readers see the new revision.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use prost::Message;

use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{PutRequest, RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use crate::storage::{Engine, Table, WriteBatch};

mod compaction;
mod go_sort;
mod hash;
mod history;
mod key_index;
mod range;
mod revision;

#[cfg(test)]
pub(crate) mod mem_engine;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub use compaction::CompactionHandle;
pub use hash::KvHash;
pub use history::HistoryChunk;
pub use revision::Revision;

use key_index::{KeyRange, TreeIndex};
use revision::{decode_meta_rev, encode_meta_rev};

/// Rows of every change, keyed by revision (etcd's `key` bucket).
pub const KV_TABLE: Table = "kv";
/// Store-wide metadata shared with other modules (etcd's `meta` bucket).
pub const META_TABLE: Table = "meta";
/// etcd's meta keys for the compaction in progress and the last one finished.
const SCHEDULED_COMPACT_KEY: &[u8] = b"scheduledCompactRev";
const FINISHED_COMPACT_KEY: &[u8] = b"finishedCompactRev";

/// What readers and the writer share, behind one lock.
struct State {
    index: TreeIndex,
    /// The newest revision; 1 on a fresh store, as in etcd.
    current: i64,
    /// etcd's `compactMainRev`: -1 until the first compaction. Compacting at 0 is allowed, so 0
    /// and "never" are different states.
    compacted: i64,
}

/// The MVCC store. Reads ([`MvccStore::range`]) run concurrently with each other and with the
/// writer; writes are serialised through [`MvccStore::write`].
pub struct MvccStore {
    engine: Arc<dyn Engine>,
    state: RwLock<State>,
    /// Held by the one live [`WriteTxn`] (and by `compact`), so write transactions never
    /// interleave and the revision a transaction began at stays the newest until it commits.
    writer: Mutex<()>,
    /// Held by a HashKV for its whole scan and by `compact` while it schedules, so a compaction
    /// never deletes rows under a hash that counts them (etcd holds its backend read
    /// transaction for the same reason).
    hash_gate: Mutex<()>,
    compactor: compaction::Compactor,
}

/// The answer to a Range after etcd's filters, sort and limit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// True when `limit` cut the result short.
    pub more: bool,
    /// Keys in the range at the read revision, ignoring `limit` and the min/max filters.
    pub count: i64,
    /// The store revision the read saw: what etcd puts in the response header (the current
    /// revision, not the revision read at).
    pub revision: i64,
}

impl RangeResult {
    /// The gRPC response; the header carries only the revision (the caller adds cluster, member
    /// and term).
    pub fn into_response(self) -> RangeResponse {
        RangeResponse {
            header: Some(ResponseHeader { revision: self.revision, ..Default::default() }),
            kvs: self.kvs,
            more: self.more,
            count: self.count,
        }
    }
}

/// The outcome of [`WriteTxn::commit`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Committed {
    /// The new store revision, or the unchanged one if the transaction changed nothing.
    pub revision: i64,
    /// One event per change in order, as etcd's watchable store builds them: PUT events carry
    /// the new key-value, DELETE events only the key and the delete revision. `prev_kv` is left
    /// to the watch layer.
    pub events: Vec<Event>,
}

impl MvccStore {
    /// Open the store on `engine`: rebuild the key index from the `"kv"` rows and resume a
    /// compaction that was scheduled but did not finish (its rows are deleted in the
    /// background, as after `compact`).
    pub fn open(engine: Arc<dyn Engine>) -> Result<Self> {
        let finished = read_meta_rev(engine.as_ref(), FINISHED_COMPACT_KEY)?;
        let scheduled = read_meta_rev(engine.as_ref(), SCHEDULED_COMPACT_KEY)?;

        let mut index = TreeIndex::default();
        let mut newest = 0i64;
        crate::storage::try_scan(engine.as_ref(), KV_TABLE, &[], None, &mut |k, v| {
            newest = newest.max(restore_row(&mut index, k, v)?);
            Ok::<_, Error>(true)
        })?;

        let compacted = finished.unwrap_or(-1);
        let current = 1.max(newest).max(compacted).max(scheduled.unwrap_or(0));
        let store = MvccStore {
            engine,
            state: RwLock::new(State { index, current, compacted }),
            writer: Mutex::new(()),
            hash_gate: Mutex::new(()),
            compactor: compaction::Compactor::default(),
        };
        if let Some(rev) = scheduled.filter(|rev| *rev > compacted) {
            let keep = {
                let mut st = store.write_state();
                st.compacted = rev;
                st.index.compact(rev)
            };
            store.compactor.start(store.engine.clone(), rev, compacted, keep);
        }
        Ok(store)
    }

    /// The newest revision (1 on a fresh store).
    pub fn current_revision(&self) -> i64 {
        self.read_state().current
    }

    /// Keys alive at the current revision (etcd's `etcd_debugging_mvcc_keys_total`, which a put of
    /// a new key raises and a delete lowers).
    pub fn key_count(&self) -> usize {
        self.read_state().index.live_len()
    }

    /// The revision of the last compaction, 0 if there was none.
    pub fn compact_revision(&self) -> i64 {
        self.read_state().compacted.max(0)
    }

    /// etcd's Range on the committed state, with every option of the request; counted as one
    /// read transaction of one range, as etcd's `etcd_mvcc_range_total` counts a Range request.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResult> {
        crate::metrics::MVCC_RANGE.inc();
        self.range_uncounted(req)
    }

    /// [`MvccStore::range`] for Keel's own reads that etcd makes without an mvcc transaction (the
    /// lease attachments rebuilt at start), so they stay out of the range count.
    pub fn range_uncounted(&self, req: &RangeRequest) -> Result<RangeResult> {
        let keys = KeyRange::new(&req.key, &req.range_end);
        let fetch_limit = range::fetch_limit(req);
        let (rev, current, found) = {
            let st = self.read_state();
            let rev = resolve_revision(req.revision, st.current, st.compacted)?;
            let found = collect(&st.index, None, keys, rev, fetch_limit, req.count_only);
            (rev, st.current, found)
        };
        let kvs = self.load(&found.hits, &[], rev)?;
        Ok(range::finish(req, kvs, found.total, current))
    }

    /// Begin the write transaction. Blocks while another one is open.
    pub fn write(&self) -> WriteTxn<'_> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (begin, compacted) = {
            let st = self.read_state();
            (st.current, st.compacted)
        };
        WriteTxn {
            store: self,
            _writer: guard,
            begin,
            compacted,
            changes: Vec::new(),
            latest: BTreeMap::new(),
            counts: crate::metrics::TxnCounts::default(),
        }
    }

    /// Compact history at `rev` (etcd's `Compact`): reads below `rev` fail with `Compacted` from
    /// now on, and the rows no read at or after `rev` can need are deleted in the background in
    /// batches. `physical` changes nothing here: the caller waits on the handle when it is set.
    /// Must not be called while this thread holds a [`WriteTxn`].
    pub fn compact(&self, rev: i64, physical: bool) -> Result<CompactionHandle> {
        let _ = physical;
        let _no_hash = self.hash_gate.lock().unwrap_or_else(|p| p.into_inner());
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        {
            let st = self.read_state();
            if rev <= st.compacted {
                return Err(Error::Compacted);
            }
            if rev > st.current {
                return Err(Error::FutureRevision);
            }
        }
        // The schedule is durable before anything is dropped, so a crash in between resumes the
        // same compaction on open.
        let mut batch = WriteBatch::default();
        batch.put(META_TABLE, SCHEDULED_COMPACT_KEY, encode_meta_rev(rev));
        self.engine.write(batch)?;
        let (previous, keep) = {
            let mut st = self.write_state();
            let previous = std::mem::replace(&mut st.compacted, rev);
            let began = std::time::Instant::now();
            let keep = st.index.compact(rev);
            crate::metrics::INDEX_COMPACTION_PAUSE.observe_millis(began.elapsed());
            (previous, keep)
        };
        Ok(self.compactor.start(self.engine.clone(), rev, previous, keep))
    }

    /// Stop background row deletion and wait until it has stopped. Call before anything else
    /// rewrites the engine under this store (installing a raft snapshot) or at shutdown: an
    /// unfinished compaction is resumed by the next `open`. Compactions started after this call
    /// stop at once (their handles report `Stopped`).
    pub fn stop_compactions(&self) {
        self.compactor.stop(true);
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Turn hits into key-values: rows are fetched in one `get_many` (one consistent view),
    /// in-transaction values are copied from `changes`.
    fn load(&self, hits: &[Hit], changes: &[Change], rev: i64) -> Result<Vec<KeyValue>> {
        let row_keys: Vec<Vec<u8>> = hits
            .iter()
            .filter_map(|h| match h {
                Hit::Row { rev, .. } => Some(rev.to_row_key(false)),
                Hit::Pending { .. } => None,
            })
            .collect();
        let mut rows = if row_keys.is_empty() {
            Vec::new()
        } else {
            let refs: Vec<&[u8]> = row_keys.iter().map(Vec::as_slice).collect();
            self.engine.get_many(KV_TABLE, &refs)?
        }
        .into_iter();
        let mut kvs = Vec::with_capacity(hits.len());
        for hit in hits {
            match hit {
                Hit::Row { rev: row_rev, .. } => match rows.next().flatten() {
                    Some(bytes) => kvs.push(decode_kv(&bytes, *row_rev)?),
                    None => return Err(self.missing_row(*row_rev, rev)),
                },
                Hit::Pending { change, .. } => match changes.get(*change) {
                    Some(Change::Put(kv)) => kvs.push(kv.clone()),
                    _ => return Err(Error::Internal(format!("pending change {change} is not a put"))),
                },
            }
        }
        Ok(kvs)
    }

    /// A row the index pointed at is gone. That is expected only when a compaction past the read
    /// revision ran between the index lookup and the fetch: the read then fails as it would
    /// had it started a moment later.
    fn missing_row(&self, row: Revision, rev: i64) -> Error {
        if rev < self.read_state().compacted {
            Error::Compacted
        } else {
            Error::Internal(format!("mvcc row {row} is missing"))
        }
    }
}

impl Drop for MvccStore {
    /// A dropped store stops deleting rows (like a process exit) so a store opened next on the
    /// same engine does not race a stale deletion; that store resumes the compaction.
    fn drop(&mut self) {
        self.compactor.stop(false);
    }
}

fn read_meta_rev(engine: &dyn Engine, key: &[u8]) -> Result<Option<i64>> {
    engine.get(META_TABLE, key)?.map(|bytes| decode_meta_rev(&bytes)).transpose()
}

/// Index one stored row; returns its main revision.
fn restore_row(index: &mut TreeIndex, key: &[u8], value: &[u8]) -> Result<i64> {
    let (rev, tombstone) = Revision::from_row_key(key)?;
    let kv = decode_kv(value, rev)?;
    index.restore_row(&kv.key, rev, tombstone, kv.create_revision, kv.version);
    Ok(rev.main)
}

fn decode_kv(bytes: &[u8], rev: Revision) -> Result<KeyValue> {
    KeyValue::decode(bytes).map_err(|e| Error::Storage(format!("corrupt mvcc row {rev}: {e}")))
}

/// The revision a read at `requested` sees, with etcd's checks in etcd's order: a future
/// revision is refused before `<= 0` means "newest", then anything below the compaction fails.
fn resolve_revision(requested: i64, current: i64, compacted: i64) -> Result<i64> {
    if requested > current {
        return Err(Error::FutureRevision);
    }
    let rev = if requested <= 0 { current } else { requested };
    if rev < compacted {
        return Err(Error::Compacted);
    }
    Ok(rev)
}

/// A key found live by a read, before its value is loaded.
enum Hit {
    /// Committed: the value is the row at `rev`.
    Row { key: Vec<u8>, rev: Revision },
    /// Written earlier in the open transaction: the value is `changes[change]`.
    Pending { key: Vec<u8>, change: usize },
}

impl Hit {
    fn key(&self) -> &[u8] {
        match self {
            Hit::Row { key, .. } | Hit::Pending { key, .. } => key,
        }
    }
}

struct Found {
    /// Up to `fetch_limit` live keys in key order (none for count-only reads).
    hits: Vec<Hit>,
    /// Every live key in the range, whatever the limit.
    total: i64,
}

/// The open transaction's view of each key it touched: `Some(i)` = put as `changes[i]`,
/// `None` = deleted.
type Pending = BTreeMap<Vec<u8>, Option<usize>>;

/// Walk the keys of `keys` live at `at`, overlaying the open transaction's own changes when
/// `pending` is given (reads at the transaction's new revision).
fn collect(
    index: &TreeIndex,
    pending: Option<&Pending>,
    keys: KeyRange<'_>,
    at: i64,
    fetch_limit: usize,
    count_only: bool,
) -> Found {
    let mut found = Found { hits: Vec::new(), total: 0 };
    let mut add = |hit: Hit| {
        found.total += 1;
        if !count_only && (fetch_limit == 0 || found.hits.len() < fetch_limit) {
            found.hits.push(hit);
        }
    };
    let mut committed = index.live_in(keys, at).peekable();
    let mut overlay = match (pending, keys.bounds()) {
        (Some(p), Some(bounds)) => Some(p.range::<[u8], _>(bounds)),
        _ => None,
    }
    .into_iter()
    .flatten()
    .peekable();
    loop {
        // Merge by key; where both have a key the transaction's own change wins.
        let take_committed = match (committed.peek(), overlay.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((ck, _)), Some((pk, _))) => {
                if *ck == pk.as_slice() {
                    committed.next();
                    false
                } else {
                    *ck < pk.as_slice()
                }
            }
        };
        if take_committed {
            if let Some((key, state)) = committed.next() {
                add(Hit::Row { key: key.to_vec(), rev: state.modified });
            }
        } else if let Some((key, Some(change))) = overlay.next() {
            add(Hit::Pending { key: key.clone(), change: *change });
        }
    }
    found
}

/// One change of a write transaction, in order; its index is its sub revision.
enum Change {
    Put(KeyValue),
    Delete(Vec<u8>),
}

/// The write transaction (etcd's `storeTxnWrite`). Changes are buffered until
/// [`WriteTxn::commit`]; dropping the transaction without committing writes nothing.
pub struct WriteTxn<'a> {
    store: &'a MvccStore,
    _writer: MutexGuard<'a, ()>,
    /// The store revision when the transaction began; changes are written at `begin + 1`.
    begin: i64,
    compacted: i64,
    changes: Vec<Change>,
    latest: Pending,
    /// What the transaction did, for the mvcc metrics (added up when it ends, committed or not).
    counts: crate::metrics::TxnCounts,
}

impl WriteTxn<'_> {
    /// The revision a read in this transaction reports, as etcd's write transaction does: the
    /// revision it began at, or the new one once it has changed something.
    pub fn rev(&self) -> i64 {
        if self.changes.is_empty() {
            self.begin
        } else {
            self.begin + 1
        }
    }

    /// etcd's `FirstRev` of a read view: the compaction revision, -1 before any compaction. The
    /// txn applier checks Range revisions against it (with etcd's quirks).
    pub fn first_rev(&self) -> i64 {
        self.compacted
    }

    /// End the transaction's count for the mvcc metrics here and count what follows as another
    /// transaction: etcd evaluates a writing Txn's compares and checks in a read transaction and
    /// runs its operations in a new write transaction.
    pub fn split_metrics(&self) {
        self.counts.end();
    }

    /// True once the transaction has changed something.
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Range as the transaction sees it: committed state plus this transaction's own earlier
    /// changes (those appear at the new revision, as in etcd).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResult> {
        self.counts.range();
        let current = self.rev();
        let rev = resolve_revision(req.revision, current, self.compacted)?;
        let keys = KeyRange::new(&req.key, &req.range_end);
        let pending = (rev > self.begin).then_some(&self.latest);
        let found = {
            let st = self.store.read_state();
            collect(&st.index, pending, keys, rev, range::fetch_limit(req), req.count_only)
        };
        let kvs = self.store.load(&found.hits, &self.changes, rev)?;
        Ok(range::finish(req, kvs, found.total, current))
    }

    /// Put one key (etcd's `applierV3backend.Put` inside a write transaction): `ignore_value` /
    /// `ignore_lease` keep the current value / lease and need the key to exist (`KeyNotFound`).
    /// Returns the previous key-value when `prev_kv` is asked for and the key existed. Lease
    /// existence is the caller's check; the lease is stored as given (0 detaches).
    pub fn put(&mut self, req: &PutRequest) -> Result<Option<KeyValue>> {
        let keep_current = req.ignore_value || req.ignore_lease;
        let prev = if keep_current || req.prev_kv {
            // etcd reads the previous key-value with a Range of the transaction.
            self.counts.range();
            self.latest_kv(&req.key)?
        } else {
            None
        };
        let (value, lease) = match (&prev, keep_current) {
            (None, true) => return Err(Error::KeyNotFound),
            (Some(p), true) => (
                if req.ignore_value { p.value.clone() } else { req.value.clone() },
                if req.ignore_lease { p.lease } else { req.lease },
            ),
            (_, false) => (req.value.clone(), req.lease),
        };
        let rev = self.begin + 1;
        let (create_revision, version) = match self.latest_state(&req.key) {
            Some((created, version)) => (created, version + 1),
            None => (rev, 1),
        };
        self.counts.put((req.key.len() + value.len()) as u64);
        let kv = KeyValue { key: req.key.clone(), create_revision, mod_revision: rev, version, value, lease };
        self.latest.insert(req.key.clone(), Some(self.changes.len()));
        self.changes.push(Change::Put(kv));
        Ok(if req.prev_kv { prev } else { None })
    }

    /// Delete every live key in `(key, range_end)` (etcd's range convention) and return their
    /// previous key-values, in key order.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>> {
        // etcd reads the previous key-values with a Range of the transaction, then deletes.
        self.counts.range();
        self.counts.delete();
        let found = self.find_live(key, range_end)?;
        let prev = self.store.load(&found, &self.changes, self.rev())?;
        self.tombstone_all(found);
        Ok(prev)
    }

    /// Like [`WriteTxn::delete_range`] but without reading the deleted values; returns how many
    /// keys were deleted.
    pub fn delete_range_count(&mut self, key: &[u8], range_end: &[u8]) -> Result<i64> {
        self.counts.delete();
        let found = self.find_live(key, range_end)?;
        let n = found.len() as i64;
        self.tombstone_all(found);
        Ok(n)
    }

    /// Land every change and `extra` (e.g. the applier's applied index) in ONE atomic engine
    /// write, then publish the new revision to readers. With no changes only `extra` is written
    /// and the revision stays.
    pub fn commit(self, extra: WriteBatch) -> Result<Committed> {
        let WriteTxn { store, _writer, begin, changes, .. } = self;
        if changes.is_empty() {
            if !extra.is_empty() {
                store.engine.write(extra)?;
            }
            return Ok(Committed { revision: begin, events: Vec::new() });
        }
        let rev = begin + 1;
        let mut batch = WriteBatch { ops: Vec::with_capacity(changes.len() + extra.ops.len()) };
        for (sub, change) in changes.iter().enumerate() {
            let at = Revision::new(rev, sub as i64);
            match change {
                Change::Put(kv) => {
                    batch.put(KV_TABLE, at.to_row_key(false), kv.encode_to_vec());
                }
                Change::Delete(key) => {
                    // etcd's tombstone row holds only the key; readers of history patch in the
                    // revision from the row key.
                    let tomb = KeyValue { key: key.clone(), ..Default::default() };
                    batch.put(KV_TABLE, at.to_row_key(true), tomb.encode_to_vec());
                }
            }
        }
        batch.ops.extend(extra.ops);
        store.engine.write(batch)?;

        // The rows are durable-on-sync now, so the revision must advance even if the index
        // disagrees (reusing it would overwrite rows); a disagreement is reported afterwards.
        let mut broken = None;
        {
            let mut st = store.write_state();
            for (sub, change) in changes.iter().enumerate() {
                let at = Revision::new(rev, sub as i64);
                match change {
                    Change::Put(kv) => st.index.put(&kv.key, at),
                    Change::Delete(key) => {
                        if let Err(e) = st.index.tombstone(key, at) {
                            broken.get_or_insert(e);
                        }
                    }
                }
            }
            st.current = rev;
        }
        if let Some(e) = broken {
            return Err(e);
        }
        let events = changes
            .into_iter()
            .map(|change| match change {
                Change::Put(kv) => Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: None },
                Change::Delete(key) => Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue { key, mod_revision: rev, ..Default::default() }),
                    prev_kv: None,
                },
            })
            .collect();
        Ok(Committed { revision: rev, events })
    }

    /// Live keys in the range at the transaction's newest view, in key order.
    fn find_live(&self, key: &[u8], range_end: &[u8]) -> Result<Vec<Hit>> {
        let keys = KeyRange::new(key, range_end);
        let st = self.store.read_state();
        Ok(collect(&st.index, Some(&self.latest), keys, self.begin, 0, false).hits)
    }

    fn tombstone_all(&mut self, found: Vec<Hit>) {
        for hit in found {
            let key = hit.key().to_vec();
            self.latest.insert(key.clone(), None);
            self.changes.push(Change::Delete(key));
        }
    }

    /// Creation revision and version of the key as this transaction sees it now.
    fn latest_state(&self, key: &[u8]) -> Option<(i64, i64)> {
        match self.latest.get(key) {
            Some(Some(i)) => match self.changes.get(*i) {
                Some(Change::Put(kv)) => Some((kv.create_revision, kv.version)),
                _ => None,
            },
            Some(None) => None,
            None => self.store.read_state().index.get(key, self.begin).map(|s| (s.created.main, s.version)),
        }
    }

    /// The key's current key-value as this transaction sees it.
    fn latest_kv(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.latest.get(key) {
            Some(Some(i)) => Ok(match self.changes.get(*i) {
                Some(Change::Put(kv)) => Some(kv.clone()),
                _ => None,
            }),
            Some(None) => Ok(None),
            None => {
                let at = self.store.read_state().index.get(key, self.begin);
                match at {
                    None => Ok(None),
                    Some(s) => {
                        let hit = Hit::Row { key: key.to_vec(), rev: s.modified };
                        let mut kvs = self.store.load(&[hit], &[], self.begin)?;
                        Ok(kvs.pop())
                    }
                }
            }
        }
    }
}
