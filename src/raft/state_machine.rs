//! openraft's state machine over the applier: feeds committed entries to `apply` in order, and
//! builds and installs raft snapshots from whole-database dumps.

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

#[derive(Clone)]
pub struct StateMachine {
    applier: Arc<Applier>,
    snapshot_dir: PathBuf,
    position: Position,
    /// Serialises writing the snapshot files (a built and an installed snapshot can be stored at
    /// the same time) and remembers which log position the stored one covers, so an older one
    /// never replaces a newer.
    stored: Arc<std::sync::Mutex<Option<LogId>>>,
}

fn io_err<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

impl StateMachine {
    pub fn open(applier: Arc<Applier>, snapshot_dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let position = match applier.applied_position().map_err(io_err)? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(io_err)?,
            None => Position::default(),
        };
        let stored = Arc::new(std::sync::Mutex::new(None));
        let machine = StateMachine { applier, snapshot_dir, position, stored };
        let (_, meta_path) = machine.snapshot_paths();
        if let Ok(bytes) = std::fs::read(&meta_path) {
            let meta: SnapshotMeta = postcard::from_bytes(&bytes).map_err(io_err)?;
            *machine.stored.lock().unwrap_or_else(|p| p.into_inner()) = meta.last_log_id;
        }
        Ok(machine)
    }

    fn snapshot_paths(&self) -> (PathBuf, PathBuf) {
        (self.snapshot_dir.join("current.snap"), self.snapshot_dir.join("current.meta"))
    }

    /// Keep the newest snapshot on disk (data, then its meta; the meta's presence marks it complete).
    fn store_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        if *stored > meta.last_log_id {
            return Ok(());
        }
        let (data_path, meta_path) = self.snapshot_paths();
        let _ = std::fs::remove_file(&meta_path);
        write_synced(&data_path, data)?;
        write_synced(&meta_path, &postcard::to_allocvec(meta).map_err(io_err)?)?;
        *stored = meta.last_log_id;
        Ok(())
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
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let mut data = Vec::new();
        // The position stored with the exported state, not this builder's copy: apply goes on
        // while the snapshot is built, and a snapshot claiming an older position than its data
        // would make the member installing it apply the newer entries twice.
        let position: Position = match self.applier.export(&mut data).map_err(io_err)? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(io_err)?,
            None => Position::default(),
        };
        let meta = SnapshotMeta { last_log_id: position.last_applied, last_membership: position.membership };
        self.store_snapshot(&meta, &data)?;
        Ok(Snapshot { meta, snapshot: Cursor::new(data) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.position.last_applied, self.position.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            self.position.last_applied = Some(entry.log_id);
            let command = match &entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(cmd) => Some(cmd),
                EntryPayload::Membership(m) => {
                    self.position.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    None
                }
            };
            let position = postcard::to_allocvec(&self.position).map_err(io_err)?;
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

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Self::SnapshotData) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        self.applier.install(&mut data.as_slice()).map_err(io_err)?;
        self.position = Position { last_applied: meta.last_log_id, membership: meta.last_membership.clone() };
        // The imported dump carries the position of the member that built it; record ours.
        let position = postcard::to_allocvec(&self.position).map_err(io_err)?;
        self.applier.apply(None, position).map_err(io_err)?;
        self.store_snapshot(meta, &data)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        // Not while a snapshot is being stored: its meta and data would not match.
        let _stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        let (data_path, meta_path) = self.snapshot_paths();
        let meta_bytes = match std::fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta: SnapshotMeta = postcard::from_bytes(&meta_bytes).map_err(io_err)?;
        let data = std::fs::read(&data_path)?;
        Ok(Some(Snapshot { meta, snapshot: Cursor::new(data) }))
    }
}
