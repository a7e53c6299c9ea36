//! Differential scenarios: a list of KV requests replayed on a fresh server, each outcome recorded as the
//! response or as (gRPC code, message) after removing what legitimately differs between two etcd
//! members (cluster_id, member_id, raft_term in headers), then two transcripts compared step by step.

use std::time::Duration;

use keel::proto::etcdserverpb::kv_client::KvClient;
use keel::proto::etcdserverpb::lease_client::LeaseClient;
use keel::proto::etcdserverpb::{
    response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use tonic::transport::Channel;

use crate::lease_ids::AutoLeases;

use crate::diff;
use crate::server::{HarnessError, Server, ServerKind, RPC_TIMEOUT};

/// One thing a scenario does.
#[derive(Debug, Clone)]
pub enum Step {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    /// Grants a lease. With ID 0 the server picks one; the harness then names it
    /// [`crate::lease_ids::auto_lease`]`(n)` (the n-th picked id) in later requests and outcomes,
    /// since picked ids never compare equal between two servers.
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    LeaseTimeToLive(LeaseTimeToLiveRequest),
    LeaseLeases,
    /// Opens one keep-alive stream, sends each id in turn and waits for each reply.
    LeaseKeepAlive(Vec<i64>),
    /// Sleeps, e.g. to let a background compaction finish.
    Wait(Duration),
    /// Graceful stop, then start on the same data dir and ports.
    Restart,
    /// SIGKILL, then start on the same data dir and ports.
    CrashRestart,
}

/// What one step produced, normalised.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseTimeToLive(LeaseTimeToLiveResponse),
    LeaseLeases(LeaseLeasesResponse),
    /// The replies of one keep-alive stream, in order, then how it ended (None = still open).
    LeaseKeepAlive(Vec<LeaseKeepAliveResponse>, Option<(tonic::Code, String)>),
    Error {
        code: tonic::Code,
        message: String,
    },
    Waited,
    Restarted,
}

/// A named list of steps, run on a fresh single-member server.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub steps: Vec<Step>,
}

impl Scenario {
    pub fn new(name: &'static str, steps: Vec<Step>) -> Scenario {
        Scenario { name, steps }
    }
}

/// Zeroes the header fields that differ between any two members; keeps `revision`.
fn normalise_header(header: &mut Option<ResponseHeader>) {
    if let Some(h) = header.as_mut() {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

fn normalise_txn(resp: &mut TxnResponse) {
    normalise_header(&mut resp.header);
    for op in &mut resp.responses {
        match op.response.as_mut() {
            Some(response_op::Response::ResponseRange(r)) => normalise_header(&mut r.header),
            Some(response_op::Response::ResponsePut(r)) => normalise_header(&mut r.header),
            Some(response_op::Response::ResponseDeleteRange(r)) => normalise_header(&mut r.header),
            Some(response_op::Response::ResponseTxn(r)) => normalise_txn(r),
            None => {}
        }
    }
}

/// Replaces the sizes in gRPC's "message larger than max (N vs. M)" text, which count framing bytes
/// that depend on the transport implementation rather than on the request.
pub fn mask_error_message(message: &str) -> String {
    const MARK: &str = "grpc: received message larger than max (";
    match message.find(MARK) {
        Some(start) => {
            let after = start + MARK.len();
            match message[after..].find(')') {
                Some(end) => format!("{}N vs. M{}", &message[..after], &message[after + end..]),
                None => message.to_string(),
            }
        }
        None => message.to_string(),
    }
}

fn error_outcome(status: tonic::Status) -> Outcome {
    Outcome::Error { code: status.code(), message: mask_error_message(status.message()) }
}

/// Start of the message recorded when the harness gives up waiting for a reply.
const HARNESS_DEADLINE: &str = "compat harness: no reply within";

/// Awaits an RPC with the harness deadline; a missing reply becomes a DeadlineExceeded outcome.
async fn timed<T, F>(call: F) -> Result<T, tonic::Status>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!("{HARNESS_DEADLINE} {RPC_TIMEOUT:?}"))),
    }
}

struct Clients {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
}

impl Clients {
    async fn new(server: &Server) -> Result<Clients, HarnessError> {
        Ok(Clients { kv: server.kv().await?, lease: server.lease().await? })
    }
}

