//! Prometheus metrics with etcd 3.5's names, labels and histogram buckets (`etcd_server_*`,
//! `etcd_mvcc_*`, `etcd_disk_*`, go-grpc-prometheus's `grpc_server_*`, `process_*`), and their text
//! exposition for `/metrics`.
//!
//! A small hand-written registry: process-wide atomics, as etcd's metrics live in Prometheus's
//! default registry. Events are counted where they happen (WAL fsync, storage commits, proposals,
//! mvcc writes, gRPC calls); state that can be read at any time (leadership, database size, key and
//! watcher counts) is read from the node when `/metrics` is rendered.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame};
use openraft::async_runtime::WatchReceiver;
use tonic::Code;

use crate::node::Node;

/// A monotonically increasing count.
#[derive(Default)]
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
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// etcd's disk histograms: `prometheus.ExponentialBuckets(0.001, 2, 14)`, 1 ms to 8.192 s.
pub const DISK_BUCKETS: [f64; 14] =
    [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192];

/// A fixed-bucket histogram of durations in seconds.
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
        let secs = took.as_secs_f64();
        let slot = self.bounds.iter().position(|&b| secs <= b).unwrap_or(self.bounds.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + secs).to_bits()));
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
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let series = labels.trim_end_matches(',');
        let braces = if series.is_empty() { String::new() } else { format!("{{{series}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", f64::from_bits(self.sum.load(Ordering::Relaxed)));
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// etcd's peer round-trip buckets: `prometheus.ExponentialBuckets(0.0001, 2, 16)`, 0.1 ms to 3.3 s.
pub const PEER_RTT_BUCKETS: [f64; 16] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048, 0.4096, 0.8192,
    1.6384, 3.2768,
];

/// Round trips to each peer (`etcd_network_peer_round_trip_time_seconds{To="<member id>"}`). etcd
/// measures them with a prober; Keel times the raft heartbeats it sends anyway (appends without
/// entries), which carry no payload and make the peer do no disk work.
static PEER_RTT: LazyLock<std::sync::Mutex<std::collections::BTreeMap<u64, Histogram>>> =
    LazyLock::new(Default::default);

pub fn observe_peer_rtt(to: u64, took: Duration) {
    let mut peers = PEER_RTT.lock().unwrap_or_else(|p| p.into_inner());
    peers.entry(to).or_insert_with(|| Histogram::new(&PEER_RTT_BUCKETS)).observe(took);
}

fn render_peer_rtt(out: &mut String) {
    let peers = PEER_RTT.lock().unwrap_or_else(|p| p.into_inner());
    // Like a Prometheus vector with no children, nothing is listed before the first round trip.
    if peers.is_empty() {
        return;
    }
    let name = "etcd_network_peer_round_trip_time_seconds";
    header(out, name, "Round-Trip-Time histogram between peers", "histogram");
    for (to, h) in peers.iter() {
        h.render_series(out, name, &format!("To=\"{to:x}\","));
    }
}

pub static WAL_FSYNC: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&DISK_BUCKETS));
pub static BACKEND_COMMIT: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(&DISK_BUCKETS));
pub static PROPOSALS_PENDING: Gauge = Gauge::new();
pub static PROPOSALS_FAILED: Counter = Counter::new();
pub static LEADER_CHANGES: Counter = Counter::new();
pub static MVCC_PUT: Counter = Counter::new();
pub static MVCC_DELETE: Counter = Counter::new();
pub static HEALTH_SUCCESS: Counter = Counter::new();
pub static HEALTH_FAILURES: Counter = Counter::new();

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
pub fn watch_leader_changes(node: &Arc<Node>) {
    let mut metrics = node.raft.metrics();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            if leader.is_some() && leader != last {
                LEADER_CHANGES.inc();
            }
            last = leader;
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

// ---- gRPC: go-grpc-prometheus's server metrics ----

/// One gRPC method's counters. Created once per method and shared, so a call costs a read lock
/// and two atomic increments, with no allocation.
pub struct MethodCounters {
    service: String,
    method: String,
    kind: &'static str,
    started: AtomicU64,
    /// By code (0..=16).
    handled: [AtomicU64; 17],
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
            service: service.to_string(),
            method: method.to_string(),
            kind,
            started: AtomicU64::new(0),
            handled: Default::default(),
        })
    }
}

/// At most this many methods are tracked (etcd's services have about 60).
const MAX_METHODS: usize = 256;

/// Counters by request path, ordered so that the exposition lists them by service and method.
static GRPC: LazyLock<RwLock<BTreeMap<String, Arc<MethodCounters>>>> = LazyLock::new(Default::default);

fn counters_for(path: &str) -> Option<Arc<MethodCounters>> {
    if let Some(c) = GRPC.read().unwrap_or_else(|p| p.into_inner()).get(path) {
        return Some(c.clone());
    }
    let fresh = MethodCounters::from_path(path)?;
    let mut table = GRPC.write().unwrap_or_else(|p| p.into_inner());
    if table.len() >= MAX_METHODS && !table.contains_key(path) {
        return None;
    }
    Some(table.entry(path.to_string()).or_insert_with(|| Arc::new(fresh)).clone())
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

/// A tower layer counting every gRPC call (`grpc_server_started_total`) and how it ended
/// (`grpc_server_handled_total`, by code from the response's `grpc-status`). Calls made by the HTTP
/// gateway pass through it too, as in etcd, whose gateway is a gRPC client of its own server.
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

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<Metered<RB>>;
    type Error = S::Error;
    type Future = MeteredCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let method = if is_grpc { counters_for(request.uri().path()) } else { None };
        if let Some(m) = &method {
            m.started.fetch_add(1, Ordering::Relaxed);
        }
        MeteredCall { inner: self.inner.call(request), method }
    }
}

