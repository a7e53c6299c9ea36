//! The sled engine: every Keel table lives in one sled tree under keys `table 0x00 key`, so a
//! batch spanning tables is one atomic `apply_batch`, as a bbolt transaction spans buckets in
//! etcd's backend. `sync` adds the fsyncs that sled 0.34's own flush leaves out.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{check_table, range_is_empty, BatchOp, Engine, RowVisitor, SizeInfo, StorageError, Table, WriteBatch};

const DIR_NAME: &str = "sled";

/// Ends the table name inside a stored key. Names never contain it (`check_table`), so the prefix
/// `name 0x00` of one table is never a prefix of another table's keys ("kv" vs "kvx").
const SEPARATOR: u8 = 0x00;

fn prefix(table: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(table.len() + 1);
    p.extend_from_slice(table.as_bytes());
    p.push(SEPARATOR);
    p
}

fn stored_key(table: &str, key: &[u8]) -> Vec<u8> {
    let mut k = prefix(table);
    k.extend_from_slice(key);
    k
}

/// The first stored key past every key of `table`: `name 0x01` sorts after all `name 0x00 …`.
fn table_end(table: &str) -> Vec<u8> {
    let mut k = table.as_bytes().to_vec();
    k.push(SEPARATOR + 1);
    k
}

/// Splits a stored key into its table name and the caller's key.
fn split_stored(stored: &[u8]) -> Result<(&str, &[u8]), StorageError> {
    let sep = stored
        .iter()
        .position(|b| *b == SEPARATOR)
        .ok_or_else(|| StorageError::Corrupt("sled key without a table prefix".to_string()))?;
    let name = std::str::from_utf8(&stored[..sep])
        .map_err(|_| StorageError::Corrupt("sled table name is not UTF-8".to_string()))?;
    Ok((name, &stored[sep + 1..]))
}

pub(crate) struct SledEngine {
    db: sled::Db,
    /// `dir/sled`, whose files `sync` fsyncs.
    dir: PathBuf,
    /// Writers take it exclusively, multi-key readers shared: sled has no read snapshots, so this
    /// is what lets `get_many` and `scan_all` see no batch half applied. It guards no data, so a
    /// poisoned lock is still sound to use.
    gate: RwLock<()>,
}

impl SledEngine {
    pub(crate) fn open(parent: &Path) -> Result<Self, StorageError> {
        let dir = parent.join(DIR_NAME);
        let db = sled::Config::new().path(&dir).open()?;
        Ok(Self { db, dir, gate: RwLock::new(()) })
    }

    fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// fsync every regular file under `dir` (recursively), then `dir` itself, so new files and
/// renames (sled's `snap.*` snapshots) are durable as entries too.
fn fsync_tree(dir: &Path) -> Result<(), StorageError> {
    let ctx = |what: &str, p: &Path| format!("{what} {}", p.display());
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io(ctx("list", dir), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(ctx("list", dir), e))?;
        let path = entry.path();
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::io(ctx("stat", &path), e)),
        };
        if kind.is_dir() {
            fsync_tree(&path)?;
        } else if kind.is_file() {
            // sled deletes superseded snapshot files in the background; one gone between the
            // listing and the open needs no syncing.
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io(ctx("open", &path), e)),
            };
            file.sync_all().map_err(|e| StorageError::io(ctx("fsync", &path), e))?;
        }
    }
    fsync_dir(dir)
}

fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StorageError::io(format!("fsync {}", dir.display()), e))
}

impl Engine for SledEngine {
    fn name(&self) -> &'static str {
        "sled"
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        check_table(table)?;
        Ok(self.db.get(stored_key(table, key))?.map(|v| v.to_vec()))
    }

    fn get_many(&self, table: Table, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        check_table(table)?;
        let _consistent = self.shared();
        keys.iter().map(|key| Ok(self.db.get(stored_key(table, key))?.map(|v| v.to_vec()))).collect()
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        check_table(table)?;
        if range_is_empty(start, end) {
            return Ok(());
        }
        // No gate here: the visitor may call back into the engine, and a shared lock held across
        // it could deadlock behind a waiting writer.
        let lo = stored_key(table, start);
        let hi = match end {
            Some(end) => stored_key(table, end),
            None => table_end(table),
        };
        let skip = table.len() + 1;
        for row in self.db.range(lo..hi) {
            let (k, v) = row?;
            let key = k.get(skip..).ok_or_else(|| StorageError::Corrupt("sled key shorter than its prefix".into()))?;
            if !visit(key, &v) {
                break;
            }
        }
        Ok(())
    }

    fn scan_all(&self, visit: &mut RowVisitor<'_>) -> Result<(), StorageError> {
        let _consistent = self.shared();
        for row in self.db.iter() {
            let (k, v) = row?;
            let (table, key) = split_stored(&k)?;
            if !visit(table, key, &v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut sled_batch = sled::Batch::default();
        for op in batch.ops {
            match op {
                BatchOp::Put { table, key, value } => {
                    check_table(table)?;
                    sled_batch.insert(stored_key(table, &key), value);
                }
                BatchOp::Delete { table, key } => {
                    check_table(table)?;
                    sled_batch.remove(stored_key(table, &key));
                }
            }
        }
        let _exclusive = self.exclusive();
        // sled seals the batch in its log so recovery replays all of it or none.
        self.db.apply_batch(sled_batch)?;
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        // sled 0.34's flush() ends in sync_file_range, which neither flushes the drive's cache
        // nor the file's metadata (sled issue #1452): it survives a process crash but not a power
        // cut. So after it, fsync sled's files and directories ourselves, and the directory
        // above, which holds the `sled` directory's own entry.
        self.db.flush()?;
        fsync_tree(&self.dir)?;
        if let Some(parent) = self.dir.parent() {
            fsync_dir(parent)?;
        }
        Ok(())
    }

    fn size(&self) -> Result<SizeInfo, StorageError> {
        // sled exposes no live-data figure cheaper than a full walk; report the files for both.
        let on_disk = self.db.size_on_disk()?;
        Ok(SizeInfo { total_bytes: on_disk, in_use_bytes: on_disk })
    }

    fn tables(&self) -> Result<Vec<String>, StorageError> {
        // Skip from one table to the next instead of walking every row: after finding a key of
        // table T, the next candidate is the first key at or past `T 0x01`.
        let mut names = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        while let Some(row) = self.db.range(from.as_slice()..).next() {
            let (k, _) = row?;
            let (table, _) = split_stored(&k)?;
            from = table_end(table);
            names.push(table.to_string());
        }
        Ok(names)
    }

    fn clear(&self) -> Result<(), StorageError> {
        let _exclusive = self.exclusive();
        // One batch of removes, so a crash leaves either everything or nothing (sled's
        // Tree::clear removes key by key).
        let mut batch = sled::Batch::default();
        for key in self.db.iter().keys() {
            batch.remove(key?);
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// sled 0.34 has no call that rewrites its files: it reclaims space by garbage-collecting its
    /// log segments on its own as it writes. Defragmenting a sled member therefore only makes
    /// what was written durable, which etcd's defrag also guarantees on return.
    fn defragment(&self) -> Result<(), StorageError> {
        self.sync()
    }
}
