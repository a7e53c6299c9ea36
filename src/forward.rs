//! What only the leader can do, asked from any member: a follower hands its client writes,
//! read-index requests, lease keep-alives/TimeToLive and membership changes to the leader over the
//! peer service and gets the leader's answer back. etcd does the same: followers forward
//! proposals as raft `MsgProp`, ask the leader for a ReadIndex, and send keep-alives and
//! TimeToLive to the leader's peer `/leases` handlers.
//!
//! `call_leader` is the client half; `answer` (run by `raft/peer_service.rs` on the leader) the
//! server half. Errors travel as their text and come back as the same [`Error`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::apply::command::{CommandResult, RaftCommand};
use crate::error::{Error, Result};
use crate::membership::MemberChange;
use crate::node::MemberInfo;
use crate::node::Node;
use crate::raft::network::{decode, encode, not_delivered, PeerChannels};
use crate::raft::types::PeerNode;

/// A request only the leader answers.
#[derive(Serialize, Deserialize, Debug)]
pub enum LeaderCall {
    /// Propose this command and return its applied result.
    Write(RaftCommand),
    /// Confirm leadership with a quorum; return the index a linearizable read must see applied.
    ReadIndex,
    KeepAlive(i64),
    TimeToLive {
        id: i64,
        keys: bool,
    },
    /// A membership change; answered with the member list after it.
    Member(MemberChange),
    /// Several calls (each encoded on its own), answered one by one: see [`LeaderCallBatcher`].
    Batch(Vec<Vec<u8>>),
}

#[derive(Serialize, Deserialize, Debug)]
pub enum LeaderAnswer {
    Written(CommandResult),
    ReadIndex(u64),
    Ttl(i64),
    /// (ttl, granted ttl, keys), or None for no such lease.
    TimeToLive(Option<(i64, i64, Vec<Vec<u8>>)>),
    Members {
        changed: Option<MemberInfo>,
        members: Vec<MemberInfo>,
    },
    /// A [`LeaderCall::Batch`]'s answers, in its order.
    Batch(Vec<std::result::Result<LeaderAnswer, String>>),
}

/// How long to wait between looks for a leader while there is none (or it just changed).
const LEADER_POLL: Duration = Duration::from_millis(20);

/// Run `call` on the leader (here, if this member leads), waiting out elections until `timeout`;
/// `NoLeader` if none was found by then.
///
/// A call is only retried when it certainly did not run: the addressed member said it does not
/// lead, or it could not be connected to. A call lost mid-flight is not retried (a write might have
/// been applied), and ends in etcd's "possibly due to connection lost" timeout.
pub async fn call_leader(node: &Node, call: LeaderCall, timeout: Duration) -> Result<LeaderAnswer> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = node.raft_status();
        let attempt = match status.leader {
            Some(leader) if leader == node.member_id => answer(node, &call).await,
            Some(leader) => match Lane::of(&call) {
                Some(lane) => node.leader_calls.call(node, lane, leader, &call, deadline).await,
                None => remote(node, leader, &call, deadline).await,
            },
            None => Err(Error::NoLeader),
        };
        match attempt {
            Err(Error::NotLeader | Error::NoLeader) if Instant::now() + LEADER_POLL < deadline => {
                tokio::time::sleep(LEADER_POLL).await;
            }
            // Still no leader at the deadline: `NoLeader`, which each caller turns into what etcd
            // answers then (writes and reads differ).
            Err(Error::NotLeader | Error::NoLeader) => return Err(Error::NoLeader),
            other => return other,
        }
    }
}

/// Ask member `leader`; `NotLeader` if it is unreachable or no longer leads.
async fn remote(node: &Node, leader: u64, call: &LeaderCall, deadline: Instant) -> Result<LeaderAnswer> {
    let Some(peer) = node.peer_node(leader) else {
        return Err(Error::NotLeader);
    };
    ask_leader(&node.peer_channels, &peer, call, deadline).await
}

/// One `Leader` peer call to `peer`, its failures mapped as a caller must see them: `NotLeader` if
/// the call never reached it (safe to retry elsewhere), the timeout or connection-lost error if it
/// may have run, else the leader's own answer or error.
async fn ask_leader(
    channels: &PeerChannels,
    peer: &PeerNode,
    call: &LeaderCall,
    deadline: Instant,
) -> Result<LeaderAnswer> {
    let mut client = channels.client(peer).map_err(Error::Internal)?;
    let mut request = channels.request(encode(call));
    let left = deadline.saturating_duration_since(Instant::now());
    request.set_timeout(left);
    match tokio::time::timeout(left, client.leader(request)).await {
        Err(_) => Err(Error::Timeout),
        Ok(Err(status)) if not_delivered(&status) => {
            // The leader is gone; wait for raft to notice and elect another.
            Err(Error::NotLeader)
        }
        Ok(Err(status)) => {
            tracing::debug!(leader = %peer, %status, "call to the leader failed");
            Err(Error::TimeoutConnectionLost)
        }
        Ok(Ok(resp)) => {
            let answer: std::result::Result<LeaderAnswer, String> =
                decode(&resp.into_inner()).map_err(Error::Internal)?;
            answer.map_err(|text| Error::from_text(&text))
        }
    }
}

