//! Client-side backup files: `keel snapshot save` (etcdctl's `snapshot save`: stream
//! Maintenance.Snapshot from one endpoint into `<file>.part`, check the sha256 trailer, fsync,
//! rename), optionally sealed in the encrypted envelope, and the reverse paths that turn an
//! encrypted backup back into etcd's plain file (`decrypt`, and `restore`/`status` of an encrypted
//! file through a temporary plain copy).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::envelope::{self, Encryptor, Key};
use super::{has_trailer, hex, RestoreOptions, RestoreReport, HASH_LEN};
use crate::error::{EnvelopeError, SnapshotError};
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::SnapshotRequest;

/// A file being written under a temporary name: `commit` fsyncs it and renames it into place;
/// dropping it uncommitted removes it, so a failed save or decrypt leaves nothing behind.
struct PartFile {
    file: Option<File>,
    part: PathBuf,
    target: PathBuf,
}

impl PartFile {
    /// etcdctl's naming: `<target>.part`, truncated if a stale one is there, owner-only (etcd's
    /// `PrivateFileMode`).
    fn create(target: &Path) -> Result<PartFile, SnapshotError> {
        let mut part = target.as_os_str().to_owned();
        part.push(".part");
        let part = PathBuf::from(part);
        let file = super::private_write_options()
            .create(true)
            .truncate(true)
            .open(&part)
            .map_err(|e| SnapshotError::io(format!("could not open {}", part.display()), e))?;
        Ok(PartFile { file: Some(file), part, target: target.to_path_buf() })
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until commit")
    }

    fn commit(mut self) -> Result<(), SnapshotError> {
        let file = self.file.take().expect("open until commit");
        file.sync_all().map_err(|e| SnapshotError::io("could not fsync snapshot", e))?;
        drop(file);
        std::fs::rename(&self.part, &self.target).map_err(|e| {
            SnapshotError::io(format!("could not rename {} to {}", self.part.display(), self.target.display()), e)
        })?;
        // The rename is durable only once the directory is synced.
        let dir = self.target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

/// Checks a snapshot stream's sha256 trailer while it passes: hashes all but the last 32 bytes
/// seen so far and holds those back, so the whole file never sits in memory.
#[derive(Default)]
struct TrailerCheck {
    hash: Sha256,
    tail: Vec<u8>,
    len: u64,
}

impl TrailerCheck {
    fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        self.tail.extend_from_slice(data);
        if self.tail.len() > HASH_LEN {
            let cut = self.tail.len() - HASH_LEN;
            self.hash.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
    }

    /// etcdctl's own check (the length leaves exactly a trailer over 512-byte pages, same
    /// message), then the trailer itself against the bytes, which etcdctl leaves to etcdutl.
    fn finish(self) -> Result<u64, SnapshotError> {
        if !has_trailer(self.len) {
            return Err(SnapshotError::Fetch(format!("sha256 checksum not found [bytes: {}]", self.len)));
        }
        let actual = self.hash.finalize();
        if actual.as_slice() != self.tail.as_slice() {
            return Err(SnapshotError::HashMismatch { expected: hex(&self.tail), actual: hex(&actual) });
        }
        Ok(self.len)
    }
}

/// What `save` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaveReport {
    /// Bytes of the plain snapshot (database and trailer), before any encryption.
    pub snapshot_bytes: u64,
    /// Bytes written to the file.
    pub file_bytes: u64,
    pub encrypted: bool,
}

/// The endpoint URL for etcdctl-style `--endpoints`: exactly one, as etcdctl demands for a
/// snapshot; a bare `host:port` means plain http, as in etcdctl.
pub fn single_endpoint(endpoints: &str) -> Result<String, SnapshotError> {
    let list: Vec<&str> = endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    if list.len() != 1 {
        // etcdctl's wording (Go prints the list as `[a b]`).
        return Err(SnapshotError::Fetch(format!(
            "snapshot must be requested to one selected node, not multiple [{}]",
            list.join(" ")
        )));
    }
    let ep = list[0];
    Ok(if ep.contains("://") { ep.to_string() } else { format!("http://{ep}") })
}

/// Stream a snapshot from `endpoint` into `path` (plain, byte for byte as the server sent it, or
/// sealed with `key`), checking its sha256 trailer before the file appears under its name.
pub async fn save(endpoint: &str, path: &Path, key: Option<&Key>) -> Result<SaveReport, SnapshotError> {
    let rpc = |e: String| SnapshotError::Fetch(format!("snapshot from {endpoint}: {e}"));
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| rpc(error_chain(&e)))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| rpc(error_chain(&e)))?;
    let mut client = MaintenanceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut stream = client.snapshot(SnapshotRequest {}).await.map_err(|s| rpc(s.message().to_string()))?.into_inner();

    let mut part = PartFile::create(path)?;
    let out = BufWriter::new(part.file().try_clone().map_err(|e| SnapshotError::io("dup the .part file", e))?);
    let mut sink = match key {
        Some(k) => Sink::Sealed(Encryptor::new(k, out)?),
        None => Sink::Plain(out),
    };
    let mut check = TrailerCheck::default();
    let write_err = |e| SnapshotError::io(format!("write {}", path.display()), e);
    while let Some(msg) = stream.message().await.map_err(|s| rpc(s.message().to_string()))? {
        check.update(&msg.blob);
        sink.write_all(&msg.blob).map_err(write_err)?;
    }
    let snapshot_bytes = check.finish()?;
    sink.finish().map_err(write_err)?;
    let file_bytes = part.file().metadata().map_err(write_err)?.len();
    part.commit()?;
    Ok(SaveReport { snapshot_bytes, file_bytes, encrypted: key.is_some() })
}

