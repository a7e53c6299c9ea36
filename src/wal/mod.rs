//! Keel's write-ahead log for the raft log: segment files of checksummed records, one fdatasync per
//! batch of appends (group commit), torn-tail repair on open, and purge of old segments. It plays the
//! part of etcd's `server/storage/wal`: nothing is acknowledged before it is on disk.
//!
//! The raft adapter keeps entries in memory and uses this module only to persist and to recover.
//!
//! On disk: files `<16 lowercase hex digits>.wal` in one directory, numbered consecutively. Each is a
//! sequence of frames (see `format.rs`), the first always a checkpoint holding the meta map and the
//! purge point, so the oldest segments can be deleted once every entry they hold is purged. A `LOCK`
//! file guards against two processes appending to the same log.
//!
//! Segments are preallocated like etcd's: each is created `segment_bytes` long and full of zeros
//! (zero-filled as `next-segment.tmp`, then renamed), and records overwrite the zeros from the start.
//! A segment's data therefore ends at the first zeroed frame header (or the end of the file); every
//! byte after that must be zero. Rotation looks at the length of the data, never at the file size; the
//! last submission before a rotation may run past the preallocated size, growing the file.
//!
//! Who writes: a submitter that finds the log idle (nothing queued, nobody writing) writes and
//! fdatasyncs its records itself and runs the completion on its own thread, saving the hop to a
//! writer thread and back. Submissions that arrive while someone is writing only queue; when the
//! writer is handed back, the background thread writes everything queued as one batch. A submitter
//! therefore blocks at most for its own write, never behind somebody else's batch.

mod format;
mod recover;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use writer::{Pending, Writer};

/// One logical change to the log. The byte encoding is private to this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A raft entry, opaque bytes; a later entry with the same index replaces it.
    Entry { index: u64, data: Vec<u8> },
    /// Drops entries with index >= `index` (raft overwrote a conflicting suffix).
    TruncateFrom { index: u64 },
    /// Entries with index <= `index` are no longer needed.
    PurgeTo { index: u64 },
    /// A small named value (vote, committed); the last write wins.
    Meta { key: Vec<u8>, value: Vec<u8> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment that has grown past this size is closed and a new one started.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { segment_bytes: 64 << 20 }
    }
}

/// The log's state after replaying every record found on open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub entries: BTreeMap<u64, Vec<u8>>,
    pub meta: HashMap<Vec<u8>, Vec<u8>>,
    pub purged_to: Option<u64>,
}

/// Clone so one failed sync can be reported to every submission of its batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("wal i/o error ({context}): {source}")]
    Io {
        context: String,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("wal corruption in {} at offset {offset}: {reason}", .file.display())]
    Corrupt { file: PathBuf, offset: u64, reason: String },
    #[error("wal record of {len} bytes is too large to frame")]
    RecordTooLarge { len: usize },
    #[error("wal directory {} is locked by another process", .dir.display())]
    Locked { dir: PathBuf },
    #[error("wal is closed")]
    Closed,
    /// `write_sync` from a completion callback would wait for the very thread it runs on.
    #[error("write_sync called from a wal completion callback")]
    Reentrant,
    #[error("wal refuses writes after an earlier failure: {0}")]
    Failed(Box<WalError>),
}

impl WalError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> WalError {
        let context = context.into();
        move |source| WalError::from_io(context, source)
    }

    fn from_io(context: String, source: io::Error) -> WalError {
        WalError::Io { context, source: Arc::new(source) }
    }
}

pub(crate) type Done = Box<dyn FnOnce(Result<(), WalError>) + Send>;

struct Queue {
    pending: Vec<Pending>,
    closed: bool,
    /// The writer while nobody is writing. Whoever takes it writes one batch, runs that batch's
    /// completions and puts it back: holding it is what keeps writes, and completions, in order.
    writer: Option<Writer>,
    /// The thread holding the writer: the one thread that must not wait for the log.
    holder: Option<ThreadId>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the background thread: work queued, the writer handed back, or closed.
    wake: Condvar,
    fsyncs: Arc<AtomicU64>,
}

