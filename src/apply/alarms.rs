//! Alarms (etcd's `v3alarm` store plus the `applierV3Capped` / `applierV3Corrupt` wrappers of
//! `apply.go`): which member raised which alarm, replicated through raft and persisted in the
//! `alarm` table as etcd persists it (the marshalled `AlarmMember` as key, an empty value), and
//! the writes apply refuses while one is active.

use std::collections::BTreeSet;
use std::sync::RwLock;

use prost::Message;

use crate::apply::command::Request;
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::{request_op, AlarmMember, AlarmRequest, AlarmType, TxnRequest};
use crate::storage::{Engine, Table, WriteBatch};

/// etcd's `alarm` bucket.
const ALARM_TABLE: Table = "alarm";

/// Active alarms as (alarm type, member id): sorted, so listings are stable (etcd walks Go maps
/// and lists them in no fixed order).
#[derive(Default)]
pub struct Alarms {
    active: RwLock<BTreeSet<(i32, u64)>>,
}

/// What applying one AlarmRequest changes, once its batch is written.
#[derive(Debug, Default)]
pub struct AlarmChange {
    add: Option<(i32, u64)>,
    remove: Option<(i32, u64)>,
}

impl Alarms {
    /// Load the persisted alarms.
    pub fn open(engine: &dyn Engine) -> Result<Self> {
        let alarms = Alarms::default();
        alarms.reload(engine)?;
        Ok(alarms)
    }

    /// Re-read the table (after a raft snapshot replaced the state).
    pub fn reload(&self, engine: &dyn Engine) -> Result<()> {
        let mut loaded = BTreeSet::new();
        crate::storage::try_scan(engine, ALARM_TABLE, &[], None, &mut |k, _| {
            let m = AlarmMember::decode(k).map_err(|e| Error::Storage(format!("corrupt alarm row {k:02x?}: {e}")))?;
            loaded.insert((m.alarm, m.member_id));
            Ok::<_, Error>(true)
        })?;
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    /// Active alarms of type `alarm`, or all of them for `NONE` (etcd's `alarmStore.Get`).
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        let active = self.active.read().unwrap_or_else(|p| p.into_inner());
        active
            .iter()
            .filter(|(t, _)| alarm == AlarmType::None as i32 || *t == alarm)
            .map(|&(alarm, member_id)| AlarmMember { member_id, alarm })
            .collect()
    }

    fn is_active(&self, alarm: AlarmType) -> bool {
        self.active.read().unwrap_or_else(|p| p.into_inner()).iter().any(|(t, _)| *t == alarm as i32)
    }

    /// Apply an AlarmRequest as etcd's `applierV3backend.Alarm` does, staging the row changes in
    /// `batch`: GET lists; ACTIVATE answers the (new or already present) alarm and ignores `NONE`;
    /// DEACTIVATE answers the alarm it removed, nothing if it was not active. Call
    /// [`Alarms::commit`] with the change once the batch is written.
    pub fn stage(&self, batch: &mut WriteBatch, req: &AlarmRequest) -> (Vec<AlarmMember>, AlarmChange) {
        let entry = (req.alarm, req.member_id);
        let member = AlarmMember { member_id: req.member_id, alarm: req.alarm };
        let present = self.active.read().unwrap_or_else(|p| p.into_inner()).contains(&entry);
        let mut change = AlarmChange::default();
        let answer = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => self.get(req.alarm),
            Ok(AlarmAction::Activate) if req.alarm == AlarmType::None as i32 => Vec::new(),
            Ok(AlarmAction::Activate) => {
                if !present {
                    batch.put(ALARM_TABLE, member.encode_to_vec(), Vec::new());
                    change.add = Some(entry);
                }
                vec![member]
            }
            Ok(AlarmAction::Deactivate) if present => {
                batch.delete(ALARM_TABLE, member.encode_to_vec());
                change.remove = Some(entry);
                vec![member]
            }
            Ok(AlarmAction::Deactivate) => Vec::new(),
            // etcd panics on an action it does not know. The edge refuses one before it reaches
            // the log; should one get here anyway, it changes nothing rather than stop a member.
            Err(_) => Vec::new(),
        };
        (answer, change)
    }

    pub fn commit(&self, change: AlarmChange) {
        let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = change.add {
            active.insert(e);
        }
        if let Some(e) = change.remove {
            active.remove(&e);
        }
    }

    /// The error apply answers `request` with while an alarm is active, if any: with CORRUPT,
    /// every write (etcd's `applierV3Corrupt`); with NOSPACE, what would take space: Put, a Txn
    /// with a put among its top-level operations, LeaseGrant (etcd's `applierV3Capped`).
    /// Deletes, compactions and revokes stay allowed under NOSPACE because they free space.
    pub fn refuse(&self, request: &Request) -> Option<Error> {
        if self.is_active(AlarmType::Corrupt) {
            let write = matches!(
                request,
                Request::Put(_)
                    | Request::DeleteRange(_)
                    | Request::Txn(_)
                    | Request::Compaction(_)
                    | Request::LeaseGrant(_)
                    | Request::LeaseRevoke(_)
            );
            if write {
                return Some(Error::Corrupt);
            }
        }
        if self.is_active(AlarmType::Nospace) {
            let takes_space = match request {
                Request::Put(_) | Request::LeaseGrant(_) => true,
                Request::Txn(txn) => txn_has_puts(txn),
                _ => false,
            };
            if takes_space {
                return Some(Error::NoSpace);
            }
        }
        None
    }
}

