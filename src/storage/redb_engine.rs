//! The redb engine: one `keel.redb` file, one redb table per Keel table. Writes commit without
//! fsync and `sync` makes them durable, the way etcd's backend batches bbolt commits and forces
//! them at its commit interval. `defragment` rewrites the file compactly while reads and writes go
//! on (etcd's defrag stops both for its whole run, etcd issue 9222).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

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
    redb::CompactionError,
);

type Def<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;
type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;
type WriteTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

fn def(name: &str) -> Def<'_> {
    TableDefinition::new(name)
}

/// The file a defragmentation builds before it replaces `keel.redb`.
const DEFRAG_FILE_NAME: &str = "keel.redb.defrag";
/// Rows copied per (non-durable) transaction while defragmenting.
const DEFRAG_COPY_ROWS: usize = 10_000;
/// A catch-up round replaying fewer journaled changes than this is the last one before writers
/// are held off for the final remainder.
const DEFRAG_SHORT_ROUND: usize = 64;

/// A change made while a defragmentation copies the file, replayed onto the copy at the end.
enum Journaled {
    Batch(WriteBatch),
    Clear,
}

/// A redb read transaction and its place in the open-read-transactions gauge.
struct ReadTxn {
    txn: redb::ReadTransaction,
    _open: crate::metrics::OpenReadTxn,
}

impl std::ops::Deref for ReadTxn {
    type Target = redb::ReadTransaction;
    fn deref(&self) -> &redb::ReadTransaction {
        &self.txn
    }
}

pub(crate) struct RedbEngine {
    /// Swapped (only) when a defragmentation finishes; operations clone the handle and run
    /// unlocked, so a reader still on the old file just finishes there.
    db: RwLock<Arc<Database>>,
    path: PathBuf,
    /// Taken by every change (`write`, `sync`, `clear`) and by the last step of `defragment`,
    /// which must see no change between replaying the journal and swapping the files. redb
    /// admits one write transaction at a time anyway, so this costs writers nothing.
    writer: Mutex<()>,
    /// Changes committed while a defragmentation copies; None when none runs.
    journal: Mutex<Option<Vec<Journaled>>>,
    /// One defragmentation at a time.
    defrag: Mutex<()>,
}

impl RedbEngine {
    pub(crate) fn open(dir: &Path) -> Result<Self, StorageError> {
        let path = dir.join(FILE_NAME);
        // A copy left by a defragmentation that did not finish is incomplete by definition.
        let leftover = dir.join(DEFRAG_FILE_NAME);
        if leftover.exists() {
            std::fs::remove_file(&leftover)
                .map_err(|e| StorageError::io(format!("remove {}", leftover.display()), e))?;
        }
        // `create` opens an existing file (repairing it after a crash) or makes a new one.
        let db = Database::create(&path)?;
        Ok(Self {
            db: RwLock::new(Arc::new(db)),
            path,
            writer: Mutex::new(()),
            journal: Mutex::new(None),
            defrag: Mutex::new(()),
        })
    }

    fn db(&self) -> Arc<Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A read transaction, counted in `etcd_mvcc_db_open_read_transactions` while it is open.
    fn begin_read(&self) -> Result<ReadTxn, StorageError> {
        Ok(ReadTxn { txn: self.db().begin_read()?, _open: crate::metrics::OpenReadTxn::open() })
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a committed change for a defragmentation in progress.
    fn journal(&self, change: impl FnOnce() -> Journaled) {
        if let Some(journal) = self.journal.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            journal.push(change());
        }
    }

