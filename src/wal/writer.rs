//! The WAL's single writer: turns a batch of queued submissions into one append and one fdatasync
//! (group commit, as etcd's raft loop shares one WAL sync among all entries of a Ready), rotates
//! segments, and deletes purged ones. Whoever holds it (a submitter or the background thread, see
//! `mod.rs`) is the only one writing.
//!
//! Segments are preallocated, as etcd preallocates its 64 MB WAL files and has its file pipeline
//! prepare the next one in the background: an append that grows a file makes every fdatasync also
//! journal the size change, while overwriting blocks that already hold zeros needs no metadata at
//! all. Zeros are really written (not fallocate'd): on ext4 a fallocate'd extent is "unwritten",
//! and converting it on first write costs a journal commit just like growing the file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::format;
use super::recover::{segment_name, SegmentInfo, Tracker};
use super::{Done, Record, WalError, WalOptions};

pub(crate) struct Pending {
    pub records: Vec<Record>,
    pub done: Done,
}

/// Past this, the staging buffer is given back after a batch so one burst does not pin memory.
const KEEP_BUFFER_CAPACITY: usize = 4 << 20;

/// Where the next segment is zero-filled before it is renamed to its `<seq>.wal` name. Not a
/// segment name, so replay never reads it; a leftover one is deleted on open.
pub(crate) const NEXT_SEGMENT_TMP: &str = "next-segment.tmp";

/// How a segment is zero-filled.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// Someone is waiting for it (a fresh log's first segment, or a rotation whose background
    /// preparation failed): write it all, sync once.
    Now,
    /// In the background, while appends go on: sync every step and pause between steps, so the
    /// zeros never queue a long writeback in front of an append's fdatasync. It has the second
    /// half of the current segment's worth of appends to finish.
    Gently,
}

/// Zeros written per step.
const ZERO_STEP: usize = 1 << 20;

/// Pause between background steps: 64 MiB then takes a few tenths of a second.
const ZERO_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

pub(crate) struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    /// Logical length of the current segment on disk: where the next write goes. The file itself is
    /// usually longer (preallocated zeros).
    written: u64,
    /// Logical length of the current segment counting staged bytes not yet written; this, never the
    /// file size, decides rotation.
    len: u64,
    /// Size of the current segment's checkpoint: a segment holding nothing more is never rotated.
    body_start: u64,
    /// Encoded frames waiting for the next write to the current segment.
    staged: Vec<u8>,
    tracker: Tracker,
    dir_dirty: bool,
    purge_requested: bool,
    /// After a failed write or sync the file's contents past the last good sync are unknown (and a
    /// retried fsync can falsely succeed), so every later submission is refused.
    failed: Option<WalError>,
    fsyncs: Arc<AtomicU64>,
    /// The next segment being zero-filled in the background, started once the current one is half
    /// full and collected by `rotate`.
    next: Option<JoinHandle<Result<File, WalError>>>,
}

