//! WATCH HUB: every watcher of every watch stream, and how committed changes reach them — etcd
//! 3.5.16's `watchableStore` (synced and unsynced watcher groups, victims, catch-up from history,
//! compaction cancels) together with the per-stream part of its `watchStream` (watch ids, the
//! bounded response channel, progress notifications).
//!
//! * `apply` calls [`WatchHub::publish`] once per committed revision. Watchers that are *synced*
//!   (have seen everything up to the last published revision) get that revision's events pushed
//!   into their stream's bounded outbox at once. Publishing never waits: when an outbox is full,
//!   the watcher falls back to *unsynced* at that revision (etcd parks it as a victim and then
//!   moves it to unsynced; both end in a catch-up from history, so we skip the middle step).
//! * A watcher created at an old revision, or one that fell behind, is *unsynced*: its stream's
//!   pump (`api/watch.rs`) calls [`StreamHandle::catch_up`] whenever the outbox has room, which
//!   reads the missed revisions from mvcc history through [`History`], sends up to 1000 of the
//!   watcher's revisions in one response (header = the newest published revision, as etcd's
//!   `syncWatchers`), and turns the watcher synced again once nothing is left — all under the hub
//!   lock that `publish` takes too, so no revision is ever missed or sent twice.
//! * A watcher whose next revision was compacted gets etcd's compacted response and leaves the
//!   hub; its id stays taken on the stream until the client cancels it, as in etcd.
//!
//! Memory stays bounded: an outbox holds at most [`OUTBOX_CAPACITY`] event responses, or
//! [`OUTBOX_PER_WATCHER`] per watcher of the stream if that is more (so one revision going to
//! every watcher of a busy stream fits a few times over), and about [`OUTBOX_MAX_BYTES`];
//! whatever does not fit is re-read from history later.
//!
//! The hub knows nothing of mvcc or gRPC: `apply` provides history through the [`History`] trait,
//! and `api/watch.rs` turns [`Outgoing`] items into `WatchResponse`s.

mod index;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::{Notify, Semaphore, SemaphorePermit};

use crate::error::{Error, Result};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

pub use index::KeySpan;
use index::WatcherIndex;

/// Event responses an outbox holds before its watchers fall behind (etcd's per-stream `chanBufLen`).
pub const OUTBOX_CAPACITY: usize = 128;
/// ...or this many per watcher of the stream, when that is more. etcd's fixed 128 makes a stream
/// with 100 watchers of one key fall behind whenever it is a revision and a half late, which is
/// much of why etcd's watch latency grows under load; items are small (events are shared).
pub const OUTBOX_PER_WATCHER: usize = 8;
/// Bytes of events an outbox holds before its watchers fall behind (one response always fits).
pub const OUTBOX_MAX_BYTES: usize = 16 << 20;
/// Revisions one catch-up response carries at most (etcd's `watchBatchMaxRevs`).
pub const MAX_BATCH_REVS: usize = 1000;
/// Watchers one catch-up pass serves (etcd's `maxWatchersPerSync`).
const MAX_WATCHERS_PER_PASS: usize = 512;
/// One history read: at most this many revisions or bytes of rows.
const READ_REVS: usize = 1000;
const READ_BYTES: usize = 4 << 20;
/// A catch-up pass stops reading once it holds this many bytes of matching events, or has read
/// this many bytes of history (a watcher of a rarely changed key far behind must not hold a
/// history reader for long); the next pass goes on from there.
const PASS_MAX_BYTES: usize = 16 << 20;
const PASS_MAX_SCANNED: usize = 64 << 20;
/// History reads running at once, over all streams.
const CONCURRENT_CATCH_UPS: usize = 2;

/// Where watchers catch up from: mvcc history, provided by `apply` (the hub may not use mvcc).
pub trait History: Send + Sync + 'static {
    /// etcd's `compactMainRev`: the last compaction revision, -1 before the first one.
    fn compacted(&self) -> i64;
    /// Events of revisions `from..=to` in order, cut short at a revision boundary after about
    /// `max_revs` revisions or `max_bytes`; `Err(Compacted)` when `from` is no longer readable.
    fn read(&self, from: i64, to: i64, max_revs: usize, max_bytes: usize) -> Result<Chunk>;
    /// The previous key-value of each event (None for creations, missing or compacted ones).
    fn prev_kvs(&self, events: &[Event]) -> Result<Vec<Option<KeyValue>>>;
}