/// The leader's side: do what was asked, if this member (still) leads.
pub async fn answer(node: &Node, call: &LeaderCall) -> Result<LeaderAnswer> {
    if !node.raft_status().is_leader {
        return Err(Error::NotLeader);
    }
    match call {
        LeaderCall::Write(command) => {
            crate::propose::write_here(node, command.clone()).await.map(LeaderAnswer::Written)
        }
        LeaderCall::ReadIndex => crate::read::read_index_here(node).await.map(LeaderAnswer::ReadIndex),
        LeaderCall::KeepAlive(id) => {
            node.leases.keep_alive(*id, node.limits.request_timeout).await.map(LeaderAnswer::Ttl)
        }
        LeaderCall::TimeToLive { id, keys } => {
            let found = node.leases.time_to_live(*id, *keys, std::time::Instant::now())?;
            Ok(LeaderAnswer::TimeToLive(found.map(|t| (t.ttl, t.granted_ttl, t.keys))))
        }
        LeaderCall::Member(change) => crate::membership::change_here(node, change.clone())
            .await
            .map(|(changed, members)| LeaderAnswer::Members { changed, members }),
        LeaderCall::Batch(_) => Err(Error::Internal("a batch of leader calls inside another".into())),
    }
}

/// Serve a peer's `Leader` call: the answer or the error's text. A batch's calls run concurrently,
/// each answered (or failed) on its own, as if they had come one by one.
pub async fn serve(node: &Node, call: LeaderCall) -> std::result::Result<LeaderAnswer, String> {
    match call {
        LeaderCall::Batch(calls) => {
            // A batch of writes goes to raft as one proposal message.
            if node.raft_status().is_leader {
                if let Some(commands) = decode_writes(&calls) {
                    let written = crate::propose::write_many_here(node, commands).await;
                    return Ok(LeaderAnswer::Batch(
                        written.into_iter().map(|w| w.map(LeaderAnswer::Written).map_err(|e| e.to_string())).collect(),
                    ));
                }
            }
            let answers = futures::future::join_all(calls.iter().map(|bytes| async move {
                let call: LeaderCall =
                    postcard::from_bytes(bytes).map_err(|e| format!("undecodable leader call: {e}"))?;
                answer(node, &call).await.map_err(|e| e.to_string())
            }))
            .await;
            Ok(LeaderAnswer::Batch(answers))
        }
        call => answer(node, &call).await.map_err(|e| e.to_string()),
    }
}

/// The commands of a batch that holds only writes (the writes lane's batches), else None.
fn decode_writes(calls: &[Vec<u8>]) -> Option<Vec<RaftCommand>> {
    calls
        .iter()
        .map(|bytes| match postcard::from_bytes::<LeaderCall>(bytes) {
            Ok(LeaderCall::Write(command)) => Some(command),
            _ => None,
        })
        .collect()
}

/// The kinds of leader call that are batched, each in its own lane so that quick keep-alives never
/// wait for writes to commit.
#[derive(Clone, Copy)]
pub enum Lane {
    Writes = 0,
    KeepAlives = 1,
}

impl Lane {
    fn of(call: &LeaderCall) -> Option<Lane> {
        match call {
            LeaderCall::Write(_) => Some(Lane::Writes),
            LeaderCall::KeepAlive(_) => Some(Lane::KeepAlives),
            // Read-index rounds are already shared by every reader of this member (`read.rs`);
            // the rest are rare.
            _ => None,
        }
    }
}

/// At most this many batches of one lane are on their way to the leader at once. While they are,
/// new calls queue, and the next batch takes all of them: under load a follower forwards many
/// writes per peer call, as etcd's follower forwards many proposals per raft message; when idle a
/// call leaves at once. With one in flight, a write that arrived just after a batch left waited a
/// whole leader round trip before it was even forwarded; since replication is pipelined that wait
/// dominated. Three-member put at 100 writers, interleaved runs: 21.4k ops/s with one, 24-26k
/// with 2, 4 or 8, and a lower p99 (10.5 against 13.6 ms).
const BATCHES_IN_FLIGHT: usize = 4;
/// A batch stops growing past this many calls or encoded bytes (a single larger call still goes).
const BATCH_CALLS: usize = 256;
const BATCH_BYTES: usize = 1 << 20;

/// Follower-side batching of calls to the leader. Each call of the unbatched protocol costs a peer
/// gRPC request on both members (HTTP/2 stream, task, headers); on a three-member cluster under
/// write load that made a forwarded write cost a follower about three times what the write costs
/// the leader.
#[derive(Default)]
pub struct LeaderCallBatcher {
    lanes: [Arc<Mutex<LaneQueue>>; 2],
}

#[derive(Default)]
struct LaneQueue {
    sending: usize,
    queue: Vec<Queued>,
}

struct Queued {
    leader: u64,
    peer: PeerNode,
    call: Vec<u8>,
    deadline: Instant,
    reply: oneshot::Sender<Result<LeaderAnswer>>,
}

