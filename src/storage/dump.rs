//! Whole-database export and import, the payload of Keel's raft snapshots (the role etcd gives to
//! sending its bbolt file to a lagging follower). The format is ours, engine-neutral, so a redb
//! member can install a snapshot taken on a sled member and back.
//!
//! Layout, integers little-endian:
//! ```text
//! "KEELDUMP"  u32 version (1)
//! row frame:  0x01  u8 table-name length, name  u32 key length, key  u32 value length, value
//! end frame:  0x00  u64 row count  u32 CRC-32 (IEEE) of every byte before this field
//! ```
//! Nothing may follow the end frame.

use std::io::{BufWriter, Read, Write};

use super::{known_table, Engine, StorageError, Table, WriteBatch};

const MAGIC: &[u8; 8] = b"KEELDUMP";
const VERSION: u32 = 1;
const ROW: u8 = 0x01;
const END: u8 = 0x00;

/// Imported rows go to the engine in batches of about this many bytes, so a large snapshot does
/// not become one enormous transaction.
const IMPORT_BATCH_BYTES: usize = 16 << 20;

/// The table holding the applied index; imported last (see `import`).
const META: &str = "meta";

/// Writes `bytes` to the output while folding them into the checksum.
struct Framer<'a> {
    out: BufWriter<&'a mut dyn Write>,
    crc: crc32fast::Hasher,
    rows: u64,
}

impl Framer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.crc.update(bytes);
        self.out.write_all(bytes).map_err(|e| StorageError::io("write dump", e))
    }

    fn row(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        // Refuse at export what import would refuse: a dump must always be restorable.
        let table = known_table(table).ok_or_else(|| StorageError::UnknownTable(table.into()))?;
        let name_len = u8::try_from(table.len()).map_err(|_| StorageError::InvalidTable(table.to_string()))?;
        let too_big =
            |what: &str, len: usize| StorageError::Corrupt(format!("{what} of {len} bytes is too large to export"));
        let key_len = u32::try_from(key.len()).map_err(|_| too_big("key", key.len()))?;
        let value_len = u32::try_from(value.len()).map_err(|_| too_big("value", value.len()))?;
        self.put(&[ROW, name_len])?;
        self.put(table.as_bytes())?;
        self.put(&key_len.to_le_bytes())?;
        self.put(key)?;
        self.put(&value_len.to_le_bytes())?;
        self.put(value)?;
        self.rows += 1;
        Ok(())
    }
}

/// Every table, every row, checksummed. The rows come from one consistent view of the engine (see
/// `Engine::scan_all`).
pub fn export(engine: &dyn Engine, out: &mut dyn Write) -> Result<(), StorageError> {
    export_noting(engine, out, ("", b"")).map(|_| ())
}

