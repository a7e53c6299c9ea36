//! Prometheus metrics with etcd 3.5's names, labels and histogram buckets (`etcd_server_*`,
//! `etcd_mvcc_*`, `etcd_disk_*`, `etcd_snap_*`, `etcd_network_*`, `etcd_debugging_*`,
//! go-grpc-prometheus's `grpc_server_*`, `process_*`, `os_fd_*`), and their text exposition for
//! `/metrics`.
//!
//! A small hand-written registry: process-wide atomics, as etcd's metrics live in Prometheus's
//! default registry. Events are counted where they happen (WAL writes and fsyncs, storage commits,
//! proposals, applies, mvcc transactions, watch deliveries, lease changes, snapshots, peer calls,
//! gRPC calls); state that can be read at any time (leadership, database size, key and watcher
//! counts, the quota, the auth revision) is read from the node when `/metrics` is rendered.
//!
//! Left out because they mean nothing in Keel: `go_*` and `etcd_server_go_version` (no Go
//! runtime), `etcd_grpc_proxy_*` (no gRPC proxy), `etcd_debugging_store_*` (no v2 store, so no
//! `version="v2"` series of `etcd_server_apply_duration_seconds` either), bbolt's commit phases
//! (`etcd_debugging_disk_backend_commit_{rebalance,spill,write}_duration_seconds`), `promhttp_*`
//! (Go's HTTP handler), `etcd_network_active_peers` / `etcd_network_disconnected_peers_total`
//! (rafthttp's long-lived per-peer streams; Keel's peer calls keep no such connection state), and
//! the watch send-loop timings of later etcd releases.
//!
//! Peer traffic counts raft's messages (appends, heartbeats, votes, snapshots, leader transfers),
//! as etcd's rafthttp does; the writes and keep-alives a follower forwards to the leader travel
//! beside raft here and are not peer traffic (etcd too sends its lease calls over a separate HTTP
//! path). `grpc_server_*` list a method once it was called (etcd lists every method at 0 from the
//! start).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use openraft::async_runtime::WatchReceiver;
use tonic::Code;

use crate::node::Node;

/// A monotonically increasing count. Each counter and gauge has a cache line of its own, so
/// counters bumped on different paths (reads, writes, storage) do not contend with each other.
#[derive(Default)]
#[repr(align(64))]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
#[repr(align(64))]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Holds a gauge one higher while it lives (etcd's `Inc()` ... `defer Dec()`).
pub struct GaugeGuard(&'static Gauge);

impl GaugeGuard {
    pub fn hold(gauge: &'static Gauge) -> Self {
        gauge.add(1);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

/// `prometheus.ExponentialBuckets(start, factor, N)`, computed as Go computes it (each bound the
/// previous one times the factor), so the `le` labels print the same.
const fn exponential<const N: usize>(start: f64, factor: f64) -> [f64; N] {
    let mut out = [0.0; N];
    let mut bound = start;
    let mut i = 0;
    while i < N {
        out[i] = bound;
        bound *= factor;
        i += 1;
    }
    out
}

/// etcd's disk histograms: `prometheus.ExponentialBuckets(0.001, 2, 14)`, 1 ms to 8.192 s.
pub const DISK_BUCKETS: [f64; 14] =
    [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192];
/// `etcd_server_apply_duration_seconds`: `ExponentialBuckets(0.0001, 2, 20)`, 0.1 ms to 52.4 s.
pub const APPLY_BUCKETS: [f64; 20] = exponential(0.0001, 2.0);
/// Defragmentation: `ExponentialBuckets(.1, 2, 13)`, 100 ms to 409.6 s.
pub const DEFRAG_BUCKETS: [f64; 13] = exponential(0.1, 2.0);
/// Backend snapshots: `ExponentialBuckets(.01, 2, 17)`, 10 ms to 655.36 s.
pub const BACKEND_SNAPSHOT_BUCKETS: [f64; 17] = exponential(0.01, 2.0);
/// Storage hashes: `ExponentialBuckets(.01, 2, 15)`, 10 ms to 163.84 s.
pub const HASH_BUCKETS: [f64; 15] = exponential(0.01, 2.0);
/// A received database snapshot's save: `ExponentialBuckets(0.1, 2, 10)`, 100 ms to 51.2 s.
pub const SNAP_DB_SAVE_BUCKETS: [f64; 10] = exponential(0.1, 2.0);
/// Lease TTLs in seconds: `ExponentialBuckets(1, 2, 24)`, 1 s to 2^23 s.
pub const LEASE_TTL_BUCKETS: [f64; 24] = exponential(1.0, 2.0);
/// Compaction timings in milliseconds.
pub const INDEX_COMPACTION_PAUSE_BUCKETS: [f64; 14] = exponential(0.5, 2.0);
pub const DB_COMPACTION_PAUSE_BUCKETS: [f64; 13] = exponential(1.0, 2.0);
pub const DB_COMPACTION_TOTAL_BUCKETS: [f64; 14] = exponential(100.0, 2.0);

/// A fixed-bucket histogram (of seconds, unless its name says otherwise).
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; the last slot is `+Inf`.
    counts: Vec<AtomicU64>,
    /// The sum of observations, as f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum: AtomicU64::new(0) }
    }

    pub fn observe(&self, took: Duration) {
        self.observe_value(took.as_secs_f64());
    }

    /// etcd's millisecond histograms observe whole milliseconds (`time.Since(t) / time.Millisecond`).
    pub fn observe_millis(&self, took: Duration) {
        self.observe_value(took.as_millis() as f64);
    }

    pub fn observe_value(&self, value: f64) {
        let slot = self.bounds.iter().position(|&b| value <= b).unwrap_or(self.bounds.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + value).to_bits()));
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        self.render_series(out, name, "");
    }

    /// The samples of one series; `labels` is empty or `key="value",` (with the trailing comma).
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{}\"}} {cumulative}", go_float(*bound));
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let series = labels.trim_end_matches(',');
        let braces = if series.is_empty() { String::new() } else { format!("{{{series}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", f64::from_bits(self.sum.load(Ordering::Relaxed)));
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// A number as Go's `strconv.FormatFloat(v, 'g', -1, 64)` prints it, which is how Prometheus's Go
/// client writes `le` labels: shortest digits, in exponent form from 1e+06 up and below 1e-04.
fn go_float(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        return format!("{v}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
}

/// Lazily filled slots of a small label set (client versions, apply ops): reads take no lock,
/// only the first use of a label does. Labels past the capacity are not counted.
struct LabelSlots<T, const N: usize> {
    slots: [OnceLock<(Box<str>, T)>; N],
    adding: Mutex<()>,
}

impl<T, const N: usize> LabelSlots<T, N> {
    const fn new() -> Self {
        LabelSlots { slots: [const { OnceLock::new() }; N], adding: Mutex::new(()) }
    }

    fn get(&self, label: &str, make: impl FnOnce() -> T) -> Option<&T> {
        let mut make = Some(make);
        for slot in &self.slots {
            let filled = match slot.get() {
                Some(filled) => filled,
                None => {
                    // Slots fill in order under the lock, so a label is never in two of them.
                    let _adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_init(|| (label.into(), (make.take().expect("made once"))()))
                }
            };
            if &*filled.0 == label {
                return Some(&filled.1);
            }
        }
        None
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.slots.iter().map_while(|s| s.get()).map(|(label, value)| (&**label, value))
    }
}

// ---- peers (etcd's rafthttp metrics) ----

/// etcd's peer round-trip buckets: `prometheus.ExponentialBuckets(0.0001, 2, 16)`, 0.1 ms to 3.3 s.
pub const PEER_RTT_BUCKETS: [f64; 16] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048, 0.4096, 0.8192,
    1.6384, 3.2768,
];

/// What this member exchanged with one other member, by its id (etcd's `To` / `From` labels).
pub struct PeerCounters {
    /// Round trips (`etcd_network_peer_round_trip_time_seconds{To}`). etcd measures them with a
    /// prober; Keel times the raft heartbeats it sends anyway (appends without entries), which
    /// carry no payload and make the peer do no disk work.
    rtt: Histogram,
    /// When the last answered heartbeat to the peer was sent, in µs since `EPOCH` (0: none yet
    /// in this term of leadership).
    last_heartbeat: AtomicU64,
    sent_bytes: AtomicU64,
    received_bytes: AtomicU64,
    sent_failures: AtomicU64,
    received_failures: AtomicU64,
}

/// At most this many peers are tracked (etcd clusters have a handful of members).
const MAX_PEERS: usize = 64;

/// Counters by peer id, never removed (as a Prometheus vector keeps a removed member's series), so
/// they can be handed out as `&'static`.
static PEERS: LazyLock<RwLock<BTreeMap<u64, &'static PeerCounters>>> = LazyLock::new(Default::default);

fn peer(id: u64) -> Option<&'static PeerCounters> {
    if let Some(p) = PEERS.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
        return Some(p);
    }
    let mut peers = PEERS.write().unwrap_or_else(|p| p.into_inner());
    if peers.len() >= MAX_PEERS && !peers.contains_key(&id) {
        return None;
    }
    Some(peers.entry(id).or_insert_with(|| {
        Box::leak(Box::new(PeerCounters {
            rtt: Histogram::new(&PEER_RTT_BUCKETS),
            last_heartbeat: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            sent_failures: AtomicU64::new(0),
            received_failures: AtomicU64::new(0),
        }))
    }))
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
/// Raft's heartbeat interval in ms (set at boot from raft's configuration).
static HEARTBEAT_MS: AtomicU64 = AtomicU64::new(100);
pub static HEARTBEAT_SEND_FAILURES: Counter = Counter::new();

