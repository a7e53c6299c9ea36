//! One linearizability run, as etcd's robustness tests do it: start a cluster, run recorded KV
//! traffic and a watcher per member while injecting faults, heal, then validate offline — the
//! history against the etcd model (after filling in unknown outcomes from the watch ground truth),
//! no acknowledged write lost, no write nobody made, watch guarantees, and every member's final
//! state equal to the ground truth at its revision.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keel::proto::etcdserverpb::kv_client::KvClient;
use keel::proto::etcdserverpb::RangeRequest;

use crate::history::{operations, run_client, EtcdModel, Kv, PerKeyModel, Record, Request, Response, Traffic, PREFIX};
use crate::linz_cluster::Cluster;
use crate::linz_watch::{Truth, Watcher};
use crate::porcupine::{check, CheckResult, NEVER};
use crate::proxy::LinkMode;
use crate::server::{HarnessError, ServerKind};
use crate::watch_client::{prefix_end, Rng};

/// The fault a run injects, repeatedly, while traffic runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// SIGKILL the leader, restart it a little later.
    KillLeader,
    /// SIGSTOP a member (alternately the leader and a follower) longer than an election, then SIGCONT.
    PauseMember,
    /// Blackhole all peer traffic of the leader, then heal.
    PartitionLeader,
    /// Delay all peer traffic of a random member by 50-150 ms per chunk, then heal.
    DelayPeers,
    /// A random one of the above at each round (for the soak).
    Mixed,
}

/// Which implementation, how many members, how long, which fault.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub kind: ServerKind,
    pub size: usize,
    pub duration: Duration,
    pub fault: Fault,
    pub traffic: Traffic,
    pub seed: u64,
    /// Keep the cluster directory (member logs, history, watch log) when violations are found.
    pub keep_failures: bool,
}

/// What a run found. `violations` empty means it passed.
#[derive(Debug, Default)]
pub struct Report {
    pub ops: usize,
    pub unknown: usize,
    pub unknown_resolved: usize,
    /// Unknown writes the watch log could not resolve, checked as "may or may not have applied".
    pub unknown_left: usize,
    pub faults: Vec<String>,
    /// Checks that could not run, and why.
    pub notes: Vec<String>,
    pub violations: Vec<String>,
    pub final_rev: i64,
    pub check_time: Duration,
    pub watch_resumes: usize,
    /// Peer connections through the proxies: (accepted, traced to the dialling member).
    pub peer_connections: (usize, usize),
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} ops ({} unknown: {} writes resolved from the watch log, {} left open), final revision {}, checked in \
             {:?}, {} watch resumes, peer connections {} ({} traced to their dialler)",
            self.ops,
            self.unknown,
            self.unknown_resolved,
            self.unknown_left,
            self.final_rev,
            self.check_time,
            self.watch_resumes,
            self.peer_connections.0,
            self.peer_connections.1
        )?;
        writeln!(f, "faults: {}", self.faults.join("; "))?;
        if !self.notes.is_empty() {
            writeln!(f, "notes: {}", self.notes.join("; "))?;
        }
        for v in self.violations.iter().take(20) {
            writeln!(f, "VIOLATION: {v}")?;
        }
        Ok(())
    }
}