fn lock(lane: &Mutex<LaneQueue>) -> std::sync::MutexGuard<'_, LaneQueue> {
    lane.lock().unwrap_or_else(|p| p.into_inner())
}

impl LeaderCallBatcher {
    /// `remote`, batched: the same answers and errors, each call judged on its own.
    async fn call(
        &self,
        node: &Node,
        lane: Lane,
        leader: u64,
        call: &LeaderCall,
        deadline: Instant,
    ) -> Result<LeaderAnswer> {
        let Some(peer) = node.peer_node(leader) else {
            return Err(Error::NotLeader);
        };
        let bytes = postcard::to_allocvec(call).map_err(|e| Error::Internal(e.to_string()))?;
        let (reply, answer) = oneshot::channel();
        let queue = &self.lanes[lane as usize];
        let start_sender = {
            let mut q = lock(queue);
            q.queue.push(Queued { leader, peer, call: bytes, deadline, reply });
            let start = q.sending < BATCHES_IN_FLIGHT;
            if start {
                q.sending += 1;
            }
            start
        };
        if start_sender {
            tokio::spawn(send_batches(queue.clone(), node.peer_channels.clone()));
        }
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Err(_) => Err(Error::Timeout),
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::TimeoutConnectionLost),
        }
    }
}

/// One of a lane's senders: send what is queued (calls for one leader per batch) until nothing is.
async fn send_batches(queue: Arc<Mutex<LaneQueue>>, channels: PeerChannels) {
    loop {
        let batch = {
            let mut q = lock(&queue);
            let Some(first) = q.queue.first() else {
                q.sending -= 1;
                return;
            };
            let leader = first.leader;
            let (mut calls, mut bytes) = (0, 0);
            let mut batch = Vec::new();
            let mut rest = Vec::new();
            for item in q.queue.drain(..) {
                let fits = calls < BATCH_CALLS && (calls == 0 || bytes + item.call.len() <= BATCH_BYTES);
                if item.leader == leader && fits {
                    calls += 1;
                    bytes += item.call.len();
                    batch.push(item);
                } else {
                    rest.push(item);
                }
            }
            q.queue = rest;
            batch
        };
        send_batch(&channels, batch).await;
    }
}

async fn send_batch(channels: &PeerChannels, batch: Vec<Queued>) {
    // Callers have given up by their own deadlines; the batch lives as long as the most patient.
    let deadline = batch.iter().map(|q| q.deadline).max().unwrap_or_else(Instant::now);
    let peer = batch[0].peer.clone();
    let (calls, replies): (Vec<Vec<u8>>, Vec<_>) = batch.into_iter().map(|q| (q.call, q.reply)).unzip();
    let count = replies.len();
    let answers = match ask_leader(channels, &peer, &LeaderCall::Batch(calls), deadline).await {
        Ok(LeaderAnswer::Batch(answers)) if answers.len() == count => {
            answers.into_iter().map(|a| a.map_err(|text| Error::from_text(&text))).collect()
        }
        Ok(other) => {
            let text = format!("the leader answered a batch of {count} calls with {other:?}");
            (0..count).map(|_| Err(Error::Internal(text.clone()))).collect()
        }
        // The whole batch failed the way one call would have: every call gets that error (errors
        // are not Clone; their text names them exactly).
        Err(failure) => {
            let text = failure.to_string();
            (0..count).map(|_| Err(Error::from_text(&text))).collect::<Vec<_>>()
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

/// A keep-alive, renewed by the leader wherever it was asked.
pub async fn keep_alive(node: &Node, id: i64) -> Result<i64> {
    match call_leader(node, LeaderCall::KeepAlive(id), node.limits.request_timeout).await.map_err(timed_out)? {
        LeaderAnswer::Ttl(ttl) => Ok(ttl),
        other => Err(unexpected(&other)),
    }
}

/// LeaseTimeToLive as the leader's clock sees it.
pub async fn time_to_live(node: &Node, id: i64, keys: bool) -> Result<Option<crate::lease_clock::TimeToLive>> {
    match call_leader(node, LeaderCall::TimeToLive { id, keys }, node.limits.request_timeout)
        .await
        .map_err(timed_out)?
    {
        LeaderAnswer::TimeToLive(found) => {
            Ok(found.map(|(ttl, granted_ttl, keys)| crate::lease_clock::TimeToLive { ttl, granted_ttl, keys }))
        }
        other => Err(unexpected(&other)),
    }
}

/// etcd's answer to a request that waited out its timeout for a leader (reads, lease calls).
pub fn timed_out(e: Error) -> Error {
    match e {
        Error::NoLeader => Error::Timeout,
        other => other,
    }
}

/// A proposal's: etcd's raft blocks proposals while there is no leader, so they end in the bare
/// context deadline.
pub fn proposal_timed_out(e: Error) -> Error {
    match e {
        Error::NoLeader => Error::ProposalDeadline,
        other => other,
    }
}

pub fn unexpected(answer: &LeaderAnswer) -> Error {
    Error::Internal(format!("the leader answered with an unexpected {answer:?}"))
}