/// One answered heartbeat to `to`, sent `took` ago: its round trip, and etcd's
/// `heartbeat_send_failures_total` when it went out more than two heartbeat intervals after the
/// previous one to the same member (etcd's leader counts a heartbeat it could not send on time,
/// "likely overloaded from slow disk").
pub fn observe_peer_rtt(to: u64, took: Duration) {
    let Some(p) = peer(to) else { return };
    p.rtt.observe(took);
    let sent_at = (Instant::now().saturating_duration_since(*EPOCH).saturating_sub(took)).as_micros() as u64 + 1;
    let previous = p.last_heartbeat.swap(sent_at, Ordering::Relaxed);
    let late_after = 2 * HEARTBEAT_MS.load(Ordering::Relaxed) * 1000;
    if previous != 0 && sent_at.saturating_sub(previous) > late_after {
        HEARTBEAT_SEND_FAILURES.inc();
    }
}

/// A new leader starts its heartbeats afresh.
fn forget_heartbeats() {
    for p in PEERS.read().unwrap_or_else(|p| p.into_inner()).values() {
        p.last_heartbeat.store(0, Ordering::Relaxed);
    }
}

/// The size of a peer message as etcd counts it: its encoded protobuf length.
pub fn peer_message_bytes(payload: &crate::proto::keelpeer::Payload) -> u64 {
    prost::Message::encoded_len(payload) as u64
}

/// One raft call to member `to` that sent `sent` bytes: when it was answered, the bytes sent and
/// the answer's bytes, received from it (its failure is counted by [`peer_reached`]).
pub fn peer_call<E>(
    to: u64,
    sent: u64,
    answered: &Result<Result<tonic::Response<crate::proto::keelpeer::Payload>, tonic::Status>, E>,
) {
    if let (Some(p), Ok(Ok(answer))) = (peer(to), answered) {
        p.sent_bytes.fetch_add(sent, Ordering::Relaxed);
        p.received_bytes.fetch_add(peer_message_bytes(answer.get_ref()), Ordering::Relaxed);
    }
}

/// How a raft call or a replication stream to member `to` ended: one that failed (unreachable,
/// timed out, refused) is a send failure, as etcd counts a message its transport could not send.
pub fn peer_reached(to: u64, reached: bool) {
    if let (false, Some(p)) = (reached, peer(to)) {
        p.sent_failures.fetch_add(1, Ordering::Relaxed);
        // Heartbeats start afresh once it answers again (its lateness was the peer's, not ours).
        p.last_heartbeat.store(0, Ordering::Relaxed);
    }
}

/// The messages of a replication stream to member `to`, counted as sent as they go.
pub fn counting_sent<S>(to: u64, messages: S) -> impl futures::Stream<Item = crate::proto::keelpeer::Payload>
where
    S: futures::Stream<Item = crate::proto::keelpeer::Payload>,
{
    let p = peer(to);
    futures::StreamExt::map(messages, move |m| {
        if let Some(p) = p {
            p.sent_bytes.fetch_add(peer_message_bytes(&m), Ordering::Relaxed);
        }
        m
    })
}

/// A message of a replication stream from member `to`, counted as received.
pub fn received_from(from: u64, message: crate::proto::keelpeer::Payload) -> crate::proto::keelpeer::Payload {
    if let Some(p) = peer(from) {
        p.received_bytes.fetch_add(peer_message_bytes(&message), Ordering::Relaxed);
    }
    message
}

/// Metadata naming the calling member on every peer call, so the receiving member can label what
/// it received (`From`) and answered (`To`).
pub const PEER_MEMBER_HEADER: &str = "keel-member-id";
static LOCAL_MEMBER: RwLock<Option<tonic::metadata::AsciiMetadataValue>> = RwLock::new(None);

/// Name this member on an outgoing peer call.
pub fn name_peer_sender(metadata: &mut tonic::metadata::MetadataMap) {
    if let Some(id) = LOCAL_MEMBER.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        metadata.insert(PEER_MEMBER_HEADER, id.clone());
    }
}

/// The raft methods of the peer service: its other calls (the cluster lookup of a joining member,
/// calls forwarded to the leader) are not raft traffic.
fn is_raft_path(path: &str) -> bool {
    matches!(
        path,
        "/keelpeer.Peer/AppendEntries"
            | "/keelpeer.Peer/StreamAppend"
            | "/keelpeer.Peer/Vote"
            | "/keelpeer.Peer/PreVote"
            | "/keelpeer.Peer/InstallSnapshot"
            | "/keelpeer.Peer/TransferLeader"
    )
}

/// The peer port's tower layer: raft messages received from a member (`received_bytes{From}`,
/// `received_failures{From}` for a message that broke off or could not be decoded) and the
/// answers sent back to it (`sent_bytes{To}`), told apart by the caller's [`PEER_MEMBER_HEADER`].
#[derive(Clone, Copy, Default)]
pub struct PeerMetricsLayer;

impl<S> tower::Layer<S> for PeerMetricsLayer {
    type Service = PeerMetrics<S>;
    fn layer(&self, inner: S) -> PeerMetrics<S> {
        PeerMetrics { inner }
    }
}

#[derive(Clone)]
pub struct PeerMetrics<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for PeerMetrics<S>
where
    S: tower::Service<http::Request<Framed<B>>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = MeteredCall<S::Future, &'static PeerCounters>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let from = is_raft_path(request.uri().path())
            .then(|| request.headers().get(PEER_MEMBER_HEADER))
            .flatten()
            .and_then(|v| u64::from_str_radix(v.to_str().ok()?, 16).ok())
            .and_then(peer);
        let sink = from.map(Sink::PeerReceived);
        MeteredCall { inner: self.inner.call(request.map(|b| Framed::new(b, sink))), hook: from }
    }
}

