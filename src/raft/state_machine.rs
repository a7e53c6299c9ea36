//! openraft's state machine over the applier: feeds committed entries to `apply` in order, and
//! builds and installs raft snapshots from whole-database dumps.
//!
//! As in etcd, a raft snapshot taken every `--snapshot-count` entries only makes the state durable
//! and records its position (so the log can be purged behind it); the whole database is dumped only
//! when a member needs it sent. Dumping it every time cost a full export and a large synced file
//! per snapshot, competing with the WAL's fsyncs on long write-heavy runs.

use std::io::{self, Cursor};
use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};

use crate::apply::applier::Applier;
use crate::raft::types::{LogId, SnapshotMeta, StoredMembership, TypeConfig};

type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Cursor<Vec<u8>>>;

/// What the applier stores beside the data for raft: where the state stands in the log.
#[derive(Serialize, Deserialize, Default, Clone)]
struct Position {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

impl Position {
    /// The position stored beside the data (none yet: the start of the log).
    fn decode(stored: Option<Vec<u8>>) -> io::Result<Position> {
        match stored {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(io_err),
            None => Ok(Position::default()),
        }
    }
}

/// `Position` as postcard bytes, written beside every applied entry. Postcard writes a struct as
/// its fields' encodings back to back, so the membership's part is kept from one entry to the next
/// and only the log id is encoded each time: encoding the membership (a map of members and their
/// URLs) for every entry was a visible share of a three-member write's CPU.
#[derive(Clone, Default)]
struct PositionEncoder {
    position: Position,
    membership_bytes: Vec<u8>,
}

impl PositionEncoder {
    fn new(position: Position) -> io::Result<Self> {
        let membership_bytes = postcard::to_allocvec(&position.membership).map_err(io_err)?;
        Ok(PositionEncoder { position, membership_bytes })
    }

    /// The position after `log_id` (which changes the membership if it carries one), encoded.
    fn advance(&mut self, log_id: LogId, membership: Option<StoredMembership>) -> io::Result<Vec<u8>> {
        self.position.last_applied = Some(log_id);
        if let Some(membership) = membership {
            self.membership_bytes = postcard::to_allocvec(&membership).map_err(io_err)?;
            self.position.membership = membership;
        }
        self.encode()
    }

    fn encode(&self) -> io::Result<Vec<u8>> {
        // A log id is at most a few varints: one allocation for both parts.
        let bytes = Vec::with_capacity(32 + self.membership_bytes.len());
        let mut bytes = postcard::to_extend(&self.position.last_applied, bytes).map_err(io_err)?;
        bytes.extend_from_slice(&self.membership_bytes);
        Ok(bytes)
    }
}

#[derive(Clone)]
pub struct StateMachine {
    applier: Arc<Applier>,
    snapshot_dir: PathBuf,
    position: PositionEncoder,
    /// Serialises writing the snapshot meta file (a built and an installed snapshot can be stored
    /// at the same time) and remembers which log position the stored one covers, so an older one
    /// never replaces a newer.
    stored: Arc<std::sync::Mutex<Option<LogId>>>,
}

fn io_err<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

impl StateMachine {
    pub fn open(applier: Arc<Applier>, snapshot_dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let position = PositionEncoder::new(Position::decode(applier.applied_position().map_err(io_err)?)?)?;
        let stored = Arc::new(std::sync::Mutex::new(None));
        let machine = StateMachine { applier, snapshot_dir, position, stored };
        let (data_path, meta_path) = machine.snapshot_paths();
        // Data directories of earlier versions kept a dump beside the meta; it is never read now.
        let _ = std::fs::remove_file(data_path);
        if let Ok(bytes) = std::fs::read(&meta_path) {
            let meta: SnapshotMeta = postcard::from_bytes(&bytes).map_err(io_err)?;
            *machine.stored.lock().unwrap_or_else(|p| p.into_inner()) = meta.last_log_id;
        }
        Ok(machine)
    }

    fn snapshot_paths(&self) -> (PathBuf, PathBuf) {
        (self.snapshot_dir.join("current.snap"), self.snapshot_dir.join("current.meta"))
    }

    /// Record the newest snapshot's position on disk: its presence tells a restart that a snapshot
    /// exists (the log may have been purged behind it).
    fn store_snapshot(&self, meta: &SnapshotMeta) -> io::Result<()> {
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        if *stored > meta.last_log_id {
            return Ok(());
        }
        let (_, meta_path) = self.snapshot_paths();
        // etcd's snapshotter save: marshalling, then the whole save with its fsync.
        let began = std::time::Instant::now();
        let bytes = postcard::to_allocvec(meta).map_err(io_err)?;
        crate::metrics::SNAP_SAVE_MARSHALLING.observe(began.elapsed());
        write_synced(&meta_path, &bytes)?;
        crate::metrics::SNAP_SAVE_TOTAL.observe(began.elapsed());
        *stored = meta.last_log_id;
        Ok(())
    }

