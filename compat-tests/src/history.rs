//! Concurrent KV traffic recorded as a history for the linearizability checker, and the etcd-like
//! models it is checked against. Mirrors etcd's robustness traffic: clients pinned to members, every
//! Put value unique (so watch events and the final state map back to the request that wrote them),
//! a request timeout after which the outcome is unknown (it may or may not have taken effect).
//!
//! The model follows etcd's MVCC semantics as a client sees them: one global revision, incremented
//! by exactly one per write (a Put, a Delete that removed a key, a Txn whose taken branch writes);
//! every response header carries the revision of the state it was computed on.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use keel::proto::etcdserverpb::kv_client::KvClient;
use keel::proto::etcdserverpb::{
    compare, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, TxnRequest,
};
use tonic::transport::{Channel, Endpoint};

use crate::porcupine::{Model, Operation, NEVER};
use crate::watch_client::{kube_update, put_op, range_op, Rng};

/// Key prefix of all traffic (watchers watch this prefix).
pub const PREFIX: &str = "linz/";

/// What a Txn compares before its Put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// `mod_revision(key) == r` (0: the key does not exist), kube-apiserver's optimistic update.
    ModRev(i64),
    /// `value(key) == v`; etcd always fails a value compare on a missing key.
    Value(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// `If(cond) Then(Put(key, value)) Else(Range(key))`.
    Txn {
        key: String,
        cond: Cond,
        value: String,
    },
}

impl Request {
    pub fn key(&self) -> &str {
        match self {
            Request::Get { key } | Request::Put { key, .. } | Request::Delete { key } | Request::Txn { key, .. } => key,
        }
    }

    /// The unique value this request writes, if it writes one.
    pub fn written_value(&self) -> Option<&str> {
        match self {
            Request::Put { value, .. } | Request::Txn { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// A key's value and mod_revision as a read returned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kv {
    pub value: String,
    pub mod_rev: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Get {
        rev: i64,
        kv: Option<Kv>,
    },
    Put {
        rev: i64,
    },
    Delete {
        rev: i64,
        deleted: i64,
    },
    Txn {
        rev: i64,
        succeeded: bool,
        kv: Option<Kv>,
    },
    /// Failed or timed out: it may or may not have taken effect.
    Unknown,
}

impl Response {
    /// Header revision of a known response.
    pub fn rev(&self) -> Option<i64> {
        match self {
            Response::Get { rev, .. }
            | Response::Put { rev }
            | Response::Delete { rev, .. }
            | Response::Txn { rev, .. } => Some(*rev),
            Response::Unknown => None,
        }
    }
}

/// One operation as a client saw it. Times are nanoseconds since the run started; `ret` is
/// [`NEVER`] when no response arrived.
#[derive(Debug, Clone)]
pub struct Record {
    pub client: usize,
    pub member: usize,
    pub request: Request,
    pub response: Response,
    pub call: u64,
    pub ret: u64,
    pub error: Option<String>,
}

/// Shape of the traffic.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub clients: usize,
    pub keys: usize,
    /// Pause between one client's operations (keeps two shared cores from saturating).
    pub pace: Duration,
    /// After this long without a response the outcome is unknown.
    pub op_timeout: Duration,
    /// Reads are serializable (served from the member's local state, which etcd allows to be stale):
    /// deliberately not linearizable, to prove the checks catch stale reads on a real cluster.
    pub stale_reads: bool,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            clients: 6,
            keys: 8,
            pace: Duration::from_millis(15),
            op_timeout: Duration::from_millis(1500),
            stale_reads: false,
        }
    }
}

/// A channel that connects on first use and reconnects after failures, so clients survive restarts.
pub fn lazy_channel(endpoint: &str) -> Channel {
    Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint URL")
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy()
}