/// Runs one scenario end to end.
pub async fn run(cfg: &RunConfig) -> Result<Report, HarnessError> {
    let mut cluster = Cluster::start(cfg.kind, cfg.size).await?;
    let mut report = Report::default();
    let watchers: Vec<Watcher> = (0..cfg.size).map(|i| Watcher::start(i, cluster.endpoint(i))).collect();

    let start = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..cfg.traffic.clients)
        .map(|c| {
            let member = c % cfg.size;
            tokio::spawn(run_client(
                c,
                member,
                cluster.endpoint(member),
                cfg.traffic.clone(),
                cfg.seed,
                start,
                stop_rx.clone(),
            ))
        })
        .collect();

    inject(&mut cluster, cfg, start, &mut report).await?;
    let _ = stop_tx.send(true);
    let mut records: Vec<Record> = Vec::new();
    for c in clients {
        records.extend(c.await.map_err(|e| HarnessError::Other(format!("client task: {e}")))?);
    }
    heal(&mut cluster).await?;

    // Final state: every member's linearizable view of the prefix, then the watchers catch up to it.
    let mut finals = Vec::new();
    for i in 0..cfg.size {
        finals.push(final_range(&cluster.endpoint(i)).await?);
    }
    report.final_rev = finals.iter().map(|(rev, _)| *rev).max().unwrap_or(1);
    for w in &watchers {
        if !w.wait_for(report.final_rev, Duration::from_secs(15)).await {
            report.violations.push(format!(
                "watcher on m{} reached only revision {} of {}",
                w.member,
                w.last_rev(),
                report.final_rev
            ));
        }
    }
    let logs: Vec<_> = watchers.iter().map(Watcher::log).collect();
    let truth = Truth::establish(&logs, report.final_rev, &mut report.violations);
    report.watch_resumes = watchers.iter().map(Watcher::resumes).sum();
    report.peer_connections = cluster.net().accepted();
    for (i, (rev, state)) in finals.iter().enumerate() {
        if *state != truth.state_at(*rev) {
            report.violations.push(format!("m{i}: final state at revision {rev} differs from the watch log"));
        }
    }

    hash_agreement(&cluster, report.final_rev, &mut report).await;

    check_liveness(&records, start.elapsed(), &mut report.violations);
    report.ops = records.len();
    report.unknown = records.iter().filter(|r| r.response == Response::Unknown).count();
    check_writes(&records, &truth, &mut report.violations);
    let patched = patch(&records, &truth, &mut report.unknown_resolved);
    report.unknown_left = patched.iter().filter(|r| r.response == Response::Unknown).count();
    let ops = operations(&patched);
    let t = Instant::now();
    // A 150 s soak (27 k operations) checks in about 11 s in a debug build.
    let budget = cfg.duration.max(Duration::from_secs(60));
    for (name, result) in [("global", check(&EtcdModel, &ops, budget)), ("per-key", check(&PerKeyModel, &ops, budget))]
    {
        match result {
            CheckResult::Ok => {}
            CheckResult::Unknown => report.violations.push(format!("{name} model: checker ran out of time")),
            CheckResult::Illegal { linearized, stuck, states, .. } => report.violations.push(format!(
                "{name} model: not linearizable; after {} ops (last {:?}) state {states}; none of these fits: {:#?}",
                linearized.len(),
                linearized.last().map(|&i| &patched[i]),
                stuck.iter().map(|&i| &patched[i]).collect::<Vec<_>>()
            )),
        }
    }
    report.check_time = t.elapsed();

    if !report.violations.is_empty() && cfg.keep_failures {
        if let Some(dir) = cluster.keep_dir() {
            let dump: String = records.iter().map(|r| format!("{r:?}\n")).collect();
            let _ = std::fs::write(dir.join("history.txt"), dump);
            let truth_dump: String = truth.events.iter().map(|e| format!("{e:?}\n")).collect();
            let _ = std::fs::write(dir.join("watch-truth.txt"), truth_dump);
            report.violations.push(format!("history, watch log and member logs kept in {}", dir.display()));
        }
    }
    Ok(report)
}

