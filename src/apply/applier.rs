//! Applies committed commands to the MVCC store, deterministically and in log order (etcd's
//! applierV3): the data, the key index and the applied raft position are written in one atomic batch,
//! so a restart replays the log from exactly where the state stops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};

use crate::apply::alarms::Alarms;
use crate::apply::command::{CommandResult, RaftCommand, Request, Response};
use crate::apply::watch_feed::{MvccHistory, StoreSlot};
use crate::apply::{auth_gate, execute, txn};
use crate::auth::AuthStore;
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::mvcc::{CompactionHandle, MvccStore};
use crate::proto::etcdserverpb::{
    AlarmResponse, CompactionResponse, DowngradeResponse, LeaseCheckpointResponse, LeaseGrantResponse,
    LeaseRevokeResponse, RangeRequest, ResponseHeader,
};
use crate::storage::{Engine, WriteBatch, WriteBuffer};
use crate::watch::WatchHub;

/// Meta-table key of the opaque raft position (last applied log id and membership) that the raft
/// layer hands in with every entry.
const META_RAFT_APPLIED: &[u8] = b"raft_applied";
const META_TABLE: &str = "meta";

pub struct Applier {
    /// Apply writes land here and reach the engine once per batch of entries (see `flush`).
    buffer: Arc<WriteBuffer>,
    engine: Arc<dyn Engine>,
    mvcc: StoreSlot,
    /// Watchers hear of each committed revision from here, after its commit.
    watch: Arc<WatchHub>,
    /// Physical compactions started by apply, waited on by the proposer that asked (by command id).
    compactions: Mutex<HashMap<u64, CompactionHandle>>,
    /// Leases and their attached keys; changed only here, in log order.
    lessor: Arc<Lessor>,
    /// Active alarms; changed only here, in log order.
    alarms: Arc<Alarms>,
    /// Users, roles and permissions; changed only here, in log order.
    auth: Arc<AuthStore>,
    /// Raft index of the entry being applied (simple auth tokens end with it, as etcd's do).
    index: AtomicU64,
    /// Held by every apply and install, so that an install never interleaves with an apply. (A
    /// raft snapshot export does not take it: it reads its position from its own consistent
    /// view, see `export`.)
    gate: Mutex<()>,
}

impl Applier {
    /// Open over the storage engine; every read and write of the state goes through a write
    /// buffer over it from here on.
    pub fn open(engine: Arc<dyn Engine>) -> Result<Self> {
        let buffer = Arc::new(WriteBuffer::new(engine));
        let engine: Arc<dyn Engine> = buffer.clone();
        let mvcc = Arc::new(MvccStore::open(engine.clone())?);
        let lessor = Arc::new(Lessor::open(engine.as_ref())?);
        let alarms = Arc::new(Alarms::open(engine.as_ref())?);
        restore_attachments(&mvcc, &lessor)?;
        let auth = Arc::new(AuthStore::open(engine.as_ref())?);
        let current = mvcc.current_revision();
        let mvcc: StoreSlot = Arc::new(RwLock::new(mvcc));
        let watch = Arc::new(WatchHub::new(Box::new(MvccHistory::new(mvcc.clone())), current));
        Ok(Applier {
            buffer,
            engine,
            mvcc,
            watch,
            compactions: Mutex::new(HashMap::new()),
            lessor,
            alarms,
            auth,
            index: AtomicU64::new(0),
            gate: Mutex::new(()),
        })
    }

    /// The auth store the edge checks tokens and reads against.
    pub fn auth(&self) -> &Arc<AuthStore> {
        &self.auth
    }

    /// The raft layer names the index of the entry it is about to apply.
    pub fn note_index(&self, index: u64) {
        self.index.store(index, AtomicOrdering::Relaxed);
    }

    /// The raft index of the last entry handed to apply. openraft's metrics report the applied
    /// index only some time after the client has its answer; this is already there.
    pub fn applying_index(&self) -> u64 {
        self.index.load(AtomicOrdering::Relaxed)
    }