/// Runs one client until `stop` is true: pinned to `endpoint` (member `member`), with its own
/// connection. Returns its records.
pub async fn run_client(
    client: usize,
    member: usize,
    endpoint: String,
    traffic: Traffic,
    seed: u64,
    start: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Record> {
    let mut kv = KvClient::new(lazy_channel(&endpoint));
    let mut rng = Rng::new(seed ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // What this client last saw of each key: the compare target of its next Txn on it.
    let mut seen: HashMap<String, Kv> = HashMap::new();
    let mut records = Vec::new();
    let mut seq = 0u64;
    while !*stop.borrow() {
        let key = format!("{PREFIX}k{}", rng.below(traffic.keys as u64));
        seq += 1;
        let value = format!("c{client}-{seq}");
        let roll = rng.below(100);
        let request = if roll < 35 {
            Request::Get { key }
        } else if roll < 65 {
            Request::Put { key, value }
        } else if roll < 85 {
            let last = seen.get(&key).cloned();
            let cond = match (rng.chance(50), last) {
                (true, Some(kv)) => Cond::Value(kv.value),
                (_, last) => Cond::ModRev(last.map(|kv| kv.mod_rev).unwrap_or(0)),
            };
            Request::Txn { key, cond, value }
        } else {
            Request::Delete { key }
        };
        let call = start.elapsed().as_nanos() as u64;
        let outcome = tokio::time::timeout(traffic.op_timeout, execute(&mut kv, &request, traffic.stale_reads)).await;
        let (response, ret, error) = match outcome {
            Ok(Ok(response)) => (response, start.elapsed().as_nanos() as u64, None),
            Ok(Err(status)) => (Response::Unknown, NEVER, Some(format!("{:?}: {}", status.code(), status.message()))),
            Err(_) => (Response::Unknown, NEVER, Some("timed out".to_string())),
        };
        learn(&mut seen, &request, &response);
        records.push(Record { client, member, request, response, call, ret, error });
        tokio::time::sleep(traffic.pace).await;
    }
    records
}

/// Remembers the key state a response revealed.
fn learn(seen: &mut HashMap<String, Kv>, request: &Request, response: &Response) {
    let key = request.key().to_string();
    match (request, response) {
        (_, Response::Get { kv, .. }) | (_, Response::Txn { succeeded: false, kv, .. }) => match kv {
            Some(kv) => {
                seen.insert(key, kv.clone());
            }
            None => {
                seen.remove(&key);
            }
        },
        (Request::Put { value, .. }, Response::Put { rev })
        | (Request::Txn { value, .. }, Response::Txn { rev, succeeded: true, .. }) => {
            seen.insert(key, Kv { value: value.clone(), mod_rev: *rev });
        }
        (_, Response::Delete { .. }) => {
            seen.remove(&key);
        }
        _ => {}
    }
}

fn first_kv(range: &RangeResponse) -> Option<Kv> {
    range.kvs.first().map(|kv| Kv { value: String::from_utf8_lossy(&kv.value).into_owned(), mod_rev: kv.mod_revision })
}

/// Sends one request as etcd clients do and decodes what the model needs from the answer.
async fn execute(kv: &mut KvClient<Channel>, request: &Request, serializable: bool) -> Result<Response, tonic::Status> {
    let header_rev = |h: Option<keel::proto::etcdserverpb::ResponseHeader>| h.map(|h| h.revision).unwrap_or(-1);
    Ok(match request {
        Request::Get { key } => {
            let range = RangeRequest { key: key.clone().into_bytes(), serializable, ..Default::default() };
            let resp = kv.range(range).await?.into_inner();
            Response::Get { kv: first_kv(&resp), rev: header_rev(resp.header) }
        }
        Request::Put { key, value } => {
            let put =
                PutRequest { key: key.clone().into_bytes(), value: value.clone().into_bytes(), ..Default::default() };
            Response::Put { rev: header_rev(kv.put(put).await?.into_inner().header) }
        }
        Request::Delete { key } => {
            let del = DeleteRangeRequest { key: key.clone().into_bytes(), ..Default::default() };
            let resp = kv.delete_range(del).await?.into_inner();
            Response::Delete { rev: header_rev(resp.header), deleted: resp.deleted }
        }
        Request::Txn { key, cond, value } => {
            let txn = match cond {
                Cond::ModRev(r) => kube_update(key.as_bytes(), *r, value.as_bytes(), 0),
                Cond::Value(v) => TxnRequest {
                    compare: vec![Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Value as i32,
                        key: key.clone().into_bytes(),
                        target_union: Some(compare::TargetUnion::Value(v.clone().into_bytes())),
                        range_end: vec![],
                    }],
                    success: vec![put_op(key.as_bytes(), value.as_bytes(), 0)],
                    failure: vec![range_op(key.as_bytes())],
                },
            };
            let resp = kv.txn(txn).await?.into_inner();
            let kv = resp.responses.iter().find_map(|r| match &r.response {
                Some(response_op::Response::ResponseRange(range)) => Some(first_kv(range)),
                _ => None,
            });
            Response::Txn { rev: header_rev(resp.header), succeeded: resp.succeeded, kv: kv.flatten() }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Models

/// etcd's keyspace as the model sees it: the global revision and each live key's value and
/// mod_revision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EtcdState {
    pub rev: i64,
    pub kvs: BTreeMap<String, Kv>,
}

impl EtcdState {
    /// An empty etcd: revision 1 before any write.
    pub fn empty() -> EtcdState {
        EtcdState { rev: 1, kvs: BTreeMap::new() }
    }

    fn holds(&self, key: &str, cond: &Cond) -> bool {
        let kv = self.kvs.get(key);
        match cond {
            Cond::ModRev(r) => kv.map(|kv| kv.mod_rev).unwrap_or(0) == *r,
            // etcd: a value compare against a key that does not exist is always false.
            Cond::Value(v) => kv.is_some_and(|kv| &kv.value == v),
        }
    }

    fn put(&self, key: &str, value: &str) -> EtcdState {
        let mut next = self.clone();
        next.rev += 1;
        next.kvs.insert(key.to_string(), Kv { value: value.to_string(), mod_rev: next.rev });
        next
    }

    fn delete(&self, key: &str) -> EtcdState {
        let mut next = self.clone();
        if next.kvs.remove(key).is_some() {
            next.rev += 1;
        }
        next
    }
}

/// The global model: every response is checked against the one revision counter, so a read that
/// reports a revision must see exactly the writes up to it (as etcd's robustness model does; the
/// revisions make the search nearly deterministic, so no partitioning is needed).
pub struct EtcdModel;

impl Model for EtcdModel {
    type State = EtcdState;
    type Input = Request;
    type Output = Response;

    fn init(&self) -> EtcdState {
        EtcdState::empty()
    }

    fn step(&self, s: &EtcdState, input: &Request, output: &Response) -> Vec<EtcdState> {
        let key = input.key();
        let ok = |cond: bool, next: EtcdState| if cond { vec![next] } else { vec![] };
        match (input, output) {
            (Request::Get { .. }, Response::Get { rev, kv }) => {
                ok(*rev == s.rev && kv.as_ref() == s.kvs.get(key), s.clone())
            }
            (Request::Put { value, .. }, Response::Put { rev }) => ok(*rev == s.rev + 1, s.put(key, value)),
            (Request::Delete { .. }, Response::Delete { rev, deleted }) => {
                let next = s.delete(key);
                ok(*rev == next.rev && *deleted == i64::from(s.kvs.contains_key(key)), next)
            }
            (Request::Txn { cond, value, .. }, Response::Txn { rev, succeeded, kv }) => {
                if s.holds(key, cond) {
                    ok(*succeeded && *rev == s.rev + 1, s.put(key, value))
                } else {
                    ok(!*succeeded && *rev == s.rev && kv.as_ref() == s.kvs.get(key), s.clone())
                }
            }
            (Request::Get { .. }, Response::Unknown) => vec![s.clone()],
            (Request::Put { value, .. }, Response::Unknown) => vec![s.clone(), s.put(key, value)],
            (Request::Delete { .. }, Response::Unknown) => vec![s.clone(), s.delete(key)],
            (Request::Txn { cond, value, .. }, Response::Unknown) => {
                if s.holds(key, cond) {
                    vec![s.clone(), s.put(key, value)]
                } else {
                    vec![s.clone()]
                }
            }
            _ => vec![],
        }
    }
}

/// A key's state in the per-key model: its value and mod_revision (None: absent), and the
/// revision of the last write to it (mod_revision of a put, the revision of a delete).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KeyState {
    pub kv: Option<Kv>,
    pub last_write: i64,
}

/// mod_revision of a write whose revision is not known (an unknown-outcome write that applied).
const UNKNOWN_REV: i64 = -1;

/// The per-key model: the history is partitioned by key and each key is a register whose writes
/// carry strictly increasing revisions and whose reads must return the latest write exactly. It
/// cannot see cross-key revision order (the global model does) but scales to any history size.
pub struct PerKeyModel;

impl Model for PerKeyModel {
    type State = KeyState;
    type Input = Request;
    type Output = Response;

    fn init(&self) -> KeyState {
        KeyState::default()
    }

    fn partition(&self, ops: &[Operation<Request, Response>]) -> Vec<Vec<usize>> {
        let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            by_key.entry(op.input.key()).or_default().push(i);
        }
        by_key.into_values().collect()
    }

    fn step(&self, s: &KeyState, input: &Request, output: &Response) -> Vec<KeyState> {
        let written = |value: &str, rev: i64| KeyState {
            kv: Some(Kv { value: value.to_string(), mod_rev: rev }),
            last_write: rev,
        };
        let deleted = |rev: i64| KeyState { kv: None, last_write: rev };
        // A read of the current state; binds the revision of an unknown write it reveals.
        let read = |kv: &Option<Kv>, rev: i64| -> Vec<KeyState> {
            match (&s.kv, kv) {
                (None, None) if rev >= s.last_write => vec![s.clone()],
                (Some(cur), Some(got)) if cur.value == got.value && rev >= got.mod_rev => {
                    if cur.mod_rev == got.mod_rev {
                        vec![s.clone()]
                    } else if cur.mod_rev == UNKNOWN_REV && got.mod_rev > s.last_write {
                        vec![written(&got.value, got.mod_rev)]
                    } else {
                        vec![]
                    }
                }
                _ => vec![],
            }
        };
        let holds = |cond: &Cond| -> Vec<bool> {
            match (cond, &s.kv) {
                (Cond::ModRev(r), None) => vec![*r == 0],
                (Cond::ModRev(_), Some(kv)) if kv.mod_rev == UNKNOWN_REV => vec![true, false],
                (Cond::ModRev(r), Some(kv)) => vec![kv.mod_rev == *r],
                (Cond::Value(_), None) => vec![false],
                (Cond::Value(v), Some(kv)) => vec![&kv.value == v],
            }
        };
        let last = s.last_write;
        match (input, output) {
            (Request::Get { .. }, Response::Get { rev, kv }) => read(kv, *rev),
            (Request::Put { value, .. }, Response::Put { rev }) if *rev > last => vec![written(value, *rev)],
            (Request::Delete { .. }, Response::Delete { rev, deleted: 1 }) if s.kv.is_some() && *rev > last => {
                vec![deleted(*rev)]
            }
            (Request::Delete { .. }, Response::Delete { rev, deleted: 0 }) if s.kv.is_none() && *rev >= last => {
                vec![s.clone()]
            }
            (Request::Txn { cond, value, .. }, Response::Txn { rev, succeeded, kv }) => {
                if !holds(cond).contains(succeeded) {
                    vec![]
                } else if *succeeded {
                    if *rev > last {
                        vec![written(value, *rev)]
                    } else {
                        vec![]
                    }
                } else {
                    read(kv, *rev)
                }
            }
            (Request::Get { .. }, Response::Unknown) => vec![s.clone()],
            (Request::Put { value, .. }, Response::Unknown) => vec![s.clone(), written(value, UNKNOWN_REV)],
            (Request::Delete { .. }, Response::Unknown) => {
                // The delete's revision is unknown; keep the last known write as the floor.
                let mut out = vec![s.clone()];
                if s.kv.is_some() {
                    out.push(KeyState { kv: None, last_write: last });
                }
                out
            }
            (Request::Txn { cond, value, .. }, Response::Unknown) => {
                let mut out = vec![s.clone()];
                if holds(cond).contains(&true) {
                    out.push(written(value, UNKNOWN_REV));
                }
                out
            }
            _ => vec![],
        }
    }
}

/// Records as checker operations.
pub fn operations(records: &[Record]) -> Vec<Operation<Request, Response>> {
    records
        .iter()
        .map(|r| Operation {
            client: r.client,
            input: r.request.clone(),
            output: r.response.clone(),
            call: r.call,
            ret: r.ret,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::porcupine::{check, CheckResult};

    fn get(key: &str, rev: i64, kv: Option<(&str, i64)>) -> (Request, Response) {
        (
            Request::Get { key: key.into() },
            Response::Get { rev, kv: kv.map(|(v, r)| Kv { value: v.into(), mod_rev: r }) },
        )
    }
    fn put(key: &str, value: &str, rev: i64) -> (Request, Response) {
        (Request::Put { key: key.into(), value: value.into() }, Response::Put { rev })
    }
    fn put_unknown(key: &str, value: &str) -> (Request, Response) {
        (Request::Put { key: key.into(), value: value.into() }, Response::Unknown)
    }

    /// Builds a history from (request/response, call, return) triples.
    fn history(ops: Vec<((Request, Response), u64, u64)>) -> Vec<Operation<Request, Response>> {
        ops.into_iter()
            .enumerate()
            .map(|(client, ((input, output), call, ret))| Operation { client, input, output, call, ret })
            .collect()
    }

    fn both_models(h: &[Operation<Request, Response>]) -> (bool, bool) {
        let budget = Duration::from_secs(5);
        (check(&EtcdModel, h, budget).is_ok(), check(&PerKeyModel, h, budget).is_ok())
    }

    #[test]
    fn accepts_concurrent_linearizable_history() {
        // A read overlapping a put may see before or after it; a txn on the new mod_revision wins.
        let h = history(vec![
            (put("a", "1", 2), 0, 10),
            (get("a", 1, None), 1, 3),
            (get("a", 2, Some(("1", 2))), 5, 12),
            (
                (
                    Request::Txn { key: "a".into(), cond: Cond::ModRev(2), value: "2".into() },
                    Response::Txn { rev: 3, succeeded: true, kv: None },
                ),
                13,
                20,
            ),
            (
                (
                    Request::Txn { key: "a".into(), cond: Cond::Value("1".into()), value: "3".into() },
                    Response::Txn { rev: 3, succeeded: false, kv: Some(Kv { value: "2".into(), mod_rev: 3 }) },
                ),
                21,
                25,
            ),
            ((Request::Delete { key: "a".into() }, Response::Delete { rev: 4, deleted: 1 }), 26, 30),
            ((Request::Delete { key: "a".into() }, Response::Delete { rev: 4, deleted: 0 }), 31, 32),
            (get("a", 4, None), 33, 34),
        ]);
        assert_eq!(both_models(&h), (true, true));
    }

    #[test]
    fn rejects_stale_read() {
        // The read starts after the put was acknowledged but does not see it.
        let h = history(vec![(put("a", "1", 2), 0, 10), (get("a", 1, None), 11, 12)]);
        assert_eq!(both_models(&h), (false, false));
        match check(&EtcdModel, &h, Duration::from_secs(5)) {
            CheckResult::Illegal { stuck, .. } => assert_eq!(stuck, vec![1]),
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn rejects_lost_write() {
        // Two acknowledged puts to one key, then a read that shows only the first: the second was lost.
        let h = history(vec![(put("a", "1", 2), 0, 1), (put("a", "2", 3), 2, 3), (get("a", 3, Some(("1", 2))), 4, 5)]);
        assert_eq!(both_models(&h), (false, false));
    }

    #[test]
    fn rejects_revision_going_back() {
        // Reads of different keys, one after the other, whose revisions go backwards: only the global
        // revision reveals it.
        let h = history(vec![
            (put("a", "1", 2), 0, 1),
            (put("b", "1", 3), 2, 3),
            (get("c", 3, None), 4, 5),
            (get("c", 2, None), 6, 7),
        ]);
        assert_eq!(both_models(&h), (false, true));
        // And per key: a write acknowledged at a revision lower than an earlier write of that key.
        let h = history(vec![(put("a", "1", 3), 0, 1), (put("a", "2", 2), 2, 3)]);
        assert_eq!(both_models(&h), (false, false));
    }

    #[test]
    fn unknown_write_may_have_applied_or_not_but_consistently() {
        let applied = history(vec![(put_unknown("a", "x"), 0, NEVER), (get("a", 2, Some(("x", 2))), 5, 6)]);
        assert_eq!(both_models(&applied), (true, true));
        let not_applied = history(vec![(put_unknown("a", "x"), 0, NEVER), (get("a", 1, None), 5, 6)]);
        assert_eq!(both_models(&not_applied), (true, true));
        let flip = history(vec![
            (put_unknown("a", "x"), 0, NEVER),
            (get("a", 2, Some(("x", 2))), 5, 6),
            (get("a", 2, None), 7, 8),
        ]);
        assert_eq!(both_models(&flip), (false, false));
    }

    #[test]
    fn value_compare_on_missing_key_fails() {
        // etcd: comparing the value of a key that does not exist is false, whatever the target.
        let txn = |succeeded, rev| {
            (
                Request::Txn { key: "a".into(), cond: Cond::Value(String::new()), value: "v".into() },
                Response::Txn { rev, succeeded, kv: None },
            )
        };
        assert_eq!(both_models(&history(vec![(txn(false, 1), 0, 1)])), (true, true));
        assert_eq!(both_models(&history(vec![(txn(true, 2), 0, 1)])), (false, false));
    }

    /// What a correct etcd answers to `request` in state `s`, and the state after it.
    fn answer(s: &EtcdState, request: &Request) -> (Response, EtcdState) {
        let key = request.key();
        let kv = s.kvs.get(key).cloned();
        match request {
            Request::Get { .. } => (Response::Get { rev: s.rev, kv }, s.clone()),
            Request::Put { value, .. } => (Response::Put { rev: s.rev + 1 }, s.put(key, value)),
            Request::Delete { .. } => {
                let next = s.delete(key);
                (Response::Delete { rev: next.rev, deleted: i64::from(kv.is_some()) }, next)
            }
            Request::Txn { cond, value, .. } if s.holds(key, cond) => {
                (Response::Txn { rev: s.rev + 1, succeeded: true, kv: None }, s.put(key, value))
            }
            Request::Txn { .. } => (Response::Txn { rev: s.rev, succeeded: false, kv }, s.clone()),
        }
    }

    /// A history as a correct etcd would produce it: operations take effect at evenly spaced
    /// instants, and each one's call and return straddle its instant by random amounts (so up to a
    /// few dozen overlap); 2 % of writes lose their response.
    fn simulated(n: usize, seed: u64, unknown_percent: u64) -> Vec<Operation<Request, Response>> {
        let mut rng = Rng::new(seed);
        let mut s = EtcdState::empty();
        let mut ops = Vec::new();
        for i in 0..n {
            let key = format!("k{}", rng.below(6));
            let value = format!("v{i}");
            let request = match rng.below(10) {
                0..=3 => Request::Get { key },
                4..=6 => Request::Put { key, value },
                7 => Request::Delete { key },
                _ => {
                    let cond = match s.kvs.get(&key) {
                        Some(kv) if rng.chance(50) => Cond::Value(kv.value.clone()),
                        Some(kv) if rng.chance(70) => Cond::ModRev(kv.mod_rev),
                        _ => Cond::ModRev(rng.below(3) as i64),
                    };
                    Request::Txn { key, cond, value }
                }
            };
            let (mut response, next) = answer(&s, &request);
            s = next;
            let at = 1_000 + 10 * i as u64;
            let (call, mut ret) = (at - rng.below(40), at + rng.below(40));
            if !matches!(request, Request::Get { .. }) && rng.chance(unknown_percent) {
                response = Response::Unknown;
                ret = NEVER;
            }
            ops.push(Operation { client: i % 8, input: request, output: response, call, ret });
        }
        ops
    }

    #[test]
    fn simulated_correct_histories_pass_and_one_stale_read_fails() {
        for seed in [1, 2, 3] {
            let t = std::time::Instant::now();
            // With 2 % of writes unresolved (never returned, outcome unknown) it must still pass.
            let ops = simulated(3000, seed, 2);
            assert!(check(&EtcdModel, &ops, Duration::from_secs(60)).is_ok(), "seed {seed}: global model");
            assert!(check(&PerKeyModel, &ops, Duration::from_secs(60)).is_ok(), "seed {seed}: per-key model");
            assert!(t.elapsed() < Duration::from_secs(20), "checker too slow: {:?}", t.elapsed());
            // Make one late read return what an early read returned: a stale read by any standard.
            // (Without unknown operations: proving a violation means exhausting every order, which
            // unknown operations placeable anywhere make expensive; runs resolve them first.)
            let mut ops = simulated(3000, seed, 0);
            assert!(check(&EtcdModel, &ops, Duration::from_secs(60)).is_ok(), "seed {seed}: global model");
            let reads: Vec<usize> = (0..ops.len()).filter(|&i| matches!(ops[i].output, Response::Get { .. })).collect();
            let (early, late) = (reads[10], reads[reads.len() - 10]);
            ops[late].input = ops[early].input.clone();
            ops[late].output = ops[early].output.clone();
            match check(&EtcdModel, &ops, Duration::from_secs(60)) {
                CheckResult::Illegal { stuck, .. } => assert!(stuck.contains(&late), "seed {seed}: blamed {stuck:?}"),
                other => panic!("seed {seed}: stale read not rejected: {other:?}"),
            }
        }
    }
}
