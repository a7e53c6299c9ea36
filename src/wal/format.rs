//! The WAL's bytes: record frames (length u32 LE, CRC32 u32 LE over the payload, payload) and the
//! payload of each record kind. Like etcd's WAL, every record is length-prefixed and checksummed so a
//! torn write is detectable; the payload encoding itself is Keel's own.
//!
//! Segments are preallocated with zeros, so a frame header of eight zero bytes (or fewer than eight
//! zero bytes at the end of a file) is not a record but the end of the segment's data. No real frame
//! can look like that: every payload holds at least its kind byte, so its length is never 0.
//!
//! Payload layout (all integers little-endian), first byte is the kind:
//! - `1` Entry:        index u64, then the entry bytes to the end of the payload
//! - `2` TruncateFrom: index u64
//! - `3` PurgeTo:      index u64
//! - `4` Meta:         key length u32, key, then the value to the end of the payload
//! - `5` Checkpoint:   magic `KWAL`, format version u8 (1), segment sequence u64,
//!   purged flag u8 (0 or 1), purged index u64, pair count u32,
//!   then per pair: key length u32, key, value length u32, value

use std::collections::HashMap;

use super::{Record, WalError};

/// Bytes before each payload: length and CRC32.
pub(crate) const FRAME_HEADER: usize = 8;

const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE_FROM: u8 = 2;
const KIND_PURGE_TO: u8 = 3;
const KIND_META: u8 = 4;
const KIND_CHECKPOINT: u8 = 5;

const CHECKPOINT_MAGIC: &[u8; 4] = b"KWAL";
const FORMAT_VERSION: u8 = 1;

/// The record that opens every segment: enough state to replay the segment without its predecessors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub seq: u64,
    pub purged_to: Option<u64>,
    pub meta: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoded {
    Record(Record),
    Checkpoint(Checkpoint),
}

/// Appends one framed record to `out`. On error `out` is left as it was, so a rejected submission
/// leaves no stray bytes in the writer's buffer.
pub(crate) fn encode_record(record: &Record, out: &mut Vec<u8>) -> Result<(), WalError> {
    frame(out, |p| {
        match record {
            Record::Entry { index, data } => {
                p.push(KIND_ENTRY);
                p.extend_from_slice(&index.to_le_bytes());
                p.extend_from_slice(data);
            }
            Record::TruncateFrom { index } => {
                p.push(KIND_TRUNCATE_FROM);
                p.extend_from_slice(&index.to_le_bytes());
            }
            Record::PurgeTo { index } => {
                p.push(KIND_PURGE_TO);
                p.extend_from_slice(&index.to_le_bytes());
            }
            Record::Meta { key, value } => {
                p.push(KIND_META);
                put_len(p, key.len())?;
                p.extend_from_slice(key);
                p.extend_from_slice(value);
            }
        }
        Ok(())
    })
}

/// Appends a framed checkpoint to `out`. Meta pairs are written in key order so identical states
/// give identical bytes, which keeps tests and hexdumps predictable.
pub(crate) fn encode_checkpoint(
    seq: u64,
    purged_to: Option<u64>,
    meta: &HashMap<Vec<u8>, Vec<u8>>,
    out: &mut Vec<u8>,
) -> Result<(), WalError> {
    let mut pairs: Vec<(&Vec<u8>, &Vec<u8>)> = meta.iter().collect();
    pairs.sort();
    frame(out, |p| {
        p.push(KIND_CHECKPOINT);
        p.extend_from_slice(CHECKPOINT_MAGIC);
        p.push(FORMAT_VERSION);
        p.extend_from_slice(&seq.to_le_bytes());
        p.push(u8::from(purged_to.is_some()));
        p.extend_from_slice(&purged_to.unwrap_or(0).to_le_bytes());
        put_len(p, pairs.len())?;
        for (key, value) in &pairs {
            put_len(p, key.len())?;
            p.extend_from_slice(key);
            put_len(p, value.len())?;
            p.extend_from_slice(value);
        }
        Ok(())
    })
}

fn frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>) -> Result<(), WalError>) -> Result<(), WalError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    let result = body(out).and_then(|()| {
        let payload = &out[start + FRAME_HEADER..];
        let len = u32::try_from(payload.len()).map_err(|_| WalError::RecordTooLarge { len: payload.len() })?;
        let crc = crc32fast::hash(payload);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), WalError> {
    let len = u32::try_from(len).map_err(|_| WalError::RecordTooLarge { len })?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Why a frame could not be read. Every one of these is what a crash mid-append leaves behind, so
/// in the last segment they mark the torn tail; anywhere else they are corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    ShortHeader,
    /// Length 0 with a nonzero checksum: not the zeroed end of the data, and no record either.
    ZeroLength,
    ShortPayload {
        len: u32,
    },
    Checksum,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::ShortHeader => write!(f, "incomplete frame header"),
            FrameError::ZeroLength => write!(f, "zero-length frame with a nonzero checksum"),
            FrameError::ShortPayload { len } => {
                write!(f, "frame of {len} bytes runs past the end of the file")
            }
            FrameError::Checksum => write!(f, "checksum mismatch"),
        }
    }
}