impl Shared {
    /// Completions run outside this lock and the writer never panics while holding it, but a
    /// poisoned queue is still usable: its contents are plain data.
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn held_by_current_thread(&self) -> bool {
        self.queue().holder == Some(thread::current().id())
    }
}

/// The writer taken out of the queue for one batch. Dropping it hands the writer back and wakes the
/// background thread for whatever queued meanwhile; if the batch panicked (a bug: completions are
/// already caught) the writer's state is unknown, so the log closes instead.
struct Holding<'a> {
    shared: &'a Shared,
    writer: Option<Writer>,
    /// A submit from a destructor during some other panic is not a panic in the batch.
    panicking_before: bool,
}

impl<'a> Holding<'a> {
    /// Takes the writer and everything queued. The caller has checked that the writer is free.
    fn take(shared: &'a Shared, queue: &mut Queue) -> Option<(Holding<'a>, Vec<Pending>)> {
        let writer = queue.writer.take()?;
        queue.holder = Some(thread::current().id());
        let batch = std::mem::take(&mut queue.pending);
        Some((Holding { shared, writer: Some(writer), panicking_before: thread::panicking() }, batch))
    }

    fn process(&mut self, batch: Vec<Pending>) {
        if let Some(writer) = self.writer.as_mut() {
            writer.process(batch);
        }
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        let orphans = {
            let mut queue = self.shared.queue();
            queue.holder = None;
            if thread::panicking() && !self.panicking_before {
                queue.closed = true;
                std::mem::take(&mut queue.pending)
            } else {
                queue.writer = self.writer.take();
                Vec::new()
            }
        };
        self.shared.wake.notify_one();
        for Pending { done, .. } in orphans {
            writer::answer(done, Err(WalError::Closed));
        }
    }
}

/// An open write-ahead log. `Send + Sync`; share it as `Arc<Wal>`. Dropping it closes it.
pub struct Wal {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

const LOCK_FILE: &str = "LOCK";

impl Wal {
    /// Opens (creating if needed) the log in `dir`, replays it, and starts the background writer
    /// thread.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered), WalError> {
        create_dir_durably(dir)?;
        let lock = lock_dir(dir)?;
        let replayed = recover::replay(dir, opts.segment_bytes)?;
        let fsyncs = Arc::new(AtomicU64::new(0));
        let writer = Writer::start(dir, opts, replayed.tracker, replayed.tail_len, Arc::clone(&fsyncs))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { pending: Vec::new(), closed: false, writer: Some(writer), holder: None }),
            wake: Condvar::new(),
            fsyncs,
        });
        let thread_shared = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("keel-wal".into())
            .spawn(move || {
                // The lock lives exactly as long as the writer: released only once the last
                // record is on disk.
                let _lock = lock;
                run_background(&thread_shared);
            })
            .map_err(WalError::io("spawn the wal writer thread"))?;
        let wal = Wal { shared, thread: Mutex::new(Some(handle)) };
        Ok((wal, replayed.recovered))
    }

    /// Queues records; `done` runs once they are written and fdatasync'd, or with the error.
    /// Records of one call stay contiguous and in order, and completions run in submit order.
    ///
    /// If the log is idle, the records are written and synced right here and `done` runs before
    /// `submit` returns, on the caller's thread: the caller must not hold anything `done` needs.
    /// Otherwise `submit` only queues, and `done` runs later on whichever thread writes the batch.
    /// After `close`, `done` runs at once, here, with `Closed`.
    pub fn submit(&self, records: Vec<Record>, done: Box<dyn FnOnce(Result<(), WalError>) + Send>) {
        let mut queue = self.shared.queue();
        if queue.closed {
            drop(queue);
            writer::answer(done, Err(WalError::Closed));
            return;
        }
        // Something already queued is the background thread's (it has been woken), and writing
        // it here would make this caller wait for another submitter's batch.
        let idle = queue.pending.is_empty() && queue.writer.is_some();
        queue.pending.push(Pending { records, done });
        if !idle {
            // If the writer is free the background thread is due to take it; if it is held, the
            // holder wakes the thread when it hands the writer back.
            return;
        }
        let Some((mut holding, batch)) = Holding::take(&self.shared, &mut queue) else {
            return;
        };
        drop(queue);
        holding.process(batch);
    }

    /// Submits and blocks until the records are durable.
    pub fn write_sync(&self, records: Vec<Record>) -> Result<(), WalError> {
        // From a completion callback this thread holds the writer: waiting would never end.
        if self.shared.held_by_current_thread() {
            return Err(WalError::Reentrant);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            records,
            Box::new(move |outcome| {
                // The waiter only goes away if its thread died; nothing left to tell.
                let _ = tx.send(outcome);
            }),
        );
        rx.recv().unwrap_or(Err(WalError::Closed))
    }

    /// Stops the log after everything already queued has been written and answered; later
    /// submissions fail with `Closed`. Called from a completion callback it cannot wait (the caller
    /// holds the writer), so the background thread finishes the queue after that batch.
    pub fn close(&self) {
        self.shared.queue().closed = true;
        self.shared.wake.notify_one();
        if self.shared.held_by_current_thread() {
            return;
        }
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("wal: the writer thread panicked");
            }
        }
    }

    /// Number of fdatasync/fsync calls made so far (segment data, preallocation and directory),
    /// for tests and metrics.
    pub fn fsync_count(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Closes the queue when the background thread stops for any reason, a bug-induced panic
/// included, so no submitter is left waiting for an answer that would never come.
struct BackgroundExit<'a>(&'a Shared);

