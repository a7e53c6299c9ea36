//! Server-picked lease ids in differential scenarios. A grant with ID 0 gets a different id from
//! every server, so a scenario names the n-th picked id `auto_lease(n)`: the harness swaps the name
//! for the real id in each request it sends, and the real id back for the name in each outcome, so
//! two transcripts compare equal exactly when the servers behaved alike.

use keel::proto::etcdserverpb::compare::TargetUnion;
use keel::proto::etcdserverpb::{request_op, response_op, RequestOp, TxnRequest, TxnResponse};
use keel::proto::mvccpb::KeyValue;

use crate::scenario::{Outcome, Step};

/// Names are far below any id a server picks (etcd and Keel pick positive ids) or a scenario
/// chooses by hand.
const AUTO_BASE: i64 = -(1 << 62);

/// The name of the n-th (from 0) id a server picked in this scenario.
pub const fn auto_lease(n: usize) -> i64 {
    AUTO_BASE + n as i64
}

/// The ids picked so far, in order.
#[derive(Debug, Default)]
pub struct AutoLeases {
    picked: Vec<i64>,
}

impl AutoLeases {
    pub fn picked(&mut self, id: i64) {
        self.picked.push(id);
    }

    /// The real id for a name; any other id is itself.
    fn real(&self, id: i64) -> i64 {
        let n = id.wrapping_sub(AUTO_BASE);
        if (0..1 << 20).contains(&n) {
            if let Some(real) = usize::try_from(n).ok().and_then(|n| self.picked.get(n)) {
                return *real;
            }
        }
        id
    }

    /// The name for a picked id; any other id is itself.
    fn name(&self, id: i64) -> i64 {
        match self.picked.iter().position(|p| *p == id && id != 0) {
            Some(n) => auto_lease(n),
            None => id,
        }
    }

    pub fn resolve_step(&self, step: Step) -> Step {
        match step {
            Step::Put(mut p) => {
                p.lease = self.real(p.lease);
                Step::Put(p)
            }
            Step::Txn(mut t) => {
                self.resolve_txn(&mut t);
                Step::Txn(t)
            }
            Step::LeaseRevoke(mut r) => {
                r.id = self.real(r.id);
                Step::LeaseRevoke(r)
            }
            Step::LeaseTimeToLive(mut r) => {
                r.id = self.real(r.id);
                Step::LeaseTimeToLive(r)
            }
            Step::LeaseKeepAlive(ids) => Step::LeaseKeepAlive(ids.into_iter().map(|id| self.real(id)).collect()),
            other => other,
        }
    }

    fn resolve_txn(&self, t: &mut TxnRequest) {
        for c in &mut t.compare {
            if let Some(TargetUnion::Lease(id)) = &mut c.target_union {
                *id = self.real(*id);
            }
        }
        for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
            self.resolve_op(op);
        }
    }

    fn resolve_op(&self, op: &mut RequestOp) {
        match &mut op.request {
            Some(request_op::Request::RequestPut(p)) => p.lease = self.real(p.lease),
            Some(request_op::Request::RequestTxn(t)) => self.resolve_txn(t),
            _ => {}
        }
    }

    pub fn name_outcome(&self, outcome: Outcome) -> Outcome {
        if self.picked.is_empty() {
            return outcome;
        }
        match outcome {
            Outcome::Range(mut r) => {
                self.name_kvs(&mut r.kvs);
                Outcome::Range(r)
            }
            Outcome::Put(mut r) => {
                self.name_kvs(r.prev_kv.iter_mut());
                Outcome::Put(r)
            }
            Outcome::DeleteRange(mut r) => {
                self.name_kvs(&mut r.prev_kvs);
                Outcome::DeleteRange(r)
            }
            Outcome::Txn(mut r) => {
                self.name_txn(&mut r);
                Outcome::Txn(r)
            }
            Outcome::LeaseGrant(mut r) => {
                r.id = self.name(r.id);
                Outcome::LeaseGrant(r)
            }
            Outcome::LeaseTimeToLive(mut r) => {
                r.id = self.name(r.id);
                Outcome::LeaseTimeToLive(r)
            }
            Outcome::LeaseLeases(mut r) => {
                for l in &mut r.leases {
                    l.id = self.name(l.id);
                }
                Outcome::LeaseLeases(r)
            }
            Outcome::LeaseKeepAlive(mut replies, end) => {
                for r in &mut replies {
                    r.id = self.name(r.id);
                }
                Outcome::LeaseKeepAlive(replies, end)
            }
            other => other,
        }
    }

    fn name_kvs<'a>(&self, kvs: impl IntoIterator<Item = &'a mut KeyValue>) {
        for kv in kvs {
            kv.lease = self.name(kv.lease);
        }
    }

    fn name_txn(&self, t: &mut TxnResponse) {
        for op in &mut t.responses {
            match &mut op.response {
                Some(response_op::Response::ResponseRange(r)) => self.name_kvs(&mut r.kvs),
                Some(response_op::Response::ResponsePut(r)) => self.name_kvs(r.prev_kv.iter_mut()),
                Some(response_op::Response::ResponseDeleteRange(r)) => self.name_kvs(&mut r.prev_kvs),
                Some(response_op::Response::ResponseTxn(r)) => self.name_txn(r),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel::proto::etcdserverpb::{LeaseGrantResponse, PutRequest};

    #[test]
    fn names_and_real_ids_swap_both_ways() {
        let mut a = AutoLeases::default();
        a.picked(0x694d_9a8d_8a5c_2b04);
        let step = a.resolve_step(Step::Put(PutRequest { lease: auto_lease(0), ..Default::default() }));
        let Step::Put(p) = step else { panic!("not a put") };
        assert_eq!(p.lease, 0x694d_9a8d_8a5c_2b04);
        // A name nobody picked yet, and ordinary ids, pass unchanged.
        assert_eq!(a.real(auto_lease(1)), auto_lease(1));
        assert_eq!(a.real(7), 7);
        let named =
            a.name_outcome(Outcome::LeaseGrant(LeaseGrantResponse { id: 0x694d_9a8d_8a5c_2b04, ..Default::default() }));
        assert_eq!(named, Outcome::LeaseGrant(LeaseGrantResponse { id: auto_lease(0), ..Default::default() }));
        assert_eq!(a.name(0), 0);
    }
}
