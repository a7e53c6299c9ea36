//! The Lock and Election services, and etcdctl's `lock` / `elect` recipes, run the same way
//! against the reference etcd 3.5.16 and the candidate; what clients see must match once lease ids
//! (chosen differently by each server) are masked. Revisions are compared as they are: each
//! scenario is sequential, so both servers reach the same revisions.
//! `KEEL_COMPAT_CANDIDATE` works as in kv_diff.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compat_tests::client_text::{error, kv};
use compat_tests::etcdctl::{cmd, cmd_args, run_cmd};
use compat_tests::etcdctl_watch;
use compat_tests::server::connect;
use compat_tests::{Server, ServerKind};
use etcd_client::{Client, ConnectOptions, GetOptions, LeaderKey, LockOptions, ProclaimOptions, ResignOptions};
use keel::proto::v3electionpb::{self as pb_election, election_client::ElectionClient};
use keel::proto::v3lockpb::{self as pb_lock, lock_client::LockClient};
use regex::Regex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// The server checked against etcd: the one line to switch (KEEL_COMPAT_CANDIDATE overrides it).
const CANDIDATE: ServerKind = ServerKind::Keel;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for a call that is going to return to have returned on either server.
const SETTLE: Duration = Duration::from_millis(400);

/// Lease ids printed as etcd prints them in keys (`%x`), replaced by stable labels.
#[derive(Default)]
struct Labels(Vec<(String, String)>);

impl Labels {
    fn add(&mut self, id: i64, label: &str) {
        self.0.push((format!("{id:x}"), label.to_string()));
        self.0.push((id.to_string(), label.to_string()));
    }

    fn mask(&self, line: &str) -> String {
        let mut out = line.to_string();
        for (id, label) in &self.0 {
            out = out.replace(id.as_str(), label);
        }
        out
    }
}

fn leader_key(l: &LeaderKey) -> String {
    format!(
        "name {} key {} rev {} lease {}",
        String::from_utf8_lossy(l.name()),
        String::from_utf8_lossy(l.key()),
        l.rev(),
        l.lease()
    )
}

fn rev(h: Option<&etcd_client::ResponseHeader>) -> String {
    h.map_or("no header".to_string(), |h| format!("rev {}", h.revision()))
}

async fn timed<T>(fut: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(&e)),
        Err(_) => Err(format!("no reply within {CALL_TIMEOUT:?}")),
    }
}

/// One transcript: a server, a client on it, the lease labels, and what the client saw so far.
struct Run {
    _server: Server,
    c: Client,
    labels: Labels,
    out: Vec<String>,
}

impl Run {
    async fn start(kind: ServerKind) -> Result<Run, String> {
        let server = Server::start(kind).await.map_err(|e| e.to_string())?;
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(3));
        let c = timed(Client::connect([server.endpoint()], Some(options))).await?;
        Ok(Run { _server: server, c, labels: Labels::default(), out: Vec::new() })
    }

    fn note(&mut self, line: String) {
        self.out.push(line);
    }

    /// The transcript, lease ids replaced by their labels.
    fn finish(self) -> Vec<String> {
        self.out.iter().map(|l| self.labels.mask(l)).collect()
    }

    async fn grant(&mut self, ttl: i64, label: &str) -> Result<i64, String> {
        let id = timed(self.c.lease_grant(ttl, None)).await?.id();
        self.labels.add(id, label);
        Ok(id)
    }

    /// Lock and note the answer; the key (empty on error) is returned for Unlock.
    async fn lock(&mut self, name: &str, lease: Option<(i64, &str)>) -> Vec<u8> {
        let options = lease.map(|(id, _)| LockOptions::new().with_lease(id));
        let label = lease.map_or("no lease", |(_, label)| label);
        let (line, key) = lock_result(timed(self.c.lock(name, options)).await);
        self.note(format!("lock {name} {label}: {line}"));
        key
    }

    async fn unlock(&mut self, key: Vec<u8>) {
        let r = timed(self.c.unlock(key)).await;
        self.note(format!("unlock: {}", answer(r, |r| r.header())));
    }

    async fn revoke(&mut self, lease: i64, label: &str) {
        let r = timed(self.c.lease_revoke(lease)).await;
        self.note(format!("revoke {label}: {}", answer(r, |r| r.header())));
    }

    async fn resign(&mut self, what: &str, leader: Option<LeaderKey>) {
        let r = timed(self.c.resign(leader.map(|lk| ResignOptions::new().with_leader(lk)))).await;
        self.note(format!("{what}: {}", answer(r, |r| r.header())));
    }

    async fn proclaim(&mut self, what: &str, value: &str, leader: Option<LeaderKey>) {
        let r = timed(self.c.proclaim(value, leader.map(|lk| ProclaimOptions::new().with_leader(lk)))).await;
        self.note(format!("{what}: {}", answer(r, |r| r.header())));
    }

    /// Note a Campaign's answer; the leader key it won, if any.
    fn campaigned(&mut self, what: &str, r: Result<etcd_client::CampaignResponse, String>) -> Option<LeaderKey> {
        let line = match &r {
            Ok(r) => format!("{} {}", rev(r.header()), r.leader().map_or("none".into(), leader_key)),
            Err(e) => e.clone(),
        };
        self.note(format!("{what}: {line}"));
        r.ok().and_then(|r| r.leader().cloned())
    }

    async fn leader(&mut self, what: &str, name: &str) {
        let line = match timed(self.c.leader(name)).await {
            Ok(r) => format!("{} {}", rev(r.header()), r.kv().map_or("no kv".into(), kv)),
            Err(e) => e,
        };
        self.note(format!("{what}: {line}"));
    }

    /// The keys under `prefix`, as the recipes left them.
    async fn keys(&mut self, prefix: &str) {
        let line = match timed(self.c.get(prefix, Some(GetOptions::new().with_prefix()))).await {
            Ok(r) => {
                // Key order depends on the lease ids; the queue order (create revision) does not.
                let mut kvs = r.kvs().to_vec();
                kvs.sort_by_key(|k| k.create_revision());
                format!("{:?}", kvs.iter().map(kv).collect::<Vec<_>>())
            }
            Err(e) => e,
        };
        self.note(format!("keys {prefix}: {line}"));
    }

    /// A Lock call left running in the background (it may wait a long time).
    fn spawn_lock(&self, name: &str, lease: i64) -> JoinHandle<Result<etcd_client::LockResponse, String>> {
        let mut c = self.c.clone();
        let name = name.to_string();
        tokio::spawn(async move { timed(c.lock(name, Some(LockOptions::new().with_lease(lease)))).await })
    }

    /// A Campaign left running in the background.
    fn spawn_campaign(
        &self,
        name: &str,
        value: &str,
        lease: i64,
    ) -> JoinHandle<Result<etcd_client::CampaignResponse, String>> {
        let mut c = self.c.clone();
        let (name, value) = (name.to_string(), value.to_string());
        tokio::spawn(async move { timed(c.campaign(name, value, lease)).await })
    }
}

