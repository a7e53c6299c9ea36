//! The recipes behind the Lock and Election services. etcd 3.5.16 serves both with clientv3's
//! `concurrency` package (Mutex, Election, waitDeletes) running against its own KV; Keel runs the
//! same steps through the ordinary write path (`propose`), read path (`read`) and the watch hub,
//! so every step is a committed write, a linearizable read or a watch of committed changes.
//!
//! The shape etcd gives them: a contender's key is `<name>/<lease id in hex>`, created with its
//! lease in a txn only if absent; contenders are ordered by create revision; a contender waits
//! for the deletion of the key with the next-lower create revision, again and again, until none
//! is left (etcd's `waitDeletes`).
//!
//! Every step runs as the caller ([`Caller`]): etcd's in-process client carries the incoming
//! request's context into each call, so each is authenticated and permission-checked as the user
//! the request's token (or client certificate) names.

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;

use crate::api::auth::{credentials, resolve, Credentials};
use crate::api::{header, lease, BoxStream};
use crate::apply::command::{Request as Cmd, Response as Applied};
use crate::apply::txn::validate_txn;
use crate::auth::AuthInfo;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use crate::proto::v3electionpb::{LeaderKey, LeaderResponse};
use crate::watch::{KeySpan, Outgoing, StreamHandle, WatchSpec};
use crate::{propose, read};

/// clientv3's `concurrency.NewSession` grants a lease of this TTL when asked for lease 0.
const DEFAULT_SESSION_TTL: i64 = 60;

/// Who a Lock or Election call runs as: the credentials its request came with. As with etcd's
/// in-process client, whose every call re-reads the token from the request's context, they are
/// looked up again at each step ([`Caller::user`], the same lookup as `auth::identity`), so a wait
/// across an auth change (a user added elsewhere) goes on with the token's current standing
/// rather than failing with `revision of auth store is old`.
#[derive(Clone, Debug, Default)]
pub struct Caller(Option<Credentials>);

impl Caller {
    /// The caller of a request with `metadata` (its `token`, or its client certificate's CN).
    pub fn of(metadata: &MetadataMap) -> Caller {
        Caller(credentials(metadata))
    }

    /// The user the next call runs as; None without credentials. A token that does not check out
    /// (unknown, expired) is `invalid auth token`.
    fn user(&self, node: &Node) -> Result<Option<AuthInfo>> {
        self.0.as_ref().map(|c| resolve(node, c)).transpose()
    }

    /// etcd's watch server checks READ on a watch's range when it is created; a refusal reaches the
    /// recipe as the watch's cancel reason.
    fn check_watch(&self, node: &Node, key: &[u8], range_end: &[u8]) -> Result<()> {
        crate::api::watch::watch_permitted(node, self.0.as_ref(), key, range_end)
            .map_err(|refusal| Error::RecipeWatchRefused(Box::new(refusal)))
    }
}

/// A contender's key: the prefix (name + "/") and the lease id as Go's `%x` prints an int64 —
/// lowercase hex without padding, and a minus sign for a negative id.
pub fn contender_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let hex = if lease < 0 { format!("-{:x}", lease.unsigned_abs()) } else { format!("{lease:x}") };
    let mut key = prefix.to_vec();
    key.extend_from_slice(hex.as_bytes());
    key
}

/// The prefix every contender of `name` shares: etcd's `NewMutex`/`NewElection` append "/".
fn contenders(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// clientv3's `GetPrefixRangeEnd`: the prefix with its last byte below 0xff incremented (and what
/// follows dropped); a prefix of only 0xff bytes ranges to the end of the keyspace ("\0").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("not empty") += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// The lease a request's session runs on. etcd quirk: `concurrency.NewSession` with lease 0
/// (clientv3's NoLease) grants a fresh lease of 60 s and never keeps it alive (the servers orphan
/// their sessions), so a Lock or Campaign without a lease holds for about a minute.
async fn session_lease(node: &Node, caller: &Caller, lease: i64) -> Result<i64> {
    if lease != 0 {
        return Ok(lease);
    }
    let user = caller.user(node)?;
    let granted = lease::grant(node, LeaseGrantRequest { ttl: DEFAULT_SESSION_TTL, id: 0 }, user.as_ref()).await?;
    Ok(granted.id)
}

// ---- the KV calls clientv3 makes, through the normal paths -------------------------------------

fn create_revision_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        range_end: Vec::new(),
    }
}

