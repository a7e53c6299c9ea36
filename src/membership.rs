//! etcd's cluster membership over openraft's: the member list is openraft's replicated membership
//! (node id = etcd member id, node info = name, peer URLs, client URLs; a learner is a node that
//! is not a voter), and MemberAdd/Remove/Update/Promote plus a member's own "publish" of its name
//! and client URLs are membership changes the leader proposes. Mirrors etcd 3.5.16's
//! `membership.RaftCluster` rules: strict reconfiguration checks (a change must not leave fewer
//! started voters than a quorum), at most one learner, a learner is promoted only once in sync.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::forward::{call_leader, proposal_timed_out, unexpected, LeaderAnswer, LeaderCall};
use openraft::async_runtime::WatchReceiver;

use crate::node::{MemberInfo, Node};
use crate::raft::types::PeerNode;

/// etcd's `maxLearners`.
const MAX_LEARNERS: usize = 1;
/// etcd's `readyPercent`: a learner may be promoted once its log reaches 90 % of the leader's.
const LEARNER_READY_PERCENT: f64 = 0.9;

/// A membership change, proposed by the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MemberChange {
    Add {
        peer_urls: Vec<String>,
        is_learner: bool,
    },
    Remove {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
    Promote {
        id: u64,
    },
    /// A started member records its name and client URLs (etcd's `publish` after boot).
    Publish {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
}

type Membership = openraft::Membership<u64, PeerNode>;

/// The members in `membership`, by id as etcd lists them.
pub fn from_membership(membership: &Membership) -> Vec<MemberInfo> {
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, n)| MemberInfo {
            id: *id,
            name: n.name.clone(),
            peer_urls: n.peer_urls.clone(),
            client_urls: n.client_urls.clone(),
            is_learner: !voters.contains(id),
        })
        .collect()
}

/// The member list as this member last saw it committed or appended.
pub fn members(node: &Node) -> Vec<MemberInfo> {
    let metrics = node.raft.metrics();
    let stored = metrics.borrow_watched().membership_config.clone();
    from_membership(stored.membership())
}

/// Make `change` on the leader (wherever it is); returns the member it concerns (for Add: the new
/// one) and the member list after it.
pub async fn change(node: &Node, change: MemberChange) -> Result<(Option<MemberInfo>, Vec<MemberInfo>)> {
    match call_leader(node, LeaderCall::Member(change), node.limits.request_timeout)
        .await
        .map_err(proposal_timed_out)?
    {
        LeaderAnswer::Members { changed, members } => Ok((changed, members)),
        other => Err(unexpected(&other)),
    }
}

/// The leader's half of [`change`].
pub async fn change_here(node: &Node, change: MemberChange) -> Result<(Option<MemberInfo>, Vec<MemberInfo>)> {
    let deadline = tokio::time::Instant::now() + node.limits.request_timeout;
    // openraft takes one membership change at a time; etcd queues them. Wait our turn: the one in
    // progress ends with a change of the membership (or of leadership), which the metrics show.
    let mut metrics = node.raft.metrics();
    loop {
        match change_once(node, &change).await {
            Err(Retry::InProgress) if tokio::time::Instant::now() < deadline => {
                if let Ok(Err(_)) = tokio::time::timeout_at(deadline, metrics.changed()).await {
                    return Err(Error::Stopped);
                }
            }
            Err(Retry::InProgress) => return Err(Error::Timeout),
            Err(Retry::Fail(e)) => return Err(e),
            Ok(done) => return Ok(done),
        }
    }
}

enum Retry {
    InProgress,
    Fail(Error),
}

impl From<Error> for Retry {
    fn from(e: Error) -> Self {
        Retry::Fail(e)
    }
}