/// A piece of history: events in revision order, complete up to and including revision `last`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    pub events: Vec<Event>,
    pub last: i64,
}

/// A create request, after the edge applied etcd's key conventions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    /// 0 asks the stream to pick the next free id.
    pub watch_id: i64,
    pub span: KeySpan,
    /// 0 = after the current revision.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

/// Why a create request got a created-and-canceled answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// `mvcc: watcher range is empty`
    RangeEmpty,
    /// `mvcc: duplicate watch ID provided on the WatchStream`
    DuplicateId,
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Error {
        match r {
            Rejection::RangeEmpty => Error::WatcherRangeEmpty,
            Rejection::DuplicateId => Error::DuplicateWatchId,
        }
    }
}

/// One response a stream owes its client, in the order it must be sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    /// `{watch_id, created}` with header revision `revision`.
    Created { watch_id: i64, revision: i64 },
    /// `{watch_id: -1, created, canceled, cancel_reason}`.
    Rejected { revision: i64, reason: Rejection },
    /// The answer to a cancel request.
    Canceled { watch_id: i64, revision: i64 },
    /// etcd's compacted cancel: `{watch_id, canceled, compact_revision}`, header revision 0.
    Compacted { watch_id: i64, compact_revision: i64 },
    /// Events of one revision (synced) or of up to 1000 revisions (catch-up): all of `batch`, or
    /// the listed ones. Each event carries its `prev_kv` when any watcher wanted it; `prev_kv`
    /// says whether this one does.
    Events {
        watch_id: i64,
        revision: i64,
        batch: Arc<EventBatch>,
        only: Option<Vec<u32>>,
        prev_kv: bool,
        fragment: bool,
    },
    /// A progress notification (`watch_id` -1 answers a progress request for the whole stream).
    Progress { watch_id: i64, revision: i64 },
}

impl Outgoing {
    /// Control answers (created, canceled) do not count against the outbox capacity: etcd sends
    /// them on a separate channel, and the client's own requests bound them.
    fn is_control(&self) -> bool {
        matches!(self, Outgoing::Created { .. } | Outgoing::Rejected { .. } | Outgoing::Canceled { .. })
    }

    fn weight(&self) -> usize {
        match self {
            Outgoing::Events { prev_kv, .. } => self.events().map(|e| event_bytes(e, *prev_kv)).sum(),
            _ => 0,
        }
    }

    /// How many events an `Events` item carries (0 for other items), without walking them.
    fn event_count(&self) -> usize {
        match self {
            Outgoing::Events { batch, only: None, .. } => batch.events.len(),
            Outgoing::Events { only: Some(idx), .. } => idx.len(),
            _ => 0,
        }
    }

    /// The events of an `Events` item, in order (none for other items).
    pub fn events(&self) -> impl Iterator<Item = &Arc<Event>> + '_ {
        let (batch, only) = match self {
            Outgoing::Events { batch, only, .. } => (Some(batch), only.as_deref()),
            _ => (None, None),
        };
        let all = batch.map(|b| b.events.as_slice()).unwrap_or_default();
        let picked: Box<dyn Iterator<Item = &Arc<Event>> + '_> = match only {
            None => Box::new(all.iter()),
            Some(idx) => Box::new(idx.iter().filter_map(move |&i| all.get(i as usize))),
        };
        picked
    }
}

/// Events shared by every watcher they go to (one revision's when published; one watcher's when
/// caught up), with a slot for each wire encoding of the whole batch — without and with
/// `prev_kv` — so the edge encodes them once however many watchers get them.
#[derive(Debug, Default)]
pub struct EventBatch {
    pub events: Vec<Arc<Event>>,
    pub encoded: [OnceLock<bytes::Bytes>; 2],
}

impl EventBatch {
    pub fn new(events: Vec<Arc<Event>>) -> Arc<EventBatch> {
        Arc::new(EventBatch { events, encoded: Default::default() })
    }
}

impl PartialEq for EventBatch {
    fn eq(&self, other: &Self) -> bool {
        self.events == other.events
    }
}