/// etcd's capped applier refuses a Txn whose quota cost is positive, and that cost counts only
/// the puts directly in its success or failure branch (nested txns are not looked into).
pub fn txn_has_puts(txn: &TxnRequest) -> bool {
    txn.success.iter().chain(&txn.failure).any(|op| matches!(op.request, Some(request_op::Request::RequestPut(_))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::mem_engine::MemEngine;
    use crate::proto::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest, PutRequest, RequestOp};

    fn req(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest { action: action as i32, member_id, alarm: alarm as i32 }
    }

    fn apply(a: &Alarms, e: &MemEngine, r: AlarmRequest) -> Vec<AlarmMember> {
        let mut batch = WriteBatch::default();
        let (answer, change) = a.stage(&mut batch, &r);
        e.write(batch).unwrap();
        a.commit(change);
        answer
    }

    #[test]
    fn activate_deactivate_and_get_as_etcd() {
        let e = MemEngine::default();
        let a = Alarms::open(&e).unwrap();
        let nospace = AlarmMember { member_id: 7, alarm: AlarmType::Nospace as i32 };
        assert_eq!(apply(&a, &e, req(AlarmAction::Activate, 7, AlarmType::Nospace)), vec![nospace]);
        // Activating again answers the alarm already there.
        assert_eq!(apply(&a, &e, req(AlarmAction::Activate, 7, AlarmType::Nospace)), vec![nospace]);
        // Activating NONE does nothing.
        assert!(apply(&a, &e, req(AlarmAction::Activate, 7, AlarmType::None)).is_empty());
        apply(&a, &e, req(AlarmAction::Activate, 3, AlarmType::Corrupt));
        assert_eq!(apply(&a, &e, req(AlarmAction::Get, 0, AlarmType::None)).len(), 2);
        assert_eq!(apply(&a, &e, req(AlarmAction::Get, 0, AlarmType::Nospace)), vec![nospace]);
        // Persisted: a store opened on the same rows knows both.
        assert_eq!(Alarms::open(&e).unwrap().get(AlarmType::None as i32).len(), 2);
        assert_eq!(apply(&a, &e, req(AlarmAction::Deactivate, 7, AlarmType::Nospace)), vec![nospace]);
        assert!(apply(&a, &e, req(AlarmAction::Deactivate, 7, AlarmType::Nospace)).is_empty());
        assert_eq!(Alarms::open(&e).unwrap().get(AlarmType::None as i32).len(), 1);
        let mut batch = WriteBatch::default();
        let (answer, _) = a.stage(&mut batch, &AlarmRequest { action: 9, ..Default::default() });
        assert!(answer.is_empty() && batch.is_empty());
    }

    #[test]
    fn nospace_refuses_only_what_takes_space() {
        let e = MemEngine::default();
        let a = Alarms::open(&e).unwrap();
        let put = Request::Put(PutRequest { key: b"k".to_vec(), ..Default::default() });
        let del = Request::DeleteRange(DeleteRangeRequest { key: b"k".to_vec(), ..Default::default() });
        let grant = Request::LeaseGrant(LeaseGrantRequest { id: 1, ttl: 5 });
        let put_op = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest { key: b"k".to_vec(), ..Default::default() })),
        };
        let del_op = RequestOp { request: Some(request_op::Request::RequestDeleteRange(Default::default())) };
        let txn_put = Request::Txn(TxnRequest { failure: vec![put_op], ..Default::default() });
        let txn_del = Request::Txn(TxnRequest { success: vec![del_op], ..Default::default() });
        assert!(a.refuse(&put).is_none());
        apply(&a, &e, req(AlarmAction::Activate, 1, AlarmType::Nospace));
        for r in [&put, &grant, &txn_put] {
            assert!(matches!(a.refuse(r), Some(Error::NoSpace)), "{r:?}");
        }
        assert!(a.refuse(&del).is_none());
        assert!(a.refuse(&txn_del).is_none());
        apply(&a, &e, req(AlarmAction::Activate, 1, AlarmType::Corrupt));
        assert!(matches!(a.refuse(&del), Some(Error::Corrupt)));
        apply(&a, &e, req(AlarmAction::Deactivate, 1, AlarmType::Corrupt));
        apply(&a, &e, req(AlarmAction::Deactivate, 1, AlarmType::Nospace));
        assert!(a.refuse(&put).is_none());
    }
}
