//! The Watch service (etcd 3.5.16's `v3rpc/watch.go` `serverWatchStream`): one bidi stream per
//! call carrying many watchers. A receive task turns requests into hub calls (applying etcd's key
//! conventions); a pump task sends what the hub queued, runs catch-up passes for unsynced
//! watchers, ticks progress notifications and, for `hasleader` streams, watches the leader.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::header;
use crate::api::status::{cancel_reason, go_status_text, to_status};
use crate::api::watch_wire::{batch_bytes, encode_events, encode_header, WireResponse};
use crate::api::BoxStream;
use crate::error::Error;
use crate::node::Node;
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use crate::proto::mvccpb::Event;
use crate::watch::{CatchUp, KeySpan, Outgoing, StreamHandle, WatchSpec};

/// etcd ends `hasleader` streams after this many election timeouts without a leader.
const MAX_LEADERLESS_TIMEOUTS: u32 = 3;
/// etcd's `grpcOverheadBytes`: watch responses are fragmented against max-request-bytes + 512 KiB.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Batches of responses handed to gRPC ahead of the client; the hub's outbox holds the rest.
const SEND_BUFFER: usize = 2;
/// Responses taken from the hub at once.
const POP_BATCH: usize = 64;
/// The receive task stops reading requests while this many answers wait (etcd's `ctrlStream`
/// blocks the same way), so a client that floods creates without reading cannot grow memory.
const MAX_BACKLOG: usize = 1024;

pub struct WatchService {
    node: Arc<Node>,
}

impl WatchService {
    pub fn new(node: Arc<Node>) -> Self {
        WatchService { node }
    }
}

/// What the pump hands to gRPC: a batch of responses, or the error that ends the stream.
type Batch = Result<Vec<WireResponse>, Status>;

