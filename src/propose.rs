//! The write path before the log: wrap a validated request in the one raft command, have the
//! leader propose it (this member, or the leader it is forwarded to by `forward`), and wait for its
//! applied result — within etcd's request timeout and size limit.

use openraft::error::{ClientWriteError, RaftError};

use crate::apply::command::{CommandHeader, CommandResult, RaftCommand, Request, Response};
use crate::auth::AuthInfo;
use crate::error::{Error, Result};
use crate::forward::{call_leader, proposal_timed_out, unexpected, LeaderAnswer, LeaderCall};
use crate::node::Node;

/// etcd refuses new proposals while apply lags this far behind commit (`etcdserver: too many requests`).
const MAX_APPLY_LAG: u64 = 5000;

/// Propose `request` through raft and return what apply made of it, with the command id (used to
/// find side results such as a physical compaction's progress: every member applies the command,
/// so the id is found here even when the leader proposed it).
pub async fn propose(node: &Node, request: Request) -> Result<(Response, u64)> {
    propose_as(node, request, None).await
}

/// Propose as root, for the server's own proposals that auth checks (lease expiry revokes): etcd's
/// `AuthStore.WithRoot`, which stamps root and the current auth revision while auth is enabled.
pub async fn propose_as_root(node: &Node, request: Request) -> Result<(Response, u64)> {
    let auth = node.applier.auth();
    let root =
        auth.is_enabled().then(|| AuthInfo { username: crate::auth::ROOT.to_string(), revision: auth.revision() });
    propose_as(node, request, root.as_ref()).await
}

/// Propose as the user a token named (etcd's `processInternalRaftRequestOnce` stamps the header
/// with the caller's user name and auth revision); apply checks permissions with them.
pub async fn propose_as(node: &Node, request: Request, user: Option<&AuthInfo>) -> Result<(Response, u64)> {
    let id = node.next_request_id();
    let (username, auth_revision) = user.map(|u| (u.username.clone(), u.revision)).unwrap_or_default();
    let command = RaftCommand { header: CommandHeader { id, username, auth_revision }, request };
    if command.encoded_len() > node.limits.max_request_bytes {
        return Err(Error::RequestTooLarge);
    }
    match call_leader(node, LeaderCall::Write(command), node.limits.request_timeout)
        .await
        .map_err(proposal_timed_out)?
    {
        LeaderAnswer::Written(result) => Ok((result.outcome.map_err(Error::from)?, id)),
        other => Err(unexpected(&other)),
    }
}

/// Propose on this member, which must lead, and wait for the applied result.
pub async fn write_here(node: &Node, command: RaftCommand) -> Result<CommandResult> {
    admit(node)?;
    let grant = matches!(command.request, Request::LeaseGrant(_));
    let pending = crate::metrics::PendingProposal::start();
    let written = tokio::time::timeout(node.limits.request_timeout, node.raft.client_write(command)).await;
    drop(pending);
    let written = match written {
        Err(_) => Err(Error::Timeout),
        Ok(Err(e)) => Err(map_write_error(e)),
        Ok(Ok(resp)) => {
            if grant {
                // Start the new lease's clock on the leader now, wherever the grant came from,
                // so TimeToLive right after says 59 for a 60 s lease, as etcd's does.
                node.leases.grant_applied();
            }
            Ok(resp.data)
        }
    };
    // etcd's proposals_failed_total counts proposals raft did not commit in time, not apply results.
    if written.is_err() {
        crate::metrics::PROPOSALS_FAILED.inc();
    }
    written
}

/// [`write_here`] for several commands at once (a follower's forwarded batch): proposed to raft in
/// one message, each answered on its own, in order.
pub async fn write_many_here(node: &Node, commands: Vec<RaftCommand>) -> Vec<Result<CommandResult>> {
    use futures::StreamExt;
    let count = commands.len();
    if admit(node).is_err() {
        return (0..count).map(|_| Err(Error::TooManyRequests)).collect();
    }
    let grants = commands.iter().any(|c| matches!(c.request, Request::LeaseGrant(_)));
    let pending: Vec<_> = (0..count).map(|_| crate::metrics::PendingProposal::start()).collect();
    let written = tokio::time::timeout(node.limits.request_timeout, async {
        let mut results = Vec::with_capacity(count);
        match node.raft.client_write_many(commands).await {
            Err(_) => {}
            Ok(mut stream) => {
                while let Some(item) = stream.next().await {
                    results.push(match item {
                        Err(_) => Err(Error::Stopped),
                        Ok(Err(e)) => Err(map_write_error(RaftError::APIError(e))),
                        Ok(Ok(written)) => Ok(written.response),
                    });
                }
            }
        }
        results
    })
    .await;
    drop(pending);
    let mut results = written.unwrap_or_default();
    // Whatever raft did not answer (stopped, or past the request timeout) failed as one write would.
    while results.len() < count {
        results.push(Err(if *node.stopping.borrow() { Error::Stopped } else { Error::Timeout }));
    }
    if grants {
        node.leases.grant_applied();
    }
    crate::metrics::PROPOSALS_FAILED.add(results.iter().filter(|r| r.is_err()).count() as u64);
    results
}

/// etcd refuses new proposals while apply lags too far behind commit.
fn admit(node: &Node) -> Result<()> {
    let status = node.raft_status();
    if status.commit_index > status.applied_index + MAX_APPLY_LAG {
        return Err(Error::TooManyRequests);
    }
    Ok(())
}

/// openraft's refusal, as the error `forward` knows to retry at the new leader.
pub fn map_write_error(
    e: RaftError<crate::raft::types::TypeConfig, ClientWriteError<crate::raft::types::TypeConfig>>,
) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_id {
            None => Error::NoLeader,
            Some(_) => Error::NotLeader,
        },
        RaftError::APIError(other) => Error::Internal(other.to_string()),
        RaftError::Fatal(_) => Error::Stopped,
    }
}
