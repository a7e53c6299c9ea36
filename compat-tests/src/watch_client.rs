//! Helpers for the watch workload tests: a watch stream on its own connection whose responses are
//! recorded as they arrive (with a switch to stop reading, to play a slow client), a small
//! deterministic random generator, and KV request builders in kube-apiserver's shapes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::proto::etcdserverpb::watch_request::RequestUnion;
use keel::proto::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::server::{HarnessError, Server};

/// xorshift64*: reproducible runs from a printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The seed for a randomised test: `KEEL_SEED`, or one from the clock (printed by the caller).
pub fn seed() -> u64 {
    std::env::var("KEEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
    })
}

/// True when the long versions should run (`KEEL_SOAK=1`).
pub fn soak() -> bool {
    std::env::var("KEEL_SOAK").is_ok_and(|v| v == "1")
}

/// One watch stream with everything it received so far.
pub struct WatchConn {
    requests: mpsc::Sender<WatchRequest>,
    log: Arc<Mutex<Vec<WatchResponse>>>,
    ended: Arc<Mutex<Option<String>>>,
    paused: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
}

impl WatchConn {
    /// Open a stream on a fresh connection; `require_leader` adds `hasleader: true`.
    pub async fn open(server: &Server, require_leader: bool) -> Result<WatchConn, HarnessError> {
        Ok(WatchConn::open_on(server.watch().await?, require_leader))
    }

    /// Open a stream on an existing client (streams of one client share its connection).
    pub fn open_on(
        mut client: keel::proto::etcdserverpb::watch_client::WatchClient<tonic::transport::Channel>,
        require_leader: bool,
    ) -> WatchConn {
        let (tx, rx) = mpsc::channel(1024);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if require_leader {
            request.metadata_mut().insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let paused = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let (l, e, p, r) = (log.clone(), ended.clone(), paused.clone(), received.clone());
        tokio::spawn(async move {
            let mut stream = match client.watch(request).await {
                Ok(resp) => resp.into_inner(),
                Err(status) => {
                    *e.lock().unwrap_or_else(|x| x.into_inner()) = Some(status.message().to_string());
                    return;
                }
            };
            loop {
                while p.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                match stream.message().await {
                    Ok(Some(resp)) => {
                        l.lock().unwrap_or_else(|x| x.into_inner()).push(resp);
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(None) => {
                        *e.lock().unwrap_or_else(|x| x.into_inner()) = Some("end of stream".into());
                        return;
                    }
                    Err(status) => {
                        *e.lock().unwrap_or_else(|x| x.into_inner()) =
                            Some(format!("{:?}: {}", status.code(), status.message()));
                        return;
                    }
                }
            }
        });
        WatchConn { requests: tx, log, ended, paused, received }
    }

    pub async fn send(&self, request: RequestUnion) {
        let _ = self.requests.send(WatchRequest { request_union: Some(request) }).await;
    }

    pub async fn create(&self, c: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(c)).await;
    }

    pub async fn cancel(&self, watch_id: i64) {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })).await;
    }

    pub async fn progress(&self) {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {})).await;
    }

    /// Stop (or resume) reading: a paused client lets the server's buffers fill up.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    pub fn responses(&self) -> Vec<WatchResponse> {
        self.log.lock().unwrap_or_else(|x| x.into_inner()).clone()
    }

    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    pub fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|x| x.into_inner()).clone()
    }

    /// Wait until `pred` holds over the responses, or `limit` passes; returns whether it held.
    pub async fn wait_for(&self, limit: Duration, pred: impl Fn(&[WatchResponse]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if pred(&self.log.lock().unwrap_or_else(|x| x.into_inner())) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until nothing arrived for `quiet`.
    pub async fn wait_quiet(&self, quiet: Duration, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = self.received();
        let mut since = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.received();
            if now != seen {
                seen = now;
                since = tokio::time::Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }
}

/// clientv3's prefix end.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// kube-apiserver's create: `If(mod_revision(key) == 0) Then(Put(key, value, lease))`.
pub fn kube_create(key: &[u8], value: &[u8], lease: i64) -> TxnRequest {
    TxnRequest { compare: vec![mod_equals(key, 0)], success: vec![put_op(key, value, lease)], failure: vec![] }
}

/// kube-apiserver's update: `If(mod_revision(key) == rev) Then(Put) Else(Range(key))`.
pub fn kube_update(key: &[u8], rev: i64, value: &[u8], lease: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![mod_equals(key, rev)],
        success: vec![put_op(key, value, lease)],
        failure: vec![range_op(key)],
    }
}

/// kube-apiserver's delete: `If(mod_revision(key) == rev) Then(DeleteRange(key)) Else(Range(key))`.
pub fn kube_delete(key: &[u8], rev: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![mod_equals(key, rev)],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![range_op(key)],
    }
}

/// kube-apiserver's compaction bookkeeping on `compact_rev_key`:
/// `If(version("compact_rev_key") == t) Then(Put("compact_rev_key", rev)) Else(Range)`.
pub fn kube_compact_key(version: i64, rev: i64) -> TxnRequest {
    let key = b"compact_rev_key".to_vec();
    TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Version as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::Version(version)),
            range_end: vec![],
        }],
        success: vec![put_op(&key, rev.to_string().as_bytes(), 0)],
        failure: vec![range_op(&key)],
    }
}

fn mod_equals(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        range_end: vec![],
    }
}

pub fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

pub fn range_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest { key: key.to_vec(), ..Default::default() })),
    }
}