/// Injects `cfg.fault` until `cfg.duration` has passed since `start`, logging each step.
async fn inject(
    cluster: &mut Cluster,
    cfg: &RunConfig,
    start: Instant,
    report: &mut Report,
) -> Result<(), HarnessError> {
    let mut rng = Rng::new(cfg.seed);
    let mut round = 0usize;
    let time_left = |extra: Duration| start.elapsed() + extra < cfg.duration;
    // Settle first, so some traffic precedes every fault.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while time_left(Duration::from_secs(4)) && cfg.fault != Fault::None {
        round += 1;
        let fault = match cfg.fault {
            Fault::Mixed => [Fault::KillLeader, Fault::PauseMember, Fault::PartitionLeader, Fault::DelayPeers]
                [rng.below(4) as usize],
            f => f,
        };
        let leader = cluster.leader().await;
        let at = start.elapsed();
        let Some(leader) = leader else {
            report.faults.push(format!("{at:.1?}: no leader found"));
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        match fault {
            Fault::KillLeader => {
                cluster.kill(leader)?;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                cluster.restart(leader).await?;
                report.faults.push(format!("{at:.1?}: killed leader m{leader}, restarted"));
            }
            Fault::PauseMember => {
                // Alternate between the leader and a follower.
                let victim = if round % 2 == 1 { leader } else { (leader + 1) % cluster.size() };
                cluster.pause(victim)?;
                tokio::time::sleep(Duration::from_millis(2500)).await;
                cluster.resume(victim)?;
                report.faults.push(format!("{at:.1?}: paused m{victim} (leader m{leader}) 2.5 s"));
            }
            Fault::PartitionLeader => {
                cluster.net().isolate(leader);
                tokio::time::sleep(Duration::from_secs(2)).await;
                // Proof the partition is real: a minority member cannot confirm a linearizable read.
                if linearizable_read_ok(&cluster.endpoint(leader)).await {
                    report
                        .violations
                        .push(format!("partition ineffective: isolated m{leader} served a linearizable read"));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                cluster.net().heal();
                report.faults.push(format!("{at:.1?}: isolated leader m{leader} 3 s, healed"));
            }
            Fault::DelayPeers => {
                let victim = rng.below(cluster.size() as u64) as usize;
                cluster.net().set(victim, LinkMode::Delay(Duration::from_millis(50 + rng.below(100))));
                tokio::time::sleep(Duration::from_secs(3)).await;
                cluster.net().heal();
                report.faults.push(format!("{at:.1?}: delayed peer traffic of m{victim} 3 s"));
            }
            // Mixed was resolved to a concrete fault above; None never enters the loop.
            Fault::Mixed | Fault::None => {}
        }
        // Let the cluster recover before the next fault.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let left = cfg.duration.saturating_sub(start.elapsed());
    tokio::time::sleep(left).await;
    Ok(())
}

/// All members hash their keyspace at `rev` alike (etcd's end-of-test HashKV check). Skipped, with a
/// note, when a member does not implement HashKV.
async fn hash_agreement(cluster: &Cluster, rev: i64, report: &mut Report) {
    use keel::proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use keel::proto::etcdserverpb::HashKvRequest;
    let mut hashes = Vec::new();
    for i in 0..cluster.size() {
        let mut m = MaintenanceClient::new(crate::history::lazy_channel(&cluster.endpoint(i)));
        match tokio::time::timeout(Duration::from_secs(5), m.hash_kv(HashKvRequest { revision: rev })).await {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                hashes.push((i, resp.hash, resp.compact_revision));
            }
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                report.notes.push(format!("HashKV not implemented on m{i}: hash check skipped"));
                return;
            }
            Ok(Err(s)) => report.violations.push(format!("m{i}: HashKV at {rev} failed: {}", s.message())),
            Err(_) => report.violations.push(format!("m{i}: HashKV at {rev} timed out")),
        }
    }
    if hashes.windows(2).any(|w| (w[0].1, w[0].2) != (w[1].1, w[1].2)) {
        report.violations.push(format!("members disagree on HashKV at revision {rev}: {hashes:?}"));
    }
}

/// Whether `endpoint` answers a linearizable Range within 700 ms.
async fn linearizable_read_ok(endpoint: &str) -> bool {
    let mut kv = KvClient::new(crate::history::lazy_channel(endpoint));
    let req = RangeRequest { key: PREFIX.as_bytes().to_vec(), ..Default::default() };
    matches!(tokio::time::timeout(Duration::from_millis(700), kv.range(req)).await, Ok(Ok(_)))
}