/// Runs every step on `server` and returns the normalised outcomes, one per step.
pub async fn run_steps(server: &mut Server, steps: &[Step]) -> Result<Vec<Outcome>, HarnessError> {
    let mut clients = Clients::new(server).await?;
    let mut outcomes = Vec::with_capacity(steps.len());
    let mut auto = AutoLeases::default();
    for step in steps {
        let outcome = match auto.resolve_step(step.clone()) {
            Step::Range(req) => match timed(clients.kv.range(req)).await {
                Ok(mut r) => {
                    normalise_header(&mut r.header);
                    Outcome::Range(r)
                }
                Err(s) => error_outcome(s),
            },
            Step::Put(req) => match timed(clients.kv.put(req)).await {
                Ok(mut r) => {
                    normalise_header(&mut r.header);
                    Outcome::Put(r)
                }
                Err(s) => error_outcome(s),
            },
            Step::DeleteRange(req) => match timed(clients.kv.delete_range(req)).await {
                Ok(mut r) => {
                    normalise_header(&mut r.header);
                    Outcome::DeleteRange(r)
                }
                Err(s) => error_outcome(s),
            },
            Step::Txn(req) => match timed(clients.kv.txn(req)).await {
                Ok(mut r) => {
                    normalise_txn(&mut r);
                    Outcome::Txn(r)
                }
                Err(s) => error_outcome(s),
            },
            Step::Compact(req) => match timed(clients.kv.compact(req)).await {
                Ok(mut r) => {
                    normalise_header(&mut r.header);
                    Outcome::Compact(r)
                }
                Err(s) => error_outcome(s),
            },
            Step::LeaseGrant(req) => match timed(clients.lease.lease_grant(req)).await {
                Ok(mut r) => {
                    normalise_header(&mut r.header);
                    if req.id == 0 {
                        auto.picked(r.id);
                    }
                    Outcome::LeaseGrant(r)
                }
                Err(s) => error_outcome(s),
            },
            Step::LeaseRevoke(req) => match timed(clients.lease.lease_revoke(req)).await {
                Ok(mut r) => {
                    normalise_header(&mut r.header);
                    Outcome::LeaseRevoke(r)
                }
                Err(s) => error_outcome(s),
            },
            Step::LeaseTimeToLive(req) => match timed(clients.lease.lease_time_to_live(req)).await {
                Ok(mut r) => {
                    normalise_header(&mut r.header);
                    // etcd lists the keys in Go map order (random); compare them as a set.
                    r.keys.sort();
                    Outcome::LeaseTimeToLive(r)
                }
                Err(s) => error_outcome(s),
            },
            Step::LeaseLeases => match timed(clients.lease.lease_leases(LeaseLeasesRequest {})).await {
                Ok(mut r) => {
                    normalise_header(&mut r.header);
                    Outcome::LeaseLeases(r)
                }
                Err(s) => error_outcome(s),
            },
            Step::LeaseKeepAlive(ids) => keep_alive(&mut clients, &ids).await,
            Step::Wait(d) => {
                tokio::time::sleep(d).await;
                Outcome::Waited
            }
            Step::Restart => {
                server.restart().await?;
                clients = Clients::new(server).await?;
                Outcome::Restarted
            }
            Step::CrashRestart => {
                server.kill9()?;
                server.restart().await?;
                clients = Clients::new(server).await?;
                Outcome::Restarted
            }
        };
        let outcome = auto.name_outcome(outcome);
        // A server that stopped answering would make every later step wait out its own deadline;
        // the transcript already differs here, so stop.
        let stalled = matches!(&outcome, Outcome::Error { code: tonic::Code::DeadlineExceeded, message }
            if message.starts_with(HARNESS_DEADLINE));
        outcomes.push(outcome);
        if stalled {
            break;
        }
    }
    Ok(outcomes)
}

