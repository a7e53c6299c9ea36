//! The read path: a linearizable read first confirms leadership and waits for apply to catch up
//! (etcd's ReadIndex); a serializable read answers from local state at once.

use std::sync::{Arc, Mutex};

use openraft::error::{LinearizableReadError, RaftError};
use openraft::ReadPolicy;
use tokio::sync::oneshot;

use crate::auth::AuthInfo;
use crate::error::{AuthError, Error, Result};
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
                    tracing::debug!(error = %e, "read index round failed");
                }
            }
        });
    }
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(round_error(&message)),
        Err(_) => Err(Error::Stopped),
    }
}

/// Errors cross the batch as text (Error is not Clone); map them back to the variants a round ends in.
fn round_error(message: &str) -> Error {
    for known in [Error::Timeout, Error::NoLeader, Error::NotLeader, Error::Stopped] {
        if known.to_string() == message {
            return known;
        }
    }
    Error::Internal(message.to_string())
}

/// One read-index round: confirm leadership with a quorum and wait until apply has caught up.
async fn read_index_round(node: &Node) -> Result<()> {
    let read =
        tokio::time::timeout(node.limits.request_timeout, node.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await;
    match read {
        Err(_) => Err(Error::Timeout),
        Ok(Ok(_)) => Ok(()),
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
