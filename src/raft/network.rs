//! How raft reaches other members: openraft's network over Keel's peer gRPC service
//! (`proto/keelpeer/peer.proto`), one lazily connected tonic channel per peer URL. The role of
//! etcd's rafthttp transport; the wire format is Keel's own (postcard-encoded openraft messages).
//! `https://` peer URLs are dialed with TLS (`api::tls::peer_client_config`), as etcd's peer
//! transport does with `--peer-trusted-ca-file` and the `--peer-cert-file` client certificate.
//!
//! A peer that cannot be connected to maps to openraft's `Unreachable` (openraft then backs off
//! before trying again); any other transport failure is a `NetworkError` (retried at once).

use std::collections::HashMap;
use std::future::Future;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::proto::keelpeer::peer_client::PeerClient;
use crate::proto::keelpeer::Payload;
use crate::raft::types::{PeerNode, SnapshotMeta, TypeConfig, Vote};

type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Cursor<Vec<u8>>>;

/// How long to wait for a TCP connection to a peer before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A raft snapshot is the whole database in one message.
pub const MAX_PEER_MESSAGE: usize = usize::MAX;

/// Metadata naming the sender's cluster on every peer call (etcd's `X-Etcd-Cluster-ID`): a member
/// of another cluster that happens to dial our peer URL (a stale process, a reused port) is
/// refused instead of being taken for our leader.
pub const CLUSTER_ID_HEADER: &str = "keel-cluster-id";

/// One tonic channel per peer URL, shared by raft replication and by calls to the leader.
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// This member's cluster id, sent with every call once known (0 before: a joining member's
    /// first question is which cluster it joins).
    cluster_id: Arc<std::sync::atomic::AtomicU64>,
    /// Since when each peer has answered raft calls without a failure (etcd's transport
    /// `ActiveSince`), for the health checks of membership changes.
    active: Arc<Mutex<HashMap<u64, std::time::Instant>>>,
    /// How `https://` peer URLs are dialed; `None` when no peer trusted CA was configured.
    tls: Option<ClientTlsConfig>,
}

impl PeerChannels {
    /// Channels that dial `https://` peer URLs with `tls`.
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        PeerChannels { tls, ..Default::default() }
    }

    /// Since when member `id` has been reachable without interruption, if it is now.
    pub fn active_since(&self, id: u64) -> Option<std::time::Instant> {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied()
    }

    fn record(&self, id: u64, reached: bool) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if reached {
            active.entry(id).or_insert_with(std::time::Instant::now);
        } else {
            active.remove(&id);
        }
    }

    pub fn set_cluster_id(&self, id: u64) {
        self.cluster_id.store(id, std::sync::atomic::Ordering::Relaxed);
    }

    /// `payload` as a request carrying this member's cluster id.
    pub fn request(&self, payload: Payload) -> tonic::Request<Payload> {
        let mut request = tonic::Request::new(payload);
        let id = self.cluster_id.load(std::sync::atomic::Ordering::Relaxed);
        if let Ok(value) = format!("{id:x}").parse() {
            request.metadata_mut().insert(CLUSTER_ID_HEADER, value);
        }
        request
    }

    /// A client for the member described by `node` (its first peer URL, as etcd dials its first).
    pub fn client(&self, node: &PeerNode) -> Result<PeerClient<Channel>, String> {
        let url = node.peer_urls.first().ok_or_else(|| format!("member {} has no peer URL", node.name))?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(url) {
            Some(c) => c.clone(),
            None => {
                let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| format!("peer URL {url}: {e}"))?;
                if url.starts_with("https://") {
                    // The server refuses to start with https peers and no CA, so this is a peer
                    // URL learnt later (MemberAdd) on a member configured for plain peers.
                    let tls = self
                        .tls
                        .clone()
                        .ok_or_else(|| format!("peer URL {url} is https but no peer TLS is configured"))?;
                    endpoint = endpoint.tls_config(tls).map_err(|e| format!("peer URL {url}: {e}"))?;
                }
                let channel = endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .connect_lazy();
                channels.insert(url.clone(), channel.clone());
                channel
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE))
    }
}

pub fn encode<T: Serialize>(value: &T) -> Payload {
    // postcard cannot fail on these types (no maps with non-string keys, no unsized sequences).
    Payload { data: postcard::to_allocvec(value).unwrap_or_default() }
}