/// One keep-alive stream: each id is sent only after the previous reply arrived.
async fn keep_alive(clients: &mut Clients, ids: &[i64]) -> Outcome {
    use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
    let (tx, rx) = tokio::sync::mpsc::channel(ids.len().max(1));
    // grpc-go sends a stream's response headers with its first reply, so the call only returns
    // once the first request has been answered: queue that request before opening.
    if let Some(first) = ids.first() {
        let _ = tx.send(LeaseKeepAliveRequest { id: *first }).await;
    }
    let opened = timed(clients.lease.lease_keep_alive(ReceiverStream::new(rx))).await;
    let mut replies_stream = match opened {
        Ok(s) => s,
        Err(s) => return error_outcome(s),
    };
    let mut replies = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if i > 0 && tx.send(LeaseKeepAliveRequest { id: *id }).await.is_err() {
            break;
        }
        match tokio::time::timeout(RPC_TIMEOUT, replies_stream.message()).await {
            Ok(Ok(Some(mut r))) => {
                normalise_header(&mut r.header);
                replies.push(r);
            }
            Ok(Ok(None)) => return Outcome::LeaseKeepAlive(replies, Some((tonic::Code::Ok, "closed".into()))),
            Ok(Err(s)) => {
                return Outcome::LeaseKeepAlive(replies, Some((s.code(), mask_error_message(s.message()))));
            }
            Err(_) => {
                let msg = format!("{HARNESS_DEADLINE} {RPC_TIMEOUT:?}");
                return Outcome::LeaseKeepAlive(replies, Some((tonic::Code::DeadlineExceeded, msg)));
            }
        }
    }
    Outcome::LeaseKeepAlive(replies, None)
}

/// Short, readable rendering of a step (long byte strings abbreviated).
pub fn describe_step(step: &Step) -> String {
    diff::render(&format!("{step:#?}"))
}

/// Readable rendering of an outcome.
pub fn describe_outcome(outcome: &Outcome) -> String {
    diff::render(&format!("{outcome:#?}"))
}

/// Compares two transcripts of the same scenario; `Err` carries a report of the first differing step.
pub fn compare_transcripts(
    scenario: &Scenario,
    reference: (ServerKind, &[Outcome]),
    candidate: (ServerKind, &[Outcome]),
) -> Result<(), String> {
    let (ref_kind, ref_out) = reference;
    let (cand_kind, cand_out) = candidate;
    let first_diff = ref_out
        .iter()
        .zip(cand_out.iter())
        .position(|(a, b)| a != b)
        .or_else(|| (ref_out.len() != cand_out.len()).then(|| ref_out.len().min(cand_out.len())));
    let Some(index) = first_diff else {
        return Ok(());
    };
    let mut report = format!(
        "scenario `{}`: step {} of {} differs ({} = reference, {} = candidate)\n",
        scenario.name,
        index + 1,
        scenario.steps.len(),
        ref_kind,
        cand_kind
    );
    report.push_str("steps before it agreed:\n");
    for (i, step) in scenario.steps.iter().enumerate().take(index) {
        report.push_str(&format!("  {:>3}. {}\n", i + 1, diff::summary(&describe_step(step))));
    }
    if let Some(step) = scenario.steps.get(index) {
        report.push_str(&format!("differing step {}:\n{}\n", index + 1, diff::indent(&describe_step(step), "    ")));
    }
    let left = ref_out.get(index).map(describe_outcome).unwrap_or_else(|| "<no outcome>".to_string());
    let right = cand_out.get(index).map(describe_outcome).unwrap_or_else(|| "<no outcome>".to_string());
    report.push_str(&format!("outcome diff (- {ref_kind}, + {cand_kind}):\n{}", diff::line_diff(&left, &right)));
    Err(report)
}

/// Renders a whole transcript: each step followed by its outcome.
pub fn render_transcript(scenario: &Scenario, outcomes: &[Outcome]) -> String {
    let mut text = format!("scenario {}\n", scenario.name);
    for (i, step) in scenario.steps.iter().enumerate() {
        text.push_str(&format!("\n#{} {}\n", i + 1, diff::summary(&describe_step(step))));
        match outcomes.get(i) {
            Some(outcome) => text.push_str(&describe_outcome(outcome)),
            None => text.push_str("<no outcome>"),
        }
        text.push('\n');
    }
    text
}

/// With `KEEL_COMPAT_DUMP=<dir>`, writes `<dir>/<scenario>.<role>-<kind>.txt` for inspection.
fn dump_transcript(scenario: &Scenario, role: &str, kind: ServerKind, outcomes: &[Outcome]) {
    let Some(dir) = std::env::var_os("KEEL_COMPAT_DUMP") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let path = dir.join(format!("{}.{role}-{kind}.txt", scenario.name));
    let written =
        std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, render_transcript(scenario, outcomes)));
    if let Err(e) = written {
        eprintln!("compat: could not write {}: {e}", path.display());
    }
}