/// The peer side's look at a response head: an undecodable message is answered at once, with
/// the status in the headers; the body counts as sent to the peer.
impl ResponseHook for &'static PeerCounters {
    fn on_response(self, response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
        if tonic::Status::from_header_map(response.headers()).is_some_and(|s| s.code() == Code::InvalidArgument) {
            self.received_failures.fetch_add(1, Ordering::Relaxed);
        }
        response.map(|b| tonic::body::Body::new(Framed::new(b, Some(Sink::PeerSent(self)))))
    }
}

// ---- disk ----

pub static WAL_FSYNC: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&DISK_BUCKETS));
/// One WAL write (the staged records of a batch), and its bytes (a gauge in etcd).
pub static WAL_WRITE: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&DISK_BUCKETS));
pub static WAL_WRITE_BYTES: Counter = Counter::new();
pub static BACKEND_COMMIT: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&DISK_BUCKETS));
pub static DEFRAG: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&DEFRAG_BUCKETS));
pub static DEFRAG_INFLIGHT: Gauge = Gauge::new();
/// A whole-database export, from its start until it was all sent (etcd times its backend
/// snapshots the same way): `Maintenance.Snapshot`, and the dump a raft snapshot sends.
pub static BACKEND_SNAPSHOT: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&BACKEND_SNAPSHOT_BUCKETS));
/// Saving a raft snapshot's record (etcd's `.snap` file): its fsync, its encoding, the whole save.
pub static SNAP_FSYNC: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&DISK_BUCKETS));
pub static SNAP_SAVE_MARSHALLING: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&DISK_BUCKETS));
pub static SNAP_SAVE_TOTAL: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&DISK_BUCKETS));
/// A raft snapshot received from the leader: making its database durable, and the whole save.
pub static SNAP_DB_FSYNC: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&DISK_BUCKETS));
pub static SNAP_DB_SAVE: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&SNAP_DB_SAVE_BUCKETS));

// ---- server ----

pub static PROPOSALS_PENDING: Gauge = Gauge::new();
pub static PROPOSALS_FAILED: Counter = Counter::new();
pub static LEADER_CHANGES: Counter = Counter::new();
pub static HEALTH_SUCCESS: Counter = Counter::new();
pub static HEALTH_FAILURES: Counter = Counter::new();
pub static SLOW_APPLY: Counter = Counter::new();
pub static READ_INDEXES_FAILED: Counter = Counter::new();
pub static SLOW_READ_INDEXES: Counter = Counter::new();
pub static LEARNER_PROMOTE_SUCCESSES: Counter = Counter::new();
pub static SNAPSHOT_APPLY_IN_PROGRESS: Gauge = Gauge::new();

/// etcd's `--experimental-warning-apply-duration` default: an apply, or a read-only Range, taking
/// longer is slow (Keel accepts the flag but does not read it).
pub const WARNING_APPLY_DURATION: Duration = Duration::from_millis(100);

/// Applies by etcd's `op` name and success (`etcd_server_apply_duration_seconds{version="v3"}`).
static APPLY: LabelSlots<[Histogram; 2], 40> = LabelSlots::new();

/// One applied command: `op` is etcd's name for it; a failure is any error but `Compacted`.
pub fn observe_apply(op: &str, success: bool, took: Duration) {
    if let Some(h) = APPLY.get(op, || [Histogram::new(&APPLY_BUCKETS), Histogram::new(&APPLY_BUCKETS)]) {
        h[usize::from(success)].observe(took);
    }
    if took > WARNING_APPLY_DURATION {
        SLOW_APPLY.inc();
    }
}

/// A read-only Range served without the log, timed from its arrival (etcd's
/// `warnOfExpensiveReadOnlyRangeRequest` counts it as a slow apply too).
pub fn observe_read_only(took: Duration) {
    if took > WARNING_APPLY_DURATION {
        SLOW_APPLY.inc();
    }
}

/// A read-index round that failed: a timeout is etcd's slow read index, anything else (no leader,
/// leadership moved, this member stopping) a failed one.
pub fn read_index_failed(e: &crate::error::Error) {
    match e {
        crate::error::Error::Timeout => SLOW_READ_INDEXES.inc(),
        _ => READ_INDEXES_FAILED.inc(),
    }
}

/// One `/health` answer, counted as etcd's `etcd_server_health_{success,failures}`.
pub fn health_checked(healthy: bool) {
    if healthy {
        HEALTH_SUCCESS.inc()
    } else {
        HEALTH_FAILURES.inc()
    }
}

/// Counts a proposal in flight (etcd's `proposals_pending`) until dropped.
pub struct PendingProposal(());

impl PendingProposal {
    pub fn start() -> Self {
        PROPOSALS_PENDING.add(1);
        PendingProposal(())
    }
}

impl Drop for PendingProposal {
    fn drop(&mut self) {
        PROPOSALS_PENDING.add(-1);
    }
}

/// Follow raft's leadership for `etcd_server_leader_changes_seen_total`: every leader this member
/// sees take office counts, the first one included (a fresh single member reports 1, as etcd does).
/// Also notes, once at boot, what the peer metrics need: this member's id (named on its peer
/// calls) and raft's heartbeat interval.
pub fn watch_leader_changes(node: &Arc<Node>) {
    HEARTBEAT_MS.store(node.raft.config().heartbeat_interval.max(1), Ordering::Relaxed);
    if let Ok(id) = format!("{:x}", node.member_id).parse() {
        *LOCAL_MEMBER.write().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }
    let mut metrics = node.raft.metrics();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            if leader.is_some() && leader != last {
                LEADER_CHANGES.inc();
                forget_heartbeats();
            }
            last = leader;
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

// ---- mvcc ----

pub static MVCC_RANGE: Counter = Counter::new();
pub static MVCC_PUT: Counter = Counter::new();
pub static MVCC_DELETE: Counter = Counter::new();
pub static MVCC_TXN: Counter = Counter::new();
/// Key plus value bytes of every put (a gauge in etcd, though it only grows).
pub static MVCC_PUT_BYTES: Counter = Counter::new();
pub static HASH: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&HASH_BUCKETS));
pub static HASH_REV: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&HASH_BUCKETS));
pub static DB_COMPACTION_KEYS: Counter = Counter::new();
/// Unix seconds at the end of the last physical compaction (0 until one ran since start).
pub static DB_COMPACTION_LAST: Gauge = Gauge::new();
pub static INDEX_COMPACTION_PAUSE: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(&INDEX_COMPACTION_PAUSE_BUCKETS));
pub static DB_COMPACTION_PAUSE: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&DB_COMPACTION_PAUSE_BUCKETS));
pub static DB_COMPACTION_TOTAL: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&DB_COMPACTION_TOTAL_BUCKETS));
/// Storage read transactions open right now (redb's; sled has none).
pub static OPEN_READ_TXNS: Gauge = Gauge::new();

/// What one mvcc transaction did, counted as etcd's `metricsTxnWrite` counts it when the
/// transaction ends: every Range, Put and DeleteRange call (a DeleteRange counts once however many
/// keys it deletes, a Put or DeleteRange that reads the previous value also counts a Range), and
/// the transaction itself in `etcd_mvcc_txn_total` when it made more than one such call.
#[derive(Default)]
pub struct TxnCounts {
    ranges: std::cell::Cell<u32>,
    puts: std::cell::Cell<u32>,
    deletes: std::cell::Cell<u32>,
    put_bytes: std::cell::Cell<u64>,
}

