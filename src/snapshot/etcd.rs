//! etcd 3.5's buckets in a snapshot and how they map to Keel's storage tables. Keel's `"kv"` rows
//! already are etcd's `key` bucket (revision keys, marshalled `mvccpb.KeyValue` values) and its
//! `"meta"` table keeps etcd's compaction keys in etcd's encoding, so both directions copy those rows
//! as they are; the rest (membership, cluster version, consistent index) is built from what the
//! caller knows, as etcd's backend holds it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::bbolt::{BucketBuilder, BucketRef, Entry, Reader, Writer};
use crate::error::SnapshotError;
use crate::storage::{auth_rows, Engine, EngineKind, WriteBatch};

/// Keel's table of revision rows (`mvcc::KV_TABLE`; a test pins the two equal, since this module
/// sits below `mvcc`).
pub(crate) const KV_TABLE: &str = "kv";
/// Keel's metadata table (`mvcc::META_TABLE`).
pub(crate) const META_TABLE: &str = "meta";

const KEY_BUCKET: &[u8] = b"key";
const META_BUCKET: &[u8] = b"meta";
/// etcd's lease bucket: 8-byte big-endian id -> `leasepb.Lease`, the very layout of Keel's lease
/// table, so rows are copied as they are both ways (attachments are rebuilt from the keys).
const LEASE_BUCKET: &[u8] = b"lease";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";

/// Every bucket an etcd 3.5.16 backend creates, written even when empty so etcd finds them.
const ETCD_BUCKETS: &[&[u8]] = &[
    b"alarm",
    b"auth",
    b"authRoles",
    b"authUsers",
    b"cluster",
    KEY_BUCKET,
    b"lease",
    b"members",
    b"members_removed",
    META_BUCKET,
];

/// The cluster version a 3.5 cluster records (`cluster/clusterVersion`): etcd stores major.minor.0.
const CLUSTER_VERSION: &[u8] = crate::config::ETCD_CLUSTER_VERSION.as_bytes();

/// Keel's lease table (`lease::LEASE_TABLE`; a test pins the two equal).
pub(crate) const LEASE_TABLE: &str = "lease";
/// etcd's alarm bucket: marshalled `AlarmMember` -> empty, the layout of Keel's alarm table
/// (`apply::alarms`; a test pins the names equal), so an alarm travels with the snapshot both
/// ways, as it does between etcd members.
const ALARM_BUCKET: &[u8] = b"alarm";
pub(crate) const ALARM_TABLE: &str = "alarm";

/// Restored rows reach the engine in batches of about this many bytes.
const RESTORE_BATCH_BYTES: usize = 8 << 20;

/// One member as etcd's `members` bucket records it.
#[derive(Clone, Debug)]
pub struct ExportMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// What the snapshot carries beside the storage rows.
#[derive(Clone, Debug, Default)]
pub struct ExportInfo {
    /// The raft index the state reflects (etcd's `meta/consistent_index`).
    pub consistent_index: u64,
    pub term: u64,
    pub members: Vec<ExportMember>,
}

/// etcd's member JSON (`membership.Member`): id, then the raft attributes (peerURLs, isLearner
/// only when true), then the attributes (name, clientURLs only when present), in Go's field order.
fn member_json(m: &ExportMember) -> Vec<u8> {
    let list = |v: &[String]| serde_json::Value::from(v.to_vec()).to_string();
    let mut out = format!("{{\"id\":{},\"peerURLs\":{}", m.id, list(&m.peer_urls));
    if m.is_learner {
        out.push_str(",\"isLearner\":true");
    }
    out.push_str(&format!(",\"name\":{}", serde_json::Value::from(m.name.as_str())));
    if !m.client_urls.is_empty() {
        out.push_str(&format!(",\"clientURLs\":{}", list(&m.client_urls)));
    }
    out.push('}');
    out.into_bytes()
}