impl WatchService {
    /// Open one watch stream (the `Watch` RPC).
    pub async fn open(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<BoxStream<WireResponse>>, Status> {
        let require_leader = crate::api::requires_leader(request.metadata());
        // etcd's stream interceptor rejects a `hasleader` stream at once when there is no leader.
        if require_leader && self.node.raft_status().leader.is_none() {
            return Err(to_status(Error::NoLeader));
        }
        let credentials = crate::api::auth::credentials(request.metadata());
        let inbound = request.into_inner();
        let handle = Arc::new(self.node.applier.watch().open_stream());
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        let recv = tokio::spawn(receive(self.node.clone(), credentials, handle.clone(), inbound, tx.clone()));
        let pump = Pump {
            node: self.node.clone(),
            handle,
            tx,
            require_leader,
            fragment_bytes: self.node.limits.max_request_bytes + GRPC_OVERHEAD_BYTES,
        };
        tokio::spawn(pump.run(recv.abort_handle()));
        let responses = ReceiverStream::new(rx).flat_map(|batch: Batch| {
            let items: Vec<Result<WireResponse, Status>> = match batch {
                Ok(responses) => responses.into_iter().map(Ok).collect(),
                Err(status) => vec![Err(status)],
            };
            futures::stream::iter(items)
        });
        Ok(Response::new(Box::pin(responses)))
    }
}

/// Read requests until the client stops sending. A client that only half-closes keeps its
/// stream (etcd's `recvLoop` returns without error on EOF and the send side goes on).
async fn receive(
    node: Arc<Node>,
    credentials: Option<crate::api::auth::Credentials>,
    handle: Arc<StreamHandle>,
    mut inbound: Streaming<WatchRequest>,
    tx: mpsc::Sender<Batch>,
) {
    loop {
        while handle.backlog() > MAX_BACKLOG {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let request = match inbound.message().await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(status) => {
                // A broken request ends the stream with its error, as etcd's recvLoop error does.
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                if let Err(denied) = watch_permitted(&node, credentials.as_ref(), &create.key, &create.range_end) {
                    let revision = node.mvcc().current_revision();
                    let refusal = WatchResponse {
                        header: Some(header::header(&node, revision)),
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason: go_status_text(&denied),
                        ..Default::default()
                    };
                    let _ = tx.send(Ok(vec![WireResponse::Message(refusal)])).await;
                    continue;
                }
                handle.watch(watch_spec(create))
            }
            Some(RequestUnion::CancelRequest(cancel)) => handle.cancel(cancel.watch_id),
            Some(RequestUnion::ProgressRequest(_)) => handle.request_progress(),
            // etcd ignores a request with no body rather than ending the stream.
            None => {}
        }
    }
}

/// etcd's `isWatchPermitted`, checked at every create with the stream's credentials: READ on the
/// range of a create request's `key` and `range_end`. Also what the lock and election recipes
/// check before they watch (`api/concurrency.rs`), as etcd's in-process client goes through this
/// same check. etcd quirk kept: the key conventions are applied first, turning a range end of "\0"
/// into an EMPTY one, so `--prefix ""` and `--from-key` watches are checked as the single start key.
pub fn watch_permitted(
    node: &Node,
    credentials: Option<&crate::api::auth::Credentials>,
    key: &[u8],
    range_end: &[u8],
) -> Result<(), Error> {
    let auth = node.applier.auth();
    let user = match credentials {
        Some(c) => crate::api::auth::resolve(node, c)?,
        None => Default::default(),
    };
    let key: &[u8] = if key.is_empty() { &[0] } else { key };
    let end: &[u8] = if range_end == [0] { &[] } else { range_end };
    auth.check_op(&user, key, end, crate::proto::authpb::permission::Type::Read)?;
    Ok(())
}

/// etcd's create-request conventions (`recvLoop`): an empty key is `"\0"`, the smallest key; an
/// empty range end means the key alone; a range end of `"\0"` means every key from `key` on.
/// Unknown filter values are ignored (`FiltersFromRequest`).
pub fn watch_spec(c: WatchCreateRequest) -> WatchSpec {
    let key = if c.key.is_empty() { vec![0] } else { c.key };
    let span = match c.range_end.as_slice() {
        [] => KeySpan::Key(key),
        [0] => KeySpan::From(key),
        _ => KeySpan::Range(key, c.range_end),
    };
    WatchSpec {
        watch_id: c.watch_id,
        span,
        start_revision: c.start_revision,
        prev_kv: c.prev_kv,
        progress_notify: c.progress_notify,
        fragment: c.fragment,
        no_put: c.filters.contains(&(FilterType::Noput as i32)),
        no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
    }
}

struct Pump {
    node: Arc<Node>,
    handle: Arc<StreamHandle>,
    tx: mpsc::Sender<Batch>,
    require_leader: bool,
    fragment_bytes: usize,
}

/// Aborts the receive task when the pump ends (the client went away).
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Pump {
    async fn run(self, recv: AbortHandle) {
        let _recv = AbortOnDrop(recv);
        let period = progress_period(self.node.limits.watch_progress_notify_interval);
        let mut progress = interval_at(Instant::now() + period, period);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let election = self.node.limits.election_timeout.max(Duration::from_millis(1));
        let mut leader_check = interval_at(Instant::now() + election, election);
        leader_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut leader = LeaderWatch::default();
        let mut stopping = self.node.stopping.subscribe();
        loop {
            let items = self.handle.pop(POP_BATCH);
            if !items.is_empty() {
                let mut encoder = Encoder::new(header::header(&self.node, 0), self.fragment_bytes);
                let mut batch = Vec::with_capacity(items.len());
                for item in items {
                    encoder.responses(item, &mut batch);
                }
                if self.tx.send(Ok(batch)).await.is_err() {
                    return;
                }
                continue;
            }
            if self.handle.needs_catch_up() {
                let outcome = {
                    let _permit = self.handle.catch_up_permit().await;
                    let handle = self.handle.clone();
                    tokio::task::spawn_blocking(move || handle.catch_up()).await.unwrap_or(CatchUp::Failed)
                };
                match outcome {
                    CatchUp::Progressed => continue,
                    CatchUp::Failed => tokio::time::sleep(Duration::from_millis(100)).await,
                    CatchUp::Idle | CatchUp::Blocked => {}
                }
            }
            tokio::select! {
                _ = self.handle.changed() => {}
                _ = progress.tick() => self.handle.progress_tick(),
                _ = leader_check.tick(), if self.require_leader => {
                    if leader.lost(self.node.raft_status().leader.is_some()) {
                        let _ = self.tx.send(Err(to_status(Error::NoLeader))).await;
                        return;
                    }
                }
                _ = self.tx.closed() => return,
                // A graceful stop waits for open streams; end ours as a stopping etcd's do
                // (Unavailable, `etcdserver: server stopped`) so clients move to another member.
                _ = stopping.changed() => {
                    let stop = *stopping.borrow_and_update();
                    if stop {
                        let _ = self.tx.send(Err(to_status(Error::Stopped))).await;
                        return;
                    }
                }
            }
        }
    }
}

/// etcd's `monitorLeader` for `hasleader` streams: checked once per election timeout, the stream
/// ends with `etcdserver: no leader` after three checks in a row found no leader.
#[derive(Default)]
struct LeaderWatch {
    misses: u32,
}

impl LeaderWatch {
    /// Record one check; true when the stream must end.
    fn lost(&mut self, has_leader: bool) -> bool {
        self.misses = if has_leader { 0 } else { self.misses + 1 };
        self.misses >= MAX_LEADERLESS_TIMEOUTS
    }
}

/// etcd's progress ticker period: the configured interval plus up to 10 % jitter, so streams
/// created together do not all report at once.
fn progress_period(interval: Duration) -> Duration {
    let tenth = (interval / 10).as_nanos() as u64;
    let jitter = if tenth == 0 { 0 } else { rand::random::<u64>() % tenth };
    (interval + Duration::from_nanos(jitter)).max(Duration::from_millis(1))
}

/// Turns queued items into wire responses for one pop batch: cluster, member and term come from
/// `base`; the encoded header of the last revision is reused (a batch is mostly one revision).
pub struct Encoder {
    base: ResponseHeader,
    fragment_bytes: usize,
    header: Option<(i64, Bytes)>,
}

impl Encoder {
    pub fn new(base: ResponseHeader, fragment_bytes: usize) -> Self {
        Encoder { base, fragment_bytes, header: None }
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader { revision, ..self.base })
    }

