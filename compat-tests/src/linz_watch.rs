//! Watch side of the linearizability runs: one watcher per member from revision 1 on the traffic
//! prefix, resumed after every break from the revision after the last event it received, and the
//! checks of etcd's documented watch guarantees (ordered, unique, atomic, reliable/no gaps,
//! resumable) against the ground-truth event log that the watchers together establish.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel::proto::etcdserverpb::watch_client::WatchClient;
use keel::proto::etcdserverpb::watch_request::RequestUnion;
use keel::proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
use keel::proto::mvccpb::event::EventType;
use tokio::task::JoinHandle;

use crate::history::{lazy_channel, Kv, PREFIX};
use crate::watch_client::prefix_end;

/// One event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub rev: i64,
    pub key: String,
    /// None for a delete.
    pub value: Option<String>,
}

/// What one watcher received: the events of each response, in arrival order.
#[derive(Debug, Default)]
struct Received {
    responses: Vec<Vec<Event>>,
    /// Times the stream broke and was resumed.
    resumes: usize,
    /// Problems seen on the stream (cancellations, bad resumes).
    problems: Vec<String>,
}

/// A resuming watcher on one member.
pub struct Watcher {
    pub member: usize,
    received: Arc<Mutex<Received>>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Starts watching `PREFIX` on `endpoint` from revision 1.
    pub fn start(member: usize, endpoint: String) -> Watcher {
        let received = Arc::new(Mutex::new(Received::default()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            let mut next_rev = 1;
            loop {
                let mut client = WatchClient::new(lazy_channel(&endpoint));
                let create = WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                        key: PREFIX.as_bytes().to_vec(),
                        range_end: prefix_end(PREFIX.as_bytes()),
                        start_revision: next_rev,
                        ..Default::default()
                    })),
                };
                // The request stream stays open (dropping the sender would end the watch).
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let _ = tx.send(create).await;
                let stream = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
                )
                .await;
                if let Ok(Ok(stream)) = stream {
                    let mut stream = stream.into_inner();
                    while let Ok(Some(resp)) = stream.message().await {
                        if resp.canceled {
                            let mut log = log.lock().expect("watch log");
                            log.problems.push(format!(
                                "watch from {next_rev} canceled: {} (compact revision {})",
                                resp.cancel_reason, resp.compact_revision
                            ));
                            break;
                        }
                        if resp.events.is_empty() {
                            continue;
                        }
                        let events: Vec<Event> = resp.events.iter().map(event).collect();
                        let mut log = log.lock().expect("watch log");
                        // Resumable: the first event after a (re)start is at or after the start revision.
                        if events[0].rev < next_rev {
                            log.problems.push(format!("event at {} on a watch from {next_rev}", events[0].rev));
                        }
                        next_rev = next_rev.max(events.last().map(|e| e.rev + 1).unwrap_or(next_rev));
                        log.responses.push(events);
                    }
                    drop(tx);
                }
                log.lock().expect("watch log").resumes += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Watcher { member, received, task }
    }

    /// Highest revision received so far.
    pub fn last_rev(&self) -> i64 {
        let log = self.received.lock().expect("watch log");
        log.responses.last().and_then(|r| r.last()).map(|e| e.rev).unwrap_or(1)
    }

    /// Waits until the watcher has received revision `rev`.
    pub async fn wait_for(&self, rev: i64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.last_rev() < rev {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    pub fn resumes(&self) -> usize {
        self.received.lock().expect("watch log").resumes
    }

    /// What this watcher received: its member, the events of each response, and stream problems.
    pub fn log(&self) -> WatchLog {
        let log = self.received.lock().expect("watch log");
        WatchLog { member: self.member, responses: log.responses.clone(), problems: log.problems.clone() }
    }
}

/// One watcher's record, as the checks take it.
#[derive(Debug, Clone, Default)]
pub struct WatchLog {
    pub member: usize,
    pub responses: Vec<Vec<Event>>,
    pub problems: Vec<String>,
}

impl WatchLog {
    /// Checks the guarantees one watcher can show on its own (ordered, unique, atomic, resumable);
    /// returns its events flattened.
    fn check_own(&self, violations: &mut Vec<String>) -> Vec<Event> {
        let who = format!("watcher on m{}", self.member);
        violations.extend(self.problems.iter().map(|p| format!("{who}: {p}")));
        let mut all: Vec<Event> = Vec::new();
        let mut last_rev = 0;
        for resp in &self.responses {
            for (i, e) in resp.iter().enumerate() {
                // Ordered and unique: revisions never go back, and a revision that ended one response
                // never continues in the next (atomic).
                if e.rev < last_rev || (i == 0 && e.rev == last_rev) {
                    violations.push(format!("{who}: event at revision {} after revision {last_rev}", e.rev));
                }
                last_rev = last_rev.max(e.rev);
            }
            all.extend(resp.iter().cloned());
        }
        all
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn event(e: &keel::proto::mvccpb::Event) -> Event {
    let kv = e.kv.clone().unwrap_or_default();
    Event {
        rev: kv.mod_revision,
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: (e.r#type != EventType::Delete as i32).then(|| String::from_utf8_lossy(&kv.value).into_owned()),
    }
}

/// The ground truth: every change from revision 2 to `last`, one event per revision (each request
/// of the traffic writes at most one key).
#[derive(Debug, Default)]
pub struct Truth {
    pub events: Vec<Event>,
}

impl Truth {
    /// Builds the truth from all watchers: each must be a gap-free prefix of the longest, which must
    /// hold every revision from 2 to `final_rev` exactly once.
    pub fn establish(watchers: &[WatchLog], final_rev: i64, violations: &mut Vec<String>) -> Truth {
        let logs: Vec<(usize, Vec<Event>)> = watchers.iter().map(|w| (w.member, w.check_own(violations))).collect();
        let Some((_, longest)) = logs.iter().max_by_key(|(_, events)| events.len()) else {
            return Truth::default();
        };
        for (i, e) in longest.iter().enumerate() {
            let want = 2 + i as i64;
            if e.rev != want {
                violations.push(format!("watch log: revision {} where {want} was expected (gap or duplicate)", e.rev));
                break;
            }
        }
        if longest.last().map(|e| e.rev).unwrap_or(1) != final_rev {
            violations.push(format!(
                "watch log ends at revision {:?}, the members report {final_rev}",
                longest.last().map(|e| e.rev)
            ));
        }
        for (member, events) in &logs {
            // Reliable: no watcher may skip or alter a change that another one saw.
            if events.len() != longest.len() || events[..] != longest[..events.len()] {
                let at = events.iter().zip(longest.iter()).position(|(a, b)| a != b);
                violations.push(format!(
                    "watcher on m{member} saw {} events, the longest log {}; first difference at index {at:?}",
                    events.len(),
                    longest.len()
                ));
            }
        }
        Truth { events: longest.clone() }
    }

    /// The revision and key at which the Put of unique `value` was applied.
    pub fn put_index(&self) -> std::collections::HashMap<&str, (i64, &str)> {
        self.events.iter().filter_map(|e| e.value.as_deref().map(|v| (v, (e.rev, e.key.as_str())))).collect()
    }

    /// The keyspace after applying every event up to and including `rev`.
    pub fn state_at(&self, rev: i64) -> std::collections::BTreeMap<String, Kv> {
        let mut state = std::collections::BTreeMap::new();
        for e in self.events.iter().take_while(|e| e.rev <= rev) {
            match &e.value {
                Some(v) => {
                    state.insert(e.key.clone(), Kv { value: v.clone(), mod_rev: e.rev });
                }
                None => {
                    state.remove(&e.key);
                }
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(rev: i64, key: &str, value: &str) -> Event {
        Event { rev, key: key.into(), value: Some(value.into()) }
    }

    fn log(member: usize, responses: Vec<Vec<Event>>) -> WatchLog {
        WatchLog { member, responses, problems: vec![] }
    }

    fn violations(logs: &[WatchLog], final_rev: i64) -> Vec<String> {
        let mut v = Vec::new();
        Truth::establish(logs, final_rev, &mut v);
        v
    }

    #[test]
    fn agreeing_gap_free_logs_pass() {
        let a = log(0, vec![vec![put(2, "k", "a")], vec![put(3, "k", "b"), put(4, "j", "c")]]);
        let b = log(1, vec![vec![put(2, "k", "a"), put(3, "k", "b")], vec![put(4, "j", "c")]]);
        assert!(violations(&[a, b], 4).is_empty());
    }

    #[test]
    fn gap_duplicate_reorder_and_disagreement_are_caught() {
        let gap = log(0, vec![vec![put(2, "k", "a")], vec![put(4, "k", "b")]]);
        assert!(!violations(&[gap], 4).is_empty());
        let dup = log(0, vec![vec![put(2, "k", "a")], vec![put(2, "k", "a"), put(3, "k", "b")]]);
        assert!(!violations(&[dup], 3).is_empty());
        let back = log(0, vec![vec![put(3, "k", "b")], vec![put(2, "k", "a")]]);
        assert!(!violations(&[back], 3).is_empty());
        let a = log(0, vec![vec![put(2, "k", "a"), put(3, "k", "b")]]);
        let b = log(1, vec![vec![put(2, "k", "a"), put(3, "k", "other")]]);
        assert!(!violations(&[a.clone(), b], 3).is_empty());
        // A watcher that stops short of the members' revision missed events.
        let short = log(1, vec![vec![put(2, "k", "a")]]);
        assert!(!violations(&[a, short], 3).is_empty());
    }

    #[test]
    fn state_at_replays_puts_and_deletes() {
        let t =
            Truth { events: vec![put(2, "k", "a"), Event { rev: 3, key: "k".into(), value: None }, put(4, "j", "b")] };
        assert_eq!(t.state_at(2).get("k").map(|kv| kv.mod_rev), Some(2));
        assert!(t.state_at(3).is_empty());
        assert_eq!(t.state_at(4).len(), 1);
    }
}