/// An answer that carries only a header: its revision, or the error.
fn answer<R>(r: Result<R, String>, header: impl Fn(&R) -> Option<&etcd_client::ResponseHeader>) -> String {
    r.map_or_else(|e| e, |r| rev(header(&r)))
}

fn lock_result(r: Result<etcd_client::LockResponse, String>) -> (String, Vec<u8>) {
    match r {
        Ok(r) => (format!("{} key {}", rev(r.header()), String::from_utf8_lossy(r.key())), r.key().to_vec()),
        Err(e) => (e, Vec::new()),
    }
}

async fn joined<T>(task: JoinHandle<Result<T, String>>) -> Result<T, String> {
    task.await.map_err(|e| e.to_string())?
}

/// Lock: uncontended, contended (the second waits for the unlock), on a missing lease, released
/// by the holder's lease expiring, a waiter cancelled by its client, a waiter whose lease is
/// revoked, a session without a lease, the same lease twice, and Unlock of an empty key.
async fn lock_transcript(kind: ServerKind) -> Result<Vec<String>, String> {
    let mut run = Run::start(kind).await?;
    let l1 = run.grant(60, "L1").await?;
    let l2 = run.grant(60, "L2").await?;

    // Contended: the second Lock returns only after the first key is deleted.
    let k1 = run.lock("l", Some((l1, "L1"))).await;
    let waiter = run.spawn_lock("l", l2);
    tokio::time::sleep(SETTLE).await;
    run.note(format!("second lock waits: {}", !waiter.is_finished()));
    run.keys("l/").await;
    run.unlock(k1).await;
    let (line, k2) = lock_result(joined(waiter).await);
    run.note(format!("lock l L2 after unlock: {line}"));
    run.unlock(k2).await;

    // Re-entrant on one lease: the second Lock finds its key and holds at once.
    run.lock("again", Some((l1, "L1"))).await;
    run.lock("again", Some((l1, "L1"))).await;

    // An empty name is not refused: the key is "/<lease>".
    let k = run.lock("", Some((l2, "L2"))).await;
    run.unlock(k).await;

    run.lock("nolease", Some((0x1234, "missing"))).await;
    run.unlock(Vec::new()).await;

    // A waiter whose client gives up: its key is cleaned up.
    let held = run.lock("c", Some((l1, "L1"))).await;
    let gave_up = tokio::time::timeout(SETTLE, run.c.lock("c", Some(LockOptions::new().with_lease(l2)))).await;
    run.note(format!("cancelled waiter returned: {}", gave_up.is_ok()));
    tokio::time::sleep(SETTLE).await;
    run.keys("c/").await;
    run.unlock(held).await;

    // A waiter whose lease is revoked while it waits fails once it would have held the lock.
    let l3 = run.grant(60, "L3").await?;
    let held = run.lock("r", Some((l1, "L1"))).await;
    let waiter = run.spawn_lock("r", l3);
    tokio::time::sleep(SETTLE).await;
    run.revoke(l3, "L3").await;
    tokio::time::sleep(SETTLE).await;
    run.unlock(held).await;
    let (line, _) = lock_result(joined(waiter).await);
    run.note(format!("waiter with revoked lease: {line}"));

    // The holder's lease expires: the waiter gets the lock without any unlock.
    let short = run.grant(2, "Lshort").await?;
    run.lock("x", Some((short, "Lshort"))).await;
    let started = Instant::now();
    let held = run.lock("x", Some((l2, "L2"))).await;
    run.note(format!("waited for the expiry: {}", started.elapsed() >= Duration::from_secs(1)));
    run.unlock(held).await;

    // No lease: the server grants the session one of 60 s (and does not keep it alive).
    let before = timed(run.c.leases()).await?.leases().len();
    let key = String::from_utf8_lossy(&run.lock("z", None).await).into_owned();
    let after = timed(run.c.leases()).await?.leases().to_vec();
    run.note(format!("leases {before} -> {}", after.len()));
    if let Some(id) = after.iter().map(|s| s.id()).find(|id| key == format!("z/{id:x}")) {
        run.labels.add(id, "Lsession");
        let ttl = timed(run.c.lease_time_to_live(id, None)).await?;
        run.note(format!("session lease granted ttl {}", ttl.granted_ttl()));
    }
    Ok(run.finish())
}