    /// The lessor readers (the leader's lease clock, the Lease API) share.
    pub fn lessor(&self) -> &Arc<Lessor> {
        &self.lessor
    }

    /// The active alarms (Status and the quota check read them).
    pub fn alarms(&self) -> &Arc<Alarms> {
        &self.alarms
    }

    /// Commit what the entries applied so far wrote, as one atomic engine batch. Runs in the
    /// background (see `server.rs`), off the apply path: until then readers see the writes in the
    /// buffer, and a crash replays them from the raft log.
    pub fn flush(&self) -> Result<()> {
        Ok(self.buffer.flush()?)
    }

    /// Flush now if the buffer has grown past what the background flusher should leave pending,
    /// so a write burst cannot grow memory without bound.
    pub fn flush_if_large(&self) -> Result<()> {
        const MAX_PENDING_ROWS: usize = 50_000;
        if self.buffer.pending_rows() >= MAX_PENDING_ROWS {
            self.flush()?;
        }
        Ok(())
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
        let began = std::time::Instant::now();
        let applied = self.apply_timed(command, position);
        if let (Some(command), Ok(result)) = (command, &applied) {
            // etcd's `applySec`: a failure is any error but a compacted revision.
            let success = match &result.outcome {
                Ok(_) => true,
                Err(e) => *e == crate::apply::command::ApplyError::Compacted,
            };
            crate::metrics::observe_apply(op_name(&command.request), success, began.elapsed());
        }
        applied
    }

