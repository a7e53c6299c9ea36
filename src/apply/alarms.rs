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
pub(crate) const ALARM_TABLE: Table = "alarm";

/// Active alarms as (alarm type, member id): sorted, so listings are stable (etcd walks Go maps
/// and lists them in no fixed order).
#[derive(Default)]
pub struct Alarms {
    active: RwLock<BTreeSet<(i32, u64)>>,
    gate: RwLock<Gate>,
}

/// Which of etcd's applier wrappers is in place. etcd keeps ONE applier and replaces it on every
/// alarm change, which this reproduces (quirks, pinned by `gate_follows_etcds_applier_swaps`):
/// activating NOSPACE or CORRUPT installs that wrapper alone over the plain applier, dropping
/// the other; deactivating the last alarm of a type installs the plain applier even if an alarm
/// of the other type stands. Only a restart (or a raft snapshot) stacks both, from the list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Gate {
    capped: bool,
    corrupt: bool,
}

/// What applying one AlarmRequest changes, once its batch is written.
#[derive(Debug, Default)]
pub struct AlarmChange {
    add: Option<(i32, u64)>,
    remove: Option<(i32, u64)>,
    gate: Option<Gate>,
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
        // etcd's `restoreAlarms`: the capped wrapper for NOSPACE, then the corrupt one over it.
        let gate = Gate {
            capped: loaded.iter().any(|(t, _)| *t == AlarmType::Nospace as i32),
            corrupt: loaded.iter().any(|(t, _)| *t == AlarmType::Corrupt as i32),
        };
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        *self.gate.write().unwrap_or_else(|p| p.into_inner()) = gate;
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

    /// Apply an AlarmRequest as etcd's `applierV3backend.Alarm` does, staging the row changes in
    /// `batch`: GET lists; ACTIVATE answers the (new or already present) alarm and ignores `NONE`;
    /// DEACTIVATE answers the alarm it removed, nothing if it was not active. Call
    /// [`Alarms::commit`] with the change once the batch is written.
    pub fn stage(&self, batch: &mut WriteBatch, req: &AlarmRequest) -> (Vec<AlarmMember>, AlarmChange) {
        let entry = (req.alarm, req.member_id);
        let member = AlarmMember { member_id: req.member_id, alarm: req.alarm };
        let (present, others_of_type) = {
            let active = self.active.read().unwrap_or_else(|p| p.into_inner());
            (active.contains(&entry), active.iter().any(|e| e.0 == req.alarm && *e != entry))
        };
        let mut change = AlarmChange::default();
        let answer = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => self.get(req.alarm),
            Ok(AlarmAction::Activate) if req.alarm == AlarmType::None as i32 => Vec::new(),
            Ok(AlarmAction::Activate) => {
                if !present {
                    batch.put(ALARM_TABLE, member.encode_to_vec(), Vec::new());
                    change.add = Some(entry);
                }
                let capped = req.alarm == AlarmType::Nospace as i32;
                let corrupt = req.alarm == AlarmType::Corrupt as i32;
                if capped || corrupt {
                    change.gate = Some(Gate { capped, corrupt });
                }
                vec![member]
            }
            Ok(AlarmAction::Deactivate) if present => {
                batch.delete(ALARM_TABLE, member.encode_to_vec());
                change.remove = Some(entry);
                if !others_of_type {
                    change.gate = Some(Gate::default());
                }
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
        if let Some(gate) = change.gate {
            *self.gate.write().unwrap_or_else(|p| p.into_inner()) = gate;
        }
    }

    /// The error apply answers `request` with while an alarm's applier is in place, if any (see
    /// [`Gate`] for when that differs from the alarm list): with CORRUPT,
    /// every write (etcd's `applierV3Corrupt`); with NOSPACE, what would take space: Put, a Txn
    /// with a put among its top-level operations, LeaseGrant (etcd's `applierV3Capped`).
    /// Deletes, compactions and revokes stay allowed under NOSPACE because they free space.
    pub fn refuse(&self, request: &Request) -> Option<Error> {
        let gate = *self.gate.read().unwrap_or_else(|p| p.into_inner());
        if gate.corrupt {
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
        if gate.capped {
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
        apply(&a, &e, req(AlarmAction::Deactivate, 1, AlarmType::Nospace));
        assert!(a.refuse(&put).is_none());
    }

    #[test]
    fn gate_follows_etcds_applier_swaps() {
        // Seen on etcd 3.5.16: with NOSPACE (this member) and CORRUPT (another) active, disarming
        // CORRUPT lets puts through though NOSPACE is still listed.
        let e = MemEngine::default();
        let a = Alarms::open(&e).unwrap();
        let put = Request::Put(PutRequest { key: b"k".to_vec(), ..Default::default() });
        let del = Request::DeleteRange(DeleteRangeRequest { key: b"k".to_vec(), ..Default::default() });
        apply(&a, &e, req(AlarmAction::Activate, 1, AlarmType::Nospace));
        apply(&a, &e, req(AlarmAction::Activate, 42, AlarmType::Corrupt));
        assert!(matches!(a.refuse(&put), Some(Error::Corrupt)));
        apply(&a, &e, req(AlarmAction::Deactivate, 42, AlarmType::Corrupt));
        assert_eq!(a.get(AlarmType::Nospace as i32).len(), 1);
        assert!(a.refuse(&put).is_none());
        // Activating the same alarm again puts its applier back.
        apply(&a, &e, req(AlarmAction::Activate, 1, AlarmType::Nospace));
        assert!(matches!(a.refuse(&put), Some(Error::NoSpace)));
        // Activating CORRUPT replaces the capped applier: a put fails as corrupt, a delete too.
        apply(&a, &e, req(AlarmAction::Activate, 42, AlarmType::Corrupt));
        assert!(matches!(a.refuse(&del), Some(Error::Corrupt)));
        // While another NOSPACE remains, deactivating one keeps the applier.
        apply(&a, &e, req(AlarmAction::Activate, 2, AlarmType::Nospace));
        apply(&a, &e, req(AlarmAction::Deactivate, 2, AlarmType::Nospace));
        assert!(matches!(a.refuse(&put), Some(Error::NoSpace)));
        // A restart stacks both wrappers from the list: corrupt answers first.
        let restarted = Alarms::open(&e).unwrap();
        assert!(matches!(restarted.refuse(&put), Some(Error::Corrupt)));
        apply(&restarted, &e, req(AlarmAction::Deactivate, 1, AlarmType::Nospace));
        assert!(restarted.refuse(&del).is_none());
    }
}