/// An error with its causes (tonic's transport error alone says only "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Where `save` writes: the file itself, or the envelope around it.
enum Sink {
    Plain(BufWriter<File>),
    Sealed(Encryptor<BufWriter<File>>),
}

impl Sink {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.write_all(data),
            Sink::Sealed(w) => w.write_all(data),
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Plain(mut w) => w.flush(),
            Sink::Sealed(w) => w.finish().map(drop).map_err(std::io::Error::other),
        }
    }
}

/// `keel snapshot decrypt`: the plain etcd snapshot inside an encrypted backup, written to
/// `output` only once every chunk has authenticated (the trailer inside is etcdutl's to check).
pub fn decrypt_file(key: &Key, input: &Path, output: &Path) -> Result<u64, SnapshotError> {
    let mut part = PartFile::create(output)?;
    decrypt_into(key, input, part.file())?;
    part.commit()?;
    let len = std::fs::metadata(output).map_err(|e| SnapshotError::io(format!("stat {}", output.display()), e))?;
    Ok(len.len())
}

fn decrypt_into(key: &Key, input: &Path, out: &mut File) -> Result<u64, SnapshotError> {
    let file = File::open(input).map_err(|e| SnapshotError::io(format!("open {}", input.display()), e))?;
    let mut out = BufWriter::new(out);
    let n = envelope::decrypt(key, BufReader::new(file), &mut out)?;
    out.flush().map_err(|e| SnapshotError::io("write the decrypted snapshot", e))?;
    Ok(n)
}

/// A decrypted copy of an encrypted backup under a temporary name, removed when dropped.
struct PlainCopy {
    path: PathBuf,
}

impl PlainCopy {
    fn new(key: &Key, input: &Path, path: PathBuf) -> Result<PlainCopy, SnapshotError> {
        let mut file = super::private_write_options()
            .create_new(true)
            .open(&path)
            .map_err(|e| SnapshotError::io(format!("create {}", path.display()), e))?;
        let copy = PlainCopy { path };
        decrypt_into(key, input, &mut file)?;
        Ok(copy)
    }
}

impl Drop for PlainCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `path` must be decrypted first, and whether that agrees with the key given: an
/// encrypted file needs a key, and a key for a plain file is a mistake worth reporting.
fn needs_decrypt(path: &Path, key: Option<&Key>) -> Result<bool, SnapshotError> {
    let encrypted = envelope::is_encrypted_file(path)?;
    match (encrypted, key.is_some()) {
        (true, false) => Err(EnvelopeError::KeyRequired(path.display().to_string()).into()),
        (false, true) => Err(EnvelopeError::NotEnvelope.into()),
        (encrypted, _) => Ok(encrypted),
    }
}

/// `keel snapshot restore`, for plain and encrypted files alike. An encrypted file is decrypted
/// and authenticated in full into a temporary file beside the data directory before the data
/// directory is created, so a wrong key or a tampered file leaves no data directory behind.
pub fn restore_file(opts: &RestoreOptions, key: Option<&Key>) -> Result<RestoreReport, SnapshotError> {
    if !needs_decrypt(&opts.snapshot, key)? {
        return super::restore_dir(opts);
    }
    let key = key.expect("checked by needs_decrypt");
    let dir = opts.data_dir();
    super::etcd::refuse_existing(&dir)?;
    let mut tmp = dir.as_os_str().to_owned();
    tmp.push(format!(".decrypt-{}.tmp", std::process::id()));
    let plain = PlainCopy::new(key, &opts.snapshot, PathBuf::from(tmp))?;
    let plain_opts = RestoreOptions { snapshot: plain.path.clone(), ..opts.clone() };
    super::restore_dir(&plain_opts)
}

/// `keel snapshot status`, for plain and encrypted files alike (an encrypted one through a
/// temporary plain copy in the system's temporary directory).
pub fn status_file(path: &Path, key: Option<&Key>) -> Result<super::Status, SnapshotError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| SnapshotError::io(format!("read {}", p.display()), e));
    if !needs_decrypt(path, key)? {
        return super::status(super::database(&read(path)?, true)?);
    }
    let tmp = std::env::temp_dir().join(format!("keel-status-{}-{}.db", std::process::id(), unique()));
    let plain = PlainCopy::new(key.expect("checked by needs_decrypt"), path, tmp)?;
    super::status(super::database(&read(&plain.path)?, true)?)
}