    /// Copy every table of one read transaction into `to`, in transactions of bounded size.
    fn copy_all(from: &redb::ReadTransaction, to: &Database) -> Result<(), StorageError> {
        for name in Self::table_names(from)? {
            let Some(t) = Self::read_table(from, &name)? else {
                continue;
            };
            let mut rows = t.iter()?;
            loop {
                let mut txn = to.begin_write()?;
                txn.set_durability(Durability::None)?;
                let mut copied = 0;
                {
                    let mut out = txn.open_table(def(&name))?;
                    for row in rows.by_ref() {
                        let (k, v) = row?;
                        out.insert(k.value(), v.value())?;
                        copied += 1;
                        if copied == DEFRAG_COPY_ROWS {
                            break;
                        }
                    }
                }
                txn.commit()?;
                if copied < DEFRAG_COPY_ROWS {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Apply a batch to `db` atomically (the engine's own writes, or a journal replay).
    fn write_to(db: &Database, batch: &WriteBatch) -> Result<(), StorageError> {
        let mut txn = db.begin_write()?;
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

    fn replay(db: &Database, changes: &[Journaled]) -> Result<(), StorageError> {
        for change in changes {
            match change {
                Journaled::Batch(batch) => Self::write_to(db, batch)?,
                Journaled::Clear => Self::clear_db(db)?,
            }
        }
        Ok(())
    }

    fn clear_db(db: &Database) -> Result<(), StorageError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let names: Vec<String> = txn.list_tables()?.map(|h| h.name().to_string()).collect();
        for name in &names {
            txn.delete_table(def(name))?;
        }
        txn.commit()?;
        Ok(())
    }

    /// An empty transaction committed with Durability::Immediate is a full durable commit: it
    /// flushes the pages allocated by the earlier non-durable commits and fsyncs (redb's
    /// `durable_commit` writes out "previously unpersisted allocations"; design.md, "Non-durable
    /// commits"). `sync_then_reopen` and the crash test pin this.
    fn durable_commit(db: &Database) -> Result<(), StorageError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        // Saving the allocator state with each durable commit lets a reopen after a crash skip
        // redb's full-file repair walk; durable commits are rare here, so the extra fsync is cheap.
        txn.set_quick_repair(true);
        txn.commit()?;
        Ok(())
    }

    /// The defragmentation itself (see `Engine::defragment`): copy a snapshot into a new file
    /// while changes go on and are journaled, compact the copy, replay the journal onto it in
    /// rounds, then, with changes held off only for that, replay the short remainder, make the
    /// copy durable and put it in the old file's place. The journal holds the changes made during
    /// the copy in memory: a long copy under heavy writes costs that much memory.
    fn rewrite(&self) -> Result<(), StorageError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(DEFRAG_FILE_NAME);
        let _ = std::fs::remove_file(&tmp);
        // Journaling starts before the snapshot is taken: a change missing from the snapshot is
        // in the journal (one in both is harmless, since replaying puts and deletes is idempotent
        // on top of a state that already has them).
        *self.journal.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
        let mut copy = Database::create(&tmp)?;
        let snapshot = self.begin_read()?;
        Self::copy_all(&snapshot, &copy)?;
        drop(snapshot);
        Self::durable_commit(&copy)?;
        copy.compact()?;

        // Catch up with what was written meanwhile in rounds, writers still running, until one
        // round is short; only the last remainder is replayed with writers held off.
        loop {
            let round = self.journal.lock().unwrap_or_else(|p| p.into_inner()).as_mut().map(std::mem::take);
            let round = round.unwrap_or_default();
            Self::replay(&copy, &round)?;
            if round.len() < DEFRAG_SHORT_ROUND {
                break;
            }
        }
        let _writer = self.lock_writer();
        let rest = self.journal.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        Self::replay(&copy, &rest)?;
        Self::durable_commit(&copy)?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| StorageError::io(format!("rename {} over {}", tmp.display(), self.path.display()), e))?;
        let dir_handle =
            std::fs::File::open(dir).map_err(|e| StorageError::io(format!("open {}", dir.display()), e))?;
        dir_handle.sync_all().map_err(|e| StorageError::io(format!("fsync {}", dir.display()), e))?;
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(copy);
        Ok(())
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
        let txn = self.begin_read()?;
        let Some(t) = Self::read_table(&txn, table)? else {
            return Ok(None);
        };
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    fn get_many(&self, table: Table, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        check_table(table)?;
        let txn = self.begin_read()?;
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
        let txn = self.begin_read()?;
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
        let txn = self.begin_read()?;
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
        let _writer = self.lock_writer();
        Self::write_to(&self.db(), &batch)?;
        self.journal(|| Journaled::Batch(batch));
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        let _writer = self.lock_writer();
        Self::durable_commit(&self.db())
    }

    fn size(&self) -> Result<SizeInfo, StorageError> {
        let total_bytes = std::fs::metadata(&self.path)
            .map_err(|e| StorageError::io(format!("stat {}", self.path.display()), e))?
            .len();
        // redb reports allocation only through a write transaction's stats, which walks every
        // page; the transaction is never committed, so dropping it just aborts.
        let stats = self.db().begin_write()?.stats()?;
        let page_size = u64::try_from(stats.page_size()).unwrap_or(u64::MAX);
        let allocated = stats.allocated_pages().saturating_mul(page_size);
        Ok(SizeInfo { total_bytes, in_use_bytes: allocated.min(total_bytes) })
    }

    fn tables(&self) -> Result<Vec<String>, StorageError> {
        let txn = self.begin_read()?;
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
        let _writer = self.lock_writer();
        Self::clear_db(&self.db())?;
        self.journal(|| Journaled::Clear);
        Ok(())
    }

    fn defragment(&self) -> Result<(), StorageError> {
        let _one_at_a_time = self.defrag.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.rewrite();
        // Whatever happened, stop journaling; a failed copy is removed and the old file stays.
        self.journal.lock().unwrap_or_else(|p| p.into_inner()).take();
        if result.is_err() {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let _ = std::fs::remove_file(dir.join(DEFRAG_FILE_NAME));
        }
        result
    }
}