/// [`export`], also returning the value of one row (`noted`: table and key) as the exported view
/// holds it, so that a caller learns what the export contains without holding writers off.
pub fn export_noting(
    engine: &dyn Engine,
    out: &mut dyn Write,
    noted: (&str, &[u8]),
) -> Result<Option<Vec<u8>>, StorageError> {
    let mut framer = Framer { out: BufWriter::new(out), crc: crc32fast::Hasher::new(), rows: 0 };
    framer.put(MAGIC)?;
    framer.put(&VERSION.to_le_bytes())?;
    // The visitor cannot return an error, so it parks the first one and stops the scan.
    let mut failure = None;
    let mut seen = None;
    engine.scan_all(&mut |table, key, value| {
        if (table, key) == noted {
            seen = Some(value.to_vec());
        }
        match framer.row(table, key, value) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    framer.put(&[END])?;
    let rows = framer.rows;
    framer.put(&rows.to_le_bytes())?;
    let crc = framer.crc.clone().finalize();
    framer
        .out
        .write_all(&crc.to_le_bytes())
        .and_then(|()| framer.out.flush())
        .map_err(|e| StorageError::io("write dump", e))?;
    Ok(seen)
}

/// Replace the engine's whole contents with the dump's, then `sync`.
///
/// The dump is read and verified in full before anything is touched, so a damaged dump leaves the
/// engine as it was. After `clear` the rows go in as a few large batches with the `meta` table
/// (the applied index) in the last one: should the process die part way, what is left on disk
/// never carries an applied index for data it does not hold. redb keeps even that partial state
/// off disk until the final `sync`; sled may persist it, since it flushes in the background.
pub fn import(engine: &dyn Engine, input: &mut dyn Read) -> Result<(), StorageError> {
    let mut buf = Vec::new();
    input.read_to_end(&mut buf).map_err(|e| StorageError::io("read dump", e))?;
    let rows = parse(&buf)?;

    engine.clear()?;
    let (meta, rest): (Vec<_>, Vec<_>) = rows.into_iter().partition(|row| row.table == META);
    let mut batch = WriteBatch::new();
    let mut batch_bytes = 0;
    for row in rest.into_iter().chain(meta) {
        let starts_meta = row.table == META && batch.ops.last().is_some_and(|op| op.table() != META);
        // Meta rows always share the final batch: flush whatever came before them first.
        if starts_meta || (row.table != META && batch_bytes >= IMPORT_BATCH_BYTES) {
            engine.write(std::mem::take(&mut batch))?;
            batch_bytes = 0;
        }
        batch_bytes += row.key.len() + row.value.len();
        batch.put(row.table, row.key, row.value);
    }
    engine.write(batch)?;
    engine.sync()
}

struct Row<'a> {
    table: Table,
    key: &'a [u8],
    value: &'a [u8],
}

/// Bounds-checked reads over the dump; running out of bytes is a corrupt dump, never a panic.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| StorageError::CorruptDump("truncated".to_string()))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StorageError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, StorageError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, StorageError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn sized(&mut self, len: u32) -> Result<&'a [u8], StorageError> {
        let len = usize::try_from(len).map_err(|_| StorageError::CorruptDump("length overflows".to_string()))?;
        self.take(len)
    }
}

/// Checks framing, row count and checksum, and only then maps table names, so a flipped byte in
/// a name reads as damage rather than as an unknown table.
fn parse(buf: &[u8]) -> Result<Vec<Row<'_>>, StorageError> {
    let corrupt = |why: &str| StorageError::CorruptDump(why.to_string());
    let mut cur = Cursor { buf, pos: 0 };
    if cur.take(MAGIC.len()).ok() != Some(MAGIC.as_slice()) {
        return Err(corrupt("not a Keel dump (bad magic)"));
    }
    let version = cur.u32()?;
    if version != VERSION {
        return Err(StorageError::CorruptDump(format!("unsupported dump version {version}")));
    }
    let mut raw: Vec<(&[u8], &[u8], &[u8])> = Vec::new();
    loop {
        match cur.u8()? {
            ROW => {
                let name_len = cur.u8()?;
                let name = cur.take(usize::from(name_len))?;
                let key_len = cur.u32()?;
                let key = cur.sized(key_len)?;
                let value_len = cur.u32()?;
                let value = cur.sized(value_len)?;
                raw.push((name, key, value));
            }
            END => break,
            other => return Err(StorageError::CorruptDump(format!("unknown frame kind {other:#04x}"))),
        }
    }
    let rows = cur.u64()?;
    let covered = cur.pos;
    let stored_crc = cur.u32()?;
    if cur.pos != buf.len() {
        return Err(corrupt("bytes after the end frame"));
    }
    if crc32fast::hash(&buf[..covered]) != stored_crc {
        return Err(corrupt("checksum mismatch"));
    }
    if u64::try_from(raw.len()).ok() != Some(rows) {
        return Err(corrupt("row count does not match the rows present"));
    }
    raw.into_iter()
        .map(|(name, key, value)| {
            let table = std::str::from_utf8(name)
                .ok()
                .and_then(known_table)
                .ok_or_else(|| StorageError::UnknownTable(String::from_utf8_lossy(name).into_owned()))?;
            Ok(Row { table, key, value })
        })
        .collect()
}
