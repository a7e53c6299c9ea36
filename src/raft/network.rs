//! How raft reaches other members: openraft's network over Keel's peer gRPC service
//! (`proto/keelpeer/peer.proto`), one lazily connected tonic channel per peer URL. The role of
//! etcd's rafthttp transport; the wire format is Keel's own (postcard-encoded openraft messages).
//! `https://` peer URLs are dialed with TLS (`api::tls::peer_client_config`), as etcd's peer
//! transport does with `--peer-trusted-ca-file` and the `--peer-cert-file` client certificate.
//!
//! A peer that cannot be connected to maps to openraft's `Unreachable` (openraft then backs off
//! before trying again); any other transport failure is a `NetworkError` (retried at once).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::proto::keelpeer::peer_client::PeerClient;
use crate::proto::keelpeer::Payload;
use crate::raft::types::{LogId, PeerNode, SnapshotMeta, TypeConfig, Vote};

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
        crate::metrics::peer_reached(id, reached);
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

    /// `message` (a payload, or a stream of them) as a request carrying this member's cluster id.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        crate::metrics::name_peer_sender(request.metadata_mut());
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
    fn from_status(target: u64, status: &tonic::Status) -> CallError {
        // Not delivered, or refused as coming from another cluster: either way, nobody there to
        // replicate to; back off.
        if not_delivered(status) || status.code() == tonic::Code::FailedPrecondition {
            CallError::Unreachable(format!("member {target:x}: {}", status.message()))
        } else {
            CallError::Network(format!("member {target:x}: {}", status.message()))
        }
    }

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
        let sent_bytes = crate::metrics::peer_message_bytes(request.get_ref());
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
        crate::metrics::peer_call(target, sent_bytes, &answered);
        self.channels.record(target, matches!(answered, Ok(Ok(_))));
        let answer = match answered {
            Err(_) => return Err(CallError::Network(format!("member {target:x}: timed out after {ttl:?}"))),
            Ok(Err(status)) => return Err(CallError::from_status(target, &status)),
            Ok(Ok(resp)) => resp.into_inner(),
        };
        let result: Result<Resp, String> = decode(&answer).map_err(CallError::Network)?;
        // The peer's raft refused (e.g. it is shutting down): as good as unreachable.
        result.map_err(|e| CallError::Unreachable(format!("member {target:x}: {e}")))
    }
}

/// The (prev, last) log ids of an append: what openraft's pipelined replication matches an
/// answer against (`last` is `prev` for an append without entries).
type AppendSpan = (Option<LogId>, Option<LogId>);

fn span_of(request: &AppendEntriesRequest<TypeConfig>) -> AppendSpan {
    let last = request.entries.last().map(|e| e.log_id).or(request.prev_log_id);
    (request.prev_log_id, last)
}

/// Whether an answer matching `matching` counts, in openraft's bookkeeping, as an answer to an
/// append spanning `span`: it does once `matching` reaches the append's last log id or goes past
/// its prev (openraft's `drain_acked`, which then takes that append's sending time).
fn credits(matching: &Option<LogId>, span: &AppendSpan) -> bool {
    *matching >= span.1 || *matching > span.0
}

/// What one replication session has in flight, shared by the side that hands openraft's appends
/// to the stream and the side that reads the follower's answers.
///
/// Why it exists: openraft matches a pipelined answer to the appends it sent by log id, not by
/// position, and takes the sending time of the *latest* append the answer reaches as the moment
/// the follower acknowledged this leader (the clock a read-index round waits on). An append
/// without entries (openraft sends one to carry a new commit index while earlier appends are
/// still unanswered) has the same log id as the append before it, so the answer to the earlier
/// one would vouch for it before the follower has even seen it. A read-index round begun between
/// the two could then be confirmed by a follower that had meanwhile voted for another leader: a
/// stale read, which the leader-kill linearizability scenario caught. So an answer reaches
/// openraft only once nothing still unanswered would be credited by it, and no new append is
/// taken from openraft while an answer is being handed over.
#[derive(Default)]
struct InFlight {
    /// Appends handed to the follower and not answered yet, oldest first.
    unanswered: VecDeque<AppendSpan>,
    /// openraft holds an answer it has not finished with (it asks for the next one when it has):
    /// an append taken meanwhile would be queued where that answer's bookkeeping reaches it.
    handing_over: bool,
    /// The request side, waiting for the hand-over to end.
    waiting: Option<Waker>,
}

