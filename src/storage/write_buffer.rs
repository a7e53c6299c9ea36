//! A write-behind layer over an engine: writes land in an in-memory overlay that every read
//! consults, and `flush` commits the overlay to the engine as ONE atomic batch. The applier flushes
//! once per batch of raft entries, so a burst of many small applies costs one engine commit instead
//! of one each — etcd's backend batches its bbolt commits the same way (batch interval/limit).
//! Crash safety is unchanged: what was not flushed is replayed from the raft log, because the
//! applied position travels in the same overlay and reaches the engine in the same atomic batch.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};

use super::{BatchOp, Engine, RowVisitor, SizeInfo, StorageError, Table, WriteBatch};

/// Per table, the latest pending value of each key (`None` = deleted).
type Pending = HashMap<Table, BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

#[derive(Default)]
struct Overlay {
    /// Rows in `fresh`, for callers deciding when to flush.
    fresh_rows: usize,
    /// Writes not yet handed to the engine.
    fresh: Pending,
    /// Writes being committed by a flush right now; readers still need them until it finishes.
    flushing: Pending,
}

impl Overlay {
    /// The pending state of a key: Some(Some(v)) written, Some(None) deleted, None untouched.
    fn lookup(&self, table: Table, key: &[u8]) -> Option<Option<Vec<u8>>> {
        for layer in [&self.fresh, &self.flushing] {
            if let Some(v) = layer.get(table).and_then(|t| t.get(key)) {
                return Some(v.clone());
            }
        }
        None
    }

    /// Pending entries of `table` in [start, end), newest layer winning.
    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        let bounds = (Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded));
        if end.is_some_and(|e| e <= start) {
            return out;
        }
        for layer in [&self.flushing, &self.fresh] {
            if let Some(t) = layer.get(table) {
                for (k, v) in t.range::<[u8], _>(bounds) {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        out
    }
}

pub struct WriteBuffer {
    engine: Arc<dyn Engine>,
    overlay: RwLock<Overlay>,
    /// One flush at a time, so `flushing` holds exactly one batch in flight.
    flush_lock: Mutex<()>,
}

impl WriteBuffer {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        WriteBuffer { engine, overlay: RwLock::new(Overlay::default()), flush_lock: Mutex::new(()) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_overlay(&self) -> std::sync::RwLockWriteGuard<'_, Overlay> {
        self.overlay.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Rows written but not yet handed to the engine.
    pub fn pending_rows(&self) -> usize {
        self.read().fresh_rows
    }

    /// Commit everything written so far to the engine, atomically. On failure the writes stay
    /// pending (and visible) and the error is returned.
    pub fn flush(&self) -> Result<(), StorageError> {
        let _one_at_a_time = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let batch = {
            let mut overlay = self.write_overlay();
            if overlay.fresh.is_empty() {
                return Ok(());
            }
            overlay.flushing = std::mem::take(&mut overlay.fresh);
            overlay.fresh_rows = 0;
            let mut batch = WriteBatch::new();
            for (table, rows) in &overlay.flushing {
                for (key, value) in rows {
                    match value {
                        Some(v) => batch.put(table, key.clone(), v.clone()),
                        None => batch.delete(table, key.clone()),
                    };
                }
            }
            batch
        };
        let written = self.engine.write(batch);
        let mut overlay = self.write_overlay();
        let flushed = std::mem::take(&mut overlay.flushing);
        if written.is_err() {
            // Put the batch back under anything written meanwhile, which is newer.
            for (table, rows) in flushed {
                let fresh = overlay.fresh.entry(table).or_default();
                for (key, value) in rows {
                    fresh.entry(key).or_insert(value);
                }
            }
            overlay.fresh_rows = overlay.fresh.values().map(BTreeMap::len).sum();
        }
        written
    }
}

impl Engine for WriteBuffer {
    fn name(&self) -> &'static str {
        self.engine.name()
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        // Hold the read lock across the engine read: a flush cannot retire its layer meanwhile, so
        // the key is found either pending or committed, never in neither.
        let overlay = self.read();
        match overlay.lookup(table, key) {
            Some(pending) => Ok(pending),
            None => self.engine.get(table, key),
        }
    }

    fn get_many(&self, table: Table, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let overlay = self.read();
        let mut out: Vec<Option<Option<Vec<u8>>>> = keys.iter().map(|k| overlay.lookup(table, k)).collect();
        let missing: Vec<&[u8]> = keys.iter().zip(&out).filter(|(_, v)| v.is_none()).map(|(k, _)| *k).collect();
        if !missing.is_empty() {
            let mut found = self.engine.get_many(table, &missing)?.into_iter();
            for slot in out.iter_mut().filter(|v| v.is_none()) {
                *slot = Some(found.next().flatten());
            }
        }
        Ok(out.into_iter().map(|v| v.flatten()).collect())
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let overlay = self.read();
        let pending = overlay.range(table, start, end);
        let mut pending = pending.into_iter().peekable();
        let mut stopped = false;
        self.engine.scan(table, start, end, &mut |key, value| {
            // Pending keys before this row come first; a pending key equal to it replaces it.
            while let Some((pk, _)) = pending.peek() {
                if pk.as_slice() > key {
                    break;
                }
                let (pk, pv) = pending.next().expect("peeked");
                let replaces = pk.as_slice() == key;
                if let Some(v) = pv {
                    if !visit(&pk, &v) {
                        stopped = true;
                        return false;
                    }
                }
                if replaces {
                    return true;
                }
            }
            if !visit(key, value) {
                stopped = true;
                return false;
            }
            true
        })?;
        if !stopped {
            for (k, v) in pending {
                if let Some(v) = v {
                    if !visit(&k, &v) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn scan_all(&self, visit: &mut RowVisitor<'_>) -> Result<(), StorageError> {
        self.flush()?;
        self.engine.scan_all(visit)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        for op in &batch.ops {
            super::check_table(op.table())?;
        }
        let mut overlay = self.write_overlay();
        for op in batch.ops {
            let replaced = match op {
                BatchOp::Put { table, key, value } => overlay.fresh.entry(table).or_default().insert(key, Some(value)),
                BatchOp::Delete { table, key } => overlay.fresh.entry(table).or_default().insert(key, None),
            };
            if replaced.is_none() {
                overlay.fresh_rows += 1;
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.flush()?;
        self.engine.sync()
    }

    fn size(&self) -> Result<SizeInfo, StorageError> {
        self.engine.size()
    }

    fn tables(&self) -> Result<Vec<String>, StorageError> {
        self.flush()?;
        self.engine.tables()
    }

    fn clear(&self) -> Result<(), StorageError> {
        let _one_at_a_time = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut overlay = self.write_overlay();
        overlay.fresh.clear();
        overlay.fresh_rows = 0;
        self.engine.clear()
    }

    /// Pending writes land first, so the rewritten file holds them; later ones reach the engine
    /// while it rewrites, which it allows.
    fn defragment(&self) -> Result<(), StorageError> {
        self.flush()?;
        self.engine.defragment()
    }
}