/// Observe's messages, rendered, as they arrive. etcd (grpc-go) sends a stream's response
/// headers only with its first message, so opening the stream itself waits for a leader; a task
/// keeps that wait out of the transcript.
fn observe(c: &Client, name: &str) -> UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut c = c.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        let mut stream = match c.observe(name).await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(format!("observe: {}", error(&e)));
                return;
            }
        };
        loop {
            let line = match stream.message().await {
                Ok(Some(r)) => format!("observe: {} {}", rev(r.header()), r.kv().map_or("no kv".into(), kv)),
                Ok(None) => "observe: stream ended".to_string(),
                Err(e) => format!("observe: {}", error(&e)),
            };
            let end = !line.starts_with("observe: rev");
            if tx.send(line).is_err() || end {
                return;
            }
        }
    });
    rx
}

async fn observed(rx: &mut UnboundedReceiver<String>) -> String {
    match tokio::time::timeout(SETTLE * 5, rx.recv()).await {
        Ok(Some(line)) => line,
        Ok(None) => "observe: task ended".to_string(),
        Err(_) => "observe: nothing".to_string(),
    }
}

/// Election: Leader with none, Observe from before the first leader, Campaign, Proclaim, a second
/// campaigner waiting for Resign, a stale leader's Proclaim and Resign, a missing leader field,
/// campaigning again with a new value.
async fn election_transcript(kind: ServerKind) -> Result<Vec<String>, String> {
    let mut run = Run::start(kind).await?;
    let l1 = run.grant(60, "L1").await?;
    let l2 = run.grant(60, "L2").await?;

    run.leader("leader of none", "e").await;
    let mut obs = observe(&run.c, "e");
    run.note(observed(&mut obs).await);

    let r = timed(run.c.campaign("e", "v1", l1)).await;
    let lk1 = run.campaigned("campaign L1", r).ok_or("campaign returned no leader")?;
    run.note(observed(&mut obs).await);
    run.leader("leader", "e").await;
    run.proclaim("proclaim v2", "v2", Some(lk1.clone())).await;
    run.note(observed(&mut obs).await);

    let second = run.spawn_campaign("e", "w1", l2);
    tokio::time::sleep(SETTLE).await;
    run.note(format!("second campaign waits: {}", !second.is_finished()));
    run.keys("e/").await;
    run.resign("resign L1", Some(lk1.clone())).await;
    let lk2 = run.campaigned("campaign L2", joined(second).await);
    run.note(observed(&mut obs).await);

    run.proclaim("proclaim by resigned leader", "stale", Some(lk1.clone())).await;
    run.resign("resign by resigned leader", Some(lk1)).await;
    run.proclaim("proclaim without leader", "x", None).await;
    run.resign("resign without leader", None).await;

    // Campaigning again on the same lease keeps the place and proclaims the new value.
    let r = timed(run.c.campaign("e", "w2", l2)).await;
    run.campaigned("campaign L2 again", r);
    run.note(observed(&mut obs).await);

    if let Some(lk2) = lk2 {
        run.resign("resign L2", Some(lk2)).await;
    }
    run.leader("leader after resigns", "e").await;
    let r = timed(run.c.campaign("e", "v3", l1)).await;
    run.campaigned("campaign L1 again", r);
    run.note(observed(&mut obs).await);
    run.note(observed(&mut obs).await);

    // A leader key without a lease: the server's session grants one, and the value moves to it.
    let leases = |r: etcd_client::LeaseLeasesResponse| r.leases().iter().map(|l| l.id()).collect::<Vec<_>>();
    let before = leases(timed(run.c.leases()).await?);
    let r = timed(run.c.leader("e")).await?;
    let current = r.kv().ok_or("no leader kv")?;
    let bare = LeaderKey::new().with_name("e").with_key(current.key()).with_rev(current.create_revision());
    run.proclaim("proclaim with lease 0", "v4", Some(bare)).await;
    let after = leases(timed(run.c.leases()).await?);
    run.note(format!("leases {} -> {}", before.len(), after.len()));
    if let Some(&id) = after.iter().find(|id| !before.contains(id)) {
        run.labels.add(id, "Lsession");
    }
    run.leader("leader after proclaim with lease 0", "e").await;

    // A campaigner whose client gives up resigns: its key is gone.
    let gave_up = tokio::time::timeout(SETTLE, run.c.campaign("e", "w3", l2)).await;
    run.note(format!("cancelled campaign returned: {}", gave_up.is_ok()));
    tokio::time::sleep(SETTLE).await;
    run.keys("e/").await;
    Ok(run.finish())
}