/// Write the state in `engine` as an etcd snapshot database (no trailer) to `out`. Rows come from one
/// consistent view of the engine (`Engine::scan_all`).
pub fn export<W: Write + Seek>(engine: &dyn Engine, info: &ExportInfo, out: W) -> Result<W, SnapshotError> {
    let mut w = Writer::new(out)?;
    let mut key_bucket = BucketBuilder::new();
    let mut meta_rows: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut lease_rows: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut alarm_rows: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    // etcd's auth buckets. A fresh etcd 3.5 backend holds authRevision 1 and no authEnabled row
    // until auth is first enabled or disabled; Keel's auth table has the same rows when it has any.
    let mut auth_rows: BTreeMap<&'static [u8], BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
    auth_rows.entry(b"auth").or_default().insert(b"authRevision".to_vec(), 1u64.to_be_bytes().to_vec());
    let mut failure = None;
    engine
        .scan_all(&mut |table, key, value| {
            let done = match table {
                KV_TABLE => key_bucket.put(&mut w, key, value),
                LEASE_TABLE => {
                    lease_rows.insert(key.to_vec(), value.to_vec());
                    Ok(())
                }
                ALARM_TABLE => {
                    alarm_rows.insert(key.to_vec(), value.to_vec());
                    Ok(())
                }
                auth_rows::TABLE => {
                    if let Some((bucket, etcd_key)) = auth_rows::to_etcd(key) {
                        auth_rows.entry(bucket).or_default().insert(etcd_key, value.to_vec());
                    }
                    Ok(())
                }
                META_TABLE if key == SCHEDULED_COMPACT || key == FINISHED_COMPACT => {
                    meta_rows.insert(key.to_vec(), value.to_vec());
                    Ok(())
                }
                _ => Ok(()),
            };
            match done {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })
        .map_err(|e| SnapshotError::Storage(e.to_string()))?;
    if let Some(e) = failure {
        return Err(e);
    }

    meta_rows.insert(b"consistent_index".to_vec(), info.consistent_index.to_be_bytes().to_vec());
    meta_rows.insert(b"term".to_vec(), info.term.to_be_bytes().to_vec());
    let voters: Vec<String> = info.members.iter().filter(|m| !m.is_learner).map(|m| m.id.to_string()).collect();
    meta_rows.insert(
        b"confState".to_vec(),
        format!("{{\"voters\":[{}],\"auto_leave\":false}}", voters.join(",")).into_bytes(),
    );

    let mut members: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for m in &info.members {
        members.insert(format!("{:016x}", m.id).into_bytes(), member_json(m));
    }

    let mut root = BucketBuilder::new();
    let mut key_bucket = Some(key_bucket);
    for name in ETCD_BUCKETS {
        let rows: BTreeMap<Vec<u8>, Vec<u8>> = match *name {
            b"meta" => std::mem::take(&mut meta_rows),
            b"members" => std::mem::take(&mut members),
            b"lease" => std::mem::take(&mut lease_rows),
            b"alarm" => std::mem::take(&mut alarm_rows),
            b"auth" | b"authUsers" | b"authRoles" => auth_rows.remove(*name).unwrap_or_default(),
            b"cluster" => BTreeMap::from([(b"clusterVersion".to_vec(), CLUSTER_VERSION.to_vec())]),
            _ => BTreeMap::new(),
        };
        let value = if *name == KEY_BUCKET {
            key_bucket.take().unwrap_or_default().finish(&mut w)?
        } else {
            let mut b = BucketBuilder::new();
            for (k, v) in &rows {
                b.put(&mut w, k, v)?;
            }
            b.finish(&mut w)?
        };
        root.put_bucket(&mut w, name, value)?;
    }
    w.finish(root)
}

/// `export` into a file at `path` followed by the sha256 trailer: exactly the file `etcdctl
/// snapshot save` writes.
pub fn export_file(engine: &dyn Engine, info: &ExportInfo, path: &Path) -> Result<(), SnapshotError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| SnapshotError::io(format!("create {}", path.display()), e))?;
    let mut file = export_to_file(engine, info, file)?;
    let hash = sha256_of(&mut file)?;
    file.write_all(&hash).map_err(|e| SnapshotError::io("write sha256 trailer", e))?;
    file.sync_all().map_err(|e| SnapshotError::io("sync snapshot", e))?;
    Ok(())
}

/// `export` into an open file, buffered; returns the file positioned at the end of the database.
pub fn export_to_file(engine: &dyn Engine, info: &ExportInfo, file: File) -> Result<File, SnapshotError> {
    let buffered = export(engine, info, std::io::BufWriter::with_capacity(256 * 1024, file))?;
    buffered.into_inner().map_err(|e| SnapshotError::io("flush snapshot", e.into_error()))
}