/// Undoes every fault: heals the network, resumes paused and restarts killed members.
async fn heal(cluster: &mut Cluster) -> Result<(), HarnessError> {
    cluster.net().heal();
    for i in 0..cluster.size() {
        if cluster.pid(i).is_some() {
            // SIGCONT is harmless on a running process; it ends any pause.
            let _ = cluster.resume(i);
        } else {
            cluster.restart(i).await?;
        }
    }
    Ok(())
}

/// A linearizable Range over the traffic prefix: (header revision, keyspace), retried for a while
/// (a member may still be catching up after a fault).
async fn final_range(endpoint: &str) -> Result<(i64, std::collections::BTreeMap<String, Kv>), HarnessError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut kv = KvClient::new(crate::history::lazy_channel(endpoint));
        let req = RangeRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: prefix_end(PREFIX.as_bytes()),
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_secs(2), kv.range(req)).await {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                let state = resp
                    .kvs
                    .iter()
                    .map(|kv| {
                        let key = String::from_utf8_lossy(&kv.key).into_owned();
                        (key, Kv { value: String::from_utf8_lossy(&kv.value).into_owned(), mod_rev: kv.mod_revision })
                    })
                    .collect();
                return Ok((resp.header.map(|h| h.revision).unwrap_or(0), state));
            }
            Ok(Err(s)) => last = format!("{:?}: {}", s.code(), s.message()),
            Err(_) => last = "timed out".to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(HarnessError::Other(format!("final read on {endpoint} failed: {last}")))
}

/// Longest stretch without an acknowledged write that a run tolerates: a fault heals within 3 s
/// and etcd elects a leader within a few election timeouts (1 s each here).
pub const MAX_WRITE_GAP: Duration = Duration::from_secs(7);

/// Liveness: the cluster keeps acknowledging writes; no gap between consecutive acknowledged writes
/// (or from the start, or until `end`) exceeds [`MAX_WRITE_GAP`].
pub fn check_liveness(records: &[Record], end: Duration, violations: &mut Vec<String>) {
    let mut acked: Vec<u64> = records
        .iter()
        .filter(|r| matches!(r.response, Response::Put { .. } | Response::Txn { succeeded: true, .. }))
        .map(|r| r.ret)
        .collect();
    acked.sort();
    let traffic_end = records.iter().map(|r| r.call).max().unwrap_or(0).min(end.as_nanos() as u64);
    let mut last = 0u64;
    for t in acked.into_iter().chain([traffic_end]) {
        if t.saturating_sub(last) > MAX_WRITE_GAP.as_nanos() as u64 {
            violations.push(format!(
                "no write acknowledged between {:?} and {:?} into the run",
                Duration::from_nanos(last),
                Duration::from_nanos(t)
            ));
        }
        last = last.max(t);
    }
}

/// No acknowledged write lost (each appears in the watch log at its revision) and no write in the
/// log that no client made.
pub fn check_writes(records: &[Record], truth: &Truth, violations: &mut Vec<String>) {
    let by_rev: HashMap<i64, &crate::linz_watch::Event> = truth.events.iter().map(|e| (e.rev, e)).collect();
    let mut written: HashMap<&str, &Request> = HashMap::new();
    let mut deleters: HashMap<&str, usize> = HashMap::new();
    for r in records {
        if let Some(v) = r.request.written_value() {
            written.insert(v, &r.request);
        }
        if let Request::Delete { key } = &r.request {
            *deleters.entry(key).or_default() += 1;
        }
        let expected = match (&r.request, &r.response) {
            (Request::Put { key, value }, Response::Put { rev })
            | (Request::Txn { key, value, .. }, Response::Txn { rev, succeeded: true, .. }) => {
                Some((*rev, key, Some(value.clone())))
            }
            (Request::Delete { key }, Response::Delete { rev, deleted: 1 }) => Some((*rev, key, None)),
            _ => None,
        };
        if let Some((rev, key, value)) = expected {
            match by_rev.get(&rev) {
                Some(e) if &e.key == key && e.value == value => {}
                other => violations.push(format!(
                    "acknowledged write lost: {:?} -> {:?} but the log has {other:?} at revision {rev}",
                    r.request, r.response
                )),
            }
        }
    }
    for e in &truth.events {
        let made = match &e.value {
            Some(v) => written.get(v.as_str()).is_some_and(|req| req.key() == e.key),
            None => deleters.contains_key(e.key.as_str()),
        };
        if !made {
            violations.push(format!("the log has a write no client made: {e:?}"));
        }
    }
}

