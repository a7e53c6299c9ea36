//! The Rust etcd-client 0.21.1 (a second, independent client stack) drives the same KV sequence against
//! the reference etcd and the candidate; what it reports must match.
//! `KEEL_COMPAT_CANDIDATE` works as in kv_diff.

use std::future::Future;
use std::time::Duration;

use compat_tests::client_text::{error, kv};
use compat_tests::{Server, ServerKind};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};

/// The server checked against etcd: the one line to switch (KEEL_COMPAT_CANDIDATE overrides it).
const CANDIDATE: ServerKind = ServerKind::Keel;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn call<T, F>(what: &str, fut: F) -> String
where
    T: std::fmt::Debug,
    F: Future<Output = Result<T, etcd_client::Error>>,
    T: Summarise,
{
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(resp)) => format!("{what}: {}", resp.summarise()),
        Ok(Err(e)) => format!("{what}: {}", error(&e)),
        Err(_) => format!("{what}: no reply within {CALL_TIMEOUT:?}"),
    }
}

/// What a client observes from a response, leaving out member-specific header fields.
trait Summarise {
    fn summarise(&self) -> String;
}

impl Summarise for etcd_client::PutResponse {
    fn summarise(&self) -> String {
        format!("rev {:?} prev {:?}", self.header().map(|h| h.revision()), self.prev_key().map(kv))
    }
}

impl Summarise for etcd_client::GetResponse {
    fn summarise(&self) -> String {
        format!(
            "rev {:?} count {} more {} kvs {:?}",
            self.header().map(|h| h.revision()),
            self.count(),
            self.more(),
            self.kvs().iter().map(kv).collect::<Vec<_>>()
        )
    }
}

impl Summarise for etcd_client::DeleteResponse {
    fn summarise(&self) -> String {
        format!(
            "rev {:?} deleted {} prev {:?}",
            self.header().map(|h| h.revision()),
            self.deleted(),
            self.prev_kvs().iter().map(kv).collect::<Vec<_>>()
        )
    }
}

impl Summarise for etcd_client::TxnResponse {
    fn summarise(&self) -> String {
        let ops: Vec<String> = self
            .op_responses()
            .iter()
            .map(|op| match op {
                TxnOpResponse::Put(p) => format!("put[{}]", p.summarise()),
                TxnOpResponse::Get(g) => format!("get[{}]", g.summarise()),
                TxnOpResponse::Delete(d) => format!("del[{}]", d.summarise()),
                TxnOpResponse::Txn(t) => format!("txn[{}]", t.summarise()),
            })
            .collect();
        format!("rev {:?} succeeded {} ops {:?}", self.header().map(|h| h.revision()), self.succeeded(), ops)
    }
}

impl Summarise for etcd_client::CompactionResponse {
    fn summarise(&self) -> String {
        format!("rev {:?}", self.header().map(|h| h.revision()))
    }
}

async fn transcript(kind: ServerKind) -> Result<Vec<String>, String> {
    let server = Server::start(kind).await.map_err(|e| e.to_string())?;
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(3)).with_timeout(CALL_TIMEOUT);
    let mut c = tokio::time::timeout(CALL_TIMEOUT, Client::connect([server.endpoint()], Some(options)))
        .await
        .map_err(|_| format!("{kind}: etcd-client connect timed out"))?
        .map_err(|e| format!("{kind}: etcd-client connect: {e}"))?;

    let mut out = Vec::new();
    for (k, v) in [("a/1", "x"), ("a/2", "y"), ("b", "z"), ("a/1", "x2")] {
        out.push(call("put", c.put(k, v, None)).await);
    }
    out.push(call("put prev", c.put("b", "z2", Some(PutOptions::new().with_prev_key()))).await);
    out.push(call("get", c.get("a/1", None)).await);
    out.push(call("get prefix", c.get("a/", Some(GetOptions::new().with_prefix()))).await);
    out.push(
        call(
            "get all sorted limited",
            c.get(
                "",
                Some(GetOptions::new().with_all_keys().with_sort(SortTarget::Mod, SortOrder::Descend).with_limit(2)),
            ),
        )
        .await,
    );
    out.push(call("get count only", c.get("", Some(GetOptions::new().with_all_keys().with_count_only()))).await);
    out.push(call("get old rev", c.get("a/1", Some(GetOptions::new().with_revision(2)))).await);
    out.push(call("get future rev", c.get("a/1", Some(GetOptions::new().with_revision(1000)))).await);
    let txn = Txn::new()
        .when([Compare::value("a/1", CompareOp::Equal, "x2")])
        .and_then([TxnOp::put("t", "1", None), TxnOp::get("t", None)])
        .or_else([TxnOp::delete("t", None)]);
    out.push(call("txn", c.txn(txn)).await);
    let txn = Txn::new()
        .when([Compare::version("missing", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("never", "1", None)])
        .or_else([TxnOp::get("a/", Some(GetOptions::new().with_prefix()))]);
    out.push(call("txn failure", c.txn(txn)).await);
    out.push(call("put empty key", c.put("", "v", None)).await);
    out.push(call("compact", c.compact(3, None)).await);
    out.push(call("get compacted rev", c.get("a/1", Some(GetOptions::new().with_revision(2)))).await);
    out.push(call("delete prefix", c.delete("a/", Some(DeleteOptions::new().with_prefix().with_prev_key()))).await);
    out.push(call("delete missing", c.delete("nothing", None)).await);
    out.push(call("get all", c.get("", Some(GetOptions::new().with_all_keys()))).await);
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_sees_the_same() {
    let candidate = ServerKind::from_env_or(CANDIDATE);
    let (reference, other) = tokio::join!(transcript(ServerKind::Etcd), transcript(candidate));
    let reference = reference.unwrap_or_else(|e| panic!("reference etcd: {e}"));
    let other = other.unwrap_or_else(|e| panic!("candidate {candidate}: {e}"));
    if let Some(dir) = std::env::var_os("KEEL_COMPAT_DUMP") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("etcd_client.reference-etcd.txt"), reference.join("\n")).unwrap();
        std::fs::write(dir.join(format!("etcd_client.candidate-{candidate}.txt")), other.join("\n")).unwrap();
    }
    for (i, (a, b)) in reference.iter().zip(&other).enumerate() {
        assert_eq!(a, b, "etcd-client step {} differs (left: etcd, right: {candidate})", i + 1);
    }
    assert_eq!(reference.len(), other.len());
}