fn compare(what: &str, candidate: ServerKind, reference: Vec<String>, other: Vec<String>) {
    if let Some(dir) = std::env::var_os("KEEL_COMPAT_DUMP") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{what}.reference-etcd.txt")), reference.join("\n")).unwrap();
        std::fs::write(dir.join(format!("{what}.candidate-{candidate}.txt")), other.join("\n")).unwrap();
    }
    for (i, (a, b)) in reference.iter().zip(&other).enumerate() {
        assert_eq!(a, b, "{what} step {} differs (left: etcd, right: {candidate})", i + 1);
    }
    assert_eq!(reference.len(), other.len(), "{what}: transcripts differ in length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_service_matches_etcd() {
    let candidate = ServerKind::from_env_or(CANDIDATE);
    let (reference, other) = tokio::join!(lock_transcript(ServerKind::Etcd), lock_transcript(candidate));
    let reference = reference.unwrap_or_else(|e| panic!("reference etcd: {e}"));
    let other = other.unwrap_or_else(|e| panic!("candidate {candidate}: {e}"));
    compare("lock", candidate, reference, other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_service_matches_etcd() {
    let candidate = ServerKind::from_env_or(CANDIDATE);
    let (reference, other) = tokio::join!(election_transcript(ServerKind::Etcd), election_transcript(candidate));
    let reference = reference.unwrap_or_else(|e| panic!("reference etcd: {e}"));
    let other = other.unwrap_or_else(|e| panic!("candidate {candidate}: {e}"));
    compare("election", candidate, reference, other);
}

// ---- etcdctl lock / elect: two competing processes ---------------------------------------------

/// A long-running etcdctl whose output lines are collected as they come.
struct Etcdctl {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Etcdctl {
    async fn spawn(server: &Server, args: &[&str]) -> Result<Etcdctl, String> {
        let mut child = etcdctl_watch::spawn(server, &cmd_args(args)).await.map_err(|e| e.to_string())?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        for (pipe, tag) in [
            (child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>), ""),
            (child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>), "stderr: "),
        ] {
            let Some(pipe) = pipe else { continue };
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().unwrap().push(format!("{tag}{line}"));
                }
            });
        }
        Ok(Etcdctl { child, lines })
    }

    fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Wait until at least `n` lines were printed (or the deadline passes).
    async fn wait_lines(&self, n: usize) {
        let deadline = Instant::now() + CALL_TIMEOUT;
        while self.lines.lock().unwrap().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGINT (as Ctrl-C) to exactly this child, then its exit code.
    async fn interrupt(&mut self) -> String {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status();
        }
        self.exit().await
    }

    async fn exit(&mut self) -> String {
        match tokio::time::timeout(CALL_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => {
                // Let the readers drain the pipes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                format!("exit {:?}", status.code())
            }
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => "still running".to_string(),
        }
    }
}

/// Lease ids in etcdctl's output (the keys `<name>/<lease hex>`) differ between servers.
fn mask_keys(lines: Vec<String>) -> Vec<String> {
    let key = Regex::new(r"^(\w+)/[0-9a-f]+$").unwrap();
    let env = Regex::new(r"(\w+)/[0-9a-f]+ rev \d+").unwrap();
    lines
        .iter()
        .map(|l| env.replace_all(&key.replace_all(l, "$1/<lease>"), "$1/<lease> rev <rev>").into_owned())
        .collect()
}

async fn etcdctl_lock_transcript(kind: ServerKind) -> Result<Vec<String>, String> {
    let server = Server::start(kind).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut a = Etcdctl::spawn(&server, &["lock", "L"]).await?;
    a.wait_lines(1).await;
    let mut b =
        Etcdctl::spawn(&server, &["lock", "L", "--", "sh", "-c", "echo \"B holds $ETCD_LOCK_KEY rev $ETCD_LOCK_REV\""])
            .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    out.push(format!("A holds: {:?}", mask_keys(a.output())));
    out.push(format!("B waits: {:?}", mask_keys(b.output())));
    out.push(format!("A interrupted: {}", a.interrupt().await));
    out.push(format!("B: {}", b.exit().await));
    out.push(format!("B printed: {:?}", mask_keys(b.output())));
    Ok(out)
}

