//! Opening an existing WAL directory: find the segments, replay their records into the live log
//! state, and repair a torn tail in the last segment (as etcd's WAL repairs a partially written last
//! record), while refusing to skip damage anywhere else. A segment's data ends at the end of the file
//! or at a zeroed frame header; the preallocated rest must be zeros.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{self, Checkpoint, Decoded};
use super::{Record, Recovered, WalError};

pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// Accepts only names this module writes, so editor backups or stray files never get replayed.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub seq: u64,
    pub path: PathBuf,
    /// Highest entry index in this segment that a full replay could still yield (None: none).
    /// Deciding deletions from this, rather than from the purge point alone, is what keeps a
    /// segment whose entries outlive the purge.
    pub max_live: Option<u64>,
}

/// What both replay and the writer track about the log besides the entries themselves. Sharing
/// one implementation keeps the writer's checkpoints and deletions in step with what replay does.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pub meta: HashMap<Vec<u8>, Vec<u8>>,
    pub purged_to: Option<u64>,
    /// Oldest first; the last one is the segment being appended to.
    pub segments: Vec<SegmentInfo>,
}

impl Tracker {
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Entry { index, .. } => {
                if let Some(current) = self.segments.last_mut() {
                    current.max_live = Some(current.max_live.map_or(*index, |m| m.max(*index)));
                }
            }
            Record::TruncateFrom { index } => {
                for seg in &mut self.segments {
                    if seg.max_live.is_some_and(|m| m >= *index) {
                        seg.max_live = index.checked_sub(1);
                    }
                }
            }
            Record::PurgeTo { index } => {
                self.purged_to = Some(self.purged_to.map_or(*index, |p| p.max(*index)));
            }
            Record::Meta { key, value } => {
                self.meta.insert(key.clone(), value.clone());
            }
        }
    }

    fn apply_checkpoint(&mut self, cp: &Checkpoint) {
        // A checkpoint restates what the preceding records built, so merging is a no-op on a full
        // replay and the whole truth when older segments have been deleted.
        for (key, value) in &cp.meta {
            self.meta.insert(key.clone(), value.clone());
        }
        if let Some(p) = cp.purged_to {
            self.purged_to = Some(self.purged_to.map_or(p, |q| q.max(p)));
        }
    }

    /// How many of the oldest segments may be deleted. Only a prefix ever goes: a later segment's
    /// TruncateFrom can kill entries in earlier ones, so removing a segment from the middle could
    /// bring truncated entries back on replay. The current segment always stays.
    pub fn deletable_prefix(&self) -> usize {
        let Some(purged) = self.purged_to else {
            return 0;
        };
        let closed = self.segments.len().saturating_sub(1);
        self.segments[..closed].iter().take_while(|s| s.max_live.is_none_or(|m| m <= purged)).count()
    }
}

pub(crate) struct Replayed {
    pub recovered: Recovered,
    pub tracker: Tracker,
    /// Valid length of the last segment after any repair (0 if it must be given a checkpoint).
    pub tail_len: u64,
}

fn corrupt(path: &Path, offset: usize, reason: impl Into<String>) -> WalError {
    WalError::Corrupt { file: path.to_path_buf(), offset: offset as u64, reason: reason.into() }
}

/// Lists the segment files in `dir`, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(WalError::io(format!("list {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(WalError::io(format!("list {}", dir.display())))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_segment_name(name) {
            Some(seq) => found.push((seq, entry.path())),
            None if name.ends_with(".wal") => {
                tracing::warn!(file = %entry.path().display(), "wal: ignoring file with a malformed segment name");
            }
            None => {}
        }
    }
    found.sort_by_key(|(seq, _)| *seq);
    Ok(found)
}