pub(crate) fn sync_dir(dir: &Path, fsyncs: &AtomicU64) -> Result<(), WalError> {
    let handle = File::open(dir).map_err(WalError::io(format!("open {}", dir.display())))?;
    handle.sync_all().map_err(WalError::io(format!("fsync {}", dir.display())))?;
    fsyncs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

impl Writer {
    /// Prepares the segment to append to: the replayed last one, or a fresh one if the directory
    /// was empty. `tail_len` is the valid length of the last segment; 0 means it lost even its
    /// checkpoint (a crash while it was being created) and gets a new one.
    pub fn start(
        dir: &Path,
        opts: WalOptions,
        mut tracker: Tracker,
        tail_len: u64,
        fsyncs: Arc<AtomicU64>,
    ) -> Result<Writer, WalError> {
        // Only ever zeros, but possibly not all of them (a crash while preparing): start afresh.
        remove_if_present(&dir.join(NEXT_SEGMENT_TMP))?;
        let (file, len) = match tracker.segments.last() {
            Some(last) => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&last.path)
                    .map_err(WalError::io(format!("open {}", last.path.display())))?;
                // Replay may have read bytes that a killed process wrote but never synced; they
                // are reported as recovered, so they must be durable before anyone relies on them.
                file.sync_data().map_err(WalError::io(format!("fdatasync {}", last.path.display())))?;
                fsyncs.fetch_add(1, Ordering::Relaxed);
                (file, tail_len)
            }
            None => {
                let path = dir.join(segment_name(0));
                let tmp = dir.join(NEXT_SEGMENT_TMP);
                let file = prepare_segment(&tmp, opts.segment_bytes, Pace::Now, &fsyncs)?;
                rename_segment(&tmp, &path)?;
                tracker.segments.push(SegmentInfo { seq: 0, path, max_live: None });
                (file, 0)
            }
        };
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            segment_bytes: opts.segment_bytes,
            file,
            written: len,
            len,
            body_start: len,
            staged: Vec::new(),
            tracker,
            // Also for an existing last segment: a killed process may have created it without
            // the directory sync, and records about to be acknowledged will live in it.
            dir_dirty: true,
            purge_requested: false,
            failed: None,
            fsyncs,
            next: None,
        };
        if len == 0 {
            writer.stage_checkpoint()?;
        }
        writer.flush()?;
        // A purge may have been interrupted between its durable record and the deletions.
        writer.delete_purged();
        writer.prepare_next_if_due();
        Ok(writer)
    }

    fn current_seq(&self) -> u64 {
        self.tracker.segments.last().map_or(0, |s| s.seq)
    }

    fn stage_checkpoint(&mut self) -> Result<(), WalError> {
        let before = self.staged.len();
        format::encode_checkpoint(self.current_seq(), self.tracker.purged_to, &self.tracker.meta, &mut self.staged)?;
        self.len += (self.staged.len() - before) as u64;
        self.body_start = self.len;
        Ok(())
    }

    /// Writes the staged bytes and makes them durable, including a new segment's directory entry.
    fn flush(&mut self) -> Result<(), WalError> {
        if !self.staged.is_empty() {
            // Error contexts are built only on failure: this is the hot path.
            let writing = std::time::Instant::now();
            self.file
                .write_all_at(&self.staged, self.written)
                .map_err(|e| WalError::from_io(format!("write {}", self.segment_label()), e))?;
            crate::metrics::WAL_WRITE.observe(writing.elapsed());
            crate::metrics::WAL_WRITE_BYTES.add(self.staged.len() as u64);
            self.written += self.staged.len() as u64;
            self.staged.clear();
            let began = std::time::Instant::now();
            self.file.sync_data().map_err(|e| WalError::from_io(format!("fdatasync {}", self.segment_label()), e))?;
            crate::metrics::WAL_FSYNC.observe(began.elapsed());
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        if self.dir_dirty {
            sync_dir(&self.dir, &self.fsyncs)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    fn segment_label(&self) -> String {
        self.tracker.segments.last().map_or_else(String::new, |s| s.path.display().to_string())
    }

    fn wants_rotation(&self) -> bool {
        self.len > self.segment_bytes && self.len > self.body_start
    }

    /// The old segment is made fully durable first: otherwise a crash could leave it with a torn
    /// tail while a newer segment exists, which open rightly treats as corruption.
    fn rotate(&mut self) -> Result<(), WalError> {
        self.flush()?;
        let seq = self.current_seq().checked_add(1).ok_or_else(|| WalError::Corrupt {
            file: PathBuf::from(self.segment_label()),
            offset: 0,
            reason: "segment sequence exhausted".into(),
        })?;
        let path = self.dir.join(segment_name(seq));
        let file = self.take_next_segment()?;
        // From here a crash leaves a last segment of zeros, or one whose checkpoint is torn: replay
        // reads either as empty and the next open writes its checkpoint again.
        rename_segment(&self.dir.join(NEXT_SEGMENT_TMP), &path)?;
        self.file = file;
        tracing::debug!(file = %path.display(), "wal: rotated to a new segment");
        self.tracker.segments.push(SegmentInfo { seq, path, max_live: None });
        self.dir_dirty = true;
        self.written = 0;
        self.len = 0;
        self.stage_checkpoint()
    }

    /// The prepared next segment, or one prepared now if the background preparation did not start
    /// or failed (it is retried once here before the error becomes the rotation's).
    fn take_next_segment(&mut self) -> Result<File, WalError> {
        if let Some(handle) = self.next.take() {
            match handle.join() {
                Ok(Ok(file)) => return Ok(file),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "wal: preparing the next segment failed; retrying");
                }
                Err(_) => tracing::error!("wal: the segment preparation thread panicked; retrying"),
            }
        }
        prepare_segment(&self.dir.join(NEXT_SEGMENT_TMP), self.segment_bytes, Pace::Now, &self.fsyncs)
    }

    /// Starts zero-filling the next segment once the current one is half full: early enough to be
    /// ready long before it is needed, late enough that a short-lived log never pays for it.
    fn prepare_next_if_due(&mut self) {
        if self.next.is_some() || self.failed.is_some() || self.len < self.segment_bytes / 2 {
            return;
        }
        let tmp = self.dir.join(NEXT_SEGMENT_TMP);
        let size = self.segment_bytes;
        let fsyncs = Arc::clone(&self.fsyncs);
        match thread::Builder::new()
            .name("keel-wal-prealloc".into())
            .spawn(move || prepare_segment(&tmp, size, Pace::Gently, &fsyncs))
        {
            Ok(handle) => self.next = Some(handle),
            // Not fatal: rotation then prepares the segment itself.
            Err(err) => tracing::warn!(error = %err, "wal: could not start preparing the next segment"),
        }
    }

    /// Handles one drained batch: append everything, sync once, delete purged segments, then answer
    /// in submit order.
    pub fn process(&mut self, batch: Vec<Pending>) {
        let mut outcomes: Vec<(Done, Result<(), WalError>)> = Vec::with_capacity(batch.len());
        let mut fatal = self.failed.clone();
        for Pending { records, done } in batch {
            if let Some(err) = &fatal {
                outcomes.push((done, Err(WalError::Failed(Box::new(err.clone())))));
                continue;
            }
            match self.stage(&records) {
                Ok(()) => outcomes.push((done, Ok(()))),
                Err(err @ WalError::RecordTooLarge { .. }) => outcomes.push((done, Err(err))),
                Err(err) => {
                    outcomes.push((done, Err(err.clone())));
                    fatal = Some(err);
                }
            }
        }
        if fatal.is_none() {
            if let Err(err) = self.flush() {
                fatal = Some(err);
            }
        }
        if let Some(err) = &fatal {
            if self.failed.is_none() {
                tracing::error!(error = %err, "wal: write failed; refusing further writes");
                self.failed = Some(err.clone());
            }
            for (_, outcome) in &mut outcomes {
                if outcome.is_ok() {
                    *outcome = Err(err.clone());
                }
            }
        }
        if self.staged.capacity() > KEEP_BUFFER_CAPACITY {
            self.staged = Vec::new();
        }
        // Deleting before answering costs a purge's batch one directory sync, but purges are
        // rare and callers then know the space is reclaimed once their PurgeTo is acknowledged.
        if self.failed.is_none() && self.purge_requested {
            self.delete_purged();
        }
        self.prepare_next_if_due();
        for (done, outcome) in outcomes {
            answer(done, outcome);
        }
    }

    /// Encodes one submission into the staging buffer, all or nothing, so its records stay
    /// contiguous and inside one segment.
    fn stage(&mut self, records: &[Record]) -> Result<(), WalError> {
        if self.wants_rotation() {
            self.rotate()?;
        }
        let before = self.staged.len();
        for record in records {
            if let Err(err) = format::encode_record(record, &mut self.staged) {
                self.staged.truncate(before);
                return Err(err);
            }
        }
        self.len += (self.staged.len() - before) as u64;
        for record in records {
            self.tracker.apply(record);
            if matches!(record, Record::PurgeTo { .. }) {
                self.purge_requested = true;
            }
        }
        Ok(())
    }

    /// Removes the oldest segments whose every live entry is purged. Runs only after the purge
    /// record is durable, oldest first, so a crash part way leaves a contiguous run of segments.
    /// A failure here loses nothing, so it is logged and retried on the next purge.
    fn delete_purged(&mut self) {
        self.purge_requested = false;
        let count = self.tracker.deletable_prefix();
        let mut removed = 0;
        for seg in self.tracker.segments.iter().take(count) {
            match std::fs::remove_file(&seg.path) {
                Ok(()) => removed += 1,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => removed += 1,
                Err(err) => {
                    tracing::warn!(file = %seg.path.display(), error = %err, "wal: could not delete a purged segment");
                    break;
                }
            }
        }
        if removed == 0 {
            return;
        }
        let gone: Vec<SegmentInfo> = self.tracker.segments.drain(..removed).collect();
        tracing::debug!(
            segments = gone.len(),
            through = %gone.last().map(|s| s.path.display().to_string()).unwrap_or_default(),
            "wal: deleted purged segments"
        );
        if let Err(err) = sync_dir(&self.dir, &self.fsyncs) {
            tracing::warn!(error = %err, "wal: could not fsync the directory after deleting segments");
        }
    }
}