async fn etcdctl_elect_transcript(kind: ServerKind) -> Result<Vec<String>, String> {
    let server = Server::start(kind).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut observer = Etcdctl::spawn(&server, &["elect", "-l", "E"]).await?;
    tokio::time::sleep(SETTLE).await;
    let mut a = Etcdctl::spawn(&server, &["elect", "E", "alpha"]).await?;
    a.wait_lines(2).await;
    let mut b = Etcdctl::spawn(&server, &["elect", "E", "beta"]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    out.push(format!("A leads: {:?}", mask_keys(a.output())));
    out.push(format!("B waits: {:?}", mask_keys(b.output())));
    out.push(format!("A interrupted: {}", a.interrupt().await));
    b.wait_lines(2).await;
    out.push(format!("B leads: {:?}", mask_keys(b.output())));
    out.push(format!("B interrupted: {}", b.interrupt().await));
    tokio::time::sleep(SETTLE).await;
    out.push(format!("observer interrupted: {}", observer.interrupt().await));
    out.push(format!("observer saw: {:?}", mask_keys(observer.output())));
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_elect_match_etcd() {
    let candidate = ServerKind::from_env_or(CANDIDATE);
    let (reference, other) =
        tokio::join!(etcdctl_lock_transcript(ServerKind::Etcd), etcdctl_lock_transcript(candidate));
    let reference = reference.unwrap_or_else(|e| panic!("reference etcd: {e}"));
    let other = other.unwrap_or_else(|e| panic!("candidate {candidate}: {e}"));
    compare("etcdctl-lock", candidate, reference, other);
    let (reference, other) =
        tokio::join!(etcdctl_elect_transcript(ServerKind::Etcd), etcdctl_elect_transcript(candidate));
    let reference = reference.unwrap_or_else(|e| panic!("reference etcd: {e}"));
    let other = other.unwrap_or_else(|e| panic!("candidate {candidate}: {e}"));
    compare("etcdctl-elect", candidate, reference, other);
}

/// What a waiter sees when its lease goes while it waits, and whether it heard before the holder
/// let go.
async fn lease_gone_transcript(kind: ServerKind) -> Result<Vec<String>, String> {
    let mut run = Run::start(kind).await?;
    let l1 = run.grant(60, "L1").await?;
    let l2 = run.grant(60, "L2").await?;
    let short = run.grant(2, "Lshort").await?;

    let held = run.lock("w", Some((l1, "L1"))).await;
    let waiter = run.spawn_lock("w", l2);
    tokio::time::sleep(SETTLE).await;
    run.revoke(l2, "L2").await;
    tokio::time::sleep(SETTLE).await;
    run.note(format!("lock waiter ended before the unlock: {}", waiter.is_finished()));
    run.unlock(held).await;
    let (line, _) = lock_result(joined(waiter).await);
    run.note(format!("lock waiter: {line}"));

    let r = timed(run.c.campaign("v", "a", l1)).await;
    let lk1 = run.campaigned("campaign L1", r).ok_or("campaign returned no leader")?;
    let second = run.spawn_campaign("v", "b", short);
    // The short lease expires within a few seconds (etcd's minimum TTL, plus its expiry check).
    tokio::time::sleep(Duration::from_secs(5)).await;
    run.note(format!("campaign waiter ended before the resign: {}", second.is_finished()));
    run.resign("resign", Some(lk1)).await;
    run.campaigned("campaign waiter", joined(second).await);
    run.keys("v/").await;
    Ok(run.finish())
}

/// Keel ends a wait as soon as the waiter's own key is gone with its lease. etcd 3.5.16 waits on
/// (a TODO in clientv3's mutex): its Lock fails with the same error only once the holder lets go,
/// and its Campaign even reports victory for a key that no longer exists. So this is Keel's own
/// behaviour, pinned here; `lease_gone_on_etcd` records etcd's for comparison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_ends_waits_when_the_lease_goes() {
    let got = lease_gone_transcript(ServerKind::Keel).await.unwrap_or_else(|e| panic!("keel: {e}"));
    let want = [
        "lock w L1: rev 2 key w/L1",
        "revoke L2: rev 4",
        "lock waiter ended before the unlock: true",
        "unlock: rev 5",
        "lock waiter: error Unknown: mutex: session is expired",
        "campaign L1: rev 6 name v key v/L1 rev 6 lease L1",
        "campaign waiter ended before the resign: true",
        "resign: rev 9",
        "campaign waiter: error Unknown: etcdserver: requested lease not found",
        "keys v/: []",
    ];
    assert_eq!(got, want);
}

/// etcd's side of the above, for the record: run with `KEEL_SOAK=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_gone_on_etcd() {
    if std::env::var("KEEL_SOAK").is_err() {
        return;
    }
    let got = lease_gone_transcript(ServerKind::Etcd).await.unwrap_or_else(|e| panic!("etcd: {e}"));
    let want = [
        "lock w L1: rev 2 key w/L1",
        "revoke L2: rev 4",
        "lock waiter ended before the unlock: false",
        "unlock: rev 5",
        "lock waiter: error Unknown: mutex: session is expired",
        "campaign L1: rev 6 name v key v/L1 rev 6 lease L1",
        "campaign waiter ended before the resign: false",
        "resign: rev 9",
        "campaign waiter: rev 7 name v key v/Lshort rev 7 lease Lshort",
        "keys v/: []",
    ];
    assert_eq!(got, want);
}

