//! The server half of the peer service (`proto/keelpeer/peer.proto`), served on
//! `--listen-peer-urls`: hands raft messages from other members to openraft, and the calls only
//! the leader answers to `forward` (the role of etcd's peer handlers `/raft` and `/leases`).

use std::io::Cursor;
use std::sync::Arc;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, TransferLeaderRequest, VoteRequest,
};
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::proto::keelpeer::peer_server::{Peer, PeerServer};
use crate::proto::keelpeer::Payload;
use crate::raft::network::{decode, encode, CLUSTER_ID_HEADER, MAX_PEER_MESSAGE};
use crate::raft::types::{SnapshotMeta, TypeConfig, Vote};

type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Cursor<Vec<u8>>>;

pub struct PeerService {
    node: Arc<Node>,
}

pub fn server(node: Arc<Node>) -> PeerServer<PeerService> {
    PeerServer::new(PeerService { node })
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE)
}

/// Refuse a call from a member of another cluster (etcd's rafthttp checks `X-Etcd-Cluster-ID`).
fn same_cluster<T>(node: &Node, request: &Request<T>) -> Result<(), Status> {
    let theirs = request.metadata().get(CLUSTER_ID_HEADER).and_then(|v| v.to_str().ok());
    let ours = format!("{:x}", node.cluster_id);
    if theirs == Some(ours.as_str()) {
        return Ok(());
    }
    Err(Status::failed_precondition(format!("cluster ID mismatch: ours {ours}, theirs {theirs:?}")))
}

/// An undecodable message is the caller's bug: say so with a status, not a raft answer.
fn undecodable(e: String) -> Status {
    Status::invalid_argument(e)
}

/// Answer with `Ok(value)` or the raft error's text (the caller treats it as unreachable).
fn reply<T: Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Result<Response<Payload>, Status> {
    Ok(Response::new(encode(&result.map_err(|e| e.to_string()))))
}

type ResponseStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Payload, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type StreamAppendStream = ResponseStream;

    /// A replication session: requests go to openraft in arrival order and their answers come back
    /// in the same order. The session ends at the first message that cannot be read (the answers
    /// then stop short, and the leader resends what went unanswered on a new stream).
    async fn stream_append(
        &self,
        request: Request<tonic::Streaming<Payload>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        use futures::future::ready;
        use futures::StreamExt;
        same_cluster(&self.node, &request)?;
        let requests = request
            .into_inner()
            .map(|message| message.ok().and_then(|p| decode::<AppendEntriesRequest<TypeConfig>>(&p).ok()))
            .take_while(|request| ready(request.is_some()))
            .filter_map(ready);
        let node = self.node.clone();
        let answers = self.node.raft.stream_append(requests).map(move |answer| {
            // As for a single append: any answer but "I have a higher vote" means this member
            // follows the sender.
            if matches!(answer, Ok(Ok(_)) | Ok(Err(StreamAppendError::Conflict(_)))) {
                node.leader_contact.touch();
            }
            Ok(encode(&answer.map_err(|e| e.to_string())))
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn append_entries(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        same_cluster(&self.node, &request)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request.get_ref()).map_err(undecodable)?;
        let answer = self.node.raft.append_entries(rpc).await;
        // Any answer but "I have a higher vote" means this member follows the sender.
        if answer.as_ref().is_ok_and(|r| !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.node.leader_contact.touch();
        }
        reply(answer)
    }

    async fn vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        same_cluster(&self.node, &request)?;
        let rpc: VoteRequest<TypeConfig> = decode(request.get_ref()).map_err(undecodable)?;
        reply(self.node.raft.vote(rpc).await)
    }

    async fn pre_vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        same_cluster(&self.node, &request)?;
        let rpc: VoteRequest<TypeConfig> = decode(request.get_ref()).map_err(undecodable)?;
        reply(self.node.raft.pre_vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        same_cluster(&self.node, &request)?;
        let (vote, meta, data): (Vote, SnapshotMeta, Vec<u8>) = decode(request.get_ref()).map_err(undecodable)?;
        let snapshot = Snapshot { meta, snapshot: Cursor::new(data) };
        let answer = self.node.raft.install_full_snapshot(vote, snapshot).await;
        if answer.is_ok() {
            self.node.leader_contact.touch();
        }
        reply(answer)
    }

    async fn transfer_leader(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        same_cluster(&self.node, &request)?;
        let req: TransferLeaderRequest<TypeConfig> = decode(request.get_ref()).map_err(undecodable)?;
        reply(self.node.raft.handle_transfer_leader(req).await)
    }

    async fn cluster(&self, _request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let answer: (u64, Vec<crate::node::MemberInfo>) =
            (self.node.cluster_id, crate::membership::members(&self.node));
        Ok(Response::new(encode(&answer)))
    }

    async fn leader(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        same_cluster(&self.node, &request)?;
        let call = decode(request.get_ref()).map_err(undecodable)?;
        Ok(Response::new(encode(&crate::forward::serve(&self.node, call).await)))
    }
}
