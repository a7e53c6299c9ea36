//! Differential watch scenarios: a step model that opens watch streams, sends watch requests,
//! writes through KV and collects what each stream receives until it goes quiet, run on the
//! reference etcd and on the candidate and compared after normalising headers (cluster, member
//! and term zeroed; revisions kept) and the order of responses *between* watchers of a stream
//! (etcd delivers one revision to a stream's watchers in map order); each watcher's own responses
//! keep their order.

use std::collections::BTreeMap;
use std::time::Duration;

use keel::proto::etcdserverpb::watch_request::RequestUnion;
use keel::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, ResponseHeader, TxnRequest, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::diff;
use crate::server::{HarnessError, Server, ServerKind};

/// A stream is quiet once nothing arrived for this long (etcd syncs unsynced watchers every
/// 100 ms).
pub const QUIET: Duration = Duration::from_millis(500);
/// Longest a single collection may run.
const COLLECT_LIMIT: Duration = Duration::from_secs(20);

/// One thing a watch scenario does.
#[derive(Debug, Clone)]
pub enum WStep {
    /// Open watch stream number `stream` (on its own connection); `require_leader` sends the
    /// `hasleader: true` metadata.
    Open {
        stream: usize,
        require_leader: bool,
    },
    /// Send one request on a stream.
    Send {
        stream: usize,
        request: WatchRequest,
    },
    /// Receive until the stream is quiet; the outcome lists what arrived.
    Collect {
        stream: usize,
    },
    /// Receive for exactly this long.
    CollectFor {
        stream: usize,
        duration: Duration,
    },
    /// Half-close the stream's send side.
    CloseSend {
        stream: usize,
    },
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    Wait(Duration),
}

/// What one step produced.
#[derive(Debug, Clone, PartialEq)]
pub enum WOutcome {
    Opened,
    Sent,
    /// Responses, grouped by watch id (ascending, -1 first), each watcher's in arrival order;
    /// then how the stream ended, if it did.
    Received {
        responses: Vec<WatchResponse>,
        ended: Option<String>,
    },
    /// A KV call's header revision, or its error.
    Written(Result<i64, String>),
    Error(String),
    Done,
}

/// A named list of steps run on a fresh server started with `flags`.
#[derive(Debug, Clone)]
pub struct WatchScenario {
    pub name: &'static str,
    pub flags: Vec<&'static str>,
    pub steps: Vec<WStep>,
}

impl WatchScenario {
    pub fn new(name: &'static str, steps: Vec<WStep>) -> Self {
        WatchScenario { name, flags: Vec::new(), steps }
    }

    pub fn with_flags(mut self, flags: &[&'static str]) -> Self {
        self.flags = flags.to_vec();
        self
    }
}

// ---- request builders -------------------------------------------------------------------

pub fn create(key: &str, end: &str) -> WatchCreateRequest {
    WatchCreateRequest { key: key.into(), range_end: end.into(), ..Default::default() }
}

pub use crate::watch_client::prefix_end;

pub fn create_prefix(prefix: &str) -> WatchCreateRequest {
    WatchCreateRequest { key: prefix.into(), range_end: prefix_end(prefix.as_bytes()), ..Default::default() }
}

pub fn send_create(stream: usize, c: WatchCreateRequest) -> WStep {
    WStep::Send { stream, request: WatchRequest { request_union: Some(RequestUnion::CreateRequest(c)) } }
}

pub fn send_cancel(stream: usize, watch_id: i64) -> WStep {
    WStep::Send {
        stream,
        request: WatchRequest { request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })) },
    }
}

pub fn send_progress(stream: usize) -> WStep {
    WStep::Send {
        stream,
        request: WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) },
    }
}

pub fn open(stream: usize) -> WStep {
    WStep::Open { stream, require_leader: false }
}

pub fn collect(stream: usize) -> WStep {
    WStep::Collect { stream }
}

pub fn put(key: &str, value: &str) -> WStep {
    WStep::Put(PutRequest { key: key.into(), value: value.into(), ..Default::default() })
}

pub fn del(key: &str, end: &str) -> WStep {
    WStep::Delete(DeleteRangeRequest { key: key.into(), range_end: end.into(), ..Default::default() })
}

