//! Model-based test: random sequences of Put, DeleteRange, Txn (with nested txns), Compact, Range
//! and reopen run against the store and against a plain model — a full snapshot of every key per
//! revision — and must agree on every response, every error, and every retained revision.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::mem_engine::MemEngine;
use super::*;
use crate::apply::{execute, txn};
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};

const LEASE: i64 = 42;

fn lease_exists(id: i64) -> bool {
    id == LEASE
}

type Snapshot = BTreeMap<Vec<u8>, KeyValue>;

struct Model {
    /// The whole keyspace after each revision (revision 1 is the empty start).
    snapshots: BTreeMap<i64, Snapshot>,
    current: i64,
    compacted: i64,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision, ..Default::default() })
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        _ => k >= key && k < end,
    }
}

impl Model {
    fn new() -> Self {
        Model { snapshots: BTreeMap::from([(1, Snapshot::new())]), current: 1, compacted: -1 }
    }

    fn at(&self, rev: i64) -> Snapshot {
        self.snapshots.range(..=rev).next_back().map(|(_, s)| s.clone()).unwrap_or_default()
    }

    fn commit(&mut self, snapshot: Snapshot) {
        self.current += 1;
        self.snapshots.insert(self.current, snapshot);
    }

    /// Range as etcd documents it, written out plainly.
    fn range_in(snapshot: &Snapshot, req: &RangeRequest, header_rev: i64) -> RangeResponse {
        let all: Vec<KeyValue> =
            snapshot.values().filter(|kv| in_range(&kv.key, &req.key, &req.range_end)).cloned().collect();
        let count = all.len() as i64;
        if req.count_only {
            return RangeResponse { header: header(header_rev), kvs: vec![], more: false, count };
        }
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let mut kvs = if req.sort_order == 0 && !filtered && req.limit > 0 {
            all.into_iter().take(req.limit as usize + 1).collect()
        } else {
            all
        };
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
        let order = if req.sort_order == 0 && req.sort_target != 0 { SortOrder::Ascend as i32 } else { req.sort_order };
        if order != 0 {
            let field = |kv: &KeyValue| -> (i64, Vec<u8>) {
                match SortTarget::try_from(req.sort_target).unwrap() {
                    SortTarget::Key => (0, kv.key.clone()),
                    SortTarget::Version => (kv.version, vec![]),
                    SortTarget::Create => (kv.create_revision, vec![]),
                    SortTarget::Mod => (kv.mod_revision, vec![]),
                    SortTarget::Value => (0, kv.value.clone()),
                }
            };
            if order == SortOrder::Descend as i32 {
                super::go_sort::go_sort(&mut kvs, |a, b| field(b) < field(a));
            } else {
                super::go_sort::go_sort(&mut kvs, |a, b| field(a) < field(b));
            }
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        RangeResponse { header: header(header_rev), kvs, more, count }
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        if req.revision > self.current {
            return Err(Error::FutureRevision);
        }
        let rev = if req.revision <= 0 { self.current } else { req.revision };
        if rev < self.compacted {
            return Err(Error::Compacted);
        }
        Ok(Self::range_in(&self.at(rev), req, self.current))
    }

    fn put_into(work: &mut Snapshot, req: &PutRequest, rev: i64) -> Result<Option<KeyValue>> {
        let prev = work.get(&req.key).cloned();
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(Error::KeyNotFound);
        }
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(0, |p| p.version) + 1,
            value: match (&prev, req.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => req.value.clone(),
            },
            lease: match (&prev, req.ignore_lease) {
                (Some(p), true) => p.lease,
                _ => req.lease,
            },
        };
        work.insert(req.key.clone(), kv);
        Ok(if req.prev_kv { prev } else { None })
    }

    fn delete_from(work: &mut Snapshot, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        let gone: Vec<Vec<u8>> = work.keys().filter(|k| in_range(k, key, end)).cloned().collect();
        gone.iter().filter_map(|k| work.remove(k)).collect()
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        execute::check_put(req)?;
        if req.lease != 0 && !lease_exists(req.lease) {
            return Err(Error::LeaseNotFound);
        }
        let mut work = self.at(self.current);
        let prev_kv = Self::put_into(&mut work, req, self.current + 1)?;
        self.commit(work);
        Ok(PutResponse { header: header(self.current), prev_kv })
    }

    fn delete(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let mut work = self.at(self.current);
        let gone = Self::delete_from(&mut work, &req.key, &req.range_end);
        if !gone.is_empty() {
            self.commit(work);
        }
        Ok(DeleteRangeResponse {
            header: header(self.current),
            deleted: gone.len() as i64,
            prev_kvs: if req.prev_kv { gone } else { vec![] },
        })
    }

    fn compact(&mut self, rev: i64) -> Result<()> {
        if rev <= self.compacted {
            return Err(Error::Compacted);
        }
        if rev > self.current {
            return Err(Error::FutureRevision);
        }
        self.compacted = rev;
        Ok(())
    }

    fn compare(pre: &Snapshot, c: &Compare) -> bool {
        let kvs: Vec<&KeyValue> = pre.values().filter(|kv| in_range(&kv.key, &c.key, &c.range_end)).collect();
        let target = CompareTarget::try_from(c.target).unwrap();
        if kvs.is_empty() && target == CompareTarget::Value {
            return false;
        }
        let zero = KeyValue::default();
        let check = |kv: &KeyValue| {
            let ord = match (target, &c.target_union) {
                (CompareTarget::Value, Some(TargetUnion::Value(v))) => kv.value.cmp(v),
                (CompareTarget::Value, _) => kv.value.cmp(&vec![]),
                (CompareTarget::Version, Some(TargetUnion::Version(v))) => kv.version.cmp(v),
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => kv.create_revision.cmp(v),
                (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => kv.mod_revision.cmp(v),
                (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => kv.lease.cmp(v),
                (CompareTarget::Version, _) => kv.version.cmp(&0),
                (CompareTarget::Create, _) => kv.create_revision.cmp(&0),
                (CompareTarget::Mod, _) => kv.mod_revision.cmp(&0),
                (CompareTarget::Lease, _) => kv.lease.cmp(&0),
            };
            match CompareResult::try_from(c.result).unwrap() {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        };
        if kvs.is_empty() {
            check(&zero)
        } else {
            kvs.into_iter().all(check)
        }
    }

    /// Pre-checks of the branches that will run (all against the state before the txn).
    fn txn_checks(&self, pre: &Snapshot, req: &TxnRequest, ranges: bool) -> Result<()> {
        let ok = req.compare.iter().all(|c| Self::compare(pre, c));
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            match &op.request {
                Some(Request::RequestTxn(t)) => self.txn_checks(pre, t, ranges)?,
                Some(Request::RequestPut(p)) if !ranges => {
                    if (p.ignore_value || p.ignore_lease) && !pre.contains_key(&p.key) {
                        return Err(Error::KeyNotFound);
                    }
                    if p.lease != 0 && !lease_exists(p.lease) {
                        return Err(Error::LeaseNotFound);
                    }
                }
                Some(Request::RequestRange(r)) if ranges => {
                    if r.revision > self.current {
                        return Err(Error::FutureRevision);
                    }
                    if r.revision != 0 && r.revision < self.compacted {
                        return Err(Error::Compacted);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn txn_exec(
        &self,
        pre: &Snapshot,
        work: &mut Snapshot,
        changed: &mut bool,
        req: &TxnRequest,
    ) -> Result<TxnResponse> {
        let begin = self.current;
        let succeeded = req.compare.iter().all(|c| Self::compare(pre, c));
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::new();
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => {
                    let cur = begin + i64::from(*changed);
                    let rev = if r.revision <= 0 { cur } else { r.revision };
                    let snapshot = if rev > begin { work.clone() } else { self.at(rev) };
                    Response::ResponseRange(Self::range_in(&snapshot, r, cur))
                }
                Some(Request::RequestPut(p)) => {
                    let prev_kv = Self::put_into(work, p, begin + 1)?;
                    *changed = true;
                    Response::ResponsePut(PutResponse { header: header(begin + 1), prev_kv })
                }
                Some(Request::RequestDeleteRange(d)) => {
                    let gone = Self::delete_from(work, &d.key, &d.range_end);
                    *changed |= !gone.is_empty();
                    Response::ResponseDeleteRange(DeleteRangeResponse {
                        header: header(begin + i64::from(*changed)),
                        deleted: gone.len() as i64,
                        prev_kvs: if d.prev_kv { gone } else { vec![] },
                    })
                }
                Some(Request::RequestTxn(t)) => Response::ResponseTxn(self.txn_exec(pre, work, changed, t)?),
                None => unreachable!("validated"),
            };
            responses.push(ResponseOp { response: Some(response) });
        }
        Ok(TxnResponse { header: Some(ResponseHeader::default()), succeeded, responses })
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse> {
        txn::validate_txn(req, 128)?;
        let pre = self.at(self.current);
        self.txn_checks(&pre, req, false)?;
        self.txn_checks(&pre, req, true)?;
        let mut work = pre.clone();
        let mut changed = false;
        let mut resp = self.txn_exec(&pre, &mut work, &mut changed, req)?;
        if changed {
            self.commit(work);
        }
        resp.header = header(self.current);
        Ok(resp)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
    /// The process dies right after persisting a compaction's schedule; the store reopens.
    CompactThenCrash(i64),
    Range(RangeRequest),
    Reopen,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["a", "b", "c", "d", "e"]).prop_map(|k| k.as_bytes().to_vec())
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(vec![]),
        1 => Just(vec![0]),
        2 => key(),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["", "x", "y", "zz"]).prop_map(|v| v.as_bytes().to_vec())
}

fn revision() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(0i64), 2 => -2i64..30]
}

fn put_req() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        value(),
        prop::sample::select(vec![0i64, 0, LEASE, 7]),
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(key, value, lease, prev_kv, ignore_value, ignore_lease)| {
            PutRequest {
                key,
                // Mostly well-formed ignore_* requests; some invalid ones too.
                value: if ignore_value && lease != 7 { vec![] } else { value },
                lease: if ignore_lease && lease != 7 { 0 } else { lease },
                prev_kv,
                ignore_value,
                ignore_lease,
            }
        })
}

