//! The redb engine: one `keel.redb` file, one redb table per Keel table. Writes commit without
//! fsync and `sync` makes them durable, the way etcd's backend batches bbolt commits and forces
//! them at its commit interval.

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
    TableHandle,
};

use super::{check_table, range_is_empty, BatchOp, Engine, RowVisitor, SizeInfo, StorageError, Table, WriteBatch};

const FILE_NAME: &str = "keel.redb";

/// Every redb error type converts into `redb::Error`; route them all through it so `?` works on
/// each call.
macro_rules! via_redb_error {
    ($($ty:ty),* $(,)?) => {
        $(impl From<$ty> for StorageError {
            fn from(e: $ty) -> Self {
                StorageError::Redb(e.into())
            }
        })*
    };
}

via_redb_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
);

type Def<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;
type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;
type WriteTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

fn def(name: &str) -> Def<'_> {
    TableDefinition::new(name)
}

pub(crate) struct RedbEngine {
    db: Database,
    path: PathBuf,
}

impl RedbEngine {
    pub(crate) fn open(dir: &Path) -> Result<Self, StorageError> {
        let path = dir.join(FILE_NAME);
        // `create` opens an existing file (repairing it after a crash) or makes a new one.
        let db = Database::create(&path)?;
        Ok(Self { db, path })
    }

    /// Opens `table` in a read transaction; `None` when it was never created.
    fn read_table(txn: &redb::ReadTransaction, table: &str) -> Result<Option<ReadTable>, StorageError> {
        match txn.open_table(def(table)) {
            Ok(t) => Ok(Some(t)),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn table_names(txn: &redb::ReadTransaction) -> Result<Vec<String>, StorageError> {
        let mut names: Vec<String> = txn.list_tables()?.map(|h| h.name().to_string()).collect();
        names.sort();
        Ok(names)
    }
}

impl Engine for RedbEngine {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        check_table(table)?;
        let txn = self.db.begin_read()?;
        let Some(t) = Self::read_table(&txn, table)? else {
            return Ok(None);
        };
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    fn get_many(&self, table: Table, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        check_table(table)?;
        let txn = self.db.begin_read()?;
        let Some(t) = Self::read_table(&txn, table)? else {
            return Ok(vec![None; keys.len()]);
        };
        keys.iter().map(|key| Ok(t.get(*key)?.map(|v| v.value().to_vec()))).collect()
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
        let txn = self.db.begin_read()?;
        let Some(t) = Self::read_table(&txn, table)? else {
            return Ok(());
        };
        let rows = match end {
            Some(end) => t.range::<&[u8]>(start..end)?,
            None => t.range::<&[u8]>(start..)?,
        };
        for row in rows {
            let (k, v) = row?;
            if !visit(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }

    fn scan_all(&self, visit: &mut RowVisitor<'_>) -> Result<(), StorageError> {
        // One read transaction for every table: the export is a single committed state even while
        // writes continue.
        let txn = self.db.begin_read()?;
        for name in Self::table_names(&txn)? {
            let Some(t) = Self::read_table(&txn, &name)? else {
                continue;
            };
            for row in t.iter()? {
                let (k, v) = row?;
                if !visit(&name, k.value(), v.value()) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        for op in &batch.ops {
            check_table(op.table())?;
        }
        let mut txn = self.db.begin_write()?;
        // Durability::None commits are atomic and visible to readers at once, but reach the disk
        // only with the next durable commit (see `sync`). The raft log covers the gap.
        txn.set_durability(Durability::None)?;
        {
            // Tables stay open for the whole batch; a batch touches only a handful of them.
            let mut open: Vec<(Table, WriteTable<'_>)> = Vec::new();
            for op in &batch.ops {
                let name = op.table();
                let idx = match open.iter().position(|(n, _)| *n == name) {
                    Some(idx) => idx,
                    None => {
                        open.push((name, txn.open_table(def(name))?));
                        open.len() - 1
                    }
                };
                let t = &mut open[idx].1;
                match op {
                    BatchOp::Put { key, value, .. } => {
                        t.insert(key.as_slice(), value.as_slice())?;
                    }
                    BatchOp::Delete { key, .. } => {
                        t.remove(key.as_slice())?;
                    }
                }
            }
        }
        // On any error above, dropping `txn` aborts it, so nothing of the batch lands.
        txn.commit()?;
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        // An empty transaction committed with Durability::Immediate is a full durable commit: it
        // flushes the pages allocated by the earlier non-durable commits and fsyncs (redb's
        // `durable_commit` writes out "previously unpersisted allocations"; design.md, "Non-durable
        // commits"). `sync_then_reopen` and the crash test pin this.
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        // Saving the allocator state with each durable commit lets a reopen after a crash skip
        // redb's full-file repair walk; durable commits are rare here, so the extra fsync is cheap.
        txn.set_quick_repair(true);
        txn.commit()?;
        Ok(())
    }

    fn size(&self) -> Result<SizeInfo, StorageError> {
        let total_bytes = std::fs::metadata(&self.path)
            .map_err(|e| StorageError::io(format!("stat {}", self.path.display()), e))?
            .len();
        // redb reports allocation only through a write transaction's stats, which walks every
        // page; the transaction is never committed, so dropping it just aborts.
        let stats = self.db.begin_write()?.stats()?;
        let page_size = u64::try_from(stats.page_size()).unwrap_or(u64::MAX);
        let allocated = stats.allocated_pages().saturating_mul(page_size);
        Ok(SizeInfo { total_bytes, in_use_bytes: allocated.min(total_bytes) })
    }

    fn tables(&self) -> Result<Vec<String>, StorageError> {
        let txn = self.db.begin_read()?;
        let mut non_empty = Vec::new();
        for name in Self::table_names(&txn)? {
            if let Some(t) = Self::read_table(&txn, &name)? {
                if !t.is_empty()? {
                    non_empty.push(name);
                }
            }
        }
        Ok(non_empty)
    }

    fn clear(&self) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let names: Vec<String> = txn.list_tables()?.map(|h| h.name().to_string()).collect();
        for name in &names {
            txn.delete_table(def(name))?;
        }
        txn.commit()?;
        Ok(())
    }
}
