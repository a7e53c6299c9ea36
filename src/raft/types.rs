//! The openraft type configuration: which types the log carries, how members are addressed.

use serde::{Deserialize, Serialize};

use crate::apply::command::{CommandResult, RaftCommand};

/// What raft knows of a member: enough to reach it. etcd's member record (name, client URLs) lives
/// in the cluster metadata, not here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    /// Keel's raft: etcd member ids are the node ids, one [`RaftCommand`] per log entry.
    pub TypeConfig:
        D = RaftCommand,
        R = CommandResult,
        NodeId = u64,
        Node = PeerNode,
);

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig, crate::raft::state_machine::StateMachine>;