impl TxnCounts {
    pub fn range(&self) {
        self.ranges.set(self.ranges.get() + 1);
    }

    /// A put of `bytes` key and value bytes.
    pub fn put(&self, bytes: u64) {
        self.puts.set(self.puts.get() + 1);
        self.put_bytes.set(self.put_bytes.get() + bytes);
    }

    pub fn delete(&self) {
        self.deletes.set(self.deletes.get() + 1);
    }

    /// Add this transaction's counts to the totals and start afresh (etcd ends one transaction and
    /// begins the next where a write Txn moves from its compares to its writes).
    pub fn end(&self) {
        let (ranges, puts, deletes, put_bytes) =
            (self.ranges.take(), self.puts.take(), self.deletes.take(), self.put_bytes.take());
        if ranges + puts + deletes > 1 {
            MVCC_TXN.inc();
        }
        for (counter, n) in [(&MVCC_RANGE, ranges), (&MVCC_PUT, puts), (&MVCC_DELETE, deletes)] {
            if n > 0 {
                counter.add(u64::from(n));
            }
        }
        if put_bytes > 0 {
            MVCC_PUT_BYTES.add(put_bytes);
        }
    }
}

impl Drop for TxnCounts {
    fn drop(&mut self) {
        self.end();
    }
}

/// Counts an open storage read transaction until dropped.
pub struct OpenReadTxn(());

impl OpenReadTxn {
    pub fn open() -> Self {
        OPEN_READ_TXNS.add(1);
        OpenReadTxn(())
    }
}

impl Drop for OpenReadTxn {
    fn drop(&mut self) {
        OPEN_READ_TXNS.add(-1);
    }
}

/// Events handed to watch streams and not yet taken by their send loops, and events sent.
pub static WATCH_PENDING_EVENTS: Gauge = Gauge::new();
pub static WATCH_EVENTS: Counter = Counter::new();

// ---- leases ----

pub static LEASE_GRANTED: Counter = Counter::new();
pub static LEASE_RENEWED: Counter = Counter::new();
pub static LEASE_REVOKED: Counter = Counter::new();
pub static LEASE_EXPIRED: Counter = Counter::new();
pub static LEASE_TTL: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&LEASE_TTL_BUCKETS));

/// A lease granted (on every member, as it applies the grant) with `ttl` seconds.
pub fn lease_granted(ttl: i64) {
    LEASE_GRANTED.inc();
    LEASE_TTL.observe_value(ttl as f64);
}

// ---- gRPC bodies: message framing ----

/// Where a body's gRPC framing stands: each message is a 1-byte compression flag, a 4-byte
/// big-endian length and that many bytes. etcd counts message bytes (its codec's marshalled and
/// unmarshalled sizes), so the 5-byte prefixes are left out.
#[derive(Default)]
struct Frames {
    /// Prefix bytes read of the current message (0..=5).
    prefix: u8,
    /// While reading the prefix, the length so far; then the message bytes still to come.
    left: u32,
}

impl Frames {
    /// One chunk of the body: how many messages start in it, and how many message bytes it holds.
    fn feed(&mut self, mut data: &[u8]) -> (u64, u64) {
        let (mut messages, mut bytes) = (0, 0);
        while let Some((&first, rest)) = data.split_first() {
            if self.prefix < 5 {
                self.left = if self.prefix == 0 { 0 } else { (self.left << 8) | u32::from(first) };
                self.prefix += 1;
                data = rest;
                if self.prefix == 5 {
                    messages += 1;
                    if self.left == 0 {
                        self.prefix = 0;
                    }
                }
                continue;
            }
            let take = data.len().min(self.left as usize);
            bytes += take as u64;
            self.left -= take as u32;
            data = &data[take..];
            if self.left == 0 {
                self.prefix = 0;
            }
        }
        (messages, bytes)
    }
}

