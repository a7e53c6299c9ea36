//! Physical compaction: deleting the rows a compaction made unreachable, in the background, the
//! way etcd's `scheduleCompaction` does (1000 rows per batch, a 10 ms pause between batches so
//! the writer and readers keep flowing, `finishedCompactRev` written with the last batch).
//! Compactions run one after another in the order they were started.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use super::hash::{HashCache, KvHasher};
use super::revision::{encode_meta_rev, Revision};
use super::{FINISHED_COMPACT_KEY, KV_TABLE, META_TABLE};
use crate::error::{Error, Result};
use crate::storage::{Engine, WriteBatch};

/// Rows examined per delete batch (etcd's `compactionBatchLimit`).
const BATCH_ROWS: usize = 1000;
/// Pause between batches (etcd's default `compactionSleepInterval`).
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// Where one compaction's row deletion stands. `wait` blocks until it is over.
#[derive(Clone)]
pub struct CompactionHandle {
    revision: i64,
    job: Arc<Job>,
}

impl std::fmt::Debug for CompactionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactionHandle").field("revision", &self.revision).field("done", &self.is_done()).finish()
    }
}

/// How a deletion ended. Errors are kept as text because `Error` is not `Clone`.
#[derive(Clone)]
enum Outcome {
    Finished,
    /// The store was stopped first; the next `open` resumes the compaction.
    Stopped,
    Failed(String),
}

#[derive(Default)]
struct Job {
    /// None while running.
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
}

impl CompactionHandle {
    /// The revision compacted at.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Block until the obsolete rows are deleted and `finishedCompactRev` is written.
    /// `Err(Stopped)` if the store was stopped first; any other error means our storage failed.
    pub fn wait(&self) -> Result<()> {
        let mut outcome = self.job.outcome.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match outcome.as_ref() {
                Some(Outcome::Finished) => return Ok(()),
                Some(Outcome::Stopped) => return Err(Error::Stopped),
                Some(Outcome::Failed(e)) => return Err(Error::Storage(e.clone())),
                None => outcome = self.job.done.wait(outcome).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// True once the deletion is over (however it ended).
    pub fn is_done(&self) -> bool {
        self.job.outcome.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn finish(&self, result: Result<()>) {
        let mut outcome = self.job.outcome.lock().unwrap_or_else(|p| p.into_inner());
        *outcome = Some(match result {
            Ok(()) => Outcome::Finished,
            Err(Error::Stopped) => Outcome::Stopped,
            Err(e) => Outcome::Failed(e.to_string()),
        });
        self.job.done.notify_all();
    }
}

/// Chains compaction jobs so each starts after the previous one is over.
#[derive(Default)]
pub(crate) struct Compactor {
    last: Mutex<Option<CompactionHandle>>,
    stopped: Arc<AtomicBool>,
    /// What each finished compaction hashed on its way (etcd's `hashStorage`).
    hashes: Arc<HashCache>,
}

impl Compactor {
    pub(crate) fn hashes(&self) -> &HashCache {
        &self.hashes
    }

    /// Start deleting the rows at or below `rev` that are not in `keep`; `previous_compaction` is
    /// the compaction revision before this one (-1 if none), which the hash taken on the way
    /// reports, as etcd's does.
    pub(crate) fn start(
        &self,
        engine: Arc<dyn Engine>,
        rev: i64,
        previous_compaction: i64,
        keep: HashSet<Revision>,
    ) -> CompactionHandle {
        let handle = CompactionHandle { revision: rev, job: Arc::new(Job::default()) };
        let previous = self.last.lock().unwrap_or_else(|p| p.into_inner()).replace(handle.clone());
        let worker = handle.clone();
        let stopped = self.stopped.clone();
        let hashes = self.hashes.clone();
        let spawned = thread::Builder::new().name(format!("mvcc-compact-{rev}")).spawn(move || {
            if let Some(previous) = previous {
                // Its failure is reported to its own waiters; ours still has to run.
                let _ = previous.wait();
            }
            let mut hasher = KvHasher::new(previous_compaction, rev, &keep);
            let began = std::time::Instant::now();
            let result = delete_obsolete_rows(engine.as_ref(), rev, &keep, &mut hasher, &stopped);
            crate::metrics::DB_COMPACTION_TOTAL.observe_millis(began.elapsed());
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            crate::metrics::DB_COMPACTION_LAST.set(now.as_secs() as i64);
            if result.is_ok() {
                // Stored before waiters wake, so a HashKV after a physical compaction sees it.
                hashes.store(hasher.finish());
            }
            worker.finish(result);
        });
        if let Err(e) = spawned {
            handle.finish(Err(Error::Internal(format!("cannot start the compaction thread: {e}"))));
        }
        handle
    }

    /// Make running and queued deletions stop at their next batch (they resume on the next
    /// open); with `wait`, return only once none is running any more.
    pub(crate) fn stop(&self, wait: bool) {
        self.stopped.store(true, Ordering::SeqCst);
        if wait {
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(last) = last {
                let _ = last.wait();
            }
        }
    }
}

/// Delete, batch by batch, every row at or below `rev` whose revision is not in `keep`, then
/// record `rev` as finished. Every row looked at, deleted or not, is fed to `hasher` (etcd's
/// `scheduleCompaction` hashes the same way).
fn delete_obsolete_rows(
    engine: &dyn Engine,
    rev: i64,
    keep: &HashSet<Revision>,
    hasher: &mut KvHasher<'_>,
    stopped: &AtomicBool,
) -> Result<()> {
    let end = Revision::row_key_floor(rev.saturating_add(1));
    let mut start: Vec<u8> = Vec::new();
    loop {
        if stopped.load(Ordering::SeqCst) {
            return Err(Error::Stopped);
        }
        let began = std::time::Instant::now();
        let mut batch = WriteBatch::default();
        let mut seen = 0usize;
        let mut last = None;
        let mut bad_row = None;
        engine.scan(KV_TABLE, &start, Some(&end), &mut |k, v| {
            seen += 1;
            if let Err(e) = hasher.row(k, v) {
                bad_row = Some(e);
                return false;
            }
            match Revision::from_row_key(k) {
                Ok((r, _)) if keep.contains(&r) => {}
                Ok(_) => {
                    batch.delete(KV_TABLE, k.to_vec());
                }
                Err(e) => {
                    bad_row = Some(e);
                    return false;
                }
            }
            last = Some(k.to_vec());
            seen < BATCH_ROWS
        })?;
        if let Some(e) = bad_row {
            return Err(e);
        }
        let finished = seen < BATCH_ROWS;
        if finished {
            batch.put(META_TABLE, FINISHED_COMPACT_KEY, encode_meta_rev(rev));
        }
        let deleted = batch.len() as u64 - u64::from(finished);
        engine.write(batch)?;
        crate::metrics::DB_COMPACTION_KEYS.add(deleted);
        if !finished {
            // etcd's pause: one batch read and deleted (it times every batch but the last).
            crate::metrics::DB_COMPACTION_PAUSE.observe_millis(began.elapsed());
        }
        match last {
            Some(mut next) if !finished => {
                // The smallest key after `next`.
                next.push(0);
                start = next;
            }
            _ => return Ok(()),
        }
        thread::sleep(BATCH_PAUSE);
    }
}