    fn apply_timed(&self, command: Option<&RaftCommand>, position: Vec<u8>) -> Result<CommandResult> {
        let _gate = self.gate();
        let mut extra = WriteBatch::default();
        extra.put(META_TABLE, META_RAFT_APPLIED.to_vec(), position);
        let Some(command) = command else {
            self.engine.write(extra)?;
            return Ok(CommandResult { outcome: Ok(Response::None) });
        };
        // etcd swaps in a capped (NOSPACE) or corrupt applier while such an alarm is active.
        if let Some(e) = self.alarms.refuse(&command.request) {
            self.engine.write(extra)?;
            return Ok(CommandResult { outcome: client_error(e)? });
        }
        let mvcc = self.mvcc();
        let lessor = &self.lessor;
        if let Err(denied) = auth_gate::check(&self.auth, lessor, command) {
            self.engine.write(extra)?;
            return Ok(CommandResult { outcome: client_error(Error::Auth(denied))? });
        }
        let lease_exists = |id: i64| lessor.contains(id);
        let outcome = match &command.request {
            Request::Put(req) => {
                let mut w = mvcc.write();
                match execute::put(&mut w, req, &lease_exists) {
                    Ok(mut resp) => {
                        let committed = w.commit(extra)?;
                        lessor.follow(&committed.events);
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
                        lessor.follow(&committed.events);
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
                        lessor.follow(&committed.events);
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
                        // etcd reads the revision for the header with a Range (of the key
                        // "compaction"), which its mvcc metrics count.
                        crate::metrics::MVCC_RANGE.inc();
                        Ok(Response::Compaction(CompactionResponse { header: current_header(&mvcc) }))
                    }
                    Err(e) => client_error(e)?,
                }
            }
            // LeaseGrant and LeaseCheckpoint change no key, so the revision stays; the header
            // reports the current one (etcd's `newHeader`).
            Request::LeaseGrant(req) => match lessor.check_grant(req.id, req.ttl) {
                Ok(()) => {
                    lessor.stage_grant(&mut extra, req.id, req.ttl);
                    self.engine.write(extra)?;
                    lessor.granted(req.id, req.ttl);
                    Ok(Response::LeaseGrant(LeaseGrantResponse {
                        header: current_header(&mvcc),
                        id: req.id,
                        ttl: req.ttl,
                        error: String::new(),
                    }))
                }
                Err(e) => {
                    self.engine.write(extra)?;
                    client_error(e)?
                }
            },
            // etcd's `lessor.Revoke`: every attached key is deleted in ONE write transaction, in
            // key order, so they all share one new revision (none if the lease had no keys).
            Request::LeaseRevoke(req) => match lessor.stage_revoke(&mut extra, req.id) {
                Ok(keys) => {
                    let mut w = mvcc.write();
                    for key in &keys {
                        w.delete_range_count(key, &[])?;
                    }
                    let committed = w.commit(extra)?;
                    lessor.follow(&committed.events);
                    lessor.revoked(req.id);
                    let revision = committed.revision;
                    // Watchers see the revoke's DELETE events like any other deletion.
                    self.watch.publish(committed.revision, committed.events);
                    let header = Some(ResponseHeader { revision, ..Default::default() });
                    Ok(Response::LeaseRevoke(LeaseRevokeResponse { header }))
                }
                Err(e) => {
                    self.engine.write(extra)?;
                    client_error(e)?
                }
            },
            Request::LeaseCheckpoint(req) => {
                let applied = lessor.stage_checkpoints(&mut extra, &req.checkpoints);
                self.engine.write(extra)?;
                lessor.checkpointed(&applied);
                Ok(Response::LeaseCheckpoint(LeaseCheckpointResponse { header: current_header(&mvcc) }))
            }
            Request::Alarm(req) => {
                let (alarms, change) = self.alarms.stage(&mut extra, req);
                self.engine.write(extra)?;
                self.alarms.commit(change);
                Ok(Response::Alarm(AlarmResponse { header: current_header(&mvcc), alarms }))
            }
            Request::Downgrade(req) => {
                use crate::proto::etcdserverpb::downgrade_request::DowngradeAction;
                let enable = req.action == DowngradeAction::Enable as i32;
                crate::apply::downgrade::stage(&mut extra, enable, &req.version);
                self.engine.write(extra)?;
                Ok(Response::Downgrade(DowngradeResponse { header: current_header(&mvcc), version: String::new() }))
            }
            Request::Auth(req) => {
                let applied = self.auth.apply(req, self.index.load(AtomicOrdering::Relaxed), &mut extra);
                self.engine.write(extra)?;
                match applied {
                    Ok(resp) => Ok(Response::Auth(resp)),
                    Err(e) => client_error(Error::Auth(e))?,
                }
            }
        };
        Ok(CommandResult { outcome })
    }

    /// A CRC-32C of the whole state machine (every table), for `Maintenance.Hash`. The raft
    /// position is left out, as etcd leaves out its consistent index and term: members holding
    /// the same data then answer the same hash even if their logs differ in blank entries.
    pub fn state_hash(&self) -> Result<u32> {
        let skip = |table: &str, key: &[u8]| table == META_TABLE && key == META_RAFT_APPLIED;
        let began = std::time::Instant::now();
        let hash = crate::storage::checksum::hash_all(self.engine.as_ref(), &skip)?;
        crate::metrics::HASH.observe(began.elapsed());
        Ok(hash)
    }

    /// The cluster's downgrade job as last applied.
    pub fn downgrade_info(&self) -> Result<crate::apply::downgrade::DowngradeInfo> {
        crate::apply::downgrade::info(self.engine.as_ref())
    }

    /// Replace the whole state with a raft snapshot's contents.
    pub fn install(&self, dump: &mut dyn std::io::Read) -> Result<()> {
        let _gate = self.gate();
        // A background compaction of the old state must not delete rows of the imported one.
        self.mvcc().stop_compactions();
        crate::storage::import(self.engine.as_ref(), dump)?;
        let fresh = Arc::new(MvccStore::open(self.engine.clone())?);
        self.lessor.reload(self.engine.as_ref())?;
        self.alarms.reload(self.engine.as_ref())?;
        self.auth.reload(self.engine.as_ref())?;
        restore_attachments(&fresh, &self.lessor)?;
        let current = fresh.current_revision();
        *self.mvcc.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        // Watchers re-read from the new store what they may have missed.
        self.watch.reset(current);
        Ok(())
    }