/// What a body's messages are counted as.
#[derive(Clone, Copy)]
enum Sink {
    /// A client call's request messages.
    GrpcReceived(&'static MethodCounters),
    /// A client call's response messages; the call's code comes with the trailers.
    GrpcSent(&'static MethodCounters),
    /// A raft message from a member.
    PeerReceived(&'static PeerCounters),
    /// The answer to a member's raft message.
    PeerSent(&'static PeerCounters),
}

impl Sink {
    fn data(self, messages: u64, bytes: u64) {
        let (byte_counter, message_counter) = match self {
            Sink::GrpcReceived(m) => (&m.received_bytes, m.streaming.then_some(&m.msg_received)),
            Sink::GrpcSent(m) => (&m.sent_bytes, m.streaming.then_some(&m.msg_sent)),
            Sink::PeerReceived(p) => (&p.received_bytes, None),
            Sink::PeerSent(p) => (&p.sent_bytes, None),
        };
        if bytes > 0 {
            byte_counter.fetch_add(bytes, Ordering::Relaxed);
        }
        if let Some(counter) = message_counter.filter(|_| messages > 0) {
            counter.fetch_add(messages, Ordering::Relaxed);
        }
    }
}

/// A request or response body whose gRPC messages are counted as they pass. A client response
/// also records the call's code when its trailers pass by; one dropped before that (the client
/// went away) counts as Canceled.
pub struct Framed<B> {
    inner: B,
    sink: Option<Sink>,
    frames: Frames,
    /// A client call whose code is still to be counted.
    unsettled: bool,
}

impl<B> Framed<B> {
    fn new(inner: B, sink: Option<Sink>) -> Self {
        let unsettled = matches!(sink, Some(Sink::GrpcSent(_)));
        Framed { inner, sink, frames: Frames::default(), unsettled }
    }

    fn settle(&mut self, code: Code) {
        if let (true, Some(Sink::GrpcSent(m))) = (self.unsettled, self.sink) {
            self.unsettled = false;
            m.handled[(code as usize).min(16)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<B> Drop for Framed<B> {
    fn drop(&mut self) {
        self.settle(Code::Cancelled);
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Framed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Some(sink) = this.sink else { return polled };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let (messages, bytes) = this.frames.feed(data);
                    sink.data(messages, bytes);
                } else if let Some(status) = frame.trailers_ref().and_then(tonic::Status::from_header_map) {
                    this.settle(status.code());
                }
            }
            // A stream the caller ends between messages (a replication session openraft closes)
            // lost nothing; one that breaks off inside a message did.
            Poll::Ready(Some(Err(_))) if this.frames.prefix != 0 => {
                if let Sink::PeerReceived(p) = sink {
                    p.received_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---- gRPC: go-grpc-prometheus's server metrics, etcd's client byte and version counts ----

/// One gRPC method's counters. Created once per method and never dropped, so a call costs a read
/// lock and a few atomic increments, with no allocation and no reference counting. The fields a
/// call always touches come first, on one cache line.
pub struct MethodCounters {
    started: AtomicU64,
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
    /// Stream messages; a unary call has exactly one request, and one response when it succeeds,
    /// so its message counts are `started` and `handled[OK]` (as go-grpc-prometheus counts them).
    msg_received: AtomicU64,
    msg_sent: AtomicU64,
    /// By code (0..=16).
    handled: [AtomicU64; 17],
    streaming: bool,
    service: String,
    method: String,
    kind: &'static str,
}

impl MethodCounters {
    /// `/etcdserverpb.KV/Range` → service `etcdserverpb.KV`, method `Range`, and its streaming
    /// kind. Only etcd's services are counted, so odd paths cannot grow the table.
    fn from_path(path: &str) -> Option<MethodCounters> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let known = ["etcdserverpb.", "v3lockpb.", "v3electionpb.", "grpc.health.v1."];
        if !known.iter().any(|p| service.starts_with(p)) || method.is_empty() || method.contains('/') {
            return None;
        }
        let kind = match (service, method) {
            ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
            ("etcdserverpb.Maintenance", "Snapshot")
            | ("v3electionpb.Election", "Observe")
            | ("grpc.health.v1.Health", "Watch") => "server_stream",
            _ => "unary",
        };
        Some(MethodCounters {
            started: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            msg_received: AtomicU64::new(0),
            msg_sent: AtomicU64::new(0),
            handled: Default::default(),
            streaming: kind != "unary",
            service: service.to_string(),
            method: method.to_string(),
            kind,
        })
    }

    fn messages_received(&self) -> u64 {
        if self.streaming {
            self.msg_received.load(Ordering::Relaxed)
        } else {
            self.started.load(Ordering::Relaxed)
        }
    }

    fn messages_sent(&self) -> u64 {
        if self.streaming {
            self.msg_sent.load(Ordering::Relaxed)
        } else {
            self.handled[Code::Ok as usize].load(Ordering::Relaxed)
        }
    }
}

/// At most this many methods are tracked (etcd's services have about 60).
const MAX_METHODS: usize = 256;

/// Counters by request path, ordered so that the exposition lists them by service and method.
static GRPC: LazyLock<RwLock<BTreeMap<String, &'static MethodCounters>>> = LazyLock::new(Default::default);

fn counters_for(path: &str) -> Option<&'static MethodCounters> {
    if let Some(c) = GRPC.read().unwrap_or_else(|p| p.into_inner()).get(path) {
        return Some(c);
    }
    let fresh = MethodCounters::from_path(path)?;
    let mut table = GRPC.write().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = table.get(path) {
        return Some(c);
    }
    if table.len() >= MAX_METHODS {
        return None;
    }
    let leaked: &'static MethodCounters = Box::leak(Box::new(fresh));
    table.insert(path.to_string(), leaked);
    Some(leaked)
}

/// Client calls by `type` (unary or stream) and the `client-api-version` metadata the client sent
/// (`unknown` without one), as etcd's interceptors count them (`etcd_server_client_requests_total`).
/// The first 32 versions seen are counted.
static CLIENT_VERSIONS: LabelSlots<[AtomicU64; 2], 32> = LabelSlots::new();
const CLIENT_API_VERSION: http::HeaderName = http::HeaderName::from_static("client-api-version");

fn count_client_request(version: Option<&http::HeaderValue>, streaming: bool) {
    // etcd refuses a version that is not UTF-8 before counting it.
    let Ok(version) = version.map_or(Ok("unknown"), |v| std::str::from_utf8(v.as_bytes())) else { return };
    if let Some(counts) = CLIENT_VERSIONS.get(version, Default::default) {
        counts[usize::from(streaming)].fetch_add(1, Ordering::Relaxed);
    }
}

/// grpc-go's names for codes, the values of the `grpc_code` label.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// A tower layer counting every gRPC call of etcd's services: started
/// (`grpc_server_started_total`), how it ended (`grpc_server_handled_total`, by code from the
/// response's `grpc-status`), its messages (`grpc_server_msg_{received,sent}_total`) and their
/// bytes (`etcd_network_client_grpc_{received,sent}_bytes_total`), and the client's API version
/// (`etcd_server_client_requests_total`). It wraps the client port's whole service (`server.rs`),
/// where request bodies are boxed once anyway, so counting them costs no allocation; the HTTP
/// gateway's calls go through it too (`api/gateway.rs`), as etcd's gateway is a gRPC client of its
/// own server. Anything else (HTTP, unknown paths) passes untouched.
#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S> GrpcMetrics<S> {
    pub fn new(inner: S) -> Self {
        GrpcMetrics { inner }
    }
}

impl<S, B> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<Framed<B>>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = MeteredCall<S::Future, &'static MethodCounters>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let method = if is_grpc { counters_for(request.uri().path()) } else { None };
        if let Some(m) = method {
            m.started.fetch_add(1, Ordering::Relaxed);
            count_client_request(request.headers().get(CLIENT_API_VERSION), m.streaming);
        }
        let request = request.map(|body| Framed::new(body, method.map(Sink::GrpcReceived)));
        MeteredCall { inner: self.inner.call(request), hook: method }
    }
}

pin_project_lite::pin_project! {
    /// A metered call until its response head arrives, when `hook` (if any) sees the head (no
    /// allocation per call: this is every RPC's path).
    pub struct MeteredCall<F, H> {
        #[pin]
        inner: F,
        hook: Option<H>,
    }
}

/// What a metering layer does with a call's response head.
pub trait ResponseHook {
    fn on_response(self, response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>;
}

impl<F, E, H: ResponseHook> Future for MeteredCall<F, H>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = Result<http::Response<tonic::body::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => Poll::Ready(Ok(match this.hook.take() {
                Some(hook) => hook.on_response(response),
                None => response,
            })),
            other => other,
        }
    }
}

impl ResponseHook for &'static MethodCounters {
    fn on_response(self, response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
        // A trailers-only response (an error before any message) carries its status up front and
        // no message to count.
        if let Some(status) = tonic::Status::from_header_map(response.headers()) {
            self.handled[(status.code() as usize).min(16)].fetch_add(1, Ordering::Relaxed);
            return response;
        }
        // The body is boxed here instead of by the router further in: one box per call either way.
        response.map(|b| tonic::body::Body::new(Framed::new(b, Some(Sink::GrpcSent(self)))))
    }
}

// ---- exposition ----

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, help: &str, kind: &str, value: impl std::fmt::Display) {
    header(out, name, help, kind);
    let _ = writeln!(out, "{name} {value}");
}

/// One per-peer counter family (`label` is `To` or `From`). Like a Prometheus vector, it is
/// listed only once some peer has a sample.
fn render_peer_counter(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    value: impl Fn(&PeerCounters) -> &AtomicU64,
) {
    let peers = PEERS.read().unwrap_or_else(|p| p.into_inner());
    let mut listed = false;
    for (id, p) in peers.iter() {
        let n = value(p).load(Ordering::Relaxed);
        if n == 0 {
            continue;
        }
        if !listed {
            header(out, name, help, "counter");
            listed = true;
        }
        let _ = writeln!(out, "{name}{{{label}=\"{id:x}\"}} {n}");
    }
}

fn render_peer_rtt(out: &mut String) {
    let peers = PEERS.read().unwrap_or_else(|p| p.into_inner());
    let name = "etcd_network_peer_round_trip_time_seconds";
    let mut listed = false;
    for (to, p) in peers.iter().filter(|(_, p)| p.rtt.count() > 0) {
        if !listed {
            header(out, name, "Round-Trip-Time histogram between peers", "histogram");
            listed = true;
        }
        p.rtt.render_series(out, name, &format!("To=\"{to:x}\","));
    }
}

fn render_network(o: &mut String) {
    let (mut received, mut sent) = (0, 0);
    for m in GRPC.read().unwrap_or_else(|p| p.into_inner()).values() {
        received += m.received_bytes.load(Ordering::Relaxed);
        sent += m.sent_bytes.load(Ordering::Relaxed);
    }
    sample(
        o,
        "etcd_network_client_grpc_received_bytes_total",
        "The total number of bytes received from grpc clients.",
        "counter",
        received,
    );
    sample(
        o,
        "etcd_network_client_grpc_sent_bytes_total",
        "The total number of bytes sent to grpc clients.",
        "counter",
        sent,
    );
    render_peer_counter(
        o,
        "etcd_network_peer_received_bytes_total",
        "The total number of bytes received from peers.",
        "From",
        |p| &p.received_bytes,
    );
    render_peer_counter(
        o,
        "etcd_network_peer_received_failures_total",
        "The total number of receive failures from peers.",
        "From",
        |p| &p.received_failures,
    );
    render_peer_rtt(o);
    render_peer_counter(
        o,
        "etcd_network_peer_sent_bytes_total",
        "The total number of bytes sent to peers.",
        "To",
        |p| &p.sent_bytes,
    );
    render_peer_counter(
        o,
        "etcd_network_peer_sent_failures_total",
        "The total number of send failures from peers.",
        "To",
        |p| &p.sent_failures,
    );
}

fn render_grpc(o: &mut String) {
    let table = GRPC.read().unwrap_or_else(|p| p.into_inner());
    header(
        o,
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        "counter",
    );
    for m in table.values() {
        for (code, n) in m.handled.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let _ = writeln!(
                o,
                "grpc_server_handled_total{{grpc_code=\"{}\",grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"}} {n}",
                code_name(Code::from_i32(code as i32)),
                m.method,
                m.service,
                m.kind
            );
        }
    }
    let per_method = |o: &mut String, name: &str, help: &str, value: &dyn Fn(&MethodCounters) -> u64| {
        header(o, name, help, "counter");
        for m in table.values() {
            let _ = writeln!(
                o,
                "{name}{{grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"}} {}",
                m.method,
                m.service,
                m.kind,
                value(m)
            );
        }
    };
    per_method(
        o,
        "grpc_server_msg_received_total",
        "Total number of RPC stream messages received on the server.",
        &MethodCounters::messages_received,
    );
    per_method(
        o,
        "grpc_server_msg_sent_total",
        "Total number of gRPC stream messages sent by the server.",
        &MethodCounters::messages_sent,
    );
    per_method(o, "grpc_server_started_total", "Total number of RPCs started on the server.", &|m| {
        m.started.load(Ordering::Relaxed)
    });
}

