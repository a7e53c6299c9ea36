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
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    fsyncs: Arc<AtomicU64>,
}

impl Shared {
    /// Completions run outside this lock and the writer never panics while holding it, but a
    /// poisoned queue is still usable: its contents are plain data.
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An open write-ahead log. `Send + Sync`; share it as `Arc<Wal>`. Dropping it closes it.
pub struct Wal {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    writer_id: ThreadId,
}

const LOCK_FILE: &str = "LOCK";

impl Wal {
    /// Opens (creating if needed) the log in `dir`, replays it, and starts the writer thread.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered), WalError> {
        create_dir_durably(dir)?;
        let lock = lock_dir(dir)?;
        let replayed = recover::replay(dir)?;
        let fsyncs = Arc::new(AtomicU64::new(0));
        let writer = Writer::start(dir, opts, replayed.tracker, replayed.tail_len, Arc::clone(&fsyncs))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { pending: Vec::new(), closed: false }),
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
                run_writer(&thread_shared, writer);
            })
            .map_err(WalError::io("spawn the wal writer thread"))?;
        let wal = Wal { writer_id: handle.thread().id(), shared, thread: Mutex::new(Some(handle)) };
        Ok((wal, replayed.recovered))
    }

    /// Queues records; `done` runs (on the WAL's writer thread) once they are written and
    /// fdatasync'd, or with the error. Records of one call stay contiguous and in order, and
    /// completions run in submit order. After `close`, `done` runs at once, here, with `Closed`.
    pub fn submit(&self, records: Vec<Record>, done: Box<dyn FnOnce(Result<(), WalError>) + Send>) {
        let mut queue = self.shared.queue();
        if queue.closed {
            drop(queue);
            writer::answer(done, Err(WalError::Closed));
            return;
        }
        queue.pending.push(Pending { records, done });
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// Submits and blocks until the records are durable.
    pub fn write_sync(&self, records: Vec<Record>) -> Result<(), WalError> {
        if thread::current().id() == self.writer_id {
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

    /// Stops the writer after it has written and answered everything already queued; later
    /// submissions fail with `Closed`. Called from a completion callback it cannot wait for the
    /// writer (that is the caller's own thread), which then stops after the current batch.
    pub fn close(&self) {
        self.shared.queue().closed = true;
        self.shared.wake.notify_all();
        if thread::current().id() == self.writer_id {
            return;
        }
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("wal: the writer thread panicked");
            }
        }
    }

    /// Number of fdatasync/fsync calls made so far (segment data and directory), for tests and
    /// metrics.
    pub fn fsync_count(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Closes the queue when the writer stops for any reason, a bug-induced panic included, so no
/// submitter is left waiting for an answer that would never come.
struct WriterExit<'a>(&'a Shared);

impl Drop for WriterExit<'_> {
    fn drop(&mut self) {
        let orphans = {
            let mut queue = self.0.queue();
            queue.closed = true;
            std::mem::take(&mut queue.pending)
        };
        for Pending { done, .. } in orphans {
            writer::answer(done, Err(WalError::Closed));
        }
    }
}

fn run_writer(shared: &Shared, mut writer: Writer) {
    let _exit = WriterExit(shared);
    loop {
        let batch = {
            let mut queue = shared.queue();
            while queue.pending.is_empty() && !queue.closed {
                queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.pending.is_empty() {
                return;
            }
            std::mem::take(&mut queue.pending)
        };
        writer.process(batch);
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