    /// Write everything to a raft snapshot and return the raft position the written state is at.
    /// The engine's scan is one consistent view (redb: one read transaction; sled: writers held
    /// off) and the position is read from that same view, so applies go on while the snapshot is
    /// written: holding them off for the whole export (as this once did) stalled every write of
    /// the member for as long, every `--snapshot-count` entries. Then the state is made durable:
    /// the log may be purged up to the position once the snapshot exists.
    pub fn export(&self, out: &mut dyn std::io::Write) -> Result<Option<Vec<u8>>> {
        let position = crate::storage::export_noting(self.engine.as_ref(), out, (META_TABLE, META_RAFT_APPLIED))?;
        self.engine.sync()?;
        Ok(position)
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is the storage itself, consistent after any panic mid-apply (batches
        // are atomic), so a poisoned gate is still usable.
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// etcd's `op` label of `etcd_server_apply_duration_seconds` for a request (AuthStatus is
/// "unknown": etcd 3.5.16 never names it).
fn op_name(request: &Request) -> &'static str {
    use crate::auth::request::AuthRequest as A;
    match request {
        Request::Put(_) => "Put",
        Request::DeleteRange(_) => "DeleteRange",
        Request::Txn(_) => "Txn",
        Request::Compaction(_) => "Compaction",
        Request::LeaseGrant(_) => "LeaseGrant",
        Request::LeaseRevoke(_) => "LeaseRevoke",
        Request::LeaseCheckpoint(_) => "LeaseCheckpoint",
        Request::Alarm(_) => "Alarm",
        Request::Downgrade(_) => "DowngradeInfoSet",
        Request::Auth(auth) => match auth {
            A::Enable => "AuthEnable",
            A::Disable => "AuthDisable",
            A::Status => "unknown",
            A::Authenticate { .. } => "Authenticate",
            A::UserAdd(_) => "AuthUserAdd",
            A::UserGet(_) => "AuthUserGet",
            A::UserList => "AuthUserList",
            A::UserDelete(_) => "AuthUserDelete",
            A::UserChangePassword(_) => "AuthUserChangePassword",
            A::UserGrantRole(_) => "AuthUserGrantRole",
            A::UserRevokeRole(_) => "AuthUserRevokeRole",
            A::RoleAdd(_) => "AuthRoleAdd",
            A::RoleGet(_) => "AuthRoleGet",
            A::RoleList => "AuthRoleList",
            A::RoleDelete(_) => "AuthRoleDelete",
            A::RoleGrantPermission(_) => "AuthRoleGrantPermission",
            A::RoleRevokePermission(_) => "AuthRoleRevokePermission",
        },
    }
}

fn current_header(mvcc: &MvccStore) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision: mvcc.current_revision(), ..Default::default() })
}

/// Rebuild the key → lease attachments from the live key-values (etcd's `restore` does the same:
/// attachments are not stored with the leases). Reads the store in pages so memory stays flat.
fn restore_attachments(mvcc: &MvccStore, lessor: &Lessor) -> Result<()> {
    const PAGE: i64 = 1000;
    let mut from = vec![0u8];
    loop {
        let page =
            mvcc.range_uncounted(&RangeRequest { key: from, range_end: vec![0], limit: PAGE, ..Default::default() })?;
        for kv in &page.kvs {
            if kv.lease != 0 && !lessor.restore_attachment(&kv.key, kv.lease) {
                tracing::warn!(lease = %format!("{:x}", kv.lease), "a key names a lease that does not exist");
            }
        }
        match page.kvs.last() {
            Some(last) if page.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return Ok(()),
        }
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