/// Fills in unknown outcomes from the ground truth, as etcd's robustness tests patch histories:
/// unknown reads are dropped; an unknown Put/Txn whose unique value was applied gets its revision,
/// and a return time no later than the first response that already observed that revision; one
/// whose value never appeared had no effect and is dropped. Deletes carry no unique value, so an
/// unknown delete is matched against the delete events no acknowledged delete explains: with no
/// event it could have caused it had no effect and is dropped; where one delete and one event can
/// only be each other's, it gets that revision; otherwise it stays unknown. (Unknown operations
/// that can be placed anywhere are what makes the search expensive, above all on a violation.)
pub fn patch(records: &[Record], truth: &Truth, resolved: &mut usize) -> Vec<Record> {
    let applied = truth.put_index();
    // Earliest return among known responses reporting each revision or later.
    let mut known: Vec<(i64, u64)> = records.iter().filter_map(|r| r.response.rev().map(|rev| (rev, r.ret))).collect();
    known.sort();
    let mut suffix_min = vec![NEVER; known.len() + 1];
    for i in (0..known.len()).rev() {
        suffix_min[i] = suffix_min[i + 1].min(known[i].1);
    }
    let bound = |rev: i64| suffix_min[known.partition_point(|(r, _)| *r < rev)];
    let explained: std::collections::HashSet<i64> = records
        .iter()
        .filter_map(|r| match (&r.request, &r.response) {
            (Request::Delete { .. }, Response::Delete { rev, deleted: 1 }) => Some(*rev),
            _ => None,
        })
        .collect();
    let unexplained: Vec<&crate::linz_watch::Event> =
        truth.events.iter().filter(|e| e.value.is_none() && !explained.contains(&e.rev)).collect();
    // The events an unknown delete may have caused: on its key, and not observed by any response
    // that returned before the delete was even sent.
    let candidates = |r: &Record| -> Vec<i64> {
        unexplained.iter().filter(|e| e.key == r.request.key() && bound(e.rev) > r.call).map(|e| e.rev).collect()
    };
    let mut claims: HashMap<i64, usize> = HashMap::new();
    for r in records.iter().filter(|r| r.response == Response::Unknown && matches!(r.request, Request::Delete { .. })) {
        for rev in candidates(r) {
            *claims.entry(rev).or_default() += 1;
        }
    }
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        if r.response != Response::Unknown {
            out.push(r.clone());
            continue;
        }
        let response = match (&r.request, r.request.written_value().and_then(|v| applied.get(v))) {
            (Request::Get { .. }, _) => continue,
            (Request::Delete { .. }, _) => match candidates(r)[..] {
                [] => {
                    *resolved += 1;
                    continue;
                }
                [rev] if claims.get(&rev) == Some(&1) => Response::Delete { rev, deleted: 1 },
                _ => {
                    out.push(r.clone());
                    continue;
                }
            },
            (_, None) => {
                *resolved += 1;
                continue;
            }
            (Request::Put { .. }, Some((rev, _))) => Response::Put { rev: *rev },
            (_, Some((rev, _))) => Response::Txn { rev: *rev, succeeded: true, kv: None },
        };
        *resolved += 1;
        let rev = response.rev().unwrap_or(0);
        out.push(Record { response, ret: bound(rev).max(r.call), ..r.clone() });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linz_watch::Event;

    fn record(request: Request, response: Response, call: u64, ret: u64) -> Record {
        Record { client: 0, member: 0, request, response, call, ret, error: None }
    }
    fn put_req(key: &str, value: &str) -> Request {
        Request::Put { key: key.into(), value: value.into() }
    }
    fn truth(events: Vec<(i64, &str, Option<&str>)>) -> Truth {
        Truth {
            events: events
                .into_iter()
                .map(|(rev, key, value)| Event { rev, key: key.into(), value: value.map(String::from) })
                .collect(),
        }
    }

    #[test]
    fn a_stalled_cluster_is_caught() {
        let secs = |s: u64| Duration::from_secs(s).as_nanos() as u64;
        let put = |ret| record(put_req("k", "v"), Response::Put { rev: 2 }, ret - 1, ret);
        let busy: Vec<Record> = (1..20).map(|s| put(secs(s))).collect();
        let mut v = Vec::new();
        check_liveness(&busy, Duration::from_secs(20), &mut v);
        assert!(v.is_empty(), "{v:?}");
        let stalled = vec![put(secs(1)), put(secs(2)), put(secs(12)), put(secs(13))];
        check_liveness(&stalled, Duration::from_secs(14), &mut v);
        assert_eq!(v.len(), 1, "{v:?}");
    }

    #[test]
    fn lost_and_phantom_writes_are_caught() {
        let t = truth(vec![(2, "k", Some("a")), (3, "k", Some("ghost"))]);
        let records = vec![
            record(put_req("k", "a"), Response::Put { rev: 2 }, 0, 1),
            // Acknowledged at revision 4, which never happened.
            record(put_req("k", "b"), Response::Put { rev: 4 }, 2, 3),
        ];
        let mut v = Vec::new();
        check_writes(&records, &t, &mut v);
        assert_eq!(v.len(), 2, "{v:#?}");
        assert!(v[0].starts_with("acknowledged write lost"));
        assert!(v[1].starts_with("the log has a write no client made"));
    }

    #[test]
    fn unknown_writes_are_resolved_from_the_log() {
        let t = truth(vec![(2, "k", Some("a")), (3, "k", None), (4, "j", Some("b")), (5, "j", None)]);
        let delete = |key: &str| Request::Delete { key: key.into() };
        let records = vec![
            record(put_req("k", "a"), Response::Unknown, 0, NEVER),
            record(put_req("k", "never"), Response::Unknown, 0, NEVER),
            record(Request::Get { key: "k".into() }, Response::Unknown, 0, NEVER),
            record(Request::Get { key: "k".into() }, Response::Get { rev: 2, kv: None }, 5, 9),
            record(put_req("j", "b"), Response::Put { rev: 4 }, 10, 11),
            // The only delete that can explain revision 3.
            record(delete("k"), Response::Unknown, 6, NEVER),
            // Two deletes of j, either of which may have made revision 5.
            record(delete("j"), Response::Unknown, 12, NEVER),
            record(delete("j"), Response::Unknown, 13, NEVER),
            record(Request::Get { key: "j".into() }, Response::Get { rev: 5, kv: None }, 14, 20),
            // Sent after revision 5 was observed, when no unexplained delete of j remained.
            record(delete("j"), Response::Unknown, 21, NEVER),
        ];
        let mut resolved = 0;
        let patched = patch(&records, &t, &mut resolved);
        assert_eq!(resolved, 4);
        // The applied put got its revision and a return no later than the read that saw revision 2;
        // the unapplied put, the unknown read and the late delete are gone; the delete of k got
        // revision 3; the two ambiguous deletes of j stay unknown.
        assert_eq!(patched.len(), 7, "{patched:#?}");
        assert_eq!(patched[0].response, Response::Put { rev: 2 });
        assert_eq!(patched[0].ret, 9);
        assert_eq!(patched[3].response, Response::Delete { rev: 3, deleted: 1 });
        assert_eq!(patched[3].ret, 11, "bounded by the put acknowledged at revision 4");
        assert_eq!((patched[4].response.clone(), patched[5].response.clone()), (Response::Unknown, Response::Unknown));
    }
}