fn delete_req() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn range_req() -> impl Strategy<Value = RangeRequest> {
    (
        (
            key(),
            prop_oneof![1 => range_end(), 1 => Just(vec![0])],
            revision(),
            prop_oneof![4 => Just(0i64), 4 => 1i64..4, 1 => -1i64..1],
        ),
        (0i32..3, 0i32..5, prop::bool::weighted(0.2), prop::bool::weighted(0.2)),
        prop::collection::vec(prop_oneof![6 => Just(0i64), 1 => 1i64..20], 4),
    )
        .prop_map(|((key, range_end, revision, limit), (order, target, keys_only, count_only), f)| RangeRequest {
            key,
            range_end,
            limit,
            revision,
            sort_order: order,
            sort_target: target,
            serializable: false,
            keys_only,
            count_only,
            min_mod_revision: f[0],
            max_mod_revision: f[1],
            min_create_revision: f[2],
            max_create_revision: f[3],
        })
}

fn compare() -> impl Strategy<Value = Compare> {
    (key(), prop_oneof![4 => Just(vec![]), 1 => range_end()], 0i32..5, 0i32..4, 0usize..5, 0i64..12, value()).prop_map(
        |(key, range_end, target, result, kind, n, v)| Compare {
            key,
            range_end,
            target,
            result,
            target_union: Some(match kind {
                0 => TargetUnion::Version(n % 4),
                1 => TargetUnion::CreateRevision(n),
                2 => TargetUnion::ModRevision(n),
                3 => TargetUnion::Value(v),
                _ => TargetUnion::Lease(if n % 2 == 0 { 0 } else { LEASE }),
            }),
        },
    )
}