    fn header_bytes(&mut self, revision: i64) -> Bytes {
        match &self.header {
            Some((rev, bytes)) if *rev == revision => bytes.clone(),
            _ => {
                let bytes = encode_header(&ResponseHeader { revision, ..self.base });
                self.header = Some((revision, bytes.clone()));
                bytes
            }
        }
    }

    /// Append the wire responses for `item` to `out`.
    pub fn responses(&mut self, item: Outgoing, out: &mut Vec<WireResponse>) {
        let message = match item {
            Outgoing::Events { .. } => return self.events(item, out),
            Outgoing::Created { watch_id, revision } => {
                WatchResponse { header: self.header(revision), watch_id, created: true, ..Default::default() }
            }
            Outgoing::Rejected { revision, reason } => WatchResponse {
                header: self.header(revision),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: cancel_reason(&Error::from(reason)),
                ..Default::default()
            },
            Outgoing::Canceled { watch_id, revision } => {
                WatchResponse { header: self.header(revision), watch_id, canceled: true, ..Default::default() }
            }
            // etcd quirk: the compacted cancel's header revision is 0 (the mvcc response carries
            // no revision) and its cancel_reason is empty.
            Outgoing::Compacted { watch_id, compact_revision } => WatchResponse {
                header: self.header(0),
                watch_id,
                canceled: true,
                compact_revision,
                ..Default::default()
            },
            Outgoing::Progress { watch_id, revision } => {
                WatchResponse { header: self.header(revision), watch_id, ..Default::default() }
            }
        };
        out.push(WireResponse::Message(message));
    }

    fn events(&mut self, item: Outgoing, out: &mut Vec<WireResponse>) {
        let Outgoing::Events { watch_id, revision, ref batch, ref only, prev_kv, fragment } = item else { return };
        let events = match only {
            None => batch_bytes(batch, prev_kv),
            Some(_) => encode_events(item.events(), prev_kv),
        };
        let wire = WireResponse::Events { header: self.header_bytes(revision), watch_id, events };
        let count = item.events().count();
        if fragment && count >= 2 && wire.encoded_len() >= self.fragment_bytes {
            let events: Vec<Event> = item
                .events()
                .map(|e| Event { prev_kv: if prev_kv { e.prev_kv.clone() } else { None }, ..Event::clone(e) })
                .collect();
            let whole = WatchResponse { header: self.header(revision), watch_id, events, ..Default::default() };
            out.extend(fragments(whole, self.fragment_bytes).into_iter().map(WireResponse::Message));
        } else {
            out.push(wire);
        }
    }
}

/// The wire responses for one queued item, decoded back into messages (for tests).
#[cfg(test)]
pub fn responses(item: Outgoing, base: &ResponseHeader, fragment_bytes: usize) -> Vec<WatchResponse> {
    let mut out = Vec::new();
    Encoder::new(*base, fragment_bytes).responses(item, &mut out);
    out.into_iter().map(|w| WatchResponse::decode(w.encode_to_vec().as_slice()).unwrap_or_default()).collect()
}