impl InFlight {
    fn lock(book: &Mutex<InFlight>) -> std::sync::MutexGuard<'_, InFlight> {
        book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest unanswered append was answered, matching `matching` if it succeeded. Whether
    /// openraft may have that answer now; if not, it is held back while it would vouch for a
    /// later append, and the later append's own answer supersedes it (openraft keeps the greatest
    /// match anyway). A refusal goes at once: it credits nothing later.
    fn answered(&mut self, matching: Option<&Option<LogId>>) -> bool {
        self.unanswered.pop_front();
        let hand_over = matching.is_none_or(|m| !self.unanswered.iter().any(|span| credits(m, span)));
        self.handing_over |= hand_over;
        hand_over
    }
}

/// openraft's appends for one session, taken one at a time and never during an answer's
/// hand-over (see [`InFlight`]), each recorded before the follower can answer it.
struct GatedAppends<S> {
    appends: S,
    book: Arc<Mutex<InFlight>>,
}

impl<S> Stream for GatedAppends<S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    type Item = Payload;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Payload>> {
        let book = self.book.clone();
        // Held across openraft's poll: openraft records an append in its own queue inside that
        // poll, and the answer side must see it recorded here as soon as it is there.
        let mut in_flight = InFlight::lock(&book);
        if in_flight.handing_over {
            in_flight.waiting = Some(cx.waker().clone());
            return Poll::Pending;
        }
        match self.appends.poll_next_unpin(cx) {
            Poll::Ready(Some(append)) => {
                in_flight.unanswered.push_back(span_of(&append));
                Poll::Ready(Some(encode(&append)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The leader's end of one replication stream.
struct AppendSession {
    target: u64,
    inbound: tonic::Streaming<Payload>,
    book: Arc<Mutex<InFlight>>,
    /// An answer was outstanding when the last deadline passed.
    stalled: bool,
    ttl: Duration,
}

impl AppendSession {
    /// The next answer openraft may have, in request order; `None` once the follower ended the
    /// stream. Asked for only once openraft is done with the previous answer.
    async fn next_answer(&mut self) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        let target = self.target;
        {
            let mut in_flight = InFlight::lock(&self.book);
            in_flight.handing_over = false;
            if let Some(waker) = in_flight.waiting.take() {
                waker.wake();
            }
        }
        loop {
            let message = match tokio::time::timeout(self.ttl, self.inbound.message()).await {
                Ok(message) => message,
                // An idle session (everything answered) waits for openraft's next request; one
                // with a request unanswered over a whole deadline has stalled.
                Err(_) => {
                    let waiting = !InFlight::lock(&self.book).unanswered.is_empty();
                    if waiting && self.stalled {
                        let ttl = self.ttl;
                        return Some(Err(
                            CallError::Network(format!("member {target:x}: timed out after {ttl:?}")).rpc()
                        ));
                    }
                    self.stalled = waiting;
                    continue;
                }
            };
            self.stalled = false;
            let payload = match message {
                Ok(Some(payload)) => crate::metrics::received_from(target, payload),
                Ok(None) => return None,
                Err(status) => return Some(Err(CallError::from_status(target, &status).rpc())),
            };
            let answer: Result<StreamAppendResult<TypeConfig>, String> = match decode(&payload) {
                Ok(answer) => answer,
                Err(e) => return Some(Err(CallError::Network(e).rpc())),
            };
            let matching = match &answer {
                Ok(Ok(matching)) => Some(matching),
                _ => None,
            };
            if !InFlight::lock(&self.book).answered(matching) {
                continue;
            }
            // The peer's raft refused (e.g. it is shutting down): as good as unreachable.
            return Some(answer.map_err(|e| CallError::Unreachable(format!("member {target:x}: {e}")).rpc()));
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = Cursor<Vec<u8>>;

    /// One append on its own: openraft's heartbeats (see `stream_append`). A heartbeat answered
    /// times the peer's round trip.
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

    /// Replication pipelined over one gRPC stream per session (openraft's default sends one append
    /// and waits for its answer before the next): batches keep flowing while the follower syncs,
    /// as etcd's leader keeps several appends in flight to each follower. Answers come back in
    /// request order (one stream, one follower task). A session whose oldest unanswered request
    /// has waited past the RPC deadline fails, as a single append past it would, and openraft
    /// resends the unanswered entries on a new one.
    ///
    /// openraft's heartbeats come as a session of exactly one append; those go as one unary call,
    /// which costs far less than opening a stream (read-index rounds wait on them).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        if input.size_hint() == (1, Some(1)) {
            return openraft::network::stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            let target = self.target;
            let ttl = option.hard_ttl();
            let mut client = self.client.as_ref().map_err(|e| CallError::Unreachable(e.clone()).rpc())?.clone();
            let book = Arc::new(Mutex::new(InFlight::default()));
            let outbound = crate::metrics::counting_sent(target, GatedAppends { appends: input, book: book.clone() });
            let opened = tokio::time::timeout(ttl, client.stream_append(self.channels.request(outbound))).await;
            let inbound = match opened {
                Err(_) => {
                    self.channels.record(target, false);
                    return Err(CallError::Network(format!("member {target:x}: timed out after {ttl:?}")).rpc());
                }
                Ok(Err(status)) => {
                    self.channels.record(target, false);
                    return Err(CallError::from_status(target, &status).rpc());
                }
                Ok(Ok(response)) => response.into_inner(),
            };
            let session = AppendSession { target, inbound, book, stalled: false, ttl };
            let channels = self.channels.clone();
            let answers = futures::stream::unfold(Some(session), move |session| {
                let channels = channels.clone();
                async move {
                    let mut session = session?;
                    let next = session.next_answer().await;
                    channels.record(target, !matches!(next, Some(Err(_))));
                    match next {
                        None => None,
                        // A refusal or a failure ends the session; openraft starts the next.
                        Some(Ok(Ok(appended))) => Some((Ok(Ok(appended)), Some(session))),
                        Some(other) => Some((other, None)),
                    }
                }
            });
            Ok(answers.boxed())
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(index: u64) -> Option<LogId> {
        Some(openraft::testing::log_id::<TypeConfig>(1, 1, index))
    }

    fn sent(spans: &[(u64, u64)]) -> InFlight {
        let mut book = InFlight::default();
        book.unanswered.extend(spans.iter().map(|&(prev, last)| (log_id(prev), log_id(last))));
        book
    }

    /// The stale-read guard: openraft would credit the answer to entries 6..=10 to the
    /// entry-less append after it (which only carries a commit index) and take that append's
    /// later sending time as the follower's acknowledgement, so the answer waits for the
    /// entry-less append's own.
    #[test]
    fn an_answer_waits_while_it_would_vouch_for_a_later_entry_less_append() {
        let mut book = sent(&[(5, 10), (10, 10), (10, 12)]);
        assert!(!book.answered(Some(&log_id(10))));
        assert!(!book.handing_over);
        assert!(book.answered(Some(&log_id(10))));
        assert!(book.handing_over);
        assert_eq!(book.unanswered.len(), 1);
    }

    /// Appends that each carry new entries are answered one by one, pipelined as before.
    #[test]
    fn answers_to_appends_with_entries_go_at_once() {
        let mut book = sent(&[(5, 10), (10, 12), (12, 20)]);
        assert!(book.answered(Some(&log_id(10))));
        assert!(book.answered(Some(&log_id(12))));
        assert!(book.answered(Some(&log_id(20))));
        assert!(book.unanswered.is_empty());
    }

    /// A conflict or a higher vote credits nothing later and ends the session: it goes at once.
    #[test]
    fn a_refusal_goes_at_once() {
        let mut book = sent(&[(5, 10), (10, 10)]);
        assert!(book.answered(None));
    }

    #[test]
    fn credit_follows_openrafts_matching_rules() {
        // Reached its last log id, or went past its prev: credited.
        assert!(credits(&log_id(10), &(log_id(5), log_id(10))));
        assert!(credits(&log_id(7), &(log_id(5), log_id(10))));
        assert!(credits(&log_id(10), &(log_id(10), log_id(10))));
        // Stops at its prev: not.
        assert!(!credits(&log_id(10), &(log_id(10), log_id(12))));
        assert!(!credits(&None, &(log_id(1), log_id(2))));
        assert!(credits(&None, &(None, None)));
    }
}
