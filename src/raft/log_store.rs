//! openraft's log storage over our write-ahead log: entries live in memory for replication and
//! apply, and every change is made durable through `wal` before openraft is told it is done, the way
//! etcd keeps its raft log in memory with the WAL beside it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use crate::raft::types::{Entry, LogId, TypeConfig, Vote};
use crate::wal::{Record, Wal, WalOptions};

const META_VOTE: &[u8] = b"vote";
const META_COMMITTED: &[u8] = b"committed";
const META_LAST_PURGED: &[u8] = b"last_purged";

#[derive(Default)]
struct LogMemory {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

/// Cheap to clone: clones share the log.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Wal>,
    memory: Arc<Mutex<LogMemory>>,
}

fn io_err<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

fn encode<T: serde::Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(io_err)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(io_err)
}

impl LogStore {
    /// Open (or create) the log in `dir`, recovering what the WAL holds.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let (wal, recovered) = Wal::open(dir, WalOptions::default()).map_err(io_err)?;
        let mut memory = LogMemory::default();
        for (index, data) in recovered.entries {
            let entry: Entry = decode(&data)?;
            if entry.log_id.index != index {
                return Err(io_err(format!("wal entry at {index} decodes to index {}", entry.log_id.index)));
            }
            memory.entries.insert(index, entry);
        }
        if let Some(v) = recovered.meta.get(META_VOTE) {
            memory.vote = Some(decode(v)?);
        }
        if let Some(v) = recovered.meta.get(META_COMMITTED) {
            memory.committed = decode(v)?;
        }
        if let Some(v) = recovered.meta.get(META_LAST_PURGED) {
            memory.last_purged = decode(v)?;
        }
        Ok(LogStore { wal: Arc::new(wal), memory: Arc::new(Mutex::new(memory)) })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, LogMemory> {
        // A poisoned lock means a panic mid-update elsewhere; the data is still consistent
        // because every update is a single map operation.
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write records and wait until they are durable.
    async fn write_durable(&self, records: Vec<Record>) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.wal.submit(
            records,
            Box::new(move |res| {
                let _ = tx.send(res);
            }),
        );
        match rx.await {
            Ok(res) => res.map_err(io_err),
            Err(_) => Err(io_err("wal writer stopped")),
        }
    }

    /// Stop the WAL writer after it drains.
    pub fn close(&self) {
        self.wal.close();
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.memory().entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.memory().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let m = self.memory();
        let last = m.entries.values().next_back().map(|e| e.log_id).or_else(|| m.last_purged);
        Ok(LogState { last_purged_log_id: m.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let value = encode(vote)?;
        self.write_durable(vec![Record::Meta { key: META_VOTE.to_vec(), value }]).await?;
        self.memory().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let value = encode(&committed)?;
        self.write_durable(vec![Record::Meta { key: META_COMMITTED.to_vec(), value }]).await?;
        self.memory().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.memory().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        {
            let mut m = self.memory();
            for entry in entries {
                records.push(Record::Entry { index: entry.log_id.index, data: encode(&entry)? });
                m.entries.insert(entry.log_id.index, entry);
            }
        }
        // The callback runs once the batch (and whatever other appends queued with it) has been
        // fsync'd: openraft counts the entries only then. If the WAL is idle that happens inline,
        // before `submit` returns (blocking this task for one fdatasync, as etcd's raft loop blocks
        // on its WAL save); openraft allows the callback to come before `append` returns.
        self.wal.submit(records, Box::new(move |res| callback.io_completed(res.map_err(io_err))));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.as_ref().map(|l| l.index + 1).unwrap_or(0);
        self.write_durable(vec![Record::TruncateFrom { index: from }]).await?;
        let mut m = self.memory();
        let _ = m.entries.split_off(&from);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let value = encode(&Some(log_id))?;
        self.write_durable(vec![
            Record::Meta { key: META_LAST_PURGED.to_vec(), value },
            Record::PurgeTo { index: log_id.index },
        ])
        .await?;
        let mut m = self.memory();
        let keep = m.entries.split_off(&(log_id.index + 1));
        m.entries = keep;
        m.last_purged = Some(log_id);
        Ok(())
    }
}