fn op_put(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    RequestOp { request: Some(request_op::Request::RequestPut(put)) }
}

fn op_range(range: RangeRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestRange(range)) }
}

fn op_delete(key: &[u8]) -> RequestOp {
    let delete = DeleteRangeRequest { key: key.to_vec(), ..Default::default() };
    RequestOp { request: Some(request_op::Request::RequestDeleteRange(delete)) }
}

fn get_key(key: &[u8]) -> RangeRequest {
    RangeRequest { key: key.to_vec(), ..Default::default() }
}

/// clientv3's `WithFirstCreate`: the oldest key under the prefix.
fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        sort_target: SortTarget::Create as i32,
        sort_order: SortOrder::Ascend as i32,
        limit: 1,
        ..Default::default()
    }
}

/// clientv3's `WithLastCreate` + `WithMaxCreateRev`: the youngest key under the prefix created
/// at or before `max_create_revision`.
fn last_created_before(prefix: &[u8], max_create_revision: i64) -> RangeRequest {
    RangeRequest { sort_order: SortOrder::Descend as i32, max_create_revision, ..first_created(prefix) }
}

/// A Txn as the KV service runs it: validated, proposed as the caller, header completed.
async fn txn(node: &Node, caller: &Caller, req: TxnRequest) -> Result<TxnResponse> {
    validate_txn(&req, node.limits.max_txn_ops)?;
    let user = caller.user(node)?;
    match propose::propose_as(node, Cmd::Txn(req), user.as_ref()).await? {
        (Applied::Txn(mut resp), _) => {
            resp.header = Some(header::complete(node, resp.header));
            Ok(resp)
        }
        _ => Err(Error::Internal("apply returned an unexpected response to txn".into())),
    }
}

/// A linearizable Get as the caller: the header it reports and the key-values.
async fn get(node: &Arc<Node>, caller: &Caller, req: RangeRequest) -> Result<(ResponseHeader, Vec<KeyValue>)> {
    let user = caller.user(node)?;
    let result = read::range_as(node, &req, user.as_ref()).await?;
    Ok((header::header(node, result.revision), result.kvs))
}

/// A Delete of one key as the caller, as the KV service runs it (etcd's Unlock is a plain
/// `client.Delete`).
pub async fn delete(node: &Node, caller: &Caller, key: &[u8]) -> Result<ResponseHeader> {
    let req = DeleteRangeRequest { key: key.to_vec(), ..Default::default() };
    crate::api::validate::delete_range(&req)?;
    let user = caller.user(node)?;
    match propose::propose_as(node, Cmd::DeleteRange(req), user.as_ref()).await? {
        (Applied::DeleteRange(resp), _) => Ok(header::complete(node, resp.header)),
        _ => Err(Error::Internal("apply returned an unexpected response to delete".into())),
    }
}

