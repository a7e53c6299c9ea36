//! The cluster's downgrade job (etcd 3.5's `membership.DowngradeInfo`), replicated through raft
//! and stored as etcd stores it: JSON `{"target-version":…,"enabled":…}` under `downgrade` in the
//! `cluster` table. A 3.5 member never finishes a downgrade to 3.4 by itself, so the job stays
//! enabled until cancelled, as on a real 3.5.16 member.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::{Engine, Table, WriteBatch};

const CLUSTER_TABLE: Table = "cluster";
const DOWNGRADE_KEY: &[u8] = b"downgrade";

/// etcd's `DowngradeInfo`, with its JSON field names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DowngradeInfo {
    #[serde(rename = "target-version")]
    pub target_version: String,
    pub enabled: bool,
}

/// The job as last applied; none recorded means not enabled.
pub fn info(engine: &dyn Engine) -> Result<DowngradeInfo> {
    match engine.get(CLUSTER_TABLE, DOWNGRADE_KEY)? {
        None => Ok(DowngradeInfo::default()),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::Storage(format!("corrupt downgrade info {:?}: {e}", String::from_utf8_lossy(&bytes)))),
    }
}

/// Stage etcd's `DowngradeInfoSet`: enabling records the target, disabling clears it.
pub fn stage(batch: &mut WriteBatch, enabled: bool, target_version: &str) {
    let info =
        DowngradeInfo { target_version: if enabled { target_version.to_string() } else { String::new() }, enabled };
    // Serialising a struct of a string and a bool cannot fail.
    let json = serde_json::to_vec(&info).unwrap_or_default();
    batch.put(CLUSTER_TABLE, DOWNGRADE_KEY.to_vec(), json);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::mem_engine::MemEngine;

    #[test]
    fn stored_as_etcds_json() {
        let e = MemEngine::default();
        assert_eq!(info(&e).unwrap(), DowngradeInfo::default());
        let mut b = WriteBatch::default();
        stage(&mut b, true, "3.4.0");
        e.write(b).unwrap();
        assert_eq!(
            e.get(CLUSTER_TABLE, DOWNGRADE_KEY).unwrap().unwrap(),
            br#"{"target-version":"3.4.0","enabled":true}"#
        );
        assert!(info(&e).unwrap().enabled);
        let mut b = WriteBatch::default();
        stage(&mut b, false, "3.4.0");
        e.write(b).unwrap();
        assert_eq!(info(&e).unwrap(), DowngradeInfo { target_version: String::new(), enabled: false });
    }
}