/// Runs `scenario` on a fresh reference server and a fresh candidate server (concurrently) and compares.
/// `Err` is a printable report: either the first difference or a harness failure.
pub async fn run_differential(scenario: &Scenario, reference: ServerKind, candidate: ServerKind) -> Result<(), String> {
    async fn one(kind: ServerKind, steps: &[Step]) -> Result<(Vec<Outcome>, Server), HarnessError> {
        let mut server = Server::start(kind).await?;
        let outcomes = run_steps(&mut server, steps).await?;
        Ok((outcomes, server))
    }
    let (r, c) = tokio::join!(one(reference, &scenario.steps), one(candidate, &scenario.steps));
    let (ref_out, _ref_server) =
        r.map_err(|e| format!("scenario `{}`: {reference} (reference): {e}", scenario.name))?;
    let (cand_out, cand_server) =
        c.map_err(|e| format!("scenario `{}`: {candidate} (candidate): {e}", scenario.name))?;
    dump_transcript(scenario, "reference", reference, &ref_out);
    dump_transcript(scenario, "candidate", candidate, &cand_out);
    compare_transcripts(scenario, (reference, &ref_out), (candidate, &cand_out)).map_err(|mut report| {
        report.push_str(&format!(
            "--- last lines of the {candidate} log ({}) ---\n{}\n",
            cand_server.log_path().display(),
            cand_server.log_tail(15)
        ));
        report
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_that_differ_between_members_are_zeroed() {
        let mut header = Some(ResponseHeader { cluster_id: 1, member_id: 2, revision: 3, raft_term: 4 });
        normalise_header(&mut header);
        assert_eq!(header, Some(ResponseHeader { cluster_id: 0, member_id: 0, revision: 3, raft_term: 0 }));
    }

    #[test]
    fn nested_txn_headers_are_normalised() {
        use keel::proto::etcdserverpb::ResponseOp;
        let h = || Some(ResponseHeader { cluster_id: 9, member_id: 9, revision: 5, raft_term: 9 });
        let mut resp = TxnResponse {
            header: h(),
            succeeded: true,
            responses: vec![ResponseOp {
                response: Some(response_op::Response::ResponseTxn(TxnResponse {
                    header: h(),
                    succeeded: false,
                    responses: vec![ResponseOp {
                        response: Some(response_op::Response::ResponsePut(PutResponse { header: h(), prev_kv: None })),
                    }],
                })),
            }],
        };
        normalise_txn(&mut resp);
        let rendered = format!("{resp:?}");
        assert!(!rendered.contains(": 9"), "{rendered}");
        assert!(rendered.contains("revision: 5"));
    }

    #[test]
    fn first_difference_is_reported() {
        let scenario = Scenario::new("demo", vec![Step::Wait(Duration::ZERO), Step::Wait(Duration::ZERO)]);
        let a = vec![Outcome::Waited, Outcome::Waited];
        let b = vec![Outcome::Waited, Outcome::Error { code: tonic::Code::Unknown, message: "boom".to_string() }];
        assert!(compare_transcripts(&scenario, (ServerKind::Etcd, &a), (ServerKind::Etcd, &a)).is_ok());
        let report = compare_transcripts(&scenario, (ServerKind::Etcd, &a), (ServerKind::Keel, &b)).unwrap_err();
        assert!(report.contains("step 2 of 2 differs"), "{report}");
        assert!(report.contains("- Waited"), "{report}");
        assert!(report.contains("+     message: \"boom\","), "{report}");
        let short = &b[..1];
        let report = compare_transcripts(&scenario, (ServerKind::Etcd, &a), (ServerKind::Keel, short)).unwrap_err();
        assert!(report.contains("<no outcome>"), "{report}");
    }

    #[test]
    fn grpc_size_numbers_are_masked() {
        assert_eq!(
            mask_error_message("grpc: received message larger than max (2200010 vs. 2097152)"),
            "grpc: received message larger than max (N vs. M)"
        );
        assert_eq!(mask_error_message("etcdserver: request is too large"), "etcdserver: request is too large");
    }
}