fn unique() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_file(db_len: usize) -> Vec<u8> {
        let db: Vec<u8> = (0..db_len).map(|i| (i % 253) as u8).collect();
        let mut file = db.clone();
        file.extend_from_slice(&Sha256::digest(&db));
        file
    }

    #[test]
    fn the_trailer_check_accepts_any_split_of_a_good_stream() {
        let file = snapshot_file(4096);
        for piece in [1, 7, 32, 33, 1000, file.len()] {
            let mut check = TrailerCheck::default();
            file.chunks(piece).for_each(|c| check.update(c));
            assert_eq!(check.finish().unwrap(), file.len() as u64, "pieces of {piece}");
        }
    }

    #[test]
    fn the_trailer_check_rejects_a_bad_hash_and_a_missing_one() {
        let mut file = snapshot_file(4096);
        file[100] ^= 1;
        let mut check = TrailerCheck::default();
        check.update(&file);
        assert!(matches!(check.finish(), Err(SnapshotError::HashMismatch { .. })));
        let mut check = TrailerCheck::default();
        check.update(&file[..4096]);
        let err = check.finish().unwrap_err().to_string();
        assert!(err.contains("sha256 checksum not found [bytes: 4096]"), "{err}");
    }

    #[test]
    fn endpoints_name_exactly_one_node() {
        assert_eq!(single_endpoint("127.0.0.1:2379").unwrap(), "http://127.0.0.1:2379");
        assert_eq!(single_endpoint("https://a:1").unwrap(), "https://a:1");
        let err = single_endpoint("a:1,b:2").unwrap_err().to_string();
        assert!(err.contains("snapshot must be requested to one selected node, not multiple [a:1 b:2]"), "{err}");
    }

    #[test]
    fn decrypt_file_leaves_nothing_behind_on_a_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let (sealed, out) = (dir.path().join("b.enc"), dir.path().join("b.db"));
        let mut enc = Encryptor::new(&Key::from_bytes([1; 32]), Vec::new()).unwrap();
        enc.write_all(&snapshot_file(1024)).unwrap();
        std::fs::write(&sealed, enc.finish().unwrap()).unwrap();
        let err = decrypt_file(&Key::from_bytes([2; 32]), &sealed, &out).unwrap_err();
        assert!(matches!(err, SnapshotError::Envelope(EnvelopeError::Authentication { chunk: 0 })), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the sealed file remains");
        assert_eq!(decrypt_file(&Key::from_bytes([1; 32]), &sealed, &out).unwrap(), 1024 + 32);
        assert_eq!(std::fs::read(&out).unwrap(), snapshot_file(1024));
    }

    /// The real etcd 3.5.16 snapshot in the test data, sealed, restores and reports status like
    /// the plain file; a wrong or missing key fails before any data directory exists.
    #[test]
    fn encrypted_restore_and_status_match_the_plain_file() {
        let plain_bytes = include_bytes!("testdata/etcd-3.5.16.db");
        let dir = tempfile::tempdir().unwrap();
        let (plain, sealed) = (dir.path().join("plain.db"), dir.path().join("sealed.enc"));
        std::fs::write(&plain, plain_bytes).unwrap();
        let key = Key::from_bytes([7; 32]);
        let mut enc = Encryptor::new(&key, Vec::new()).unwrap();
        enc.write_all(plain_bytes).unwrap();
        std::fs::write(&sealed, enc.finish().unwrap()).unwrap();

        assert_eq!(status_file(&sealed, Some(&key)).unwrap(), status_file(&plain, None).unwrap());
        let opts = |snapshot: &Path, data: &str| RestoreOptions {
            snapshot: snapshot.to_path_buf(),
            data_dir: Some(dir.path().join(data)),
            ..RestoreOptions::default()
        };
        let wrong = Key::from_bytes([8; 32]);
        let err = restore_file(&opts(&sealed, "wrong"), Some(&wrong)).unwrap_err();
        assert!(matches!(err, SnapshotError::Envelope(EnvelopeError::Authentication { chunk: 0 })), "{err}");
        let err = restore_file(&opts(&sealed, "nokey"), None).unwrap_err().to_string();
        assert!(err.contains("pass --decrypt-key-file"), "{err}");
        let err = restore_file(&opts(&plain, "plainkey"), Some(&key)).unwrap_err();
        assert!(matches!(err, SnapshotError::Envelope(EnvelopeError::NotEnvelope)), "{err}");
        let mut tampered = std::fs::read(&sealed).unwrap();
        let mid = tampered.len() / 2;
        tampered[mid] ^= 0x10;
        std::fs::write(&sealed, &tampered).unwrap();
        assert!(restore_file(&opts(&sealed, "tampered"), Some(&key)).is_err());
        tampered[mid] ^= 0x10;
        std::fs::write(&sealed, &tampered).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["plain.db", "sealed.enc"], "failed restores leave no data dir or temp file");

        let a = restore_file(&opts(&sealed, "from-sealed"), Some(&key)).unwrap();
        let b = restore_file(&opts(&plain, "from-plain"), None).unwrap();
        assert_eq!(a, b);
        assert!(a.rows > 0);
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp"));
        assert_eq!(leftovers.count(), 0, "the decrypted copy is removed");
    }
}