/// etcd's `sendFragments`: a response of at least `limit` bytes with two or more events is split
/// into several, each with `fragment` set except the last; a part takes events while it stays
/// under `limit`, and always at least one.
fn fragments(whole: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if whole.events.len() < 2 || whole.encoded_len() < limit {
        return vec![whole];
    }
    let WatchResponse { events, .. } = &whole;
    let empty = WatchResponse { events: Vec::new(), fragment: true, ..whole.clone() };
    let base_len = empty.encoded_len();
    let mut parts = Vec::new();
    let mut idx = 0;
    loop {
        let mut part = empty.clone();
        let mut len = base_len;
        while idx < events.len() {
            // Field 11 has a one-byte tag.
            let ev_len = events[idx].encoded_len();
            let add = 1 + prost::length_delimiter_len(ev_len) + ev_len;
            if !part.events.is_empty() && len + add >= limit {
                break;
            }
            part.events.push(events[idx].clone());
            len += add;
            idx += 1;
        }
        if idx == events.len() {
            part.fragment = false;
        }
        let last = !part.fragment;
        parts.push(part);
        if last {
            return parts;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    fn create(key: &[u8], end: &[u8]) -> WatchCreateRequest {
        WatchCreateRequest { key: key.to_vec(), range_end: end.to_vec(), ..Default::default() }
    }

    #[test]
    fn create_requests_follow_etcds_key_conventions() {
        assert_eq!(watch_spec(create(b"", b"")).span, KeySpan::Key(vec![0]));
        assert_eq!(watch_spec(create(b"a", b"")).span, KeySpan::Key(b"a".to_vec()));
        assert_eq!(watch_spec(create(b"a", b"\0")).span, KeySpan::From(b"a".to_vec()));
        assert_eq!(watch_spec(create(b"", b"\0")).span, KeySpan::From(vec![0]));
        assert_eq!(watch_spec(create(b"a", b"b")).span, KeySpan::Range(b"a".to_vec(), b"b".to_vec()));
        let filtered = WatchCreateRequest { filters: vec![1, 7], ..create(b"a", b"") };
        let spec = watch_spec(filtered);
        assert!(spec.no_delete && !spec.no_put, "unknown filter values are ignored");
    }

    fn big_event(i: u8, size: usize) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue { key: vec![b'k', i], value: vec![b'v'; size], mod_revision: 2, ..Default::default() }),
            prev_kv: None,
        }
    }

    #[test]
    fn fragments_split_as_etcd_does() {
        let whole = WatchResponse {
            header: Some(ResponseHeader { revision: 9, ..Default::default() }),
            watch_id: 3,
            events: (0..5).map(|i| big_event(i, 400)).collect(),
            ..Default::default()
        };
        // Under the limit: one response.
        assert_eq!(fragments(whole.clone(), 1 << 20), vec![whole.clone()]);
        // Each part stays under 1000 bytes: two events per part, the last one alone.
        let parts = fragments(whole.clone(), 1000);
        assert_eq!(parts.iter().map(|p| p.events.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
        assert_eq!(parts.iter().map(|p| p.fragment).collect::<Vec<_>>(), vec![true, true, false]);
        assert!(parts.iter().all(|p| p.watch_id == 3 && p.header == whole.header));
        assert!(parts[..2].iter().all(|p| p.encoded_len() < 1000));
        // An event larger than the limit still travels, one per part.
        let parts = fragments(whole.clone(), 10);
        assert_eq!(parts.len(), 5);
        // A single event is never fragmented.
        let one = WatchResponse { events: vec![big_event(0, 5000)], ..whole };
        assert_eq!(fragments(one.clone(), 10), vec![one]);
    }

    #[test]
    fn hasleader_streams_end_after_three_leaderless_election_timeouts() {
        let mut w = LeaderWatch::default();
        assert!(!w.lost(false));
        assert!(!w.lost(false));
        assert!(!w.lost(true), "a leader resets the count");
        assert!(!w.lost(false));
        assert!(!w.lost(false));
        assert!(w.lost(false));
    }

    #[test]
    fn progress_period_has_up_to_ten_percent_jitter() {
        for _ in 0..100 {
            let p = progress_period(Duration::from_secs(10));
            assert!(p >= Duration::from_secs(10) && p < Duration::from_secs(11), "{p:?}");
        }
    }

    #[test]
    fn compacted_cancel_has_header_revision_zero() {
        let base = ResponseHeader { cluster_id: 1, member_id: 2, revision: 0, raft_term: 3 };
        let r = responses(Outgoing::Compacted { watch_id: 4, compact_revision: 7 }, &base, 1 << 20);
        assert_eq!(
            r,
            vec![WatchResponse {
                header: Some(base),
                watch_id: 4,
                canceled: true,
                compact_revision: 7,
                ..Default::default()
            }]
        );
        let r =
            responses(Outgoing::Rejected { revision: 5, reason: crate::watch::Rejection::DuplicateId }, &base, 1 << 20);
        assert_eq!(r[0].watch_id, -1);
        assert!(r[0].created && r[0].canceled);
        assert_eq!(r[0].cancel_reason, "mvcc: duplicate watch ID provided on the WatchStream");
        assert_eq!(r[0].header.map(|h| h.revision), Some(5));
    }
}