/// The key-values of the `i`th response of a txn, if it was a Range.
fn range_kvs(resp: &TxnResponse, i: usize) -> &[KeyValue] {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

// ---- waiting on the watch hub --------------------------------------------------------------------

/// Watchers this member's recipes hold on the watch hub, on one private stream: the same
/// committed-change feed (and catch-up from history) that Watch clients get.
struct Waiter {
    handle: Arc<StreamHandle>,
    next_id: i64,
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// The events one watcher got in one response, and that response's header revision.
struct Seen {
    watch_id: i64,
    revision: i64,
    events: Vec<Event>,
}

impl Waiter {
    fn new(node: &Node) -> Waiter {
        Waiter { handle: Arc::new(node.applier.watch().open_stream()), next_id: 1, stopping: node.stopping.subscribe() }
    }

    /// Watch `span` from revision `start` on for `caller`, who must be allowed to read it (etcd's
    /// watch server checks at creation); returns the watcher's id.
    fn watch_as(&mut self, node: &Node, caller: &Caller, span: KeySpan, start: i64, no_put: bool) -> Result<i64> {
        let (key, range_end): (&[u8], &[u8]) = match &span {
            KeySpan::Key(key) => (key, &[]),
            KeySpan::Range(key, end) => (key, end),
            KeySpan::From(key) => (key, &[0]),
        };
        caller.check_watch(node, key, range_end)?;
        Ok(self.watch(span, start, no_put))
    }

    /// Watch `span` from revision `start` on; returns the watcher's id.
    fn watch(&mut self, span: KeySpan, start: i64, no_put: bool) -> i64 {
        let watch_id = self.next_id;
        self.next_id += 1;
        self.handle.watch(WatchSpec {
            watch_id,
            span,
            start_revision: start,
            prev_kv: false,
            progress_notify: false,
            fragment: false,
            no_put,
            no_delete: false,
        });
        watch_id
    }

    fn cancel(&self, watch_id: i64) {
        self.handle.cancel(watch_id);
    }

    /// Wait for the next events of any watcher. A watcher whose start was compacted away ends the
    /// wait with etcd's compacted error (what clientv3's `wr.Err()` reports); a stopping member
    /// ends it with `Stopped`.
    async fn next(&mut self) -> Result<Vec<Seen>> {
        loop {
            let mut seen = Vec::new();
            for item in self.handle.pop(64) {
                match &item {
                    Outgoing::Events { watch_id, revision, .. } => seen.push(Seen {
                        watch_id: *watch_id,
                        revision: *revision,
                        events: item.events().map(|e| (**e).clone()).collect(),
                    }),
                    Outgoing::Compacted { .. } => return Err(Error::Compacted),
                    _ => {}
                }
            }
            if !seen.is_empty() {
                return Ok(seen);
            }
            if self.handle.needs_catch_up() {
                let _permit = self.handle.catch_up_permit().await;
                let handle = self.handle.clone();
                tokio::task::spawn_blocking(move || handle.catch_up())
                    .await
                    .map_err(|e| Error::Internal(format!("watch catch-up: {e}")))?;
                continue;
            }
            tokio::select! {
                _ = self.handle.changed() => {}
                _ = self.stopping.wait_for(|stopping| *stopping) => return Err(Error::Stopped),
            }
        }
    }
}

fn is_delete(e: &Event) -> bool {
    e.r#type == EventType::Delete as i32
}

/// How a wait for the older contenders ended.
enum Waited {
    /// None is left.
    Clear,
    /// The waiter's own key was deleted (its lease expired or was revoked, or someone deleted it)
    /// and `give_up` said to stop.
    OwnKeyGone,
}

/// etcd's `waitDeletes`: until no key under `prefix` has a create revision up to `max_create_rev`,
/// wait for the deletion of the youngest such key (watching it from the revision of the read that
/// found it). Keel also watches the waiter's own key from `own_from` on: etcd keeps waiting after
/// its own key is gone (a TODO in its mutex) and only notices afterwards; we ask `give_up`. The
/// reads and the watches of older keys are the caller's; the watch of its own key is Keel's own
/// and not checked.
async fn wait_deletes(
    node: &Arc<Node>,
    caller: &Caller,
    prefix: &[u8],
    max_create_rev: i64,
    own_key: &[u8],
    own_from: i64,
    give_up: &(dyn Fn() -> bool + Sync),
) -> Result<Waited> {
    let mut waiter = Waiter::new(node);
    let mut own = Some(waiter.watch(KeySpan::Key(own_key.to_vec()), own_from, true));
    loop {
        let (hdr, kvs) = get(node, caller, last_created_before(prefix, max_create_rev)).await?;
        let Some(older) = kvs.first() else { return Ok(Waited::Clear) };
        let target = waiter.watch_as(node, caller, KeySpan::Key(older.key.clone()), hdr.revision, true)?;
        'deleted: loop {
            for seen in waiter.next().await? {
                if !seen.events.iter().any(is_delete) {
                    continue;
                }
                if seen.watch_id == target {
                    break 'deleted;
                }
                if Some(seen.watch_id) == own {
                    if give_up() {
                        return Ok(Waited::OwnKeyGone);
                    }
                    waiter.cancel(seen.watch_id);
                    own = None;
                }
            }
        }
        waiter.cancel(target);
    }
}

/// Undo a contender's key if its call ends before it is done: etcd deletes the lock key when the
/// wait fails or the caller cancels (`Mutex.Lock` → `Unlock`), and resigns a campaign whose caller
/// cancelled (`Campaign` → `Resign`). A dropped call (client gone) runs the undo in a task, with
/// the caller's credentials kept for it.
///
/// The undo runs as the caller. etcd 3.5.16 runs it on its in-process client's own background
/// context, which carries no token: with auth enabled its delete is refused (`user name is empty`)
/// and the key stays until its lease ends, holding up every later contender. Keel does not
/// reproduce that; with auth disabled both clean up alike.
struct Undo {
    node: Arc<Node>,
    caller: Caller,
    txn: Option<TxnRequest>,
}

impl Undo {
    fn delete(node: &Arc<Node>, caller: &Caller, key: &[u8]) -> Undo {
        let txn = TxnRequest { success: vec![op_delete(key)], ..Default::default() };
        Undo { node: node.clone(), caller: caller.clone(), txn: Some(txn) }
    }

    fn resign(node: &Arc<Node>, caller: &Caller, key: &[u8], rev: i64) -> Undo {
        Undo { node: node.clone(), caller: caller.clone(), txn: Some(resign_txn(key, rev)) }
    }

    fn disarm(mut self) {
        self.txn = None;
    }

    /// Undo now (the call failed) and wait for it; its own failure is not the caller's error.
    async fn now(mut self) {
        if let Some(req) = self.txn.take() {
            if let Err(e) = txn(&self.node, &self.caller, req).await {
                tracing::debug!(error = %e, "lock/election cleanup failed");
            }
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        // Outside a runtime (the process is ending) there is nobody left to clean up for.
        let (Some(req), Ok(runtime)) = (self.txn.take(), tokio::runtime::Handle::try_current()) else { return };
        {
            let (node, caller) = (self.node.clone(), std::mem::take(&mut self.caller));
            runtime.spawn(async move {
                if let Err(e) = txn(&node, &caller, req).await {
                    tracing::debug!(error = %e, "lock/election cleanup failed");
                }
            });
        }
    }
}

/// A contender's place in line under `name/`.
struct Place {
    lease: i64,
    prefix: Vec<u8>,
    key: Vec<u8>,
    /// The create revision that orders it.
    rev: i64,
    /// Its key as it was when this call found it already in line (same lease, earlier call).
    existing: Option<KeyValue>,
    /// The joining txn's response: its header, and any `reads` after the first response.
    resp: TxnResponse,
}

/// Join the line under `name/` as etcd's Mutex and Election do: one txn creates the contender's
/// key with `value` and the lease if absent (else reads it, keeping its place), then runs `reads`.
async fn join(
    node: &Node,
    caller: &Caller,
    name: &[u8],
    lease: i64,
    value: &[u8],
    reads: &[RangeRequest],
) -> Result<Place> {
    let lease = session_lease(node, caller, lease).await?;
    let prefix = contenders(name);
    let key = contender_key(&prefix, lease);
    let then = |first: RequestOp| std::iter::once(first).chain(reads.iter().cloned().map(op_range)).collect();
    let req = TxnRequest {
        compare: vec![create_revision_is(&key, 0)],
        success: then(op_put(&key, value, lease)),
        failure: then(op_range(get_key(&key))),
    };
    let resp = txn(node, caller, req).await?;
    let (rev, existing) = if resp.succeeded {
        (resp.header.unwrap_or_default().revision, None)
    } else {
        let mine = range_kvs(&resp, 0).first().cloned();
        let mine = mine.ok_or_else(|| Error::Internal("contender key vanished in its txn".into()))?;
        (mine.create_revision, Some(mine))
    };
    Ok(Place { lease, prefix, key, rev, existing, resp })
}

// ---- Lock ----------------------------------------------------------------------------------------

/// etcd's `Mutex.Lock` on a session with `lease`: returns the header and the lock key once this
/// contender is the oldest under `name/`.
pub async fn lock(node: &Arc<Node>, caller: &Caller, name: &[u8], lease: i64) -> Result<(ResponseHeader, Vec<u8>)> {
    // The current holder is read in the joining txn, so the uncontended case takes one round.
    let holder = first_created(&contenders(name));
    let Place { prefix, key, rev: my_rev, resp, .. } = join(node, caller, name, lease, b"", &[holder]).await?;
    match range_kvs(&resp, 1).first() {
        Some(owner) if owner.create_revision != my_rev => {}
        _ => return Ok((resp.header.unwrap_or_default(), key)),
    }
    let undo = Undo::delete(node, caller, &key);
    // A lock whose key is gone can never be taken: stop waiting at once (etcd waits on and fails
    // later with the same error).
    let waited = match wait_deletes(node, caller, &prefix, my_rev - 1, &key, my_rev + 1, &|| true).await {
        Ok(w) => w,
        // A stopping etcd's client is closed: its cleanup fails, so the key stays (with its lease).
        Err(Error::Stopped) => {
            undo.disarm();
            return Err(Error::Stopped);
        }
        Err(e) => {
            undo.now().await;
            return Err(e);
        }
    };
    if let Waited::OwnKeyGone = waited {
        undo.disarm();
        return Err(Error::MutexSessionExpired);
    }
    // etcd re-reads its key: the session may have expired while it waited.
    let (hdr, kvs) = match get(node, caller, get_key(&key)).await {
        Ok(found) => found,
        Err(e) => {
            undo.now().await;
            return Err(e);
        }
    };
    undo.disarm();
    if kvs.is_empty() {
        return Err(Error::MutexSessionExpired);
    }
    Ok((hdr, key))
}

// ---- Election ------------------------------------------------------------------------------------

fn resign_txn(key: &[u8], rev: i64) -> TxnRequest {
    TxnRequest { compare: vec![create_revision_is(key, rev)], success: vec![op_delete(key)], failure: Vec::new() }
}

/// etcd's `Election.Proclaim` on a resumed election: set the value if `key` still has create
/// revision `rev`, else `election: not leader`.
async fn proclaim_at(
    node: &Node,
    caller: &Caller,
    key: &[u8],
    rev: i64,
    lease: i64,
    value: &[u8],
) -> Result<ResponseHeader> {
    let resp = txn(
        node,
        caller,
        TxnRequest {
            compare: vec![create_revision_is(key, rev)],
            success: vec![op_put(key, value, lease)],
            failure: Vec::new(),
        },
    )
    .await?;
    if !resp.succeeded {
        return Err(Error::ElectionNotLeader);
    }
    Ok(resp.header.unwrap_or_default())
}

/// etcd's `Election.Campaign`: become the oldest contender under `name/` with `value`.
pub async fn campaign(
    node: &Arc<Node>,
    caller: &Caller,
    name: &[u8],
    lease: i64,
    value: &[u8],
) -> Result<(ResponseHeader, LeaderKey)> {
    let Place { lease, prefix, key, rev, existing, resp } = join(node, caller, name, lease, value, &[]).await?;
    // etcd quirk: the response header is this first txn's, even when the campaign then waited
    // or proclaimed a new value.
    let hdr = resp.header.unwrap_or_default();
    // Campaigning again with the same lease keeps the place in line and updates the value.
    if existing.is_some_and(|kv| kv.value != value) {
        if let Err(e) = proclaim_at(node, caller, &key, rev, lease, value).await {
            let _ = txn(node, caller, resign_txn(&key, rev)).await;
            return Err(e);
        }
    }
    let undo = Undo::resign(node, caller, &key, rev);
    // etcd never notices a campaigner's lease ending while it waits (it would report victory for a
    // key that is gone); Keel stops with the error a campaign on a lost lease gets. A key deleted
    // while its lease lives (someone else's Delete) keeps waiting, as in etcd.
    let lease_gone = || !node.applier.lessor().contains(lease);
    match wait_deletes(node, caller, &prefix, rev - 1, &key, rev + 1, &lease_gone).await {
        Ok(Waited::Clear) => undo.disarm(),
        Ok(Waited::OwnKeyGone) => {
            undo.disarm();
            return Err(Error::LeaseNotFound);
        }
        // etcd resigns only when its caller cancelled (a dropped call here); other errors just end.
        Err(e) => {
            undo.disarm();
            return Err(e);
        }
    }
    let leader = LeaderKey { name: name.to_vec(), key, rev, lease };
    Ok((hdr, leader))
}

/// etcd's `Election.Proclaim` for the leader key a client holds.
pub async fn proclaim(node: &Node, caller: &Caller, leader: Option<LeaderKey>, value: &[u8]) -> Result<ResponseHeader> {
    let leader = leader.ok_or(Error::MissingLeaderKey)?;
    // ResumeElection runs on a session too: lease 0 grants one, and the put carries it.
    let lease = session_lease(node, caller, leader.lease).await?;
    proclaim_at(node, caller, &leader.key, leader.rev, lease, value).await
}

/// etcd's `Election.Resign`: delete the leader key if it is still the one created at `rev`; the
/// answer is the same whether or not it was.
pub async fn resign(node: &Node, caller: &Caller, leader: Option<LeaderKey>) -> Result<ResponseHeader> {
    let leader = leader.ok_or(Error::MissingLeaderKey)?;
    session_lease(node, caller, leader.lease).await?;
    let resp = txn(node, caller, resign_txn(&leader.key, leader.rev)).await?;
    Ok(resp.header.unwrap_or_default())
}

/// etcd's `Election.Leader`: the oldest contender under `name/`.
pub async fn leader(node: &Arc<Node>, caller: &Caller, name: &[u8]) -> Result<LeaderResponse> {
    let (hdr, kvs) = get(node, caller, first_created(&contenders(name))).await?;
    let kv = kvs.into_iter().next().ok_or(Error::ElectionNoLeader)?;
    Ok(LeaderResponse { header: Some(hdr), kv: Some(kv) })
}

/// etcd's `Election.Observe` as the election server streams it: the current leader (or, with
/// none, the first contender to appear), then every new value it proclaims, and when its key is
/// deleted the next leader, and so on. The stream ends without error if a read or watch fails
/// (a caller without READ on the prefix included), as etcd's closes when the recipe's channel does.
pub fn observe(node: Arc<Node>, caller: Caller, name: Vec<u8>) -> BoxStream<LeaderResponse> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let sending = tx.clone();
        let prefix = contenders(&name);
        tokio::select! {
            _ = observe_into(&node, &caller, &prefix, &sending) => {}
            _ = tx.closed() => {}
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

type ObserveTx = mpsc::Sender<std::result::Result<LeaderResponse, tonic::Status>>;

async fn observe_into(node: &Arc<Node>, caller: &Caller, prefix: &[u8], tx: &ObserveTx) -> Option<()> {
    loop {
        let (mut hdr, kvs) = get(node, caller, first_created(prefix)).await.ok()?;
        let mut waiter = Waiter::new(node);
        let kv = match kvs.into_iter().next() {
            Some(kv) => kv,
            None => {
                // No leader: wait for the first put under the prefix, watched from the read's own
                // revision. The header reports that put's revision (etcd's note: a response may
                // span several revisions).
                let span = KeySpan::Range(prefix.to_vec(), prefix_end(prefix));
                waiter.watch_as(node, caller, span, hdr.revision, false).ok()?;
                let first = 'first: loop {
                    for seen in waiter.next().await.ok()? {
                        if let Some(put) = seen.events.into_iter().find(|e| !is_delete(e)) {
                            break 'first put.kv?;
                        }
                    }
                };
                hdr.revision = first.mod_revision;
                first
            }
        };
        tx.send(Ok(LeaderResponse { header: Some(hdr), kv: Some(kv.clone()) })).await.ok()?;
        // Follow the leader's key: each put is a new value, a delete ends its reign.
        let mut waiter = Waiter::new(node);
        waiter.watch_as(node, caller, KeySpan::Key(kv.key.clone()), hdr.revision + 1, false).ok()?;
        'reign: loop {
            for seen in waiter.next().await.ok()? {
                for event in seen.events {
                    if is_delete(&event) {
                        break 'reign;
                    }
                    let h = header::header(node, seen.revision);
                    tx.send(Ok(LeaderResponse { header: Some(h), kv: event.kv })).await.ok()?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_gos_hex_of_the_lease() {
        assert_eq!(contender_key(b"mylock/", 0x390da20a82d61e7d), b"mylock/390da20a82d61e7d");
        assert_eq!(contender_key(b"e/", 10), b"e/a");
        // Go's %x of a negative int64 prints a sign, not two's complement.
        assert_eq!(contender_key(b"e/", -255), b"e/-ff");
        assert_eq!(contenders(b""), b"/");
    }

    #[test]
    fn prefix_end_is_clientv3s() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