async fn change_once(
    node: &Node,
    change: &MemberChange,
) -> std::result::Result<(Option<MemberInfo>, Vec<MemberInfo>), Retry> {
    let current = members(node);
    let find = |id: u64| current.iter().find(|m| m.id == id).cloned().ok_or(Error::MemberNotFound);
    let node_of = |m: &MemberInfo| PeerNode {
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: m.client_urls.clone(),
    };
    let (subject, changes): (u64, ChangeMembers<u64, PeerNode>) = match change {
        MemberChange::Add { peer_urls, is_learner } => {
            check_urls_unused(&current, peer_urls, None)?;
            if *is_learner && current.iter().filter(|m| m.is_learner).count() >= MAX_LEARNERS {
                return Err(Error::TooManyLearners.into());
            }
            if !is_learner && !ready_to_add_voter(&current) {
                return Err(Error::MemberNotEnoughStarted.into());
            }
            if !connected_to_all_voters(node, &current) {
                return Err(Error::Unhealthy.into());
            }
            let id = new_member_id(peer_urls);
            if current.iter().any(|m| m.id == id) {
                return Err(Error::MemberExists.into());
            }
            // A new member has no name and no client URLs until it starts and publishes them.
            let peer = PeerNode { name: String::new(), peer_urls: peer_urls.clone(), client_urls: Vec::new() };
            let nodes = BTreeMap::from([(id, peer)]);
            (id, if *is_learner { ChangeMembers::AddNodes(nodes) } else { ChangeMembers::AddVoters(nodes) })
        }
        MemberChange::Remove { id } => {
            let m = find(*id)?;
            if m.is_learner {
                (*id, ChangeMembers::RemoveNodes(BTreeSet::from([*id])))
            } else {
                if !ready_to_remove_voter(&current, *id) {
                    return Err(Error::MemberNotEnoughStarted.into());
                }
                if !healthy_without(node, &current, *id) {
                    return Err(Error::Unhealthy.into());
                }
                (*id, ChangeMembers::RemoveVoters(BTreeSet::from([*id])))
            }
        }
        MemberChange::Update { id, peer_urls } => {
            let m = find(*id)?;
            check_urls_unused(&current, peer_urls, Some(*id))?;
            let peer = PeerNode { peer_urls: peer_urls.clone(), ..node_of(&m) };
            (*id, ChangeMembers::SetNodes(BTreeMap::from([(*id, peer)])))
        }
        MemberChange::Promote { id } => {
            let m = find(*id)?;
            if !m.is_learner {
                return Err(Error::MemberNotLearner.into());
            }
            if !learner_ready(node, *id) {
                return Err(Error::LearnerNotReady.into());
            }
            if !ready_to_add_voter(&current) {
                return Err(Error::MemberNotEnoughStarted.into());
            }
            (*id, ChangeMembers::AddVoterIds(BTreeSet::from([*id])))
        }
        MemberChange::Publish { id, name, client_urls } => {
            let m = find(*id)?;
            let peer = PeerNode { name: name.clone(), client_urls: client_urls.clone(), ..node_of(&m) };
            (*id, ChangeMembers::SetNodes(BTreeMap::from([(*id, peer)])))
        }
    };
    // A removed voter leaves the membership entirely (etcd has no "removed but still a learner").
    let written = tokio::time::timeout(node.limits.request_timeout, node.raft.change_membership(changes, false)).await;
    let resp = match written {
        Err(_) => return Err(Error::Timeout.into()),
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_))))) => {
            return Err(Retry::InProgress)
        }
        Ok(Err(e)) => return Err(crate::propose::map_write_error(e).into()),
        Ok(Ok(resp)) => resp,
    };
    if matches!(change, MemberChange::Promote { .. }) {
        // Counted by the leader, which made the change (etcd's `learnerPromoteSucceed`).
        crate::metrics::LEARNER_PROMOTE_SUCCESSES.inc();
    }
    let after = match &resp.membership {
        Some(m) => from_membership(m),
        None => members(node),
    };
    let subject = after.iter().find(|m| m.id == subject).cloned();
    Ok((subject, after))
}

/// etcd's `MoveLeader` on the leader: hand leadership to voter `target` (openraft's leader
/// transfer) and wait until it leads, at most a request timeout.
pub async fn move_leader(node: &Node, target: u64) -> Result<()> {
    if !node.raft_status().is_leader {
        return Err(Error::NotLeader);
    }
    if !members(node).iter().any(|m| m.id == target && !m.is_learner) {
        return Err(Error::BadLeaderTransferee);
    }
    if target == node.member_id {
        return Ok(());
    }
    node.raft.trigger().transfer_leader(target).await.map_err(|_| Error::Stopped)?;
    let waited = node.raft.wait(Some(node.limits.request_timeout)).current_leader(target, "move leader").await;
    waited.map(|_| ()).map_err(|_| Error::LeaderTransferTimeout)
}

/// etcd refuses a peer URL another member already has.
fn check_urls_unused(current: &[MemberInfo], urls: &[String], except: Option<u64>) -> Result<()> {
    let taken = current.iter().filter(|m| Some(m.id) != except).any(|m| m.peer_urls.iter().any(|u| urls.contains(u)));
    if taken {
        return Err(Error::PeerUrlExists);
    }
    Ok(())
}

/// etcd's `HealthInterval`: a peer counts as connected once it has been reachable this long.
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the leader has reached voter `id` (itself included) for the last `HEALTH_INTERVAL`.
fn connected(node: &Node, id: u64) -> bool {
    id == node.member_id || node.peer_channels.active_since(id).is_some_and(|t| t.elapsed() >= HEALTH_INTERVAL)
}

