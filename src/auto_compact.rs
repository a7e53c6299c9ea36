//! Auto-compaction (`--auto-compaction-mode`/`--auto-compaction-retention`), as etcd's v3compactor
//! does it: the leader proposes an ordinary Compact through raft, so every member compacts at the
//! same point in the log.
//!
//! - periodic, retention P: every tenth of min(P, 1h) note the current revision, keeping a window
//!   that reaches back P; once P has passed (then every min(P, 1h)) compact to the oldest noted
//!   revision, i.e. keep about P of history.
//! - revision, retention R: every 5 minutes compact to (current revision - R), unless that is not
//!   positive or was the last one compacted.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::apply::command::Request;
use crate::config::AutoCompaction;
use crate::error::Error;
use crate::node::Node;
use crate::proto::etcdserverpb::CompactionRequest;

/// etcd's revision compactor checks this often.
const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// etcd's periodic compactor samples this many times per compaction interval.
const SAMPLES_PER_INTERVAL: u32 = 10;

/// Start the compactor for this member; it runs until the node is dropped.
pub fn spawn(node: &Arc<Node>, policy: AutoCompaction) {
    let weak = Arc::downgrade(node);
    match policy {
        AutoCompaction::Periodic(retention) if !retention.is_zero() => {
            tokio::spawn(periodic(weak, retention));
        }
        AutoCompaction::Revision(retention) if retention > 0 => {
            tokio::spawn(by_revision(weak, retention, REVISION_CHECK_INTERVAL));
        }
        _ => {}
    }
}

/// The compaction interval and sampling step for a periodic retention.
fn periodic_schedule(retention: Duration) -> (Duration, Duration, usize) {
    let interval = retention.min(Duration::from_secs(3600));
    let step = interval / SAMPLES_PER_INTERVAL;
    // Samples covering the whole retention, plus the one that sits exactly a retention ago.
    let window = (retention.as_nanos() / step.as_nanos().max(1)) as usize + 1;
    (interval, step, window)
}

async fn periodic(node: Weak<Node>, retention: Duration) {
    let (interval, step, window) = periodic_schedule(retention);
    let mut samples: VecDeque<i64> = VecDeque::with_capacity(window + 1);
    let mut last_success = Instant::now();
    // The first compaction waits a whole retention; later ones come every interval.
    let mut wait = retention;
    loop {
        {
            let Some(node) = node.upgrade() else { return };
            samples.push_back(node.mvcc().current_revision());
        }
        if samples.len() > window {
            samples.pop_front();
        }
        tokio::time::sleep(step).await;
        if last_success.elapsed() < wait {
            continue;
        }
        wait = interval;
        let Some(node) = node.upgrade() else { return };
        let Some(&revision) = samples.front() else { continue };
        if compact(&node, revision).await {
            last_success = Instant::now();
        }
    }
}

async fn by_revision(node: Weak<Node>, retention: i64, every: Duration) {
    let mut last = 0;
    loop {
        tokio::time::sleep(every).await;
        let Some(node) = node.upgrade() else { return };
        let revision = node.mvcc().current_revision() - retention;
        if revision <= 0 || revision == last {
            continue;
        }
        if compact(&node, revision).await {
            last = revision;
        }
    }
}

/// Propose a compaction if this member leads; true when history is compacted to `revision`
/// (including when it already was).
async fn compact(node: &Node, revision: i64) -> bool {
    if !node.raft_status().is_leader {
        return false;
    }
    let request = Request::Compaction(CompactionRequest { revision, physical: false });
    match crate::propose::propose(node, request).await {
        Ok(_) => {
            tracing::info!(revision, "completed auto compaction");
            true
        }
        Err(Error::Compacted) => true,
        Err(e) => {
            tracing::warn!(revision, error = %e, "auto compaction failed; will retry");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_etcds_periodic_compactor() {
        // 10m retention: compact every 10m, sample every minute, window of 11 samples.
        assert_eq!(
            periodic_schedule(Duration::from_secs(600)),
            (Duration::from_secs(600), Duration::from_secs(60), 11)
        );
        // 72h retention: compact hourly, sample every 6 minutes, window reaching back 72h.
        assert_eq!(
            periodic_schedule(Duration::from_secs(72 * 3600)),
            (Duration::from_secs(3600), Duration::from_secs(360), 721)
        );
    }
}