fn flat_op() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        put_req().prop_map(Request::RequestPut),
        delete_req().prop_map(Request::RequestDeleteRange),
        range_req().prop_map(Request::RequestRange),
    ]
    .prop_map(|request| RequestOp { request: Some(request) })
}

fn flat_txn() -> impl Strategy<Value = TxnRequest> {
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(flat_op(), 0..4),
        prop::collection::vec(flat_op(), 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest { compare, success, failure })
}

fn txn_req() -> impl Strategy<Value = TxnRequest> {
    (flat_txn(), prop::option::weighted(0.3, (flat_txn(), 0usize..4))).prop_map(|(mut outer, inner)| {
        if let Some((inner, at)) = inner {
            let at = at.min(outer.success.len());
            outer.success.insert(at, RequestOp { request: Some(Request::RequestTxn(inner)) });
        }
        outer
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => put_req().prop_map(Op::Put),
        2 => delete_req().prop_map(Op::Delete),
        4 => txn_req().prop_map(Op::Txn),
        1 => (-2i64..30).prop_map(Op::Compact),
        1 => (-2i64..30).prop_map(Op::CompactThenCrash),
        4 => range_req().prop_map(Op::Range),
        1 => Just(Op::Reopen),
    ]
}

struct Real {
    engine: Arc<MemEngine>,
    store: Option<MvccStore>,
    compactions: Vec<CompactionHandle>,
}

impl Real {
    fn store(&self) -> &MvccStore {
        self.store.as_ref().unwrap()
    }

    fn reopen(&mut self) {
        self.reopen_with(|_| {});
    }

    /// Wait for compactions, close, let `offline` touch the engine, open again.
    fn reopen_with(&mut self, offline: impl FnOnce(&MemEngine)) {
        for h in self.compactions.drain(..) {
            h.wait().unwrap();
        }
        self.store = None;
        offline(&self.engine);
        self.store = Some(MvccStore::open(self.engine.clone()).unwrap());
    }

    fn write<T>(&self, f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>) -> Result<T> {
        let mut w = self.store().write();
        let out = f(&mut w)?;
        w.commit(WriteBatch::default())?;
        Ok(out)
    }
}

fn same<T: PartialEq + std::fmt::Debug>(
    real: Result<T>,
    model: Result<T>,
    op: &Op,
) -> std::result::Result<(), TestCaseError> {
    match (real, model) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "op {:?}", op),
        (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string(), "op {:?}", op),
        (a, b) => prop_assert!(false, "op {:?}: store {:?} model {:?}", op, a, b),
    }
    Ok(())
}