/// etcd's `isConnectedFullySince` before adding a member: every voter connected for 5 s.
fn connected_to_all_voters(node: &Node, current: &[MemberInfo]) -> bool {
    current.iter().filter(|m| !m.is_learner).all(|m| connected(node, m.id))
}

/// etcd's `mayRemoveMember`: removing a voter that is down is always allowed; otherwise the voters
/// still connected after the removal must be a quorum of the rest.
fn healthy_without(node: &Node, current: &[MemberInfo], removed: u64) -> bool {
    if removed != node.member_id && node.peer_channels.active_since(removed).is_none() {
        return true;
    }
    let voters: Vec<&MemberInfo> = current.iter().filter(|m| !m.is_learner).collect();
    let active = voters.iter().filter(|m| connected(node, m.id)).count();
    active.saturating_sub(1) >= quorum(voters.len().saturating_sub(1))
}

/// A majority of `voters`.
fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// etcd counts a member as started once it has published its name.
fn started(m: &MemberInfo) -> bool {
    !m.name.is_empty()
}

/// etcd's `IsReadyToAddVotingMember`: after adding one more voter, the started voters must still
/// be a quorum — except that a one-member cluster may always grow to two (and then has no quorum
/// until the new member starts, as etcd does).
fn ready_to_add_voter(current: &[MemberInfo]) -> bool {
    let voters: Vec<&MemberInfo> = current.iter().filter(|m| !m.is_learner).collect();
    let members = voters.len() + 1;
    let started = voters.iter().filter(|m| started(m)).count();
    if started == 1 && members == 2 {
        return true;
    }
    started >= quorum(members)
}

/// etcd's `IsReadyToRemoveVotingMember`: the started voters left must be a quorum of the rest.
fn ready_to_remove_voter(current: &[MemberInfo], removed: u64) -> bool {
    let rest: Vec<&MemberInfo> = current.iter().filter(|m| !m.is_learner && m.id != removed).collect();
    let started = rest.iter().filter(|m| started(m)).count();
    started >= quorum(rest.len())
}

/// etcd's `isLearnerReady`: the learner's replicated log reaches 90 % of the leader's.
fn learner_ready(node: &Node, id: u64) -> bool {
    let metrics = node.raft.metrics();
    let m = metrics.borrow_watched();
    let leader_index = m.last_log_index.unwrap_or(0);
    let learner_index =
        m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index).unwrap_or(0);
    (learner_index as f64) >= (leader_index as f64) * LEARNER_READY_PERCENT
}

/// etcd's id for an added member: sha1 over its sorted peer URLs and the Unix time in seconds
/// (`NewMember` with an empty cluster name).
fn new_member_id(peer_urls: &[String]) -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    crate::node::member_id(peer_urls, &now.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, is_learner: bool) -> MemberInfo {
        MemberInfo {
            id,
            name: name.to_string(),
            peer_urls: vec![format!("http://127.0.0.1:{id}")],
            client_urls: vec![],
            is_learner,
        }
    }

    #[test]
    fn strict_reconfig_matches_etcd() {
        // One member may grow to two (etcd's special case), even though that loses quorum.
        assert!(ready_to_add_voter(&[member(1, "a", false)]));
        // Three started voters: a fourth keeps 3 ≥ quorum(4) = 3.
        let three = [member(1, "a", false), member(2, "b", false), member(3, "c", false)];
        assert!(ready_to_add_voter(&three));
        // Two started of three (one added but never started): a fourth needs 3 started.
        let one_unstarted = [member(1, "a", false), member(2, "b", false), member(3, "", false)];
        assert!(!ready_to_add_voter(&one_unstarted));
        // Removing a started voter from 3 with one unstarted leaves 1 started of 2: refused.
        assert!(!ready_to_remove_voter(&one_unstarted, 1));
        // Removing the unstarted one leaves 2 of 2.
        assert!(ready_to_remove_voter(&one_unstarted, 3));
        // Learners do not count.
        assert!(ready_to_remove_voter(&[member(1, "a", false), member(2, "b", true)], 2));
    }

    #[test]
    fn a_peer_url_in_use_is_refused() {
        let current = [member(1, "a", false)];
        let taken = vec!["http://127.0.0.1:1".to_string()];
        assert!(matches!(check_urls_unused(&current, &taken, None), Err(Error::PeerUrlExists)));
        // Updating a member to its own URLs is fine.
        assert!(check_urls_unused(&current, &taken, Some(1)).is_ok());
    }
}
