//! etcd's snapshot file format, both ways: a bbolt database holding etcd 3.5's buckets, followed by
//! the 32-byte sha256 of the database that `etcdctl snapshot save` appends. `bbolt` reads and writes
//! the database; `etcd` maps etcd's buckets to Keel's storage tables (export for
//! `Maintenance.Snapshot`, restore for `keel snapshot restore`). Mirrors etcd 3.5.16's
//! `v3rpc/maintenance.go` (Snapshot) and `etcdutl/snapshot` (status, restore).

pub mod backup;
pub mod bbolt;
pub mod envelope;
pub mod etcd;

#[cfg(test)]
mod tests;

use sha2::{Digest, Sha256};

use crate::error::SnapshotError;

pub use etcd::{export, restore, restore_dir, status, ExportInfo, ExportMember, RestoreOptions, RestoreReport, Status};

/// Length of the sha256 trailer.
pub const HASH_LEN: usize = 32;

/// Whether a snapshot file of `len` bytes ends with the sha256 trailer. etcdutl's own test
/// (`hasChecksum`): a bbolt image is a whole number of pages, so its length is a multiple of 512
/// and only an appended hash leaves 32 over.
pub fn has_trailer(len: u64) -> bool {
    len % 512 == HASH_LEN as u64
}

/// The database part of a snapshot file, its trailer checked as etcdutl checks it: a file with a
/// trailer must match it unless `skip_hash_check`; a file without one (a raw `member/snap/db`) is
/// accepted only with `skip_hash_check`.
pub fn database(file: &[u8], skip_hash_check: bool) -> Result<&[u8], SnapshotError> {
    if !has_trailer(file.len() as u64) {
        if skip_hash_check {
            return Ok(file);
        }
        return Err(SnapshotError::MissingHash);
    }
    let (db, trailer) = file.split_at(file.len() - HASH_LEN);
    if !skip_hash_check {
        let actual = Sha256::digest(db);
        if actual.as_slice() != trailer {
            return Err(SnapshotError::HashMismatch { expected: hex(trailer), actual: hex(&actual) });
        }
    }
    Ok(db)
}

/// Options to write a file only its owner can read (etcd's `PrivateFileMode`, 0600): snapshots,
/// decrypted copies and key files all hold the whole keyspace or the means to read it.
pub(crate) fn private_write_options() -> std::fs::OpenOptions {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