impl Drop for BackgroundExit<'_> {
    fn drop(&mut self) {
        let (orphans, writer) = {
            let mut queue = self.0.queue();
            queue.closed = true;
            (std::mem::take(&mut queue.pending), queue.writer.take())
        };
        // Dropped outside the lock: it waits for a segment preparation still running.
        drop(writer);
        for Pending { done, .. } in orphans {
            writer::answer(done, Err(WalError::Closed));
        }
    }
}

/// The background thread: writes whatever queued while the writer was busy, and on close waits for
/// the writer to come back, drains the queue and retires the writer (releasing the lock after it).
fn run_background(shared: &Shared) {
    let _exit = BackgroundExit(shared);
    let mut queue = shared.queue();
    loop {
        if queue.writer.is_some() {
            if !queue.pending.is_empty() {
                if let Some((mut holding, batch)) = Holding::take(shared, &mut queue) {
                    drop(queue);
                    holding.process(batch);
                    drop(holding);
                    queue = shared.queue();
                }
                continue;
            }
            if queue.closed {
                return;
            }
        } else if queue.closed && queue.holder.is_none() {
            // The writer was lost to a panic in some submitter's batch; `Holding` answered the
            // queue then.
            return;
        }
        queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
    }
}

/// Creates `dir` if missing and makes its own directory entry durable, so a log created and
/// acknowledged just before a power cut is still found afterwards.
fn create_dir_durably(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(WalError::io(format!("create {}", dir.display())))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        let handle = File::open(parent).map_err(WalError::io(format!("open {}", parent.display())))?;
        handle.sync_all().map_err(WalError::io(format!("fsync {}", parent.display())))?;
    }
    Ok(())
}

/// How long `open` keeps trying a held lock before reporting `Locked`.
const LOCK_PATIENCE: Duration = Duration::from_secs(1);

/// The lock is an flock on an open file description. A child forked by any thread of this process
/// shares that description until it execs, so a lock just released by `close` can look held for
/// a moment; a short retry tells that apart from a real second owner.
fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(WalError::io(format!("open {}", path.display())))?;
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => return Err(WalError::Locked { dir: dir.to_path_buf() }),
            Err(TryLockError::Error(err)) => return Err(WalError::from_io(format!("lock {}", path.display()), err)),
        }
    }
}