/// A Lock or Campaign waiting on a member that is asked to stop must not hold the stop up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_stops_with_calls_waiting() {
    let mut run = Run::start(ServerKind::Keel).await.unwrap();
    let l1 = run.grant(60, "L1").await.unwrap();
    let l2 = run.grant(60, "L2").await.unwrap();
    run.lock("s", Some((l1, "L1"))).await;
    let waiter = run.spawn_lock("s", l2);
    timed(run.c.campaign("e", "a", l1)).await.unwrap();
    let campaigner = run.spawn_campaign("e", "b", l2);
    let mut observer = observe(&run.c, "e");
    assert!(observed(&mut observer).await.starts_with("observe: rev"));
    tokio::time::sleep(SETTLE).await;
    assert!(!waiter.is_finished() && !campaigner.is_finished());
    let started = Instant::now();
    run._server.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "stopping took {:?}", started.elapsed());
    assert!(run._server.log_tail(5).contains("stopped"), "no clean stop: {}", run._server.log_tail(20));
}

// ---- with auth enabled: the services run as their caller -----------------------------------------

/// root (rpw) and auth on; alice (apw) may read and write under `lk/` and `el/`, bob (bpw) may
/// only read there, carol (cpw) has no role at all.
async fn enable_auth(server: &Server) -> Result<(), String> {
    let setup = [
        "user add root --new-user-password=rpw",
        "auth enable",
        "--user root:rpw user add alice --new-user-password=apw",
        "--user root:rpw user add bob --new-user-password=bpw",
        "--user root:rpw user add carol --new-user-password=cpw",
        "--user root:rpw role add rw",
        "--user root:rpw role grant-permission rw readwrite --prefix lk/",
        "--user root:rpw role grant-permission rw readwrite --prefix el/",
        "--user root:rpw role add ro",
        "--user root:rpw role grant-permission ro read --prefix lk/",
        "--user root:rpw role grant-permission ro read --prefix el/",
        "--user root:rpw user grant-role alice rw",
        "--user root:rpw user grant-role bob ro",
    ];
    for line in setup {
        let out = run_cmd(server, &cmd(line)).await.map_err(|e| e.to_string())?;
        if out.exit_code != Some(0) {
            return Err(format!("`{line}`: {}", out.stderr));
        }
    }
    Ok(())
}

async fn connect_as(server: &Server, user: &str, password: &str) -> Result<Client, String> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(3)).with_user(user, password);
    timed(Client::connect([server.endpoint()], Some(options))).await
}

/// A raw status as `client_text::error` renders one.
fn status_text(s: &tonic::Status) -> String {
    format!("error {:?}: {}", s.code(), s.message())
}

/// Lock and Election calls that carry a token no server issued (etcd-client cannot send one).
struct BogusToken {
    lock: LockClient<Channel>,
    election: ElectionClient<Channel>,
}

impl BogusToken {
    async fn connect(server: &Server) -> Result<BogusToken, String> {
        let channel = connect(&server.endpoint()).await.map_err(|e| e.to_string())?;
        Ok(BogusToken { lock: LockClient::new(channel.clone()), election: ElectionClient::new(channel) })
    }

    fn request<T>(msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert("token", MetadataValue::from_static("NoSuchToken.42"));
        req
    }

    /// Every call with the bad token, each line the answer a client got.
    async fn calls(&mut self, leader: Option<pb_election::LeaderKey>) -> Vec<String> {
        fn header(h: Option<&keel::proto::etcdserverpb::ResponseHeader>) -> String {
            h.map_or("no header".to_string(), |h| format!("rev {}", h.revision))
        }
        let mut out = Vec::new();
        let r = self.lock.lock(BogusToken::request(pb_lock::LockRequest { name: "lk".into(), lease: 0 })).await;
        out.push(format!("lock: {}", r.map_or_else(|s| status_text(&s), |r| header(r.get_ref().header.as_ref()))));
        let r = self.lock.unlock(BogusToken::request(pb_lock::UnlockRequest { key: "lk/1".into() })).await;
        out.push(format!("unlock: {}", r.map_or_else(|s| status_text(&s), |r| header(r.get_ref().header.as_ref()))));
        let campaign = pb_election::CampaignRequest { name: "el".into(), lease: 0, value: "x".into() };
        let r = self.election.campaign(BogusToken::request(campaign)).await;
        out.push(format!("campaign: {}", r.map_or_else(|s| status_text(&s), |r| header(r.get_ref().header.as_ref()))));
        let r = self.election.leader(BogusToken::request(pb_election::LeaderRequest { name: "el".into() })).await;
        out.push(format!("leader: {}", r.map_or_else(|s| status_text(&s), |r| header(r.get_ref().header.as_ref()))));
        let proclaim = |leader| pb_election::ProclaimRequest { leader, value: "x".into() };
        let r = self.election.proclaim(BogusToken::request(proclaim(None))).await;
        out.push(format!("proclaim without leader: {}", r.map_or_else(|s| status_text(&s), |_| "ok".into())));
        let r = self.election.proclaim(BogusToken::request(proclaim(leader.clone()))).await;
        out.push(format!("proclaim: {}", r.map_or_else(|s| status_text(&s), |_| "ok".into())));
        let r = self.election.resign(BogusToken::request(pb_election::ResignRequest { leader })).await;
        out.push(format!("resign: {}", r.map_or_else(|s| status_text(&s), |_| "ok".into())));
        let observe = self.election.observe(BogusToken::request(pb_election::LeaderRequest { name: "el".into() }));
        let line = match tokio::time::timeout(SETTLE * 5, observe).await {
            Err(_) => "nothing".to_string(),
            Ok(Err(s)) => status_text(&s),
            Ok(Ok(stream)) => match tokio::time::timeout(SETTLE * 5, stream.into_inner().message()).await {
                Err(_) => "nothing".to_string(),
                Ok(Ok(Some(r))) => format!("message {}", header(r.header.as_ref())),
                Ok(Ok(None)) => "stream ended".to_string(),
                Ok(Err(s)) => status_text(&s),
            },
        };
        out.push(format!("observe: {line}"));
        out
    }
}

