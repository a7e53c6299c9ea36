//! `Maintenance.Downgrade` as etcd 3.5.16 answers it (`v3_server.go`: downgradeValidate,
//! downgradeEnable, downgradeCancel). The cluster version is the major.minor of the release we
//! reproduce; the only allowed target is the previous minor (3.4); the job itself is replicated
//! state (see `apply::downgrade`).

use std::sync::Arc;
use std::time::Instant;

use crate::api::maintenance::ETCD_VERSION;
use crate::apply::command::{Request as Cmd, Response as Applied};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::proto::etcdserverpb::downgrade_request::DowngradeAction;
use crate::proto::etcdserverpb::DowngradeRequest;
use crate::{propose, read};

/// A version as coreos/go-semver's `NewVersion` parses it: `major.minor.patch`, optionally
/// `-prerelease` and `+metadata` (split off first, so a sign before a number never survives),
/// each number as Go's `strconv.ParseInt` reads it. Only major and minor matter here.
fn parse_semver(text: &str) -> Option<(i64, i64)> {
    let (rest, metadata) = text.split_once('+').unwrap_or((text, ""));
    let (core, pre_release) = rest.split_once('-').unwrap_or((rest, ""));
    let parts: Vec<&str> = core.splitn(3, '.').collect();
    if parts.len() != 3 || !semver_identifier(pre_release) || !semver_identifier(metadata) {
        return None;
    }
    let mut numbers = [0i64; 3];
    for (n, part) in numbers.iter_mut().zip(&parts) {
        *n = part.parse().ok()?;
    }
    Some((numbers[0], numbers[1]))
}

/// go-semver's identifier rule: empty, or dot-separated non-empty runs of `[0-9A-Za-z-]`.
fn semver_identifier(id: &str) -> bool {
    id.is_empty() || id.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// etcd's `convertToClusterVersion`: `major.minor` is accepted by retrying with `.0` appended.
fn target_version(text: &str) -> Result<(i64, i64)> {
    parse_semver(text).or_else(|| parse_semver(&format!("{text}.0"))).ok_or(Error::WrongDowngradeVersionFormat)
}

/// The cluster version (major, minor): etcd keeps only those of the members' release.
fn cluster_version() -> (i64, i64) {
    parse_semver(ETCD_VERSION).unwrap_or((3, 5))
}

fn cluster_version_text() -> String {
    let (major, minor) = cluster_version();
    format!("{major}.{minor}.0")
}

async fn validate(node: &Arc<Node>, version: &str) -> Result<(i64, i64)> {
    let target = target_version(version)?;
    // Read the job only after every earlier write is applied here.
    read::linearizable_barrier(node).await?;
    let (major, minor) = cluster_version();
    if target != (major, minor - 1) {
        return Err(Error::InvalidDowngradeTargetVersion);
    }
    if node.applier.downgrade_info()?.enabled {
        return Err(Error::DowngradeInProcess);
    }
    Ok(target)
}

/// Serve one Downgrade request; returns the version the response carries (the cluster version).
pub async fn downgrade(node: &Arc<Node>, req: DowngradeRequest) -> Result<String> {
    match DowngradeAction::try_from(req.action) {
        Ok(DowngradeAction::Validate) => {
            validate(node, &req.version).await?;
        }
        Ok(DowngradeAction::Enable) => {
            let started = Instant::now();
            let (major, minor) = validate(node, &req.version).await?;
            let set = DowngradeRequest { action: req.action, version: format!("{major}.{minor}.0") };
            expect_downgrade(propose::propose(node, Cmd::Downgrade(set)).await?.0)?;
            return timed_out_after_applying(node, started).await;
        }
        Ok(DowngradeAction::Cancel) => {
            let started = Instant::now();
            read::linearizable_barrier(node).await?;
            if !node.applier.downgrade_info()?.enabled {
                return Err(Error::NoInflightDowngrade);
            }
            let cancel = DowngradeRequest { action: req.action, version: String::new() };
            expect_downgrade(propose::propose(node, Cmd::Downgrade(cancel)).await?.0)?;
            return timed_out_after_applying(node, started).await;
        }
        Err(_) => return Err(Error::UnknownMethod),
    }
    Ok(cluster_version_text())
}

/// etcd 3.5.16 quirk: ENABLE and CANCEL change the job, but the apply of `DowngradeInfoSet`
/// never wakes the proposer, so the client always waits out the request timeout and gets
/// `etcdserver: request timed out` (seen on a real 3.5.16 member: 7 s, then the job is enabled
/// or cancelled all the same).
async fn timed_out_after_applying(node: &Node, started: Instant) -> Result<String> {
    tokio::time::sleep_until((started + node.limits.request_timeout).into()).await;
    Err(Error::Timeout)
}

fn expect_downgrade(applied: Applied) -> Result<()> {
    match applied {
        Applied::Downgrade(_) => Ok(()),
        _ => Err(Error::Internal("apply returned an unexpected response to downgrade".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_go_semver_and_etcd() {
        assert_eq!(target_version("3.4").unwrap(), (3, 4));
        assert_eq!(target_version("3.4.0").unwrap(), (3, 4));
        assert_eq!(target_version("3.4.9-rc.1+build.5").unwrap(), (3, 4));
        // An empty pre-release passes go-semver's identifier check.
        assert_eq!(target_version("3.4.0-").unwrap(), (3, 4));
        assert_eq!(target_version("3.6").unwrap(), (3, 6));
        for bad in ["", "abc", "v3.4", "3", "3.4.0.1", "3.4.x", "3.4.0+a..b", "+3.4.0", "3.+4.0"] {
            assert!(matches!(target_version(bad), Err(Error::WrongDowngradeVersionFormat)), "{bad:?}");
        }
        assert_eq!(cluster_version_text(), "3.5.0");
    }
}