/// The whole `/metrics` page, in Prometheus's text format (version 0.0.4).
pub fn render(node: &Node) -> String {
    let mut out = String::with_capacity(32 * 1024);
    let o = &mut out;
    let raft = node.raft_status();

    // etcd_cluster_version carries major.minor only.
    header(
        o,
        "etcd_cluster_version",
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
        "gauge",
    );
    let major_minor = crate::config::ETCD_CLUSTER_VERSION.trim_end_matches(".0");
    let _ = writeln!(o, "etcd_cluster_version{{cluster_version=\"{major_minor}\"}} 1");

    sample(
        o,
        "etcd_debugging_auth_revision",
        "The current revision of auth store.",
        "gauge",
        node.applier.auth().revision(),
    );
    sample(
        o,
        "etcd_debugging_lease_granted_total",
        "The total number of granted leases.",
        "counter",
        LEASE_GRANTED.get(),
    );
    sample(
        o,
        "etcd_debugging_lease_renewed_total",
        "The number of renewed leases seen by the leader.",
        "counter",
        LEASE_RENEWED.get(),
    );
    sample(
        o,
        "etcd_debugging_lease_revoked_total",
        "The total number of revoked leases.",
        "counter",
        LEASE_REVOKED.get(),
    );
    LEASE_TTL.render(o, "etcd_debugging_lease_ttl_total", "Bucketed histogram of lease TTLs.");

    let mvcc = node.mvcc();
    sample(
        o,
        "etcd_debugging_mvcc_compact_revision",
        "The revision of the last compaction in store.",
        "gauge",
        mvcc.compact_revision(),
    );
    sample(
        o,
        "etcd_debugging_mvcc_current_revision",
        "The current revision of store.",
        "gauge",
        mvcc.current_revision(),
    );
    sample(
        o,
        "etcd_debugging_mvcc_db_compaction_keys_total",
        "Total number of db keys compacted.",
        "counter",
        DB_COMPACTION_KEYS.get(),
    );
    sample(
        o,
        "etcd_debugging_mvcc_db_compaction_last",
        "The unix time of the last db compaction. Resets to 0 on start.",
        "gauge",
        DB_COMPACTION_LAST.get(),
    );
    DB_COMPACTION_PAUSE.render(
        o,
        "etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds",
        "Bucketed histogram of db compaction pause duration.",
    );
    DB_COMPACTION_TOTAL.render(
        o,
        "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds",
        "Bucketed histogram of db compaction total duration.",
    );
    sample(
        o,
        "etcd_debugging_mvcc_events_total",
        "Total number of events sent by this member.",
        "counter",
        WATCH_EVENTS.get(),
    );
    INDEX_COMPACTION_PAUSE.render(
        o,
        "etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds",
        "Bucketed histogram of index compaction pause duration.",
    );
    sample(o, "etcd_debugging_mvcc_keys_total", "Total number of keys.", "gauge", mvcc.key_count());
    sample(
        o,
        "etcd_debugging_mvcc_pending_events_total",
        "Total number of pending events to be sent.",
        "gauge",
        WATCH_PENDING_EVENTS.get().max(0),
    );
    sample(
        o,
        "etcd_debugging_mvcc_range_total",
        "Total number of ranges seen by this member.",
        "counter",
        MVCC_RANGE.get(),
    );
    let watchers = node.applier.watch().stats();
    sample(
        o,
        "etcd_debugging_mvcc_slow_watcher_total",
        "Total number of unsynced slow watchers.",
        "gauge",
        watchers.slow,
    );
    sample(
        o,
        "etcd_debugging_mvcc_total_put_size_in_bytes",
        "The total size of put kv pairs seen by this member.",
        "gauge",
        MVCC_PUT_BYTES.get(),
    );
    sample(o, "etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.", "gauge", watchers.streams);
    sample(o, "etcd_debugging_mvcc_watcher_total", "Total number of watchers.", "gauge", watchers.watchers);
    SNAP_SAVE_MARSHALLING.render(
        o,
        "etcd_debugging_snap_save_marshalling_duration_seconds",
        "The marshalling cost distributions of save called by snapshot.",
    );
    SNAP_SAVE_TOTAL.render(
        o,
        "etcd_debugging_snap_save_total_duration_seconds",
        "The total latency distributions of save called by snapshot.",
    );
    sample(
        o,
        "etcd_debugging_server_lease_expired_total",
        "The total number of expired leases.",
        "counter",
        LEASE_EXPIRED.get(),
    );

    BACKEND_COMMIT.render(
        o,
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
    );
    DEFRAG.render(
        o,
        "etcd_disk_backend_defrag_duration_seconds",
        "The latency distribution of backend defragmentation.",
    );
    BACKEND_SNAPSHOT.render(
        o,
        "etcd_disk_backend_snapshot_duration_seconds",
        "The latency distribution of backend snapshots.",
    );
    sample(
        o,
        "etcd_disk_defrag_inflight",
        "Whether or not defrag is active on the member. 1 means active, 0 means not.",
        "gauge",
        DEFRAG_INFLIGHT.get().clamp(0, 1),
    );
    WAL_FSYNC.render(o, "etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL.");
    sample(
        o,
        "etcd_disk_wal_write_bytes_total",
        "Total number of bytes written in WAL.",
        "gauge",
        WAL_WRITE_BYTES.get(),
    );
    WAL_WRITE.render(o, "etcd_disk_wal_write_duration_seconds", "The latency distributions of write called by WAL.");

    sample(
        o,
        "etcd_mvcc_db_open_read_transactions",
        "The number of currently open read transactions",
        "gauge",
        OPEN_READ_TXNS.get().max(0),
    );
    if let Ok(size) = node.db_size() {
        sample(
            o,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            "gauge",
            size.total_bytes,
        );
        sample(
            o,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            "gauge",
            size.in_use_bytes,
        );
    }
    sample(o, "etcd_mvcc_delete_total", "Total number of deletes seen by this member.", "counter", MVCC_DELETE.get());
    HASH.render(o, "etcd_mvcc_hash_duration_seconds", "The latency distribution of storage hash operation.");
    HASH_REV.render(
        o,
        "etcd_mvcc_hash_rev_duration_seconds",
        "The latency distribution of storage hash by revision operation.",
    );
    sample(o, "etcd_mvcc_put_total", "Total number of puts seen by this member.", "counter", MVCC_PUT.get());
    sample(o, "etcd_mvcc_range_total", "Total number of ranges seen by this member.", "counter", MVCC_RANGE.get());
    sample(o, "etcd_mvcc_txn_total", "Total number of txns seen by this member.", "counter", MVCC_TXN.get());

    render_network(o);

    let applies: Vec<_> = APPLY.iter().collect();
    if !applies.is_empty() {
        let name = "etcd_server_apply_duration_seconds";
        header(o, name, "The latency distributions of v2 apply called by backend.", "histogram");
        for (op, by_success) in applies {
            for (success, h) in [(false, &by_success[0]), (true, &by_success[1])] {
                if h.count() > 0 {
                    h.render_series(o, name, &format!("op=\"{op}\",success=\"{success}\",version=\"v3\","));
                }
            }
        }
    }
    let mut client_requests = String::new();
    for (version, counts) in CLIENT_VERSIONS.iter() {
        for (kind, n) in [("unary", &counts[0]), ("stream", &counts[1])] {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    client_requests,
                    "etcd_server_client_requests_total{{client_api_version=\"{}\",type=\"{kind}\"}} {n}",
                    version.replace('\\', "\\\\").replace('"', "\\\"")
                );
            }
        }
    }
    if !client_requests.is_empty() {
        header(
            o,
            "etcd_server_client_requests_total",
            "The total number of client requests per client version.",
            "counter",
        );
        o.push_str(&client_requests);
    }
    sample(
        o,
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        "gauge",
        u8::from(raft.leader.is_some()),
    );
    sample(
        o,
        "etcd_server_health_failures",
        "The total number of failed health checks",
        "counter",
        HEALTH_FAILURES.get(),
    );
    sample(
        o,
        "etcd_server_health_success",
        "The total number of successful health checks",
        "counter",
        HEALTH_SUCCESS.get(),
    );
    sample(
        o,
        "etcd_server_heartbeat_send_failures_total",
        "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
        "counter",
        HEARTBEAT_SEND_FAILURES.get(),
    );
    header(
        o,
        "etcd_server_id",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        "gauge",
    );
    let _ = writeln!(o, "etcd_server_id{{server_id=\"{:x}\"}} 1", node.member_id);
    sample(
        o,
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        "gauge",
        u8::from(raft.is_leader),
    );
    sample(
        o,
        "etcd_server_is_learner",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        "gauge",
        u8::from(node.is_learner()),
    );
    sample(
        o,
        "etcd_server_leader_changes_seen_total",
        "The number of leader changes seen.",
        "counter",
        LEADER_CHANGES.get(),
    );
    sample(
        o,
        "etcd_server_learner_promote_successes",
        "The total number of successful learner promotions while this member is leader.",
        "counter",
        LEARNER_PROMOTE_SUCCESSES.get(),
    );
    let applied = raft.applied_index.max(node.applier.applying_index());
    sample(
        o,
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        "gauge",
        applied,
    );
    // etcd reports raft's commit index here (a gauge, despite the name); never behind what was
    // applied, whichever of the two openraft's metrics have caught up with.
    let committed = raft.commit_index.max(applied);
    sample(
        o,
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        "gauge",
        committed,
    );
    sample(
        o,
        "etcd_server_proposals_failed_total",
        "The total number of failed proposals seen.",
        "counter",
        PROPOSALS_FAILED.get(),
    );
    sample(
        o,
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit.",
        "gauge",
        PROPOSALS_PENDING.get().max(0),
    );
    // etcd reports the quota in force: its 2 GiB default for 0, nothing (0) when turned off.
    let quota = if node.limits.quota_bytes == u64::MAX { 0 } else { node.limits.quota_bytes };
    sample(o, "etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.", "gauge", quota);
    sample(
        o,
        "etcd_server_read_indexes_failed_total",
        "The total number of failed read indexes seen.",
        "counter",
        READ_INDEXES_FAILED.get(),
    );
    sample(
        o,
        "etcd_server_slow_apply_total",
        "The total number of slow apply requests (likely overloaded from slow disk).",
        "counter",
        SLOW_APPLY.get(),
    );
    sample(
        o,
        "etcd_server_slow_read_indexes_total",
        "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
        "counter",
        SLOW_READ_INDEXES.get(),
    );
    sample(
        o,
        "etcd_server_snapshot_apply_in_progress_total",
        "1 if the server is applying the incoming snapshot. 0 if none.",
        "gauge",
        SNAPSHOT_APPLY_IN_PROGRESS.get().clamp(0, 1),
    );
    header(
        o,
        "etcd_server_version",
        "Which version is running. 1 for 'server_version' label with current version.",
        "gauge",
    );
    let _ = writeln!(o, "etcd_server_version{{server_version=\"{}\"}} 1", crate::config::ETCD_API_VERSION);

    SNAP_DB_FSYNC.render(
        o,
        "etcd_snap_db_fsync_duration_seconds",
        "The latency distributions of fsyncing .snap.db file",
    );
    SNAP_DB_SAVE.render(
        o,
        "etcd_snap_db_save_total_duration_seconds",
        "The total latency distributions of v3 snapshot save",
    );
    SNAP_FSYNC.render(o, "etcd_snap_fsync_duration_seconds", "The latency distributions of fsync called by snap.");

    render_grpc(o);
    process_metrics(o);
    out
}