fn event_bytes(e: &Event, with_prev: bool) -> usize {
    let kv = e.kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len());
    let prev = if with_prev { e.prev_kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len()) } else { 0 };
    kv + prev + 32
}

/// What a catch-up pass did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// Nothing to do: no unsynced watcher on the stream.
    Idle,
    /// Unsynced watchers wait for room in the outbox.
    Blocked,
    /// Responses were queued or watchers changed state; call again.
    Progressed,
    /// Reading history failed (our storage); try again later.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Has every event up to the last published revision; `publish` feeds it.
    Synced,
    /// Needs revisions from `min_rev` on out of history.
    Unsynced,
    /// Told that `min_rev` was compacted; out of the hub, its id still taken on the stream.
    Compacted,
}

struct Watcher {
    stream: u64,
    id: i64,
    span: KeySpan,
    /// The next revision this watcher needs (etcd's `minRev`); events below it are not its own.
    min_rev: i64,
    state: State,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    no_put: bool,
    no_delete: bool,
    /// etcd's `sws.progress[id]`: no events were sent since the last progress tick.
    progress_due: bool,
}

impl Watcher {
    /// etcd's NOPUT / NODELETE filter functions.
    fn wants(&self, e: &Event) -> bool {
        let delete = e.r#type == EventType::Delete as i32;
        !(delete && self.no_delete || !delete && self.no_put)
    }

    fn heap_bytes(&self) -> usize {
        self.span.heap_bytes()
    }
}

struct Stream {
    /// Watch id → watcher, including compacted watchers the client has not canceled yet.
    ids: BTreeMap<i64, u64>,
    /// Next candidate for an automatic id (etcd's `nextID`: starts at 0, only moves forward).
    next_auto: i64,
    outbox: VecDeque<Outgoing>,
    /// Non-control items in the outbox, and their bytes.
    queued: usize,
    queued_bytes: usize,
    /// Watchers of this stream in the unsynced state.
    unsynced: usize,
    wake: Arc<Notify>,
}

impl Stream {
    fn capacity(&self) -> usize {
        OUTBOX_CAPACITY.max(OUTBOX_PER_WATCHER * self.ids.len())
    }

    fn has_room(&self) -> bool {
        self.queued < self.capacity() && self.queued_bytes < OUTBOX_MAX_BYTES
    }

    fn push(&mut self, item: Outgoing) {
        if !item.is_control() {
            self.queued += 1;
            self.queued_bytes += item.weight();
            // etcd's pending events: handed to the stream, not yet taken by its send loop.
            crate::metrics::WATCH_PENDING_EVENTS.add(item.event_count() as i64);
        }
        self.outbox.push_back(item);
    }
}

/// Hashing for the hub's own sequential ids: a multiply is enough (no untrusted keys), and
/// publish looks up a watcher and its stream for every event it delivers.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

struct HubState {
    /// The newest revision published by apply; the hub's notion of "current".
    published: i64,
    next_stream: u64,
    next_watcher: u64,
    streams: IdMap<Stream>,
    watchers: IdMap<Watcher>,
    /// Every watcher that is not compacted, by key; publish checks the state of each match.
    index: WatcherIndex,
}

/// The hub. One per member, shared by `apply` (publish) and the watch service (streams).
pub struct WatchHub {
    history: Box<dyn History>,
    state: Mutex<HubState>,
    /// Watchers that want `prev_kv`: publish looks previous values up only if there are any.
    prev_kv_watchers: AtomicUsize,
    catch_ups: Semaphore,
}

