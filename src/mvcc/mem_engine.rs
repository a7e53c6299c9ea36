//! Test-only in-memory [`Engine`]: ordered tables in a `BTreeMap`, batches applied under one lock
//! (so atomic), plus switches that make writes fail, to test that a failed commit changes
//! nothing.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::storage::{BatchOp, Engine, RowVisitor, SizeInfo, StorageError, Table, WriteBatch};

type Tables = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Default)]
pub(crate) struct MemEngine {
    tables: Mutex<Tables>,
    fail_writes: AtomicBool,
    pub(crate) writes: AtomicUsize,
}

impl MemEngine {
    pub(crate) fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Copy of one table, for assertions.
    pub(crate) fn dump(&self, table: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.lock().get(table).cloned().unwrap_or_default()
    }

    /// Overwrite or insert one row directly, bypassing batches.
    pub(crate) fn set(&self, table: &str, key: &[u8], value: &[u8]) {
        self.lock().entry(table.to_string()).or_default().insert(key.to_vec(), value.to_vec());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for MemEngine {
    fn name(&self) -> &'static str {
        "mem"
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().get(table).and_then(|t| t.get(key)).cloned())
    }

    fn get_many(&self, table: Table, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let tables = self.lock();
        let t = tables.get(table);
        Ok(keys.iter().map(|k| t.and_then(|t| t.get(*k)).cloned()).collect())
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        // Copy the slice first: a visitor may call back into the engine.
        let rows: Vec<(Vec<u8>, Vec<u8>)> = {
            let tables = self.lock();
            let Some(t) = tables.get(table) else {
                return Ok(());
            };
            if matches!(end, Some(e) if e <= start) {
                return Ok(());
            }
            let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
            t.range::<[u8], _>((Bound::Included(start), upper)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for (k, v) in rows {
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn scan_all(&self, visit: &mut RowVisitor<'_>) -> Result<(), StorageError> {
        let tables = self.lock().clone();
        for (name, rows) in &tables {
            for (k, v) in rows {
                if !visit(name, k, v) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(StorageError::Io {
                context: "mem engine".into(),
                source: io::Error::other("injected write failure"),
            });
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        let mut tables = self.lock();
        for op in batch.ops {
            match op {
                BatchOp::Put { table, key, value } => {
                    tables.entry(table.to_string()).or_default().insert(key, value);
                }
                BatchOp::Delete { table, key } => {
                    if let Some(t) = tables.get_mut(table) {
                        t.remove(&key);
                    }
                }
            }
        }
        tables.retain(|_, t| !t.is_empty());
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn size(&self) -> Result<SizeInfo, StorageError> {
        let bytes: usize = self.lock().values().flat_map(|t| t.iter().map(|(k, v)| k.len() + v.len())).sum();
        Ok(SizeInfo { total_bytes: bytes as u64, in_use_bytes: bytes as u64 })
    }

    fn tables(&self) -> Result<Vec<String>, StorageError> {
        Ok(self.lock().keys().cloned().collect())
    }

    fn clear(&self) -> Result<(), StorageError> {
        self.lock().clear();
        Ok(())
    }

    /// Memory has no file to shrink.
    fn defragment(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
