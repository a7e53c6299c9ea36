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
    /// `committed` changed since it was last written: it rides along with the next WAL batch.
    committed_unsaved: bool,
}

impl LogMemory {
    /// The committed-index record to write with the next batch, if it changed since the last one.
    fn take_unsaved_committed(&mut self) -> io::Result<Option<Record>> {
        if !std::mem::take(&mut self.committed_unsaved) {
            return Ok(None);
        }
        Ok(Some(Record::Meta { key: META_COMMITTED.to_vec(), value: encode(&self.committed)? }))
    }
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
    async fn write_durable(&self, mut records: Vec<Record>) -> io::Result<()> {
        if let Some(committed) = self.memory().take_unsaved_committed()? {
            records.insert(0, committed);
        }
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

    /// Stop the WAL writer after it drains (and after writing the last committed index).
    pub fn close(&self) {
        if let Ok(Some(committed)) = self.memory().take_unsaved_committed() {
            if let Err(e) = self.wal.write_sync(vec![committed]) {
                tracing::warn!(error = %e, "could not save the committed index at close");
            }
        }
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

    /// As etcd's raft (`MustSync`: a commit index change alone needs no fsync), the committed
    /// index is not synced on its own: it is written with the next batch the WAL syncs anyway.
    /// Losing the latest value in a crash is safe: openraft re-applies from the state machine's
    /// applied index, and the leader commits those entries again. Syncing it cost a second
    /// fdatasync per write on the path to the client's answer.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut m = self.memory();
        if m.committed != committed {
            m.committed = committed;
            m.committed_unsaved = true;
        }
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
            records.extend(m.take_unsaved_committed()?);
            for entry in entries {
                records.push(Record::Entry { index: entry.log_id.index, data: encode(&entry)? });
                m.entries.insert(entry.log_id.index, entry);
            }
        }
        // The callback runs once the batch (and whatever other appends queued with it) has been
        // fsync'd: openraft counts the entries only then. If the WAL is idle that happens inline,
        // before `submit` returns (blocking this task for one fdatasync, as etcd's raft loop blocks
        // on its WAL save); openraft allows the callback to come before `append` returns.
        // The worker thread simply blocks meanwhile; the runtime's other workers go on. Handing
        // the worker's tasks to another thread for the fdatasync (`block_in_place`, as Go hands a
        // goroutine's processor on in a syscall) cost more in thread hand-offs than it saved:
        // without it put at 100 clients rose 8-10% on one member and ~20% on three, with less CPU.
        // On a one-worker runtime (a one-core machine) the other tasks wait out the fdatasync;
        // what arrives meanwhile goes into the next batch.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(index: u64) -> LogId {
        openraft::testing::log_id::<TypeConfig>(1, 1, index)
    }

    /// etcd's `MustSync` quirk, kept: a new commit index costs no fdatasync of its own; it is
    /// durable once the next batch is (or at close), and read back after a reopen.
    #[tokio::test]
    async fn the_committed_index_rides_with_the_next_synced_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let before = store.wal.fsync_count();
        store.save_committed(Some(log_id(3))).await.unwrap();
        assert_eq!(store.wal.fsync_count(), before, "saving the committed index alone does not sync");
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(3)));
        store.save_vote(&Vote::new(1, 1)).await.unwrap();
        assert!(!store.memory().committed_unsaved, "the vote's synced batch carried it");
        store.close();
        drop(store);

        let mut reopened = LogStore::open(dir.path()).unwrap();
        assert_eq!(reopened.read_committed().await.unwrap(), Some(log_id(3)));
        reopened.save_committed(Some(log_id(7))).await.unwrap();
        reopened.close();
        drop(reopened);

        let mut again = LogStore::open(dir.path()).unwrap();
        assert_eq!(again.read_committed().await.unwrap(), Some(log_id(7)), "close writes the last value");
    }
}