pin_project_lite::pin_project! {
    /// The call until its response head arrives (no allocation per call: this is every RPC's path).
    pub struct MeteredCall<F> {
        #[pin]
        inner: F,
        method: Option<Arc<MethodCounters>>,
    }
}

impl<F, RB, E> Future for MeteredCall<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<Metered<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(response)) => response,
        };
        let mut method = this.method.take();
        // A trailers-only response (an error before any message) carries its status up front.
        if let Some(status) = tonic::Status::from_header_map(response.headers()) {
            handled(status.code(), method.take());
        }
        Poll::Ready(Ok(response.map(|inner| Metered { inner: Some(inner), method })))
    }
}

/// A response body that records the call's code when its trailers pass by; a call whose body is
/// dropped before that (the client went away) counts as Canceled.
pub struct Metered<B> {
    inner: Option<B>,
    method: Option<Arc<MethodCounters>>,
}

/// Count one finished call (at most once: the method is taken).
fn handled(code: Code, method: Option<Arc<MethodCounters>>) {
    if let Some(m) = method {
        m.handled[(code as usize).min(16)].fetch_add(1, Ordering::Relaxed);
    }
}

impl<B> Metered<B> {
    fn handled(&mut self, code: Code) {
        handled(code, self.method.take());
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        self.handled(Code::Cancelled);
    }
}

impl<B: Body + Unpin> Body for Metered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(status) = frame.trailers_ref().and_then(tonic::Status::from_header_map) {
                self.handled(status.code());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_default()
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

/// The whole `/metrics` page, in Prometheus's text format (version 0.0.4).
pub fn render(node: &Node) -> String {
    let mut out = String::with_capacity(16 * 1024);
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

    WAL_FSYNC.render(o, "etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL.");
    render_peer_rtt(o);
    BACKEND_COMMIT.render(
        o,
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
    );

    let compact = node.mvcc().compact_revision();
    let current = node.mvcc().current_revision();
    sample(
        o,
        "etcd_debugging_mvcc_compact_revision",
        "The revision of the last compaction in store.",
        "gauge",
        compact,
    );
    sample(o, "etcd_debugging_mvcc_current_revision", "The current revision of store.", "gauge", current);
    sample(o, "etcd_debugging_mvcc_keys_total", "Total number of keys.", "gauge", node.mvcc().key_count());
    let watchers = node.applier.watch().stats();
    sample(o, "etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.", "gauge", watchers.streams);
    sample(o, "etcd_debugging_mvcc_watcher_total", "Total number of watchers.", "gauge", watchers.watchers);

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
    sample(o, "etcd_mvcc_put_total", "Total number of puts seen by this member.", "counter", MVCC_PUT.get());

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
    sample(o, "etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.", "gauge", 0);
    sample(
        o,
        "etcd_server_leader_changes_seen_total",
        "The number of leader changes seen.",
        "counter",
        LEADER_CHANGES.get(),
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
    header(
        o,
        "etcd_server_version",
        "Which version is running. 1 for 'server_version' label with current version.",
        "gauge",
    );
    let _ = writeln!(o, "etcd_server_version{{server_version=\"{}\"}} 1", crate::config::ETCD_API_VERSION);

    {
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
        header(o, "grpc_server_started_total", "Total number of RPCs started on the server.", "counter");
        for m in table.values() {
            let _ = writeln!(
                o,
                "grpc_server_started_total{{grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"}} {}",
                m.method,
                m.service,
                m.kind,
                m.started.load(Ordering::Relaxed)
            );
        }
    }

    process_metrics(o);
    out
}

/// The process collector's basics, read from `/proc` (Linux only; elsewhere they are left out).
fn process_metrics(o: &mut String) {
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        sample(o, "process_open_fds", "Number of open file descriptors.", "gauge", fds.count());
    }
    if let Some(max) = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
        l.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse::<u64>().ok()
    }) {
        sample(o, "process_max_fds", "Maximum number of open file descriptors.", "gauge", max);
    }
    let page = 4096u64;
    if let Some((virt, rss)) = std::fs::read_to_string("/proc/self/statm").ok().and_then(|s| {
        let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
        Some((f.next()??, f.next()??))
    }) {
        sample(o, "process_resident_memory_bytes", "Resident memory size in bytes.", "gauge", rss * page);
        sample(o, "process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge", virt * page);
    }
    // utime and stime are fields 14 and 15 of /proc/self/stat, in clock ticks (100 a second on Linux).
    if let Some(ticks) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
        let after_name = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = after_name.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }) {
        sample(
            o,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
            ticks as f64 / 100.0,
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
    fn grpc_paths_name_service_method_and_kind() {
        let m = MethodCounters::from_path("/etcdserverpb.Watch/Watch").unwrap();
        assert_eq!((m.service.as_str(), m.method.as_str(), m.kind), ("etcdserverpb.Watch", "Watch", "bidi_stream"));
        assert_eq!(MethodCounters::from_path("/etcdserverpb.KV/Range").unwrap().kind, "unary");
        assert_eq!(MethodCounters::from_path("/etcdserverpb.Maintenance/Snapshot").unwrap().kind, "server_stream");
        assert!(MethodCounters::from_path("/health").is_none());
        assert!(MethodCounters::from_path("/made.Up/Call").is_none());
    }

    #[test]
    fn grpc_counters_are_shared_per_method() {
        let a = counters_for("/etcdserverpb.Cluster/MemberPromote").unwrap();
        let b = counters_for("/etcdserverpb.Cluster/MemberPromote").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let before = a.handled[Code::NotFound as usize].load(Ordering::Relaxed);
        handled(Code::NotFound, Some(b));
        assert_eq!(a.handled[Code::NotFound as usize].load(Ordering::Relaxed), before + 1);
    }
}
