//! The read path: a linearizable read first gets a read index from the leader (which confirms its
//! leadership with a quorum; asked over the peer service when this member follows) and waits until
//! this member has applied that far (etcd's ReadIndex); a serializable read answers from local
//! state at once.

use std::sync::{Arc, Mutex};

use openraft::error::{LinearizableReadError, RaftError};
use openraft::metrics::WaitError;
use openraft::ReadPolicy;
use tokio::sync::oneshot;

use crate::auth::AuthInfo;
use crate::error::{AuthError, Error, Result};
use crate::forward::{call_leader, timed_out, unexpected, LeaderAnswer, LeaderCall};
use crate::mvcc::RangeResult;
use crate::node::Node;
use crate::proto::authpb::permission::Type as PermType;
use crate::proto::etcdserverpb::RangeRequest;

/// Linearizable reads that arrive together share one read-index round, as etcd batches its
/// ReadIndex requests: a reader joins the next round to *start* after it arrived (never one already
/// in flight, whose index may predate its arrival), so each still sees every write committed before
/// it asked.
#[derive(Default)]
pub struct ReadBatcher {
    state: Mutex<BatchState>,
}

#[derive(Default)]
struct BatchState {
    round_running: bool,
    next_round: Vec<oneshot::Sender<Result<(), String>>>,
}

impl ReadBatcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Wait until this member's state reflects every write committed before the call.
pub async fn linearizable_barrier(node: &Arc<Node>) -> Result<()> {
    let (tx, rx) = oneshot::channel();
    let start_rounds = {
        let mut state = node.read_batcher.lock();
        state.next_round.push(tx);
        !std::mem::replace(&mut state.round_running, true)
    };
    if start_rounds {
        // Rounds run in their own task so a reader that gives up cannot strand the others.
        let node = node.clone();
        tokio::spawn(async move {
            loop {
                let waiters = {
                    let mut state = node.read_batcher.lock();
                    if state.next_round.is_empty() {
                        state.round_running = false;
                        return;
                    }
                    std::mem::take(&mut state.next_round)
                };
                let outcome = read_index_round(&node).await;
                for waiter in waiters {
                    let _ = waiter.send(outcome.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                }
                if let Err(e) = outcome {
                    crate::metrics::read_index_failed(&e);
                    tracing::debug!(error = %e, "read index round failed");
                }
            }
        });
    }
    match rx.await {
        Ok(Ok(())) => Ok(()),
        // Errors cross the batch as text (Error is not Clone).
        Ok(Err(message)) => Err(Error::from_text(&message)),
        Err(_) => Err(Error::Stopped),
    }
}

/// One read-index round: the leader's read index, then wait until apply has caught up with it.
async fn read_index_round(node: &Node) -> Result<()> {
    let started = std::time::Instant::now();
    let index = match call_leader(node, LeaderCall::ReadIndex, node.limits.request_timeout).await.map_err(timed_out)? {
        LeaderAnswer::ReadIndex(index) => index,
        other => return Err(unexpected(&other)),
    };
    let left = node.limits.request_timeout.saturating_sub(started.elapsed());
    node.raft.wait(Some(left)).applied_index_at_least(Some(index), "read index").await.map_err(|e| match e {
        WaitError::Timeout(..) => Error::Timeout,
        WaitError::ShuttingDown => Error::Stopped,
    })?;
    Ok(())
}

/// The leader's half of a read-index round: confirm leadership with a quorum and return the log
/// index through which reads must see the state applied.
pub async fn read_index_here(node: &Node) -> Result<u64> {
    let read =
        tokio::time::timeout(node.limits.request_timeout, node.raft.get_read_linearizer(ReadPolicy::ReadIndex)).await;
    match read {
        Err(_) => Err(Error::Timeout),
        Ok(Ok(linearizer)) => Ok(linearizer.read_log_id().index()),
        Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => match f.leader_id {
            None => Err(Error::NoLeader),
            Some(_) => Err(Error::NotLeader),
        },
        Ok(Err(RaftError::APIError(other))) => Err(Error::Internal(other.to_string())),
        Ok(Err(RaftError::Fatal(_))) => Err(Error::Stopped),
    }
}

/// Range as etcd serves it; the result carries the store revision the read saw, which is what the
/// header reports (even when reading an older revision).
pub async fn range(node: &Arc<Node>, req: &RangeRequest) -> Result<RangeResult> {
    if !req.serializable {
        linearizable_barrier(node).await?;
    }
    node.mvcc().range(req)
}

/// Range as `user` (None: no token was sent). etcd's `doSerialize`: READ on the range is checked
/// before reading, and a token whose auth revision changed while the read ran is
/// `revision in header is old` afterwards.
pub async fn range_as(node: &Arc<Node>, req: &RangeRequest, user: Option<&AuthInfo>) -> Result<RangeResult> {
    let anonymous = AuthInfo::default();
    let user = user.unwrap_or(&anonymous);
    let auth = node.applier.auth();
    if !req.serializable {
        linearizable_barrier(node).await?;
    }
    auth.check_op(user, &req.key, &req.range_end, PermType::Read)?;
    let result = node.mvcc().range(req)?;
    if user.revision != 0 && user.revision != auth.revision() {
        return Err(AuthError::AuthOldRevision.into());
    }
    Ok(result)
}