pub fn compact(revision: i64) -> WStep {
    WStep::Compact(CompactionRequest { revision, physical: true })
}

// ---- running ----------------------------------------------------------------------------

struct OpenStream {
    requests: Option<mpsc::Sender<WatchRequest>>,
    /// Filled by a task that owns the call: etcd (grpc-go) sends the response headers only with
    /// the first message, so the call itself resolves late; its errors arrive here too.
    responses: mpsc::UnboundedReceiver<Result<WatchResponse, tonic::Status>>,
    ended: Option<String>,
}

async fn forward(
    call: impl std::future::Future<Output = Result<tonic::Response<Streaming<WatchResponse>>, tonic::Status>>,
    out: mpsc::UnboundedSender<Result<WatchResponse, tonic::Status>>,
) {
    let mut stream = match call.await {
        Ok(resp) => resp.into_inner(),
        Err(status) => {
            let _ = out.send(Err(status));
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(r)) => {
                if out.send(Ok(r)).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(status) => {
                let _ = out.send(Err(status));
                return;
            }
        }
    }
}

fn normalise(mut r: WatchResponse) -> WatchResponse {
    if let Some(h) = r.header.as_mut() {
        *h = ResponseHeader { revision: h.revision, ..Default::default() };
    }
    r
}

/// Group by watch id, keeping each watcher's order.
fn group_by_watcher(responses: Vec<WatchResponse>) -> Vec<WatchResponse> {
    let mut groups: BTreeMap<i64, Vec<WatchResponse>> = BTreeMap::new();
    for r in responses {
        groups.entry(r.watch_id).or_default().push(r);
    }
    groups.into_values().flatten().collect()
}

async fn receive(s: &mut OpenStream, window: Option<Duration>) -> WOutcome {
    let mut got = Vec::new();
    let started = tokio::time::Instant::now();
    let limit = window.unwrap_or(COLLECT_LIMIT);
    while s.ended.is_none() {
        let left = limit.saturating_sub(started.elapsed());
        let wait = if window.is_some() { left } else { QUIET.min(left) };
        if wait.is_zero() {
            break;
        }
        match tokio::time::timeout(wait, s.responses.recv()).await {
            Ok(Some(Ok(r))) => got.push(normalise(r)),
            Ok(None) => s.ended = Some("end of stream".to_string()),
            Ok(Some(Err(status))) => s.ended = Some(format!("{:?}: {}", status.code(), status.message())),
            Err(_) if window.is_some() => break,
            Err(_) => break,
        }
    }
    WOutcome::Received { responses: group_by_watcher(got), ended: s.ended.clone() }
}

fn header_revision(h: Option<ResponseHeader>) -> i64 {
    h.map(|h| h.revision).unwrap_or(-1)
}