/// A soft limit from `/proc/self/limits` (Linux only): `Some(None)` when unlimited.
fn soft_limit(name: &str) -> Option<Option<u64>> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let value = limits.lines().find_map(|l| l.strip_prefix(name))?.split_whitespace().next()?;
    Some(value.parse().ok())
}

/// etcd's own file descriptor gauges and the process collector's metrics, read from `/proc`
/// (Linux only; elsewhere they are left out).
fn process_metrics(o: &mut String) {
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count);
    let fd_limit = soft_limit("Max open files").flatten();
    if let Some(max) = fd_limit {
        sample(o, "os_fd_limit", "The file descriptor limit.", "gauge", max);
    }
    if let Some(fds) = open_fds {
        sample(o, "os_fd_used", "The number of used file descriptors.", "gauge", fds);
    }
    // utime, stime and starttime are fields 14, 15 and 22 of /proc/self/stat, in clock ticks
    // (100 a second on Linux).
    const TICKS: f64 = 100.0;
    let stat: Option<(u64, u64)> = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
        let after_name = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = after_name.split_whitespace().collect();
        Some((f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?, f.get(19)?.parse().ok()?))
    });
    if let Some((cpu, _)) = stat {
        sample(
            o,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
            cpu as f64 / TICKS,
        );
    }
    if let Some(max) = fd_limit {
        sample(o, "process_max_fds", "Maximum number of open file descriptors.", "gauge", max);
    }
    // Every interface of the process's network namespace, as the Go collector reads them.
    if let Some((received, sent)) = std::fs::read_to_string("/proc/self/net/dev").ok().map(|dev| {
        dev.lines().filter_map(|l| l.split_once(':')).fold((0u64, 0u64), |(rx, tx), (_, counters)| {
            let f: Vec<u64> = counters.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            (rx + f.first().copied().unwrap_or(0), tx + f.get(8).copied().unwrap_or(0))
        })
    }) {
        sample(
            o,
            "process_network_receive_bytes_total",
            "Number of bytes received by the process over the network.",
            "counter",
            received,
        );
        sample(
            o,
            "process_network_transmit_bytes_total",
            "Number of bytes sent by the process over the network.",
            "counter",
            sent,
        );
    }
    if let Some(fds) = open_fds {
        sample(o, "process_open_fds", "Number of open file descriptors.", "gauge", fds);
    }
    let page = 4096u64;
    let statm = std::fs::read_to_string("/proc/self/statm").ok().and_then(|s| {
        let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
        Some((f.next()??, f.next()??))
    });
    if let Some((_, rss)) = statm {
        sample(o, "process_resident_memory_bytes", "Resident memory size in bytes.", "gauge", rss * page);
    }
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse::<u64>().ok());
    if let (Some((_, started)), Some(boot)) = (stat, boot_time) {
        sample(
            o,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "gauge",
            go_float(boot as f64 + started as f64 / TICKS),
        );
    }
    if let Some((virt, _)) = statm {
        sample(o, "process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge", virt * page);
    }
    if let Some(max) = soft_limit("Max address space") {
        // Unlimited is the largest value the limit can hold, as Go reports it.
        sample(
            o,
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes.",
            "gauge",
            go_float(max.unwrap_or(u64::MAX) as f64),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        static BOUNDS: [f64; 3] = [0.001, 0.002, 0.004];
        let h = Histogram::new(&BOUNDS);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_micros(1500));
        h.observe(Duration::from_secs(1));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "# HELP x_seconds help",
                "# TYPE x_seconds histogram",
                "x_seconds_bucket{le=\"0.001\"} 1",
                "x_seconds_bucket{le=\"0.002\"} 2",
                "x_seconds_bucket{le=\"0.004\"} 2",
                "x_seconds_bucket{le=\"+Inf\"} 3",
                "x_seconds_sum 1.002",
                "x_seconds_count 3",
            ]
        );
    }

    #[test]
    fn bucket_bounds_print_as_etcds() {
        let printed = |bounds: &[f64]| bounds.iter().map(|b| go_float(*b)).collect::<Vec<_>>().join(" ");
        // As etcd 3.5.16's /metrics lists them.
        assert_eq!(
            printed(&APPLY_BUCKETS),
            "0.0001 0.0002 0.0004 0.0008 0.0016 0.0032 0.0064 0.0128 0.0256 0.0512 0.1024 0.2048 0.4096 0.8192 \
             1.6384 3.2768 6.5536 13.1072 26.2144 52.4288"
        );
        assert_eq!(
            printed(&BACKEND_SNAPSHOT_BUCKETS),
            "0.01 0.02 0.04 0.08 0.16 0.32 0.64 1.28 2.56 5.12 10.24 20.48 40.96 81.92 163.84 327.68 655.36"
        );
        assert_eq!(printed(&DEFRAG_BUCKETS), "0.1 0.2 0.4 0.8 1.6 3.2 6.4 12.8 25.6 51.2 102.4 204.8 409.6");
        assert_eq!(printed(&SNAP_DB_SAVE_BUCKETS), "0.1 0.2 0.4 0.8 1.6 3.2 6.4 12.8 25.6 51.2");
        assert_eq!(
            printed(&LEASE_TTL_BUCKETS),
            "1 2 4 8 16 32 64 128 256 512 1024 2048 4096 8192 16384 32768 65536 131072 262144 524288 \
             1.048576e+06 2.097152e+06 4.194304e+06 8.388608e+06"
        );
        assert_eq!(printed(&INDEX_COMPACTION_PAUSE_BUCKETS), "0.5 1 2 4 8 16 32 64 128 256 512 1024 2048 4096");
        assert_eq!(printed(&DB_COMPACTION_TOTAL_BUCKETS)[..16], *"100 200 400 800 ");
        assert_eq!(printed(&DISK_BUCKETS), printed(&exponential::<14>(0.001, 2.0)));
        assert_eq!(printed(&PEER_RTT_BUCKETS), printed(&exponential::<16>(0.0001, 2.0)));
        assert_eq!(go_float(2147483648.0), "2.147483648e+09");
        assert_eq!(go_float(0.00001), "1e-05");
    }

    #[test]
    fn frames_count_messages_and_their_bytes_across_chunks() {
        let mut body = Vec::new();
        for message in [&b"hello"[..], b"", &[7u8; 300][..]] {
            body.push(0);
            body.extend_from_slice(&(message.len() as u32).to_be_bytes());
            body.extend_from_slice(message);
        }
        for split in [1, 2, 3, 5, 7, 64, body.len()] {
            let mut frames = Frames::default();
            let (mut messages, mut bytes) = (0, 0);
            for chunk in body.chunks(split) {
                let (m, b) = frames.feed(chunk);
                messages += m;
                bytes += b;
            }
            assert_eq!((messages, bytes), (3, 305), "chunks of {split}");
            assert_eq!(frames.prefix, 0, "between messages at the end");
        }
        let mut frames = Frames::default();
        frames.feed(&body[..9]);
        assert_ne!(frames.prefix, 0, "inside the first message");
    }

    #[test]
    fn label_slots_keep_one_slot_per_label_and_stop_at_capacity() {
        static SLOTS: LabelSlots<AtomicU64, 2> = LabelSlots::new();
        SLOTS.get("3.5", Default::default).unwrap().fetch_add(1, Ordering::Relaxed);
        SLOTS.get("unknown", Default::default).unwrap().fetch_add(1, Ordering::Relaxed);
        SLOTS.get("3.5", Default::default).unwrap().fetch_add(1, Ordering::Relaxed);
        assert!(SLOTS.get("3.4", Default::default).is_none());
        let seen: Vec<(&str, u64)> = SLOTS.iter().map(|(l, n)| (l, n.load(Ordering::Relaxed))).collect();
        assert_eq!(seen, [("3.5", 2), ("unknown", 1)]);
    }

    #[test]
    fn grpc_paths_name_service_method_and_kind() {
        let m = MethodCounters::from_path("/etcdserverpb.Watch/Watch").unwrap();
        assert_eq!((m.service.as_str(), m.method.as_str(), m.kind), ("etcdserverpb.Watch", "Watch", "bidi_stream"));
        assert!(m.streaming);
        assert_eq!(MethodCounters::from_path("/etcdserverpb.KV/Range").unwrap().kind, "unary");
        assert_eq!(MethodCounters::from_path("/etcdserverpb.Maintenance/Snapshot").unwrap().kind, "server_stream");
        assert!(MethodCounters::from_path("/health").is_none());
        assert!(MethodCounters::from_path("/made.Up/Call").is_none());
    }

    #[test]
    fn grpc_counters_are_shared_per_method() {
        let a = counters_for("/etcdserverpb.Cluster/MemberPromote").unwrap();
        let b = counters_for("/etcdserverpb.Cluster/MemberPromote").unwrap();
        assert!(std::ptr::eq(a, b));
        let before = a.handled[Code::NotFound as usize].load(Ordering::Relaxed);
        let mut body = Framed::new(tonic::body::Body::empty(), Some(Sink::GrpcSent(b)));
        body.settle(Code::NotFound);
        drop(body);
        assert_eq!(a.handled[Code::NotFound as usize].load(Ordering::Relaxed), before + 1, "counted once");
    }
}