impl Drop for Writer {
    /// Waits for a preparation still running, so nothing writes in the directory once the writer
    /// (and with it the directory lock) is gone. The prepared file is left for the next open.
    fn drop(&mut self) {
        if let Some(handle) = self.next.take() {
            let _ = handle.join();
        }
    }
}

fn remove_if_present(path: &Path) -> Result<(), WalError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(WalError::from_io(format!("remove {}", path.display()), err)),
    }
}

/// Creates `path` holding `size` zero bytes, written and synced (a hole or a fallocate'd extent
/// would still need its metadata journalled on the first real write).
fn prepare_segment(path: &Path, size: u64, pace: Pace, fsyncs: &AtomicU64) -> Result<File, WalError> {
    remove_if_present(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(WalError::io(format!("create {}", path.display())))?;
    let step = usize::try_from(size).map_or(ZERO_STEP, |s| s.min(ZERO_STEP));
    let zeros = vec![0u8; step];
    let sync = |file: &File| -> Result<(), WalError> {
        file.sync_data().map_err(WalError::io(format!("fdatasync {}", path.display())))?;
        fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    };
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left).map_or(step, |l| l.min(step));
        file.write_all(&zeros[..n]).map_err(WalError::io(format!("zero-fill {}", path.display())))?;
        left -= n as u64;
        if let Pace::Gently = pace {
            sync(&file)?;
            if left > 0 {
                thread::sleep(ZERO_PAUSE);
            }
        }
    }
    if let Pace::Now = pace {
        sync(&file)?;
    }
    Ok(file)
}

/// Gives a prepared file its segment name. The caller makes the directory durable before any
/// record in the segment is acknowledged.
fn rename_segment(tmp: &Path, path: &Path) -> Result<(), WalError> {
    fs::rename(tmp, path).map_err(WalError::io(format!("rename {} to {}", tmp.display(), path.display())))
}

/// Runs a completion. A panicking callback must not take the writer thread down with it: every
/// later submitter would then wait forever.
pub(crate) fn answer(done: Done, outcome: Result<(), WalError>) {
    if catch_unwind(AssertUnwindSafe(move || done(outcome))).is_err() {
        tracing::error!("wal: a completion callback panicked");
    }
}
