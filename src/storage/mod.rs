//! Storage: the one narrow seam between Keel and an embedded engine (named tables of ordered byte
//! keys, atomic batches, range scans, an explicit durability point), with redb and sled behind it.
//! It plays the part of etcd's `backend` package (bbolt buckets, batched write transactions, and
//! `ForceCommit` as the moment state becomes durable), without copying bbolt's API.

use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

pub mod auth_rows;
pub mod checksum;
mod dump;
mod redb_engine;
mod sled_engine;
mod write_buffer;

#[cfg(test)]
mod conformance;

pub use dump::{export, export_noting, import};
pub use write_buffer::WriteBuffer;

/// A named keyspace. Tables spring into existence on their first write; reading a table that was
/// never written is the same as reading an empty one.
pub type Table = &'static str;

/// Every table Keel writes. A dump names its tables by string, and `import` needs a `Table` (a
/// `&'static str`) for each, so restoring maps names through this list; a name missing here can be
/// neither exported nor imported.
pub const KNOWN_TABLES: &[Table] = &["kv", "meta", "lease", "auth", "cluster", "alarm"];

/// The `&'static` name for a table read back from disk or from a dump, if Keel knows it.
pub fn known_table(name: &str) -> Option<Table> {
    KNOWN_TABLES.iter().copied().find(|known| *known == name)
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Empty names, and names holding a 0x00 byte (sled uses that byte to end the table prefix).
    #[error("invalid table name {0:?}")]
    InvalidTable(String),
    #[error("table {0:?} is not one of the known tables")]
    UnknownTable(String),
    #[error("unknown storage engine {0:?} (expected \"redb\" or \"sled\")")]
    UnknownEngine(String),
    #[error("corrupt dump: {0}")]
    CorruptDump(String),
    /// The engine returned something our own encoding cannot have produced.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl StorageError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        StorageError::Io { context: context.into(), source }
    }
}

impl From<StorageError> for crate::error::Error {
    fn from(e: StorageError) -> Self {
        crate::error::Error::Storage(e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put { table: Table, key: Vec<u8>, value: Vec<u8> },
    Delete { table: Table, key: Vec<u8> },
}

impl BatchOp {
    pub fn table(&self) -> Table {
        match self {
            BatchOp::Put { table, .. } | BatchOp::Delete { table, .. } => table,
        }
    }
}

/// Ops applied in order, all or nothing; a later op on the same key wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<BatchOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Put { table, key: key.into(), value: value.into() });
        self
    }

    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Delete { table, key: key.into() });
        self
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What etcd reports as `dbSize` and `dbSizeInUse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeInfo {
    /// Bytes the engine's files take on disk.
    pub total_bytes: u64,
    /// An estimate of the part of `total_bytes` that holds live data.
    pub in_use_bytes: u64,
}

/// What `Engine::scan_all` calls with (table name, key, value); returning false stops the walk.
pub type RowVisitor<'a> = dyn FnMut(&str, &[u8], &[u8]) -> bool + 'a;

pub trait Engine: Send + Sync + 'static {
    /// `"redb"` or `"sled"`.
    fn name(&self) -> &'static str;

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Point reads of many keys seen at one consistent moment (one read transaction where the
    /// engine has them). The answer is in the order of `keys`.
    fn get_many(&self, table: Table, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StorageError>;

    /// Ascending scan of [start, end) (end None = to the end of the table); the visitor returns
    /// false to stop. On redb the scan sees one point in time; on sled a scan running alongside
    /// writes may see some batches only in part (sled has no read snapshots).
    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError>;

    /// Every row of every table in (table name, key) order, from one consistent view: redb reads
    /// one read transaction, sled keeps writers out until the visit ends. The visitor must not call
    /// back into the engine (on sled that could deadlock against a waiting writer).
    fn scan_all(&self, visit: &mut RowVisitor<'_>) -> Result<(), StorageError>;

    /// Apply the whole batch atomically: after a crash either all of it or none of it is visible.
    /// Need NOT be durable on return (the raft log replays what is lost).
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError>;

    /// The durability point: everything written before this call is on disk (fsync'd) when it
    /// returns.
    fn sync(&self) -> Result<(), StorageError>;

    fn size(&self) -> Result<SizeInfo, StorageError>;

    /// Names of the non-empty tables, ascending.
    fn tables(&self) -> Result<Vec<String>, StorageError>;

    /// Remove every table and row (used before installing a raft snapshot); atomic, and, like
    /// `write`, durable only after the next `sync`.
    fn clear(&self) -> Result<(), StorageError>;

    /// Give free space back to the file system (etcd's Defragment), without holding reads or
    /// writes off for the duration; the data is unchanged and durable when it returns.
    fn defragment(&self) -> Result<(), StorageError>;
}

/// A scan visitor that can fail; `Ok(false)` stops the scan.
pub type FallibleVisitor<'a, E> = dyn FnMut(&[u8], &[u8]) -> Result<bool, E> + 'a;

/// `Engine::scan` with a visitor that can fail: the first error stops the scan and is returned
/// (the engine's own errors convert into the caller's error type).
pub fn try_scan<E: From<StorageError>>(
    engine: &dyn Engine,
    table: Table,
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut FallibleVisitor<'_, E>,
) -> Result<(), E> {
    let mut failure = None;
    engine.scan(table, start, end, &mut |k, v| match visit(k, v) {
        Ok(more) => more,
        Err(e) => {
            failure = Some(e);
            false
        }
    })?;
    failure.map_or(Ok(()), Err)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Redb,
    Sled,
}

impl FromStr for EngineKind {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "redb" => Ok(EngineKind::Redb),
            "sled" => Ok(EngineKind::Sled),
            other => Err(StorageError::UnknownEngine(other.to_string())),
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Redb => "redb",
            EngineKind::Sled => "sled",
        })
    }
}

/// Open (creating if needed) the engine's files under `dir`: `dir/keel.redb` or `dir/sled/`.
pub fn open(kind: EngineKind, dir: &Path) -> Result<Arc<dyn Engine>, StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io(format!("create {}", dir.display()), e))?;
    Ok(match kind {
        EngineKind::Redb => Arc::new(redb_engine::RedbEngine::open(dir)?),
        EngineKind::Sled => Arc::new(sled_engine::SledEngine::open(dir)?),
    })
}

/// Both engines refuse names they could not store faithfully: redb cannot name a table "", and a
/// 0x00 inside a name would make sled's `name 0x00 key` prefixes ambiguous.
pub(crate) fn check_table(table: &str) -> Result<(), StorageError> {
    if table.is_empty() || table.as_bytes().contains(&0) {
        return Err(StorageError::InvalidTable(table.to_string()));
    }
    Ok(())
}

/// An inverted or empty range reads nothing; checked up front because the engines' range
/// constructors may panic on start > end.
pub(crate) fn range_is_empty(start: &[u8], end: Option<&[u8]>) -> bool {
    matches!(end, Some(end) if end <= start)
}