/// Reads the frame starting at `pos`: `Ok(None)` at the end of the data (the end of the file, or a
/// zeroed header: the preallocated rest of a segment), else the payload and the offset of the next
/// frame. Whether the bytes after the end are all zero is the caller's question.
///
/// etcd quirk: etcd's WAL decoder likewise stops at a record length of 0, which it reads as "end of
/// file or preallocated space". The CRC of an empty payload is also 0, so without this rule a
/// zero-filled tail would decode as an endless run of empty records.
pub(crate) fn read_frame(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let rest = buf.get(pos..).unwrap_or(&[]);
    let head = &rest[..rest.len().min(FRAME_HEADER)];
    if head.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let Some((header, body)) = rest.split_first_chunk::<FRAME_HEADER>() else {
        return Err(FrameError::ShortHeader);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 {
        return Err(FrameError::ZeroLength);
    }
    let Some(payload) = usize::try_from(len).ok().and_then(|n| body.get(..n)) else {
        return Err(FrameError::ShortPayload { len });
    };
    if crc32fast::hash(payload) != crc {
        return Err(FrameError::Checksum);
    }
    Ok(Some((payload, pos + FRAME_HEADER + payload.len())))
}

/// Offset of the last nonzero byte in `buf`, if any. Scans whole blocks first: a preallocated
/// segment is mostly zeros and is checked on every open.
pub(crate) fn last_nonzero(buf: &[u8]) -> Option<usize> {
    const BLOCK: usize = 4096;
    let mut end = buf.len();
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = &buf[start..end];
        // An OR-fold over the block compiles to wide loads; a per-byte search would not.
        if block.iter().fold(0u8, |acc, b| acc | b) != 0 {
            return block.iter().rposition(|b| *b != 0).map(|i| start + i);
        }
        end = start;
    }
    None
}

/// Decodes a payload whose checksum already matched. A failure here is never a torn write: the
/// bytes are exactly what some writer framed, so they come from a bug or a foreign format.
pub(crate) fn decode(payload: &[u8]) -> Result<Decoded, String> {
    let mut r = Reader(payload);
    let kind = r.u8()?;
    let decoded = match kind {
        KIND_ENTRY => {
            let index = r.u64()?;
            Decoded::Record(Record::Entry { index, data: r.rest().to_vec() })
        }
        KIND_TRUNCATE_FROM => {
            let index = r.u64()?;
            r.finish()?;
            Decoded::Record(Record::TruncateFrom { index })
        }
        KIND_PURGE_TO => {
            let index = r.u64()?;
            r.finish()?;
            Decoded::Record(Record::PurgeTo { index })
        }
        KIND_META => {
            let key_len = r.len()?;
            let key = r.take(key_len)?.to_vec();
            Decoded::Record(Record::Meta { key, value: r.rest().to_vec() })
        }
        KIND_CHECKPOINT => {
            if r.take(CHECKPOINT_MAGIC.len())? != CHECKPOINT_MAGIC {
                return Err("checkpoint magic mismatch".into());
            }
            let version = r.u8()?;
            if version != FORMAT_VERSION {
                return Err(format!("unsupported wal format version {version}"));
            }
            let seq = r.u64()?;
            let has_purged = r.u8()?;
            let purged = r.u64()?;
            let purged_to = match has_purged {
                0 => None,
                1 => Some(purged),
                other => return Err(format!("bad purged flag {other} in checkpoint")),
            };
            let count = r.len()?;
            // Each pair needs at least 8 bytes, so a bogus count cannot force a huge allocation.
            let mut meta = Vec::with_capacity(count.min(r.0.len() / 8));
            for _ in 0..count {
                let key_len = r.len()?;
                let key = r.take(key_len)?.to_vec();
                let value_len = r.len()?;
                let value = r.take(value_len)?.to_vec();
                meta.push((key, value));
            }
            r.finish()?;
            Decoded::Checkpoint(Checkpoint { seq, purged_to, meta })
        }
        other => return Err(format!("unknown record kind {other}")),
    };
    Ok(decoded)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("payload too short: wanted {n} more bytes, {} left", self.0.len()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn len(&mut self) -> Result<usize, String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        usize::try_from(u32::from_le_bytes(b)).map_err(|_| "length does not fit in memory".into())
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn finish(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected trailing bytes", self.0.len()))
        }
    }
}