/// `segment_bytes` is the preallocated size: it tells a preallocated last segment, whose repair
/// keeps its size, from one written without preallocation.
pub(crate) fn replay(dir: &Path, segment_bytes: u64) -> Result<Replayed, WalError> {
    let segments = list_segments(dir)?;
    let mut tracker = Tracker::default();
    let mut entries: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut tail_len = 0u64;

    for (i, (seq, path)) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        if let Some(prev) = i.checked_sub(1).map(|p| segments[p].0) {
            if prev.checked_add(1) != Some(*seq) {
                return Err(corrupt(path, 0, format!("segment {} is missing", segment_name(prev.wrapping_add(1)))));
            }
        }
        tracker.segments.push(SegmentInfo { seq: *seq, path: path.clone(), max_live: None });

        let bytes = fs::read(path).map_err(WalError::io(format!("read {}", path.display())))?;
        let mut pos = 0usize;
        let mut torn: Option<String> = None;
        loop {
            let (payload, next) = match format::read_frame(&bytes, pos) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(err) if is_last => {
                    torn = Some(err.to_string());
                    break;
                }
                Err(err) => return Err(corrupt(path, pos, err.to_string())),
            };
            let decoded = format::decode(payload).map_err(|reason| corrupt(path, pos, reason))?;
            match (pos == 0, decoded) {
                (true, Decoded::Checkpoint(cp)) => {
                    if cp.seq != *seq {
                        return Err(corrupt(
                            path,
                            pos,
                            format!("checkpoint names segment {} instead", segment_name(cp.seq)),
                        ));
                    }
                    tracker.apply_checkpoint(&cp);
                    if let Some(p) = cp.purged_to {
                        purge_entries(&mut entries, p);
                    }
                }
                (true, Decoded::Record(_)) => {
                    return Err(corrupt(path, pos, "segment does not start with a checkpoint"));
                }
                (false, Decoded::Checkpoint(_)) => {
                    return Err(corrupt(path, pos, "checkpoint in the middle of a segment"));
                }
                (false, Decoded::Record(record)) => {
                    tracker.apply(&record);
                    replay_entry_effects(&mut entries, record);
                }
            }
            pos = next;
        }
        // Past the end of the data only preallocated zeros may follow. In the last segment anything
        // else is what a crash mid-append leaves (a torn frame, or a later page of an unsynced
        // batch that reached the disk before an earlier one); elsewhere it is damage.
        if let Some(last) = format::last_nonzero(&bytes[pos..]).map(|i| pos + i) {
            if !is_last {
                let first = bytes[pos..].iter().position(|b| *b != 0).map_or(last, |i| pos + i);
                return Err(corrupt(path, first, "data after the end of the segment's records"));
            }
            let reason = torn.as_deref().unwrap_or("data after a zeroed frame header");
            let preallocated = bytes.len() as u64 >= segment_bytes;
            repair_tail(path, pos, last + 1, preallocated, reason)?;
        }
        if pos == 0 && !is_last {
            return Err(corrupt(path, 0, "segment is empty"));
        }
        if is_last {
            tail_len = pos as u64;
        }
    }

    let recovered = Recovered { entries, meta: tracker.meta.clone(), purged_to: tracker.purged_to };
    Ok(Replayed { recovered, tracker, tail_len })
}

fn replay_entry_effects(entries: &mut BTreeMap<u64, Vec<u8>>, record: Record) {
    match record {
        Record::Entry { index, data } => {
            entries.insert(index, data);
        }
        Record::TruncateFrom { index } => {
            entries.split_off(&index);
        }
        Record::PurgeTo { index } => purge_entries(entries, index),
        Record::Meta { .. } => {}
    }
}

fn purge_entries(entries: &mut BTreeMap<u64, Vec<u8>>, upto: u64) {
    *entries = match upto.checked_add(1) {
        Some(first_kept) => entries.split_off(&first_kept),
        None => BTreeMap::new(),
    };
}

/// Clears the last segment after its last complete record, `good_len`, up to the last nonzero byte
/// (`dirty_end`, exclusive). Made durable before any new append, so new records can never end up in
/// front of leftover bytes that a later replay could mistake for records. A preallocated segment
/// keeps its size (the damage is overwritten with zeros); one that never was preallocated (written
/// before Keel preallocated, or with a larger segment size) is cut back to its last record.
fn repair_tail(
    path: &Path,
    good_len: usize,
    dirty_end: usize,
    preallocated: bool,
    reason: &str,
) -> Result<(), WalError> {
    // The message is the one operators (and the durability test) know from before preallocation:
    // logically the log is still cut at `good_len`; `how` says what happened to the bytes.
    tracing::warn!(
        file = %path.display(),
        offset = good_len,
        dropped_bytes = dirty_end.saturating_sub(good_len),
        how = if preallocated { "zeroed" } else { "cut" },
        reason,
        "wal: truncating a torn tail in the last segment"
    );
    let file = OpenOptions::new().write(true).open(path).map_err(WalError::io(format!("open {}", path.display())))?;
    if !preallocated {
        file.set_len(good_len as u64).map_err(WalError::io(format!("truncate {}", path.display())))?;
    } else {
        let zeros = vec![0u8; dirty_end.saturating_sub(good_len)];
        file.write_all_at(&zeros, good_len as u64).map_err(WalError::io(format!("clear {}", path.display())))?;
    }
    file.sync_all().map_err(WalError::io(format!("fsync {}", path.display())))?;
    Ok(())
}