/// Lease ids as root sees them.
async fn lease_ids(c: &Client) -> Result<Vec<i64>, String> {
    let mut c = c.clone();
    Ok(timed(c.leases()).await?.leases().iter().map(|l| l.id()).collect())
}

/// The calls a user without the right permissions makes, each answer noted: Lock with and without
/// a lease, Unlock, Campaign, Leader, Proclaim and Resign of alice's leadership, Observe.
async fn refused_calls(run: &mut Run, who: &str, lease: (i64, &str), alice_key: &[u8], alice: &LeaderKey) {
    run.note(format!("-- {who}"));
    run.lock("lk", None).await;
    run.lock("lk", Some(lease)).await;
    let r = timed(run.c.unlock(alice_key.to_vec())).await;
    run.note(format!("unlock alice's key: {}", answer(r, |r| r.header())));
    let r = timed(run.c.campaign("el", who, 0)).await;
    run.campaigned("campaign", r);
    run.leader("leader", "el").await;
    run.proclaim("proclaim alice's", who, Some(alice.clone())).await;
    run.resign("resign alice's", Some(alice.clone())).await;
    run.proclaim("proclaim without leader", who, None).await;
    let mut obs = observe(&run.c, "el");
    run.note(observed(&mut obs).await);
}

/// With auth enabled every Lock and Election call runs as the user its token names, as etcd's
/// in-process client does: alice (read-write on the prefixes) locks, waits across an auth change,
/// campaigns, proclaims, resigns; bob (read only), carol (no role), a client without a token and
/// one with a token nobody issued are refused with etcd's errors. Leases granted for sessions are
/// counted (etcd grants a session's lease before its first write is refused).
async fn auth_transcript(kind: ServerKind) -> Result<Vec<String>, String> {
    let mut run = Run::start(kind).await?;
    enable_auth(&run._server).await?;
    let anonymous = run.c.clone();
    let root = connect_as(&run._server, "root", "rpw").await?;
    let alice = connect_as(&run._server, "alice", "apw").await?;

    run.note("-- alice".into());
    run.c = alice.clone();
    let la = run.grant(60, "La").await?;
    let lb = run.grant(60, "Lb").await?;
    let k = run.lock("lk", Some((la, "La"))).await;
    run.unlock(k).await;
    // Without a lease the session's lease is granted as alice too.
    let before = lease_ids(&root).await?;
    let k = run.lock("lk", None).await;
    let after = lease_ids(&root).await?;
    run.note(format!("leases {} -> {}", before.len(), after.len()));
    if let Some(&id) = after.iter().find(|id| !before.contains(id)) {
        run.labels.add(id, "Lsession");
    }
    run.unlock(k).await;

    // A waiter: its reads and watches are alice's. An auth change while it waits (root adds a
    // user) does not make its later steps fail: each looks the token up again.
    let held = run.lock("lk", Some((la, "La"))).await;
    let waiter = run.spawn_lock("lk", lb);
    tokio::time::sleep(SETTLE).await;
    run.note(format!("second lock waits: {}", !waiter.is_finished()));
    run.c = root.clone();
    run.keys("lk/").await;
    let r = timed(run.c.user_add("dave", "dpw", None)).await;
    run.note(format!("user add dave: {}", answer(r, |r| r.header())));
    run.c = alice.clone();
    run.unlock(held).await;
    let (line, k) = lock_result(joined(waiter).await);
    run.note(format!("lock lk Lb after unlock: {line}"));
    run.unlock(k).await;
    let held = run.lock("lk", Some((la, "La"))).await;

    let mut obs = observe(&alice, "el");
    let r = timed(run.c.campaign("el", "v1", la)).await;
    let lk = run.campaigned("campaign La", r).ok_or("campaign returned no leader")?;
    run.note(observed(&mut obs).await);
    run.leader("leader", "el").await;
    run.proclaim("proclaim v2", "v2", Some(lk.clone())).await;
    run.note(observed(&mut obs).await);
    run.resign("resign", Some(lk)).await;
    run.leader("leader after resign", "el").await;
    let r = timed(run.c.campaign("el", "v3", la)).await;
    let lk = run.campaigned("campaign La again", r).ok_or("campaign returned no leader")?;

    let before = lease_ids(&root).await?;
    run.c = connect_as(&run._server, "bob", "bpw").await?;
    refused_calls(&mut run, "bob (read only)", (lb, "Lb"), &held, &lk).await;
    run.c = connect_as(&run._server, "carol", "cpw").await?;
    refused_calls(&mut run, "carol (no role)", (lb, "Lb"), &held, &lk).await;
    run.c = anonymous;
    refused_calls(&mut run, "no token", (lb, "Lb"), &held, &lk).await;
    run.note("-- a token nobody issued".into());
    for line in BogusToken::connect(&run._server).await?.calls(Some(pb_leader_key(&lk))).await {
        run.note(line);
    }
    // Sessions without a lease were granted one before their first write was refused.
    let after = lease_ids(&root).await?;
    run.note(format!("leases {} -> {}", before.len(), after.len()));

    run.note("-- root".into());
    run.c = root;
    run.keys("lk/").await;
    run.keys("el/").await;
    Ok(run.finish())
}

