//! Txn: request validation (etcd's `checkTxnRequest` + `checkIntervals`, done before raft) and
//! execution (etcd 3.5.16's `applierV3backend.Txn`), quirks included:
//! - every compare, nested ones too, is evaluated against the state BEFORE the transaction writes
//!   anything, so a nested txn's compare does not see the outer txn's earlier writes;
//! - then, on the chosen branches only, Puts are checked (`ignore_*` need the key to exist
//!   before the txn, leases must exist) and then Range revisions (future / compacted, where a
//!   revision below -1 counts as compacted even on a never-compacted store);
//! - only then do the operations run in order, later ones seeing earlier writes, all at one
//!   revision. Any error aborts the whole txn with nothing written.

use std::cmp::Ordering;
use std::collections::HashSet;

use super::execute;
use crate::error::{Error, Result};
use crate::mvcc::WriteTxn;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{
    Compare, RangeRequest, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;

/// Checks etcd makes on a Txn before proposing it: operation count (`max_txn_ops` bounds the
/// compares, the success ops and the failure ops each; a nested txn gets only what its parent
/// left over), empty keys, empty operations (`KeyNotFound`), Put's `ignore_*` rules, and the
/// duplicate-key rule.
pub fn validate_txn(req: &TxnRequest, max_txn_ops: usize) -> Result<()> {
    check_txn_request(req, i64::try_from(max_txn_ops).unwrap_or(i64::MAX))?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

/// Execute a Txn in the open write transaction, which must not have changed anything yet. The
/// response header carries the txn's revision: the new one if anything changed, else the
/// current one.
pub fn txn(txn: &mut WriteTxn<'_>, req: &TxnRequest, lease_exists: &dyn Fn(i64) -> bool) -> Result<TxnResponse> {
    let path = choose_path(txn, req)?;
    check_chosen(txn, req, &path, &mut |txn, op| check_put(txn, op, lease_exists))?;
    check_chosen(txn, req, &path, &mut check_range)?;
    if !is_read_only(req) {
        // etcd evaluates a writing txn's compares in a read transaction and runs its operations
        // in a new write transaction: two transactions for the mvcc metrics.
        txn.split_metrics();
    }
    let mut resp = apply(txn, req, &path)?;
    resp.header = execute::header(txn.rev());
    Ok(resp)
}

/// etcd's `isTxnReadonly`: only Ranges in both branches (a nested txn counts as a write).
fn is_read_only(req: &TxnRequest) -> bool {
    req.success.iter().chain(&req.failure).all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// Which branch each txn takes: this one, then one entry per nested txn of the chosen branch,
/// in order.
struct Path {
    succeeded: bool,
    nested: Vec<Path>,
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

fn choose_path(txn: &WriteTxn<'_>, req: &TxnRequest) -> Result<Path> {
    let mut succeeded = true;
    for c in &req.compare {
        if !compare_holds(txn, c)? {
            succeeded = false;
            break;
        }
    }
    let nested = branch(req, succeeded)
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestTxn(t)) => Some(choose_path(txn, t)),
            _ => None,
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Path { succeeded, nested })
}

/// A compare over a range holds when every key in it satisfies it. With no key at all, a VALUE
/// compare fails (there is no value to compare) and the others compare against zeros.
fn compare_holds(txn: &WriteTxn<'_>, c: &Compare) -> Result<bool> {
    let found =
        txn.range(&RangeRequest { key: c.key.clone(), range_end: c.range_end.clone(), ..Default::default() })?;
    if found.kvs.is_empty() {
        if c.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(found.kvs.iter().all(|kv| compare_kv(c, kv)))
}

/// One key against one compare. An operand of the wrong kind for the target counts as zero (or
/// empty), an unknown target compares equal, an unknown result holds — all as etcd does.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let number = |actual: i64, operand: Option<i64>| actual.cmp(&operand.unwrap_or(0));
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let operand: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(operand)
        }
        Ok(CompareTarget::Create) => number(
            kv.create_revision,
            match c.target_union {
                Some(TargetUnion::CreateRevision(v)) => Some(v),
                _ => None,
            },
        ),
        Ok(CompareTarget::Mod) => number(
            kv.mod_revision,
            match c.target_union {
                Some(TargetUnion::ModRevision(v)) => Some(v),
                _ => None,
            },
        ),
        Ok(CompareTarget::Version) => number(
            kv.version,
            match c.target_union {
                Some(TargetUnion::Version(v)) => Some(v),
                _ => None,
            },
        ),
        Ok(CompareTarget::Lease) => number(
            kv.lease,
            match c.target_union {
                Some(TargetUnion::Lease(v)) => Some(v),
                _ => None,
            },
        ),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// Run `check` on every non-txn operation of the chosen branches, depth first in order.
fn check_chosen(
    txn: &WriteTxn<'_>,
    req: &TxnRequest,
    path: &Path,
    check: &mut dyn FnMut(&WriteTxn<'_>, &RequestOp) -> Result<()>,
) -> Result<()> {
    let mut nested = path.nested.iter();
    for op in branch(req, path.succeeded) {
        match &op.request {
            Some(Request::RequestTxn(t)) => {
                let p = nested.next().ok_or_else(path_mismatch)?;
                check_chosen(txn, t, p, check)?;
            }
            _ => check(txn, op)?,
        }
    }
    Ok(())
}

fn check_put(txn: &WriteTxn<'_>, op: &RequestOp, lease_exists: &dyn Fn(i64) -> bool) -> Result<()> {
    let Some(Request::RequestPut(p)) = &op.request else {
        return Ok(());
    };
    if p.ignore_value || p.ignore_lease {
        let found = txn.range(&RangeRequest { key: p.key.clone(), count_only: true, ..Default::default() })?;
        if found.count == 0 {
            return Err(Error::KeyNotFound);
        }
    }
    if p.lease != 0 && !lease_exists(p.lease) {
        return Err(Error::LeaseNotFound);
    }
    Ok(())
}

/// etcd's `checkRequestRange`: unlike a plain Range, only 0 means "newest" here, so a negative
/// revision below the first revision (-1 before any compaction) is reported as compacted.
fn check_range(txn: &WriteTxn<'_>, op: &RequestOp) -> Result<()> {
    let Some(Request::RequestRange(r)) = &op.request else {
        return Ok(());
    };
    if r.revision == 0 {
        Ok(())
    } else if r.revision > txn.rev() {
        Err(Error::FutureRevision)
    } else if r.revision < txn.first_rev() {
        Err(Error::Compacted)
    } else {
        Ok(())
    }
}

fn apply(txn: &mut WriteTxn<'_>, req: &TxnRequest, path: &Path) -> Result<TxnResponse> {
    let ops = branch(req, path.succeeded);
    let mut nested = path.nested.iter();
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => Some(Response::ResponseRange(execute::range_op(txn, r)?)),
            Some(Request::RequestPut(p)) => Some(Response::ResponsePut(execute::put_op(txn, p)?)),
            Some(Request::RequestDeleteRange(d)) => Some(Response::ResponseDeleteRange(execute::delete_op(txn, d)?)),
            Some(Request::RequestTxn(t)) => {
                let p = nested.next().ok_or_else(path_mismatch)?;
                Some(Response::ResponseTxn(apply(txn, t, p)?))
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    // A nested txn's response carries an empty header (seen on the wire from etcd 3.5.16); the
    // top-level one is filled by the caller.
    Ok(TxnResponse { header: Some(ResponseHeader::default()), succeeded: path.succeeded, responses })
}

fn path_mismatch() -> Error {
    Error::Internal("txn path does not match the request".into())
}

fn check_txn_request(req: &TxnRequest, max_ops: i64) -> Result<()> {
    let ops = req.compare.len().max(req.success.len()).max(req.failure.len());
    let ops = i64::try_from(ops).unwrap_or(i64::MAX);
    if ops > max_ops {
        return Err(Error::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        check_request_op(op, max_ops - ops)?;
    }
    Ok(())
}

fn check_request_op(op: &RequestOp, max_ops: i64) -> Result<()> {
    match &op.request {
        Some(Request::RequestRange(r)) if r.key.is_empty() => Err(Error::EmptyKey),
        Some(Request::RequestRange(_)) => Ok(()),
        Some(Request::RequestPut(p)) => execute::check_put(p),
        Some(Request::RequestDeleteRange(d)) if d.key.is_empty() => Err(Error::EmptyKey),
        Some(Request::RequestDeleteRange(_)) => Ok(()),
        Some(Request::RequestTxn(t)) => check_txn_request(t, max_ops),
        None => Err(Error::KeyNotFound),
    }
}

/// Deleted key ranges of a branch, with etcd's "affine" interval semantics: a single key `k` is
/// `[k, k\0)`, an empty end is +infinity, and an end of `"\0"` makes an empty interval — so a
/// delete with `range_end = "\0"` never conflicts with a put (verified against etcd 3.5.16).
#[derive(Default)]
struct Deletes(Vec<(Vec<u8>, Vec<u8>)>);

impl Deletes {
    fn add(&mut self, key: &[u8], range_end: &[u8]) {
        let end = if range_end.is_empty() {
            let mut point_end = key.to_vec();
            point_end.push(0);
            point_end
        } else {
            range_end.to_vec()
        };
        self.0.push((key.to_vec(), end));
    }

    fn covers(&self, k: &[u8]) -> bool {
        self.0.iter().any(|(begin, end)| begin.as_slice() <= k && (end.is_empty() || k < end.as_slice()))
    }
}

/// etcd's duplicate-key rule for one branch, recursively: a put may not share its key with
/// another put, nor fall in a deleted range, counting nested txns (whose success and failure
/// puts may repeat each other, as only one of them runs). Returns the branch's puts and deletes.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Deletes)> {
    let mut deletes = Deletes::default();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            deletes.add(&d.key, &d.range_end);
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, deletes_then) = check_intervals(&t.success)?;
        let (puts_else, deletes_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deletes.covers(k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deletes.covers(k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        deletes.0.extend(deletes_then.0);
        deletes.0.extend(deletes_else.0);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deletes.covers(&p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, deletes))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mvcc::mem_engine::MemEngine;
    use crate::mvcc::MvccStore;
    use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest};
    use crate::storage::WriteBatch;

    fn store() -> MvccStore {
        MvccStore::open(Arc::new(MemEngine::default())).unwrap()
    }

    fn put(key: &str, value: &str) -> RequestOp {
        put_with(PutRequest { key: key.into(), value: value.into(), ..Default::default() })
    }

    fn put_with(p: PutRequest) -> RequestOp {
        RequestOp { request: Some(Request::RequestPut(p)) }
    }

    fn range(key: &str, revision: i64) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestRange(RangeRequest { key: key.into(), revision, ..Default::default() })),
        }
    }

    fn del(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn nested(t: TxnRequest) -> RequestOp {
        RequestOp { request: Some(Request::RequestTxn(t)) }
    }

    fn success(ops: Vec<RequestOp>) -> TxnRequest {
        TxnRequest { success: ops, ..Default::default() }
    }

    fn cmp(key: &str, target: CompareTarget, result: CompareResult, operand: TargetUnion) -> Compare {
        Compare {
            key: key.into(),
            target: target as i32,
            result: result as i32,
            target_union: Some(operand),
            ..Default::default()
        }
    }

    fn leases(id: i64) -> bool {
        id == 42
    }

    fn run(s: &MvccStore, req: &TxnRequest) -> Result<TxnResponse> {
        validate_txn(req, 128)?;
        let mut w = s.write();
        let resp = txn(&mut w, req, &leases)?;
        let committed = w.commit(WriteBatch::default())?;
        assert_eq!(resp.header.as_ref().unwrap().revision, committed.revision);
        Ok(resp)
    }

    /// Header revision of every sub-response (nested txns as 0, as etcd leaves them empty).
    fn sub_revisions(resp: &TxnResponse) -> Vec<i64> {
        resp.responses
            .iter()
            .map(|r| {
                let h = match r.response.as_ref().unwrap() {
                    Response::ResponseRange(x) => &x.header,
                    Response::ResponsePut(x) => &x.header,
                    Response::ResponseDeleteRange(x) => &x.header,
                    Response::ResponseTxn(x) => &x.header,
                };
                h.as_ref().unwrap().revision
            })
            .collect()
    }

    fn range_keys(r: &ResponseOp) -> Vec<Vec<u8>> {
        match r.response.as_ref().unwrap() {
            Response::ResponseRange(x) => x.kvs.iter().map(|kv| kv.key.clone()).collect(),
            _ => panic!("not a range"),
        }
    }

    #[test]
    fn header_revisions_match_etcd_3_5_16() {
        // The same requests were sent to etcd 3.5.16; the revisions below are what it answered.
        let s = store();
        run(&s, &success(vec![put("x", "1")])).unwrap(); // 2
        let r = run(
            &s,
            &success(vec![range("x", 0), put("a", "1"), range("a", 0), del("nope", ""), put("b", "2"), range("x", 2)]),
        )
        .unwrap();
        assert_eq!(r.header.unwrap().revision, 3);
        assert!(r.succeeded);
        assert_eq!(sub_revisions(&r), vec![2, 3, 3, 3, 3, 3]);
        assert_eq!(range_keys(&r.responses[2]), vec![b"a".to_vec()]);
        assert_eq!(range_keys(&r.responses[5]), vec![b"x".to_vec()]);

        let r = run(&s, &success(vec![del("nope", ""), put("c", "1")])).unwrap();
        assert_eq!((r.header.unwrap().revision, sub_revisions(&r)), (4, vec![3, 4]));

        let r = run(&s, &success(vec![range("a", 0), del("nope", "")])).unwrap();
        assert_eq!((r.header.unwrap().revision, sub_revisions(&r)), (4, vec![4, 4]));

        // Nested compares see the state before the outer txn wrote anything: "n" does not
        // exist yet, so the nested txn takes its failure branch.
        let inner = TxnRequest {
            compare: vec![cmp("n", CompareTarget::Version, CompareResult::Greater, TargetUnion::Version(0))],
            success: vec![range("n", 0)],
            failure: vec![range("x", 0)],
        };
        let r = run(&s, &success(vec![put("n", "1"), nested(inner)])).unwrap();
        assert_eq!(r.header.unwrap().revision, 5);
        let Some(Response::ResponseTxn(inner)) = &r.responses[1].response else {
            panic!("not a txn");
        };
        assert!(!inner.succeeded);
        assert_eq!(inner.header, Some(ResponseHeader::default()));
        assert_eq!(sub_revisions(inner), vec![5]);
        assert_eq!(range_keys(&inner.responses[0]), vec![b"x".to_vec()]);
    }

    #[test]
    fn compares() {
        let s = store();
        run(
            &s,
            &success(vec![
                put_with(PutRequest { key: "a".into(), value: "m".into(), lease: 42, ..Default::default() }),
                put("b", "m"),
            ]),
        )
        .unwrap(); // 2
        run(&s, &success(vec![put("b", "z")])).unwrap(); // 3
        use CompareResult::*;
        use CompareTarget::*;
        let holds = |c: Compare| run(&s, &TxnRequest { compare: vec![c], ..Default::default() }).unwrap().succeeded;
        let val = |v: &str| TargetUnion::Value(v.into());
        assert!(holds(cmp("a", Value, Equal, val("m"))));
        assert!(holds(cmp("a", Value, Greater, val("l"))));
        assert!(holds(cmp("a", Value, Less, val("n"))));
        assert!(holds(cmp("a", Value, NotEqual, val("x"))));
        assert!(!holds(cmp("a", Value, NotEqual, val("m"))));
        assert!(holds(cmp("b", Version, Equal, TargetUnion::Version(2))));
        assert!(holds(cmp("b", Create, Equal, TargetUnion::CreateRevision(2))));
        assert!(holds(cmp("b", Mod, Greater, TargetUnion::ModRevision(2))));
        assert!(holds(cmp("a", Lease, Equal, TargetUnion::Lease(42))));
        assert!(holds(cmp("b", Lease, Equal, TargetUnion::Lease(0))));
        // A missing key compares as zeros, except VALUE which always fails.
        assert!(holds(cmp("zz", Create, Equal, TargetUnion::CreateRevision(0))));
        assert!(holds(cmp("zz", Version, Less, TargetUnion::Version(1))));
        assert!(!holds(cmp("zz", Value, NotEqual, val("x"))));
        assert!(!holds(cmp("zz", Value, Equal, val(""))));
        // An operand of the wrong kind is zero.
        assert!(holds(cmp("b", Mod, Greater, TargetUnion::Version(1000))));
        // With range_end every key must satisfy it.
        let ranged = |end: &str, c: Compare| Compare { range_end: end.into(), ..c };
        assert!(holds(ranged("c", cmp("a", Value, NotEqual, val("q")))));
        assert!(!holds(ranged("c", cmp("a", Value, Equal, val("m")))));
        assert!(holds(ranged("\0", cmp("a", Create, Equal, TargetUnion::CreateRevision(2)))));
        assert!(!holds(ranged("q", cmp("p", Value, Equal, val("")))));
        assert!(holds(ranged("q", cmp("p", Version, Equal, TargetUnion::Version(0)))));
        // Compares are AND-ed.
        let both = |c2| TxnRequest { compare: vec![cmp("a", Value, Equal, val("m")), c2], ..Default::default() };
        assert!(run(&s, &both(cmp("b", Value, Equal, val("z")))).unwrap().succeeded);
        assert!(!run(&s, &both(cmp("b", Value, Equal, val("m")))).unwrap().succeeded);
        assert_eq!(s.current_revision(), 3);
    }

    #[test]
    fn branch_checks_abort_with_nothing_written() {
        let s = store();
        run(&s, &success(vec![put("k", "v")])).unwrap(); // 2
        let err = |req: TxnRequest| run(&s, &req).unwrap_err().to_string();
        assert_eq!(
            err(success(vec![put("a", "1"), put_with(PutRequest { key: "b".into(), lease: 7, ..Default::default() })])),
            "requested lease not found"
        );
        assert_eq!(
            err(success(vec![
                put("a", "1"),
                put_with(PutRequest { key: "missing".into(), ignore_value: true, ..Default::default() })
            ])),
            "key not found"
        );
        // Puts are checked before ranges, whatever their order.
        assert_eq!(
            err(success(vec![
                range("k", 99),
                put_with(PutRequest { key: "b".into(), lease: 7, ..Default::default() })
            ])),
            "requested lease not found"
        );
        assert_eq!(err(success(vec![put("a", "1"), range("k", 3)])), "required revision is a future revision");
        // Only 0 means "newest" inside a txn: -1 is fine before any compaction, -2 is not.
        run(&s, &success(vec![range("k", -1)])).unwrap();
        assert_eq!(err(success(vec![range("k", -2)])), "required revision has been compacted");
        // A branch that does not run is not checked.
        let r = run(
            &s,
            &TxnRequest {
                failure: vec![put_with(PutRequest { key: "missing".into(), ignore_value: true, ..Default::default() })],
                ..Default::default()
            },
        )
        .unwrap();
        assert!(r.succeeded);
        // An existing key with ignore_value keeps its value.
        let r = run(
            &s,
            &success(vec![put_with(PutRequest {
                key: "k".into(),
                ignore_value: true,
                lease: 42,
                prev_kv: true,
                ..Default::default()
            })]),
        )
        .unwrap();
        assert_eq!(r.header.unwrap().revision, 3);
        // The key existed before the txn but an earlier op deleted it: etcd would crash here;
        // we fail the whole txn instead.
        assert_eq!(
            err(success(vec![
                del("a", "\0"),
                put_with(PutRequest { key: "k".into(), ignore_value: true, ..Default::default() })
            ])),
            "key not found"
        );
        assert_eq!(s.current_revision(), 3);
        let kv = s.range(&RangeRequest { key: "k".into(), ..Default::default() }).unwrap().kvs;
        assert_eq!((kv[0].value.as_slice(), kv[0].lease, kv[0].version), (&b"v"[..], 42, 2));
        assert_eq!(s.range(&RangeRequest { key: "a".into(), ..Default::default() }).unwrap().count, 0);
    }

    #[test]
    fn compacted_range_checks_in_a_txn() {
        let s = store();
        run(&s, &success(vec![put("k", "1")])).unwrap(); // 2
        run(&s, &success(vec![put("k", "2")])).unwrap(); // 3
        s.compact(2, true).unwrap().wait().unwrap();
        let err = |req: TxnRequest| run(&s, &req).unwrap_err().to_string();
        assert_eq!(err(success(vec![range("k", 1)])), "required revision has been compacted");
        assert_eq!(err(success(vec![range("k", -1)])), "required revision has been compacted");
        let r = run(&s, &success(vec![range("k", 2)])).unwrap();
        assert_eq!(range_keys(&r.responses[0]), vec![b"k".to_vec()]);
    }

    #[test]
    fn validation_counts_and_empties() {
        let many = |n: usize| (0..n).map(|i| put(&format!("k{i}"), "")).collect::<Vec<_>>();
        assert!(validate_txn(&success(many(128)), 128).is_ok());
        assert!(matches!(validate_txn(&success(many(129)), 128), Err(Error::TooManyOps)));
        let compares = |n: usize| {
            (0..n).map(|i| Compare { key: format!("c{i}").into(), ..Default::default() }).collect::<Vec<_>>()
        };
        // A nested txn gets only what its parent left: 128 - 128 = 0 here.
        let req = TxnRequest {
            compare: compares(128),
            success: vec![nested(success(vec![range("x", 0)]))],
            ..Default::default()
        };
        assert!(matches!(validate_txn(&req, 128), Err(Error::TooManyOps)));
        let req = TxnRequest {
            compare: compares(127),
            success: vec![nested(success(vec![range("x", 0)]))],
            ..Default::default()
        };
        assert!(validate_txn(&req, 128).is_ok());

        let empty_compare = TxnRequest { compare: vec![Compare::default()], ..Default::default() };
        assert!(matches!(validate_txn(&empty_compare, 128), Err(Error::EmptyKey)));
        assert!(matches!(validate_txn(&success(vec![range("", 0)]), 128), Err(Error::EmptyKey)));
        assert!(matches!(validate_txn(&success(vec![del("", "")]), 128), Err(Error::EmptyKey)));
        assert!(matches!(validate_txn(&success(vec![RequestOp::default()]), 128), Err(Error::KeyNotFound)));
        assert!(matches!(
            validate_txn(&success(vec![nested(success(vec![RequestOp::default()]))]), 128),
            Err(Error::KeyNotFound)
        ));
        let bad_put = |p: PutRequest| validate_txn(&success(vec![put_with(p)]), 128);
        assert!(matches!(
            bad_put(PutRequest { key: "k".into(), value: "v".into(), ignore_value: true, ..Default::default() }),
            Err(Error::ValueProvided)
        ));
        assert!(matches!(
            bad_put(PutRequest { key: "k".into(), lease: 1, ignore_lease: true, ..Default::default() }),
            Err(Error::LeaseProvided)
        ));
    }

    #[test]
    fn duplicate_key_rule() {
        let dup = |ops: Vec<RequestOp>| matches!(validate_txn(&success(ops), 128), Err(Error::DuplicateKey));
        assert!(dup(vec![put("a", "1"), put("a", "2")]));
        assert!(dup(vec![put("a", "1"), del("a", "")]));
        assert!(dup(vec![del("a", "c"), put("b", "1")]));
        assert!(!dup(vec![del("a", "c"), put("c", "1")]));
        assert!(!dup(vec![del("a", ""), del("a", "")]));
        assert!(!dup(vec![put("a", "1"), put("b", "1")]));
        // A delete to the end of the keyspace ("\0") never conflicts (etcd's affine intervals).
        assert!(!dup(vec![del("a", "\0"), put("b", "1")]));
        // The same key in success and failure is fine.
        let both = TxnRequest { success: vec![put("a", "1")], failure: vec![put("a", "2")], ..Default::default() };
        assert!(validate_txn(&both, 128).is_ok());
        // Nested: a put below conflicts with a put or delete above...
        assert!(dup(vec![put("a", "1"), nested(success(vec![put("a", "2")]))]));
        assert!(dup(vec![del("a", "b"), nested(success(vec![put("a", "2")]))]));
        assert!(dup(vec![nested(success(vec![del("a", "")])), put("a", "1")]));
        // ...and with an earlier sibling's puts or deletes...
        assert!(dup(vec![nested(success(vec![put("a", "1")])), nested(success(vec![put("a", "2")]))]));
        assert!(dup(vec![nested(success(vec![del("a", "")])), nested(success(vec![put("a", "2")]))]));
        // ...but then/else of one nested txn may share keys.
        assert!(!dup(vec![nested(TxnRequest {
            success: vec![put("a", "1")],
            failure: vec![put("a", "2")],
            ..Default::default()
        })]));
        // etcd never checks an earlier sibling's puts against a later sibling's deletes.
        assert!(!dup(vec![nested(success(vec![put("a", "1")])), nested(success(vec![del("a", "")]))]));
    }

    #[test]
    fn nested_txns_run_in_order_at_one_revision() {
        let s = store();
        let req = success(vec![
            put("a", "1"),
            nested(TxnRequest {
                compare: vec![cmp("a", CompareTarget::Create, CompareResult::Equal, TargetUnion::CreateRevision(0))],
                success: vec![put("b", "1"), range("a", 0)],
                failure: vec![put("c", "1")],
            }),
            range("b", 0),
        ]);
        let r = run(&s, &req).unwrap();
        assert_eq!(r.header.unwrap().revision, 2);
        let Some(Response::ResponseTxn(inner)) = &r.responses[1].response else {
            panic!("not a txn");
        };
        assert!(inner.succeeded);
        assert_eq!(range_keys(&inner.responses[1]), vec![b"a".to_vec()]);
        assert_eq!(range_keys(&r.responses[2]), vec![b"b".to_vec()]);
        let all = s.range(&RangeRequest { key: "a".into(), range_end: vec![0], ..Default::default() }).unwrap();
        let revs: Vec<_> = all.kvs.iter().map(|kv| (kv.key.clone(), kv.mod_revision)).collect();
        assert_eq!(revs, vec![(b"a".to_vec(), 2), (b"b".to_vec(), 2)]);
    }
}