/// sha256 of a file's whole contents; leaves the file positioned at its end.
pub fn sha256_of(file: &mut File) -> Result<[u8; super::HASH_LEN], SnapshotError> {
    use std::io::{Read, SeekFrom};
    let io = |e| SnapshotError::io("hash snapshot", e);
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// What `etcdutl snapshot status` reports (its hash aside): the newest main revision in `key`, the
/// number of rows over every top-level bucket, and the database size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub revision: i64,
    pub total_keys: u64,
    pub total_size: u64,
    /// Names of the top-level buckets, in order.
    pub buckets: Vec<String>,
}

/// Main revision of a `key` bucket row key, after checking it is one (17 bytes, or 18 ending in the
/// tombstone mark `t`, with `_` between the two revisions).
fn row_main_revision(key: &[u8]) -> Result<i64, SnapshotError> {
    let ok = match key.len() {
        17 => true,
        18 => key[17] == b't',
        _ => false,
    };
    if !ok || key[8] != b'_' {
        return Err(SnapshotError::Schema(format!("key bucket row {key:02x?} is not a revision")));
    }
    let mut main = [0u8; 8];
    main.copy_from_slice(&key[..8]);
    Ok(u64::from_be_bytes(main) as i64)
}

/// etcdutl's `snapshot status` over a database (trailer already removed).
pub fn status(db: &[u8]) -> Result<Status, SnapshotError> {
    let reader = Reader::new(db)?;
    let mut st = Status { total_size: db.len() as u64, ..Default::default() };
    let mut top = Vec::new();
    reader.for_each(reader.root(), &mut |e| {
        if let Entry::Bucket { key, bucket, .. } = e {
            top.push((key.to_vec(), bucket));
        }
        Ok(())
    })?;
    for (name, bucket) in top {
        let is_key = name == KEY_BUCKET;
        reader.for_each(bucket, &mut |e| {
            st.total_keys += 1;
            if let (true, Entry::Value { key, .. }) = (is_key, &e) {
                st.revision = st.revision.max(row_main_revision(key)?);
            }
            Ok(())
        })?;
        st.buckets.push(String::from_utf8_lossy(&name).into_owned());
    }
    Ok(st)
}

/// What a restore brought in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Rows copied into the `"kv"` table.
    pub rows: u64,
    /// The newest main revision among them.
    pub revision: i64,
    /// etcd's `finishedCompactRev`, if a compaction had finished.
    pub compact_revision: Option<i64>,
    /// Leases copied into the lease table.
    pub leases: u64,
    /// Parts of the snapshot Keel has no store for yet, skipped.
    pub skipped: Vec<String>,
}

fn bucket_of<'a>(reader: &Reader<'a>, name: &[u8]) -> Result<Option<BucketRef<'a>>, SnapshotError> {
    reader.bucket(&[name])
}

