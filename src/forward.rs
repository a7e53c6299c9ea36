//! What only the leader can do, asked from any member: a follower hands its client writes,
//! read-index requests, lease keep-alives/TimeToLive and membership changes to the leader over the
//! peer service and gets the leader's answer back. etcd does the same: followers forward
//! proposals as raft `MsgProp`, ask the leader for a ReadIndex, and send keep-alives and
//! TimeToLive to the leader's peer `/leases` handlers.
//!
//! `call_leader` is the client half; `answer` (run by `raft/peer_service.rs` on the leader) the
//! server half. Errors travel as their text and come back as the same [`Error`].

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::apply::command::{CommandResult, RaftCommand};
use crate::error::{Error, Result};
use crate::membership::MemberChange;
use crate::node::MemberInfo;
use crate::node::Node;
use crate::raft::network::{decode, encode, not_delivered};

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
            Some(leader) => remote(node, leader, &call, deadline).await,
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
    let mut client = node.peer_channels.client(&peer).map_err(Error::Internal)?;
    let mut request = node.peer_channels.request(encode(call));
    let left = deadline.saturating_duration_since(Instant::now());
    request.set_timeout(left);
    match tokio::time::timeout(left, client.leader(request)).await {
        Err(_) => Err(Error::Timeout),
        Ok(Err(status)) if not_delivered(&status) => {
            // The leader is gone; wait for raft to notice and elect another.
            Err(Error::NotLeader)
        }
        Ok(Err(status)) => {
            tracing::debug!(leader = %format!("{leader:x}"), %status, "call to the leader failed");
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
    }
}

/// Serve a peer's `Leader` call: the answer or the error's text.
pub async fn serve(node: &Node, call: LeaderCall) -> std::result::Result<LeaderAnswer, String> {
    answer(node, &call).await.map_err(|e| e.to_string())
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