impl WatchHub {
    /// A hub whose store is at revision `current`.
    pub fn new(history: Box<dyn History>, current: i64) -> WatchHub {
        WatchHub {
            history,
            state: Mutex::new(HubState {
                published: current,
                next_stream: 1,
                next_watcher: 1,
                streams: IdMap::default(),
                watchers: IdMap::default(),
                index: WatcherIndex::default(),
            }),
            prev_kv_watchers: AtomicUsize::new(0),
            catch_ups: Semaphore::new(CONCURRENT_CATCH_UPS),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest published revision.
    pub fn revision(&self) -> i64 {
        self.lock().published
    }

    /// Register a new watch stream.
    pub fn open_stream(self: &Arc<Self>) -> StreamHandle {
        let wake = Arc::new(Notify::new());
        let mut st = self.lock();
        let id = st.next_stream;
        st.next_stream += 1;
        st.streams.insert(
            id,
            Stream {
                ids: BTreeMap::new(),
                next_auto: 0,
                outbox: VecDeque::new(),
                queued: 0,
                queued_bytes: 0,
                unsynced: 0,
                wake: wake.clone(),
            },
        );
        StreamHandle { hub: self.clone(), id, wake }
    }

    /// Hand the events of one committed revision to the watchers (etcd's `notify`, called when
    /// the write transaction ends). Never blocks on a watcher.
    pub fn publish(&self, revision: i64, mut events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        // Looked up once per event for every watcher, before taking the hub lock. A prev_kv
        // watcher created meanwhile, or a failed lookup, sends the watcher the long way round:
        // it falls behind and catch-up reads prev_kv from history.
        let mut prev_filled = false;
        if self.prev_kv_watchers.load(Ordering::Acquire) > 0 {
            match self.history.prev_kvs(&events) {
                Ok(prev) => {
                    events.iter_mut().zip(prev).for_each(|(e, p)| e.prev_kv = p);
                    prev_filled = true;
                }
                Err(e) => tracing::warn!(revision, error = %e, "watch: cannot read prev_kv"),
            }
        }
        let batch = EventBatch::new(events.into_iter().map(Arc::new).collect());
        let events = &batch.events;
        let mut guard = self.lock();
        let st = &mut *guard;
        st.published = revision;
        // (watcher, event index) pairs, grouped by watcher in a deterministic order.
        let mut hits: Vec<(u64, u32)> = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            let key = ev.kv.as_ref().map(|kv| kv.key.as_slice()).unwrap_or_default();
            st.index.for_each_match(key, |w| hits.push((w, i as u32)));
        }
        if hits.is_empty() {
            return;
        }
        hits.sort_unstable();
        let mut woken: Vec<u64> = Vec::new();
        let mut at = 0;
        while at < hits.len() {
            let wk = hits[at].0;
            let mut end = at;
            while end < hits.len() && hits[end].0 == wk {
                end += 1;
            }
            let group = &hits[at..end];
            at = end;
            let Some(w) = st.watchers.get_mut(&wk) else { continue };
            if w.state != State::Synced || w.min_rev > revision {
                continue;
            }
            let wanted = group.iter().filter(|(_, i)| w.wants(&events[*i as usize])).count();
            // etcd: a revision whose events were all filtered out sends nothing.
            if wanted == 0 {
                continue;
            }
            // The common case, a watcher that wants the whole revision, shares it as it is
            // (no allocation per watcher).
            let only = (wanted != events.len())
                .then(|| group.iter().map(|(_, i)| *i).filter(|i| w.wants(&events[*i as usize])).collect::<Vec<u32>>());
            let Some(stream) = st.streams.get_mut(&w.stream) else { continue };
            if stream.has_room() && (prev_filled || !w.prev_kv) {
                stream.push(Outgoing::Events {
                    watch_id: w.id,
                    revision,
                    batch: batch.clone(),
                    only,
                    prev_kv: w.prev_kv,
                    fragment: w.fragment,
                });
            } else {
                // The stream cannot keep up (or prev_kv is missing): this watcher will re-read
                // `revision` on from history.
                w.state = State::Unsynced;
                w.min_rev = revision;
                stream.unsynced += 1;
            }
            if woken.last() != Some(&w.stream) {
                woken.push(w.stream);
            }
        }
        woken.sort_unstable();
        woken.dedup();
        for s in woken {
            if let Some(stream) = st.streams.get(&s) {
                stream.wake.notify_one();
            }
        }
    }

    /// The store was replaced (a raft snapshot was installed) and is now at `current`: every
    /// synced watcher re-reads what it may have missed from the new store, as etcd's `Restore`
    /// moves all synced watchers to unsynced.
    pub fn reset(&self, current: i64) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let seen = st.published;
        st.published = current;
        for w in st.watchers.values_mut() {
            if w.state == State::Synced {
                w.state = State::Unsynced;
                w.min_rev = w.min_rev.max(seen + 1);
                if let Some(stream) = st.streams.get_mut(&w.stream) {
                    stream.unsynced += 1;
                }
            }
        }
        for stream in st.streams.values() {
            stream.wake.notify_one();
        }
    }