/// Copy an etcd snapshot database (trailer already checked and removed) into `engine`: every row
/// of `key` into `"kv"` as it is, so every retained revision reads as it did in etcd, and the
/// compaction state into `"meta"` (a compaction scheduled but not finished is resumed when the
/// store opens, as etcd resumes it). Membership, term and consistent index are not copied: the
/// restored member takes them from its flags and its own fresh raft log, as `etcdutl snapshot
/// restore` rewrites them. The engine is made durable before returning.
pub fn restore(db: &[u8], engine: &dyn Engine) -> Result<RestoreReport, SnapshotError> {
    let reader = Reader::new(db)?;
    let storage = |e: crate::storage::StorageError| SnapshotError::Storage(e.to_string());
    let key = bucket_of(&reader, KEY_BUCKET)?
        .ok_or_else(|| SnapshotError::Schema("no \"key\" bucket (not an etcd v3 snapshot?)".into()))?;
    let mut report = RestoreReport::default();
    let mut batch = WriteBatch::new();
    let mut batch_bytes = 0usize;
    let mut failure = None;
    reader
        .for_each(key, &mut |e| {
            let Entry::Value { key, value } = e else {
                return Err(SnapshotError::Schema("a bucket nested in \"key\"".into()));
            };
            report.revision = report.revision.max(row_main_revision(key)?);
            report.rows += 1;
            batch.put(KV_TABLE, key, value);
            batch_bytes += key.len() + value.len();
            if batch_bytes >= RESTORE_BATCH_BYTES {
                batch_bytes = 0;
                if let Err(e) = engine.write(std::mem::take(&mut batch)) {
                    failure = Some(e);
                    return Err(SnapshotError::Storage("write failed".into()));
                }
            }
            Ok(())
        })
        .map_err(|e| match failure.take() {
            Some(storage_err) => storage(storage_err),
            None => e,
        })?;

    if let Some(meta) = bucket_of(&reader, META_BUCKET)? {
        reader.for_each(meta, &mut |e| {
            if let Entry::Value { key, value } = e {
                if key == SCHEDULED_COMPACT || key == FINISHED_COMPACT {
                    let main = row_main_revision(value)?;
                    if key == FINISHED_COMPACT {
                        report.compact_revision = Some(main);
                    }
                    batch.put(META_TABLE, key, value);
                }
            }
            Ok(())
        })?;
    }
    if let Some(alarms) = bucket_of(&reader, ALARM_BUCKET)? {
        reader.for_each(alarms, &mut |e| {
            if let Entry::Value { key, value } = e {
                batch.put(ALARM_TABLE, key, value);
            }
            Ok(())
        })?;
    }
    for bucket in [&b"auth"[..], b"authUsers", b"authRoles"] {
        if let Some(rows) = bucket_of(&reader, bucket)? {
            reader.for_each(rows, &mut |e| {
                if let Entry::Value { key, value } = e {
                    if let Some(row) = auth_rows::from_etcd(bucket, key) {
                        batch.put(auth_rows::TABLE, row, value);
                    }
                }
                Ok(())
            })?;
        }
    }
    if let Some(leases) = bucket_of(&reader, LEASE_BUCKET)? {
        reader.for_each(leases, &mut |e| {
            if let Entry::Value { key, value } = e {
                batch.put(LEASE_TABLE, key, value);
                report.leases += 1;
            }
            Ok(())
        })?;
    }
    engine.write(batch).map_err(storage)?;
    engine.sync().map_err(storage)?;

    Ok(report)
}

/// `keel snapshot restore`'s options: etcdutl's flags and defaults.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub snapshot: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub skip_hash_check: bool,
    pub engine: EngineKind,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            snapshot: PathBuf::new(),
            data_dir: None,
            name: "default".into(),
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            skip_hash_check: false,
            engine: EngineKind::Redb,
        }
    }
}

impl RestoreOptions {
    /// etcdutl's default data directory: `<name>.etcd`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    /// etcd's bootstrap checks on the restore flags (`VerifyBootstrap`): the name must be in the
    /// initial cluster with exactly the advertised peer URLs.
    fn verify(&self) -> Result<(), SnapshotError> {
        let mut mine: Vec<String> = Vec::new();
        for entry in self.initial_cluster.split(',').filter(|e| !e.is_empty()) {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| SnapshotError::Schema(format!("invalid --initial-cluster entry {entry:?}")))?;
            if name == self.name {
                mine.push(url.to_string());
            }
        }
        if mine.is_empty() {
            return Err(SnapshotError::Schema(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                self.name
            )));
        }
        let mut advertised = self.initial_advertise_peer_urls.clone();
        mine.sort();
        advertised.sort();
        if mine != advertised {
            return Err(SnapshotError::Schema(format!(
                "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
                self.name,
                mine.join(","),
                advertised.join(",")
            )));
        }
        Ok(())
    }
}

/// etcdutl never restores over an existing data directory.
pub(crate) fn refuse_existing(dir: &Path) -> Result<(), SnapshotError> {
    if dir.exists() {
        return Err(SnapshotError::Schema(format!("data-dir {:?} exists", dir.display().to_string())));
    }
    Ok(())
}

/// Build a Keel data directory from an etcd snapshot file, refusing a directory that exists (as
/// etcdutl does). A failed restore removes what it created.
pub fn restore_dir(opts: &RestoreOptions) -> Result<RestoreReport, SnapshotError> {
    opts.verify()?;
    let dir = opts.data_dir();
    refuse_existing(&dir)?;
    let file =
        std::fs::read(&opts.snapshot).map_err(|e| SnapshotError::io(format!("read {}", opts.snapshot.display()), e))?;
    let db = super::database(&file, opts.skip_hash_check)?;
    let result = (|| {
        let engine = crate::storage::open(opts.engine, &dir.join("member").join("db"))
            .map_err(|e| SnapshotError::Storage(e.to_string()))?;
        restore(db, engine.as_ref())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

#[cfg(test)]
pub(crate) const ETCD_BUCKETS_FOR_TESTS: &[&[u8]] = ETCD_BUCKETS;