pub fn decode<T: DeserializeOwned>(payload: &Payload) -> Result<T, String> {
    postcard::from_bytes(&payload.data).map_err(|e| format!("undecodable peer message: {e}"))
}

/// Whether a failed call never reached the peer (nothing listening, connect timed out): only
/// then is it safe to retry a call that is not idempotent elsewhere.
pub fn not_delivered(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && {
        let text = format!("{status:?}").to_ascii_lowercase();
        text.contains("connect") || text.contains("refused")
    }
}

/// Hands out connections to peers.
#[derive(Clone, Default)]
pub struct PeerNetwork {
    pub channels: PeerChannels,
}

pub struct PeerConnection {
    target: u64,
    client: Result<PeerClient<Channel>, String>,
    channels: PeerChannels,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> PeerConnection {
        PeerConnection { target, client: self.channels.client(node), channels: self.channels.clone() }
    }
}

/// A failed call as openraft wants it.
enum CallError {
    Unreachable(String),
    Network(String),
}

impl CallError {
    fn rpc(self) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::from_string(m)),
            CallError::Network(m) => RPCError::Network(NetworkError::from_string(m)),
        }
    }

    fn streaming(self) -> StreamingError<TypeConfig> {
        match self {
            CallError::Unreachable(m) => StreamingError::Unreachable(Unreachable::from_string(m)),
            CallError::Network(m) => StreamingError::Network(NetworkError::from_string(m)),
        }
    }
}

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    PreVote,
    Snapshot,
    Transfer,
}

impl PeerConnection {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        method: Method,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let target = self.target;
        let client = self.client.as_mut().map_err(|e| CallError::Unreachable(e.clone()))?;
        let mut request = self.channels.request(encode(req));
        request.set_timeout(ttl);
        let sent = async {
            match method {
                Method::Append => client.append_entries(request).await,
                Method::Vote => client.vote(request).await,
                Method::PreVote => client.pre_vote(request).await,
                Method::Snapshot => client.install_snapshot(request).await,
                Method::Transfer => client.transfer_leader(request).await,
            }
        };
        let answered = tokio::time::timeout(ttl, sent).await;
        self.channels.record(target, matches!(answered, Ok(Ok(_))));
        let answer = match answered {
            Err(_) => return Err(CallError::Network(format!("member {target:x}: timed out after {ttl:?}"))),
            // Not delivered, or refused as coming from another cluster: either way, nobody there
            // to replicate to; back off.
            Ok(Err(status)) if not_delivered(&status) || status.code() == tonic::Code::FailedPrecondition => {
                return Err(CallError::Unreachable(format!("member {target:x}: {}", status.message())))
            }
            Ok(Err(status)) => return Err(CallError::Network(format!("member {target:x}: {}", status.message()))),
            Ok(Ok(resp)) => resp.into_inner(),
        };
        let result: Result<Resp, String> = decode(&answer).map_err(CallError::Network)?;
        // The peer's raft refused (e.g. it is shutting down): as good as unreachable.
        result.map_err(|e| CallError::Unreachable(format!("member {target:x}: {e}")))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let heartbeat = rpc.entries.is_empty();
        let started = std::time::Instant::now();
        let answer = self.call(Method::Append, &rpc, option.hard_ttl()).await.map_err(CallError::rpc);
        if heartbeat && answer.is_ok() {
            crate::metrics::observe_peer_rtt(self.target, started.elapsed());
        }
        answer
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Method::Vote, &rpc, option.hard_ttl()).await.map_err(CallError::rpc)
    }

    /// etcd runs with pre-vote on: a member that rejoins after a partition asks first, so it
    /// cannot depose a healthy leader by bumping the term.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Method::PreVote, &rpc, option.hard_ttl()).await.map_err(CallError::rpc)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let message: (Vote, SnapshotMeta, Vec<u8>) = (vote, snapshot.meta, snapshot.snapshot.into_inner());
        // A snapshot is large: give it far longer than one append (openraft's hard TTL is sized
        // for heartbeats).
        let ttl = option.hard_ttl().max(Duration::from_secs(60));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = self.call(Method::Snapshot, &message, ttl) => sent.map_err(CallError::streaming),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Method::Transfer, &req, option.hard_ttl()).await.map_err(CallError::rpc)
    }

    /// Probe an unreachable peer every election-ish interval, not in a tight loop.
    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(200))))
    }
}