    /// The whole state as it is now, with the position it is at.
    fn dump(&self) -> io::Result<Snapshot> {
        let began = std::time::Instant::now();
        let mut data = Vec::new();
        // The position read from the exported state itself, not this copy's: apply goes on while
        // the dump is taken, and a snapshot claiming an older position than its data would make
        // the member installing it apply the newer entries twice.
        let position = Position::decode(self.applier.export(&mut data).map_err(io_err)?)?;
        let meta = SnapshotMeta { last_log_id: position.last_applied, last_membership: position.membership };
        // etcd's backend snapshot of a raft snapshot message (it also times the sending).
        crate::metrics::BACKEND_SNAPSHOT.observe(began.elapsed());
        Ok(Snapshot { meta, snapshot: Cursor::new(data) })
    }
}

fn write_synced(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    // One temporary name per target: a snapshot being installed and one being built may be
    // written at the same time, and must not rename each other's half-written file.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    let began = std::time::Instant::now();
    f.sync_all()?;
    crate::metrics::SNAP_FSYNC.observe(began.elapsed());
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    /// The state is durable through its applied position once the engine is synced; that position
    /// is the snapshot. Its data is dumped when it is asked for (`get_current_snapshot`), at the
    /// position the state has reached by then, which is never behind this one.
    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let position = Position::decode(self.applier.applied_position().map_err(io_err)?)?;
        self.applier.engine().sync().map_err(io_err)?;
        let meta = SnapshotMeta { last_log_id: position.last_applied, last_membership: position.membership };
        self.store_snapshot(&meta)?;
        Ok(Snapshot { meta, snapshot: Cursor::new(Vec::new()) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let Position { last_applied, membership } = &self.position.position;
        Ok((*last_applied, membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let (command, membership) = match &entry.payload {
                EntryPayload::Blank => (None, None),
                EntryPayload::Normal(cmd) => (Some(cmd), None),
                EntryPayload::Membership(m) => (None, Some(StoredMembership::new(Some(entry.log_id), m.clone()))),
            };
            let position = self.position.advance(entry.log_id, membership)?;
            self.applier.note_index(entry.log_id.index);
            let result = self.applier.apply(command, position).map_err(io_err)?;
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        // Engine commits happen in the background; only a large backlog is committed here.
        self.applier.flush_if_large().map_err(io_err)?;
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// A snapshot from the leader: etcd's `snapshot_apply_in_progress_total` while it is applied,
    /// and its database's save (`etcd_snap_db_save_total_duration_seconds`) and fsync
    /// (`etcd_snap_db_fsync_duration_seconds`).
    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Self::SnapshotData) -> Result<(), io::Error> {
        let _applying = crate::metrics::GaugeGuard::hold(&crate::metrics::SNAPSHOT_APPLY_IN_PROGRESS);
        let began = std::time::Instant::now();
        let data = snapshot.into_inner();
        self.applier.install(&mut data.as_slice()).map_err(io_err)?;
        self.position = PositionEncoder::new(Position {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        })?;
        // The imported dump carries the position of the member that built it; record ours.
        let position = self.position.encode()?;
        self.applier.apply(None, position).map_err(io_err)?;
        let syncing = std::time::Instant::now();
        self.applier.engine().sync().map_err(io_err)?;
        crate::metrics::SNAP_DB_FSYNC.observe(syncing.elapsed());
        crate::metrics::SNAP_DB_SAVE.observe(began.elapsed());
        self.store_snapshot(meta)?;
        Ok(())
    }

    /// None until a snapshot was built or installed (nothing was purged yet); then the state now.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        if self.stored.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            return Ok(None);
        }
        self.dump().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::PeerNode;
    use std::collections::{BTreeMap, BTreeSet};

    /// The cached membership bytes rely on postcard writing a struct's fields back to back: the
    /// pieced-together bytes must be exactly the whole position's encoding, and decode to it.
    #[test]
    fn pieced_position_is_the_whole_positions_encoding() {
        let node = |name: &str| PeerNode {
            name: name.into(),
            peer_urls: vec![format!("http://127.0.0.1:2380/{name}")],
            client_urls: vec![format!("http://127.0.0.1:2379/{name}")],
        };
        let nodes: BTreeMap<u64, PeerNode> = [(1, node("a")), (2, node("b")), (7, node("learner"))].into();
        let membership = openraft::Membership::new(vec![BTreeSet::from([1, 2])], nodes).unwrap();
        let mut encoder = PositionEncoder::new(Position::default()).unwrap();
        assert_eq!(encoder.encode().unwrap(), postcard::to_allocvec(&Position::default()).unwrap());

        let joined = openraft::testing::log_id::<TypeConfig>(3, 1, 40);
        let pieced = encoder.advance(joined, Some(StoredMembership::new(Some(joined), membership))).unwrap();
        assert_eq!(pieced, postcard::to_allocvec(&encoder.position).unwrap());
        for index in [41, 300, 1 << 40] {
            let pieced = encoder.advance(openraft::testing::log_id::<TypeConfig>(3, 1, index), None).unwrap();
            assert_eq!(pieced, postcard::to_allocvec(&encoder.position).unwrap());
            let decoded: Position = postcard::from_bytes(&pieced).unwrap();
            assert_eq!(decoded.last_applied, encoder.position.last_applied);
            assert_eq!(decoded.membership, encoder.position.membership);
        }
    }
}