    /// Watchers and streams registered, and an estimate of the heap bytes they hold (for the
    /// memory-per-watcher measurements).
    pub fn stats(&self) -> HubStats {
        let st = self.lock();
        let watcher_bytes: usize = st.watchers.values().map(|w| w.heap_bytes() + 160).sum();
        HubStats {
            streams: st.streams.len(),
            watchers: st.watchers.len(),
            slow: st.streams.values().map(|s| s.unsynced).sum(),
            approx_bytes: watcher_bytes + st.index.heap_bytes() + st.streams.len() * 256,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    pub streams: usize,
    pub watchers: usize,
    /// Watchers behind the published revision, catching up from history (etcd's unsynced and
    /// victim watchers, `etcd_debugging_mvcc_slow_watcher_total`).
    pub slow: usize,
    pub approx_bytes: usize,
}

/// One watch stream's handle on the hub. Dropping it removes the stream and its watchers.
pub struct StreamHandle {
    hub: Arc<WatchHub>,
    id: u64,
    wake: Arc<Notify>,
}

/// A watcher's part of a catch-up pass, copied out so history is read without the hub lock.
struct Picked {
    wk: u64,
    min_rev: i64,
    span: KeySpan,
    prev_kv: bool,
    /// Indices into the pass's matched events, up to etcd's revision cap.
    hits: Vec<usize>,
    revs: usize,
    last_rev: i64,
    /// etcd's `moreRev`: the first revision left for the next pass.
    more: Option<i64>,
}

impl StreamHandle {
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    /// Wait until something changed for this stream (new responses, room to catch up).
    pub async fn changed(&self) {
        self.wake.notified().await;
    }

    /// Create a watcher (etcd's `watchStream.Watch` + `watchableStore.watch`); the answer is queued
    /// before any event of the new watcher can be.
    pub fn watch(&self, spec: WatchSpec) {
        let mut guard = self.hub.lock();
        let st = &mut *guard;
        let now = st.published;
        let Some(stream) = st.streams.get_mut(&self.id) else { return };
        if spec.span.is_empty() {
            stream.push(Outgoing::Rejected { revision: now, reason: Rejection::RangeEmpty });
            self.wake.notify_one();
            return;
        }
        let id = if spec.watch_id == 0 {
            while stream.ids.contains_key(&stream.next_auto) {
                stream.next_auto += 1;
            }
            stream.next_auto += 1;
            stream.next_auto - 1
        } else if stream.ids.contains_key(&spec.watch_id) {
            stream.push(Outgoing::Rejected { revision: now, reason: Rejection::DuplicateId });
            self.wake.notify_one();
            return;
        } else {
            spec.watch_id
        };
        // etcd: start 0 means "after now"; a start past now waits in the synced group (events
        // below it are skipped); anything else replays history.
        let start = if spec.start_revision == 0 { now + 1 } else { spec.start_revision };
        let state = if start > now { State::Synced } else { State::Unsynced };
        let wk = st.next_watcher;
        st.next_watcher += 1;
        stream.ids.insert(id, wk);
        stream.push(Outgoing::Created { watch_id: id, revision: now });
        if state == State::Unsynced {
            stream.unsynced += 1;
        }
        if spec.prev_kv {
            self.hub.prev_kv_watchers.fetch_add(1, Ordering::AcqRel);
        }
        st.index.insert(wk, &spec.span);
        st.watchers.insert(
            wk,
            Watcher {
                stream: self.id,
                id,
                span: spec.span,
                min_rev: start,
                state,
                prev_kv: spec.prev_kv,
                progress_notify: spec.progress_notify,
                fragment: spec.fragment,
                no_put: spec.no_put,
                no_delete: spec.no_delete,
                progress_due: true,
            },
        );
        self.wake.notify_one();
    }

    /// Cancel a watcher by id. An unknown id gets no answer (etcd ignores it).
    pub fn cancel(&self, watch_id: i64) {
        let mut guard = self.hub.lock();
        let st = &mut *guard;
        let now = st.published;
        let Some(stream) = st.streams.get_mut(&self.id) else { return };
        let Some(wk) = stream.ids.remove(&watch_id) else { return };
        if let Some(w) = st.watchers.remove(&wk) {
            forget(&self.hub, &mut st.index, stream, wk, &w);
        }
        stream.push(Outgoing::Canceled { watch_id, revision: now });
        self.wake.notify_one();
    }

    /// A `WatchProgressRequest` (etcd 3.5.16 `progressAll`): if every watcher of the stream is
    /// synced, one response with watch id -1 at the newest revision — every event up to it is
    /// already queued ahead of it. Otherwise, or with no watchers, nothing at all: etcd ≥ 3.5.13
    /// drops the request rather than report a revision some watcher has not reached (clients
    /// such as kube-apiserver ask again). A compacted watcher the client has not canceled yet
    /// counts as not synced, as in etcd.
    pub fn request_progress(&self) {
        let mut guard = self.hub.lock();
        let st = &mut *guard;
        let now = st.published;
        let Some(stream) = st.streams.get_mut(&self.id) else { return };
        let all_synced = !stream.ids.is_empty()
            && stream.ids.values().all(|wk| st.watchers.get(wk).is_some_and(|w| w.state == State::Synced));
        if all_synced {
            stream.push(Outgoing::Progress { watch_id: -1, revision: now });
            self.wake.notify_one();
        }
    }

    /// The periodic progress tick (etcd's `progressTicker` in `sendLoop`): each `progress_notify`
    /// watcher that is synced and was sent no events since the previous tick gets a progress
    /// notification; a full outbox drops it, as etcd's non-blocking send does.
    pub fn progress_tick(&self) {
        let mut guard = self.hub.lock();
        let st = &mut *guard;
        let now = st.published;
        let Some(stream) = st.streams.get_mut(&self.id) else { return };
        let mut due = Vec::new();
        for (&id, wk) in &stream.ids {
            let Some(w) = st.watchers.get_mut(wk) else { continue };
            if !w.progress_notify {
                continue;
            }
            if w.progress_due && w.state == State::Synced {
                due.push(id);
            }
            w.progress_due = true;
        }
        for id in due {
            if stream.queued < stream.capacity() {
                stream.push(Outgoing::Progress { watch_id: id, revision: now });
                self.wake.notify_one();
            }
        }
    }

    /// Take up to `max` responses to send, oldest first.
    pub fn pop(&self, max: usize) -> Vec<Outgoing> {
        let mut guard = self.hub.lock();
        let st = &mut *guard;
        let Some(stream) = st.streams.get_mut(&self.id) else { return Vec::new() };
        let n = max.min(stream.outbox.len());
        let items: Vec<Outgoing> = stream.outbox.drain(..n).collect();
        for item in &items {
            if item.is_control() {
                continue;
            }
            stream.queued = stream.queued.saturating_sub(1);
            stream.queued_bytes = stream.queued_bytes.saturating_sub(item.weight());
            // Taken by the send loop: etcd's `ReportEventReceived`.
            let events = item.event_count();
            crate::metrics::WATCH_PENDING_EVENTS.add(-(events as i64));
            crate::metrics::WATCH_EVENTS.add(events as u64);
            // etcd elides the next progress notification of a watcher that was just sent events.
            if let Outgoing::Events { watch_id, .. } = item {
                if let Some(w) = stream.ids.get(watch_id).and_then(|wk| st.watchers.get_mut(wk)) {
                    w.progress_due = false;
                }
            }
        }
        items
    }

    /// Responses waiting to be sent (the edge stops reading requests while there are many).
    pub fn backlog(&self) -> usize {
        self.hub.lock().streams.get(&self.id).map_or(0, |s| s.outbox.len())
    }

    /// True when unsynced watchers could make progress now.
    pub fn needs_catch_up(&self) -> bool {
        self.hub.lock().streams.get(&self.id).is_some_and(|s| s.unsynced > 0 && s.has_room())
    }

    /// A permit to run one catch-up pass; few run at once so history reads cannot starve apply.
    pub async fn catch_up_permit(&self) -> Option<SemaphorePermit<'_>> {
        self.hub.catch_ups.acquire().await.ok()
    }

    /// One catch-up pass for this stream's unsynced watchers (etcd's `syncWatchers`). Blocks on
    /// storage reads: run it off the async threads.
    pub fn catch_up(&self) -> CatchUp {
        let hub = &self.hub;
        let (mut picked, to) = {
            let mut guard = hub.lock();
            let st = &mut *guard;
            let now = st.published;
            let Some(stream) = st.streams.get_mut(&self.id) else { return CatchUp::Idle };
            if stream.unsynced == 0 {
                return CatchUp::Idle;
            }
            if !stream.has_room() {
                return CatchUp::Blocked;
            }
            let room = stream.capacity().saturating_sub(stream.queued).max(1);
            let compacted = hub.history.compacted();
            let mut candidates: Vec<(i64, u64)> = Vec::new();
            let mut gone = Vec::new();
            let mut synced_now = 0;
            for (&id, &wk) in &stream.ids {
                let Some(w) = st.watchers.get_mut(&wk) else { continue };
                if w.state != State::Unsynced {
                    continue;
                }
                if w.min_rev < compacted {
                    // etcd's `chooseAll`: the watcher's next revision is gone; tell the client
                    // and drop the watcher from the store (its id stays until canceled).
                    w.state = State::Compacted;
                    st.index.remove(wk, &w.span);
                    if w.prev_kv {
                        hub.prev_kv_watchers.fetch_sub(1, Ordering::AcqRel);
                    }
                    gone.push(id);
                    continue;
                }
                if w.min_rev < 1 {
                    // etcd quirk: a negative start revision that is not below the compaction
                    // revision (-1 before the first compaction) reads the empty key range from
                    // that revision's bytes on, so the watcher gets no history and joins the
                    // synced group after the current revision. (etcd also reads nothing for
                    // every other watcher synced in the same pass; we do not copy that.)
                    w.min_rev = now + 1;
                    w.state = State::Synced;
                    synced_now += 1;
                    continue;
                }
                candidates.push((w.min_rev, wk));
            }
            let cancelled = !gone.is_empty() || synced_now > 0;
            stream.unsynced -= synced_now;
            for id in gone {
                stream.unsynced -= 1;
                stream.push(Outgoing::Compacted { watch_id: id, compact_revision: compacted });
            }
            if cancelled {
                self.wake.notify_one();
            }
            candidates.sort_unstable();
            candidates.truncate(room.min(MAX_WATCHERS_PER_PASS));
            if candidates.is_empty() {
                return if cancelled { CatchUp::Progressed } else { CatchUp::Idle };
            }
            let picked: Vec<Picked> = candidates
                .iter()
                .filter_map(|(min_rev, wk)| {
                    st.watchers.get(wk).map(|w| Picked {
                        wk: *wk,
                        min_rev: *min_rev,
                        span: w.span.clone(),
                        prev_kv: w.prev_kv,
                        hits: Vec::new(),
                        revs: 0,
                        last_rev: 0,
                        more: None,
                    })
                })
                .collect();
            (picked, now)
        };

        // Read without the hub lock: publish goes on meanwhile; these watchers are unsynced, so
        // it leaves them alone, and whatever it adds past `to` is read by the next pass.
        let from = picked.iter().map(|p| p.min_rev).min().unwrap_or(to + 1);
        let mut matched: Vec<Event> = Vec::new();
        let mut matched_bytes = 0usize;
        let mut scanned = 0usize;
        let mut read_to = from - 1;
        let mut cursor = from;
        while cursor <= to {
            let chunk = match hub.history.read(cursor, to, READ_REVS, READ_BYTES) {
                Ok(chunk) => chunk,
                // Compacted meanwhile: the next pass tells the watchers.
                Err(Error::Compacted) => return CatchUp::Progressed,
                Err(e) => {
                    tracing::warn!(error = %e, "watch: cannot read history");
                    return CatchUp::Failed;
                }
            };
            for ev in chunk.events {
                scanned += event_bytes(&ev, false);
                let Some(kv) = ev.kv.as_ref() else { continue };
                let rev = kv.mod_revision;
                let mut used = false;
                for p in picked.iter_mut() {
                    if p.more.is_some() || rev < p.min_rev || !p.span.contains(&kv.key) {
                        continue;
                    }
                    // etcd's `eventBatch.add`: at most 1000 distinct revisions per response,
                    // counted before filters (which apply when the response is sent).
                    if p.last_rev != rev {
                        if p.revs == MAX_BATCH_REVS {
                            p.more = Some(rev);
                            continue;
                        }
                        p.revs += 1;
                        p.last_rev = rev;
                    }
                    p.hits.push(matched.len());
                    used = true;
                }
                if used {
                    matched_bytes += event_bytes(&ev, false);
                    matched.push(ev);
                }
            }
            if chunk.last < cursor {
                break;
            }
            read_to = chunk.last;
            cursor = chunk.last + 1;
            if picked.iter().all(|p| p.more.is_some()) || matched_bytes >= PASS_MAX_BYTES || scanned >= PASS_MAX_SCANNED
            {
                break;
            }
        }
        // prev_kv for the events some watcher of this pass wants it on.
        let mut needs_prev = vec![false; matched.len()];
        for p in picked.iter().filter(|p| p.prev_kv) {
            p.hits.iter().for_each(|&i| needs_prev[i] = true);
        }
        let wanted: Vec<usize> = (0..matched.len()).filter(|&i| needs_prev[i]).collect();
        if !wanted.is_empty() {
            let evs: Vec<Event> = wanted.iter().map(|&i| matched[i].clone()).collect();
            match hub.history.prev_kvs(&evs) {
                Ok(prev) => wanted.iter().zip(prev).for_each(|(&i, p)| matched[i].prev_kv = p),
                Err(e) => {
                    tracing::warn!(error = %e, "watch: cannot read prev_kv");
                    return CatchUp::Failed;
                }
            }
        }
        let matched: Vec<Arc<Event>> = matched.into_iter().map(Arc::new).collect();

        let mut guard = hub.lock();
        let st = &mut *guard;
        let published = st.published;
        let Some(stream) = st.streams.get_mut(&self.id) else { return CatchUp::Idle };
        // Watchers that catch up over the same events share one batch (and so one encoding).
        let mut shared: HashMap<Vec<usize>, Arc<EventBatch>> = HashMap::new();
        for p in picked.iter_mut() {
            let Some(w) = st.watchers.get_mut(&p.wk) else { continue };
            // Canceled, or changed by someone else while we read: leave it to the next pass.
            if w.state != State::Unsynced || w.min_rev != p.min_rev {
                continue;
            }
            let hits: Vec<usize> = p.hits.iter().copied().filter(|&i| w.wants(&matched[i])).collect();
            if !hits.is_empty() {
                let batch = shared
                    .entry(hits)
                    .or_insert_with_key(|hits| EventBatch::new(hits.iter().map(|&i| matched[i].clone()).collect()))
                    .clone();
                stream.push(Outgoing::Events {
                    watch_id: w.id,
                    revision: to,
                    batch,
                    only: None,
                    prev_kv: w.prev_kv,
                    fragment: w.fragment,
                });
            }
            w.min_rev = w.min_rev.max(p.more.unwrap_or(read_to + 1));
            // Under the lock publish takes too: nothing past `published` can have been missed.
            if w.min_rev > published {
                w.state = State::Synced;
                stream.unsynced -= 1;
            }
        }
        self.wake.notify_one();
        CatchUp::Progressed
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let mut guard = self.hub.lock();
        let st = &mut *guard;
        let Some(mut stream) = st.streams.remove(&self.id) else { return };
        let unsent: usize = stream.outbox.iter().filter(|i| !i.is_control()).map(Outgoing::event_count).sum();
        crate::metrics::WATCH_PENDING_EVENTS.add(-(unsent as i64));
        for wk in std::mem::take(&mut stream.ids).into_values() {
            if let Some(w) = st.watchers.remove(&wk) {
                forget(&self.hub, &mut st.index, &mut stream, wk, &w);
            }
        }
    }
}

/// Take a removed watcher out of the index and the counters.
fn forget(hub: &WatchHub, index: &mut WatcherIndex, stream: &mut Stream, wk: u64, w: &Watcher) {
    if w.state == State::Compacted {
        return;
    }
    index.remove(wk, &w.span);
    if w.state == State::Unsynced {
        stream.unsynced = stream.unsynced.saturating_sub(1);
    }
    if w.prev_kv {
        hub.prev_kv_watchers.fetch_sub(1, Ordering::AcqRel);
    }
}