/// Every retained revision reads the same everywhere.
fn sweep(real: &Real, model: &Model) -> std::result::Result<(), TestCaseError> {
    let s = real.store();
    prop_assert_eq!(s.current_revision(), model.current);
    prop_assert_eq!(s.compact_revision(), model.compacted.max(0));
    for rev in (model.compacted - 1).max(0)..=model.current + 1 {
        let req = RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() };
        let got = s.range(&req).map(RangeResult::into_response);
        same(got, model.range(&req), &Op::Range(req.clone()))?;
    }
    Ok(())
}

proptest! {
    // Past failures are replayed from a file beside this one (not a top-level folder).
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::SourceParallel(
            "proptest-regressions"
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_agrees_with_model(ops in prop::collection::vec(op(), 1..40)) {
        let engine = Arc::new(MemEngine::default());
        let mut real = Real {
            store: Some(MvccStore::open(engine.clone()).unwrap()),
            engine,
            compactions: Vec::new(),
        };
        let mut model = Model::new();
        for op in &ops {
            match op {
                Op::Put(req) => {
                    let got = real.write(|w| execute::put(w, req, &lease_exists));
                    same(got, model.put(req), op)?;
                }
                Op::Delete(req) => {
                    let got = real.write(|w| execute::delete_range(w, req));
                    same(got, model.delete(req), op)?;
                }
                Op::Txn(req) => {
                    let got = txn::validate_txn(req, 128)
                        .and_then(|()| real.write(|w| txn::txn(w, req, &lease_exists)));
                    same(got, model.txn(req), op)?;
                }
                Op::Compact(rev) => {
                    let got = real.store().compact(*rev, false).map(|h| {
                        real.compactions.push(h);
                    });
                    same(got, model.compact(*rev), op)?;
                }
                Op::CompactThenCrash(rev) => {
                    if model.compact(*rev).is_ok() {
                        real.reopen_with(|engine| {
                            engine.set(META_TABLE, SCHEDULED_COMPACT_KEY, &encode_meta_rev(*rev))
                        });
                        sweep(&real, &model)?;
                    }
                }
                Op::Range(req) => {
                    let got = real.store().range(req).map(RangeResult::into_response);
                    same(got, model.range(req), op)?;
                }
                Op::Reopen => {
                    real.reopen();
                    sweep(&real, &model)?;
                }
            }
            prop_assert_eq!(real.store().current_revision(), model.current);
        }
        sweep(&real, &model)?;
        real.reopen();
        sweep(&real, &model)?;
    }
}