fn pb_leader_key(l: &LeaderKey) -> pb_election::LeaderKey {
    pb_election::LeaderKey { name: l.name().to_vec(), key: l.key().to_vec(), rev: l.rev(), lease: l.lease() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_with_auth_match_etcd() {
    let candidate = ServerKind::from_env_or(CANDIDATE);
    let (reference, other) = tokio::join!(auth_transcript(ServerKind::Etcd), auth_transcript(candidate));
    let reference = reference.unwrap_or_else(|e| panic!("reference etcd: {e}"));
    let other = other.unwrap_or_else(|e| panic!("candidate {candidate}: {e}"));
    compare("lock-election-auth", candidate, reference, other);
}

/// A waiter alice gives up on, with auth enabled: the keys left under `lk/` and `el/`.
async fn cancelled_with_auth_transcript(kind: ServerKind) -> Result<Vec<String>, String> {
    let mut run = Run::start(kind).await?;
    enable_auth(&run._server).await?;
    let root = connect_as(&run._server, "root", "rpw").await?;
    run.c = connect_as(&run._server, "alice", "apw").await?;
    let la = run.grant(60, "La").await?;
    let lb = run.grant(60, "Lb").await?;
    run.lock("lk", Some((la, "La"))).await;
    let gave_up = tokio::time::timeout(SETTLE, run.c.lock("lk", Some(LockOptions::new().with_lease(lb)))).await;
    run.note(format!("cancelled lock returned: {}", gave_up.is_ok()));
    // The dropped call's cleanup runs on its own; let it land before the next write.
    tokio::time::sleep(SETTLE).await;
    let r = timed(run.c.campaign("el", "a", la)).await;
    run.campaigned("campaign La", r);
    let gave_up = tokio::time::timeout(SETTLE, run.c.campaign("el", "b", lb)).await;
    run.note(format!("cancelled campaign returned: {}", gave_up.is_ok()));
    tokio::time::sleep(SETTLE).await;
    run.c = root;
    run.keys("lk/").await;
    run.keys("el/").await;
    Ok(run.finish())
}

/// A cancelled Lock or Campaign removes its key as its caller, so with auth enabled it cleans up
/// as it does without. etcd 3.5.16 runs that cleanup on its in-process client's own context,
/// which has no token: the delete is refused (`user name is empty`) and the key stays until its
/// lease ends, holding up later contenders. Keel's behaviour and etcd's are pinned side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiters_clean_up_with_auth() {
    let (etcd, keel) = tokio::join!(
        cancelled_with_auth_transcript(ServerKind::Etcd),
        cancelled_with_auth_transcript(ServerKind::Keel)
    );
    // etcd's refused cleanups leave both keys; Keel's deletes (revisions 4 and 7) leave one each.
    let etcd_want = [
        "lock lk La: rev 2 key lk/La",
        "cancelled lock returned: false",
        "campaign La: rev 4 name el key el/La rev 4 lease La",
        "cancelled campaign returned: false",
        r#"keys lk/: ["lk/La= c2 m2 v1 lLa", "lk/Lb= c3 m3 v1 lLb"]"#,
        r#"keys el/: ["el/La=a c4 m4 v1 lLa", "el/Lb=b c5 m5 v1 lLb"]"#,
    ];
    let keel_want = [
        "lock lk La: rev 2 key lk/La",
        "cancelled lock returned: false",
        "campaign La: rev 5 name el key el/La rev 5 lease La",
        "cancelled campaign returned: false",
        r#"keys lk/: ["lk/La= c2 m2 v1 lLa"]"#,
        r#"keys el/: ["el/La=a c5 m5 v1 lLa"]"#,
    ];
    assert_eq!(etcd.unwrap_or_else(|e| panic!("etcd: {e}")), etcd_want, "etcd");
    assert_eq!(keel.unwrap_or_else(|e| panic!("keel: {e}")), keel_want, "keel");
}