/// Runs every step on `server` and returns one outcome per step.
pub async fn run_steps(server: &Server, steps: &[WStep]) -> Result<Vec<WOutcome>, HarnessError> {
    let mut kv = server.kv().await?;
    let mut streams: BTreeMap<usize, OpenStream> = BTreeMap::new();
    let mut outcomes = Vec::new();
    for step in steps {
        let outcome = match step.clone() {
            WStep::Open { stream, require_leader } => {
                let mut client = server.watch().await?;
                let (tx, rx) = mpsc::channel(64);
                let mut request = tonic::Request::new(ReceiverStream::new(rx));
                if require_leader {
                    request.metadata_mut().insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
                }
                let (out, responses) = mpsc::unbounded_channel();
                tokio::spawn(async move { forward(client.watch(request), out).await });
                streams.insert(stream, OpenStream { requests: Some(tx), responses, ended: None });
                WOutcome::Opened
            }
            WStep::Send { stream, request } => match streams.get(&stream).and_then(|s| s.requests.clone()) {
                Some(tx) => match tx.send(request).await {
                    Ok(()) => WOutcome::Sent,
                    Err(_) => WOutcome::Error("stream closed".to_string()),
                },
                None => WOutcome::Error(format!("stream {stream} is not open")),
            },
            WStep::Collect { stream } => match streams.get_mut(&stream) {
                Some(s) => receive(s, None).await,
                None => WOutcome::Error(format!("stream {stream} is not open")),
            },
            WStep::CollectFor { stream, duration } => match streams.get_mut(&stream) {
                Some(s) => receive(s, Some(duration)).await,
                None => WOutcome::Error(format!("stream {stream} is not open")),
            },
            WStep::CloseSend { stream } => {
                if let Some(s) = streams.get_mut(&stream) {
                    s.requests = None;
                }
                WOutcome::Done
            }
            WStep::Put(req) => WOutcome::Written(
                kv.put(req).await.map(|r| header_revision(r.into_inner().header)).map_err(|s| s.message().to_string()),
            ),
            WStep::Delete(req) => WOutcome::Written(
                kv.delete_range(req)
                    .await
                    .map(|r| header_revision(r.into_inner().header))
                    .map_err(|s| s.message().to_string()),
            ),
            WStep::Txn(req) => WOutcome::Written(
                kv.txn(req).await.map(|r| header_revision(r.into_inner().header)).map_err(|s| s.message().to_string()),
            ),
            WStep::Compact(req) => WOutcome::Written(
                kv.compact(req)
                    .await
                    .map(|r| header_revision(r.into_inner().header))
                    .map_err(|s| s.message().to_string()),
            ),
            WStep::Wait(d) => {
                tokio::time::sleep(d).await;
                WOutcome::Done
            }
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

fn describe(x: &impl std::fmt::Debug) -> String {
    diff::render(&format!("{x:#?}"))
}

/// Runs `scenario` on a fresh reference and a fresh candidate server (concurrently) and compares.
pub async fn run_differential(
    scenario: &WatchScenario,
    reference: ServerKind,
    candidate: ServerKind,
) -> Result<(), String> {
    async fn one(kind: ServerKind, scenario: &WatchScenario) -> Result<(Vec<WOutcome>, Server), HarnessError> {
        let server = Server::start_with(kind, &scenario.flags).await?;
        let outcomes = run_steps(&server, &scenario.steps).await?;
        Ok((outcomes, server))
    }
    let (r, c) = tokio::join!(one(reference, scenario), one(candidate, scenario));
    let (ref_out, _ref_server) = r.map_err(|e| format!("scenario `{}`: {reference}: {e}", scenario.name))?;
    let (cand_out, cand_server) = c.map_err(|e| format!("scenario `{}`: {candidate}: {e}", scenario.name))?;
    if let Some(dir) = std::env::var_os("KEEL_COMPAT_DUMP") {
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for (kind, role, out) in [(reference, "reference", &ref_out), (candidate, "candidate", &cand_out)] {
            let text: String = scenario
                .steps
                .iter()
                .zip(out.iter())
                .enumerate()
                .map(|(i, (s, o))| format!("#{} {}\n{}\n\n", i + 1, diff::summary(&describe(s)), describe(o)))
                .collect();
            let _ = std::fs::write(dir.join(format!("watch.{}.{role}-{kind}.txt", scenario.name)), text);
        }
    }
    let first = ref_out
        .iter()
        .zip(cand_out.iter())
        .position(|(a, b)| a != b)
        .or_else(|| (ref_out.len() != cand_out.len()).then(|| ref_out.len().min(cand_out.len())));
    let Some(index) = first else { return Ok(()) };
    let mut report = format!(
        "watch scenario `{}`: step {} of {} differs ({reference} = reference, {candidate} = candidate)\n",
        scenario.name,
        index + 1,
        scenario.steps.len()
    );
    for (i, step) in scenario.steps.iter().enumerate().take(index + 1) {
        report.push_str(&format!("  {:>3}. {}\n", i + 1, diff::summary(&describe(step))));
    }
    let left = ref_out.get(index).map(describe).unwrap_or_else(|| "<none>".into());
    let right = cand_out.get(index).map(describe).unwrap_or_else(|| "<none>".into());
    report.push_str(&format!("outcome diff (- {reference}, + {candidate}):\n{}", diff::line_diff(&left, &right)));
    report.push_str(&format!(
        "--- last lines of the {candidate} log ({}) ---\n{}\n",
        cand_server.log_path().display(),
        cand_server.log_tail(15)
    ));
    Err(report)
}
