//! Applies committed commands to the MVCC store, deterministically and in log order (etcd's
//! applierV3): the data, the key index and the applied raft position are written in one atomic batch,
//! so a restart replays the log from exactly where the state stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::apply::command::{CommandResult, RaftCommand, Request, Response};
use crate::apply::watch_feed::{MvccHistory, StoreSlot};
use crate::apply::{execute, txn};
use crate::error::{Error, Result};
use crate::mvcc::{CompactionHandle, MvccStore};
use crate::proto::etcdserverpb::{CompactionResponse, ResponseHeader};
use crate::storage::{Engine, WriteBatch};
use crate::watch::WatchHub;

/// Meta-table key of the opaque raft position (last applied log id and membership) that the raft
/// layer hands in with every entry.
const META_RAFT_APPLIED: &[u8] = b"raft_applied";
const META_TABLE: &str = "meta";

pub struct Applier {
    engine: Arc<dyn Engine>,
    mvcc: StoreSlot,
    /// Watchers hear of each committed revision from here, after its commit.
    watch: Arc<WatchHub>,
    /// Physical compactions started by apply, waited on by the proposer that asked (by command id).
    compactions: Mutex<HashMap<u64, CompactionHandle>>,
}

impl Applier {
    pub fn open(engine: Arc<dyn Engine>) -> Result<Self> {
        let mvcc = Arc::new(MvccStore::open(engine.clone())?);
        let current = mvcc.current_revision();
        let mvcc: StoreSlot = Arc::new(RwLock::new(mvcc));
        let watch = Arc::new(WatchHub::new(Box::new(MvccHistory::new(mvcc.clone())), current));
        Ok(Applier { engine, mvcc, watch, compactions: Mutex::new(HashMap::new()) })
    }

    /// The store readers use. Swapped only when a raft snapshot is installed.
    pub fn mvcc(&self) -> Arc<MvccStore> {
        self.mvcc.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The watch hub this applier publishes to.
    pub fn watch(&self) -> &Arc<WatchHub> {
        &self.watch
    }

    /// The raft position stored with the data by the last `apply`.
    pub fn applied_position(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.engine.get(META_TABLE, META_RAFT_APPLIED)?)
    }

    /// Take the handle of a physical compaction started for command `id`.
    pub fn take_compaction(&self, id: u64) -> Option<CompactionHandle> {
        self.compactions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    /// Apply one log entry. `command` is None for entries without a client command. `position` is
    /// stored atomically with the entry's effects. An `Err` means our own storage failed: raft must
    /// stop rather than let this member diverge.
    pub fn apply(&self, command: Option<&RaftCommand>, position: Vec<u8>) -> Result<CommandResult> {
        let mut extra = WriteBatch::default();
        extra.put(META_TABLE, META_RAFT_APPLIED.to_vec(), position);
        let Some(command) = command else {
            self.engine.write(extra)?;
            return Ok(CommandResult { outcome: Ok(Response::None) });
        };
        let mvcc = self.mvcc();
        // No lessor yet: every lease id is unknown, which is what etcd answers for a lease that
        // was never granted.
        let lease_exists = |_: i64| false;
        let outcome = match &command.request {
            Request::Put(req) => {
                let mut w = mvcc.write();
                match execute::put(&mut w, req, &lease_exists) {
                    Ok(mut resp) => {
                        let committed = w.commit(extra)?;
                        set_revision(&mut resp.header, committed.revision);
                        self.watch.publish(committed.revision, committed.events);
                        Ok(Response::Put(resp))
                    }
                    Err(e) => fail(&self.engine, w, extra, e)?,
                }
            }
            Request::DeleteRange(req) => {
                let mut w = mvcc.write();
                match execute::delete_range(&mut w, req) {
                    Ok(mut resp) => {
                        let committed = w.commit(extra)?;
                        set_revision(&mut resp.header, committed.revision);
                        self.watch.publish(committed.revision, committed.events);
                        Ok(Response::DeleteRange(resp))
                    }
                    Err(e) => fail(&self.engine, w, extra, e)?,
                }
            }
            Request::Txn(req) => {
                let mut w = mvcc.write();
                match txn::txn(&mut w, req, &lease_exists) {
                    Ok(mut resp) => {
                        let committed = w.commit(extra)?;
                        set_revision(&mut resp.header, committed.revision);
                        self.watch.publish(committed.revision, committed.events);
                        Ok(Response::Txn(resp))
                    }
                    Err(e) => fail(&self.engine, w, extra, e)?,
                }
            }
            Request::Compaction(req) => {
                // The compaction persists its own schedule; the position follows it, so a crash in
                // between replays the compaction rather than losing it.
                let started = mvcc.compact(req.revision, req.physical);
                self.engine.write(extra)?;
                match started {
                    Ok(handle) => {
                        if req.physical {
                            self.compactions
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(command.header.id, handle);
                        }
                        let header = Some(ResponseHeader { revision: mvcc.current_revision(), ..Default::default() });
                        Ok(Response::Compaction(CompactionResponse { header }))
                    }
                    Err(e) => client_error(e)?,
                }
            }
        };
        Ok(CommandResult { outcome })
    }

    /// Replace the whole state with a raft snapshot's contents.
    pub fn install(&self, dump: &mut dyn std::io::Read) -> Result<()> {
        // A background compaction of the old state must not delete rows of the imported one.
        self.mvcc().stop_compactions();
        crate::storage::import(self.engine.as_ref(), dump)?;
        let fresh = Arc::new(MvccStore::open(self.engine.clone())?);
        let current = fresh.current_revision();
        *self.mvcc.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        // Watchers re-read from the new store what they may have missed.
        self.watch.reset(current);
        Ok(())
    }

    /// Write everything to a raft snapshot, after making the state durable: the log may be purged
    /// up to this point once the snapshot exists.
    pub fn export(&self, out: &mut dyn std::io::Write) -> Result<()> {
        self.engine.sync()?;
        crate::storage::export(self.engine.as_ref(), out)?;
        Ok(())
    }
}

fn set_revision(header: &mut Option<ResponseHeader>, revision: i64) {
    header.get_or_insert_with(Default::default).revision = revision;
}

/// A client-caused failure: nothing of the request is written, but the raft position still moves.
fn fail<T>(
    engine: &Arc<dyn Engine>,
    w: crate::mvcc::WriteTxn<'_>,
    extra: WriteBatch,
    e: Error,
) -> Result<Result<T, crate::apply::command::ApplyError>> {
    drop(w);
    engine.write(extra)?;
    client_error(e)
}

/// Sort an error into a client-caused result (Ok(Err)) or a failure of ours (Err).
fn client_error<T>(e: Error) -> Result<Result<T, crate::apply::command::ApplyError>> {
    match e {
        Error::Storage(_) | Error::Io(_) | Error::Internal(_) => Err(e),
        client => Ok(Err(client.into())),
    }
}
