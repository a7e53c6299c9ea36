//! `keel-bench`: a load generator for any etcd v3 endpoint, shaped like etcd's own benchmark tool
//! (`--conns` gRPC connections shared by `--clients` concurrent clients). Prints throughput and
//! latency percentiles, plus one `RESULT` line that `scripts/bench.sh` collects. Given several
//! endpoints it spreads its connections over them round-robin, as etcd's benchmark tool does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use keel::proto::etcdserverpb::kv_client::KvClient;
use keel::proto::etcdserverpb::lease_client::LeaseClient;
use keel::proto::etcdserverpb::{
    compare, request_op, Compare, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use tonic::transport::{Channel, Endpoint};

// The load generator shares the machine with the server under test: the less CPU it spends per
// request, the less it caps what either server can show.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "keel-bench", about = "Load generator for etcd v3 endpoints")]
struct Args {
    /// Client URL(s) of the server(s) under test, comma-separated (`--endpoints` works too);
    /// connection i goes to endpoint i % n, like etcd's benchmark tool spreads its connections.
    #[arg(long, alias = "endpoints", value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    endpoint: Vec<String>,
    /// gRPC connections (HTTP/2) to open.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Concurrent clients sharing the connections.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Requests to send in all.
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand, Debug, Clone)]
enum Op {
    /// Put random values under keys drawn from a key space.
    Put {
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        /// Number of distinct keys written.
        #[arg(long, default_value_t = 10_000)]
        key_space_size: u64,
    },
    /// Range over the given key (and range end); `--consistency s` for serializable reads.
    Range {
        #[arg(long, default_value = "bench-range")]
        key: String,
        #[arg(long, default_value = "")]
        end: String,
        #[arg(long, default_value = "l")]
        consistency: String,
    },
    /// Txn: compare the key's version, then put (kube-apiserver's update shape).
    TxnPut {
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        #[arg(long, default_value_t = 10_000)]
        key_space_size: u64,
    },
    /// Keep-alives: grant `--leases` leases, then every client opens one LeaseKeepAlive stream and
    /// sends keep-alives on it (lease n % leases for the n-th request), one reply before the next.
    LeaseKeepalive {
        #[arg(long, default_value_t = 1000)]
        leases: u64,
        #[arg(long, default_value_t = 600)]
        ttl: i64,
        /// A new stream for every keep-alive (clientv3's KeepAliveOnce, which etcd's own
        /// `benchmark lease-keepalive` uses) instead of one long-lived stream per client.
        #[arg(long)]
        once: bool,
    },
    /// Watch latency (etcd's `benchmark watch-latency`): `--watchers` watchers of one key over
    /// `--streams` streams (spread over `--conns` connections), one writer putting that key at
    /// `--put-rate` puts/s, `--total` puts. Reports put-to-event latency and events/s delivered.
    WatchLatency(watch_latency::Opts),
}

fn key_for(n: u64, size: usize) -> Vec<u8> {
    let mut k = format!("{n:0size$}").into_bytes();
    k.truncate(size.max(1));
    k
}

async fn one(client: &mut KvClient<Channel>, op: &Op, n: u64, value: &[u8]) -> Result<(), tonic::Status> {
    match op {
        Op::Put { key_size, key_space_size, .. } => {
            let key = key_for(n % key_space_size.max(&1), *key_size);
            client.put(PutRequest { key, value: value.to_vec(), ..Default::default() }).await?;
        }
        Op::Range { key, end, consistency } => {
            let req = RangeRequest {
                key: key.clone().into_bytes(),
                range_end: end.clone().into_bytes(),
                serializable: consistency == "s",
                ..Default::default()
            };
            client.range(req).await?;
        }
        Op::TxnPut { key_size, key_space_size, .. } => {
            let key = key_for(n % key_space_size.max(&1), *key_size);
            let req = TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Greater as i32,
                    target: compare::CompareTarget::Version as i32,
                    key: key.clone(),
                    target_union: Some(compare::TargetUnion::Version(-1)),
                    range_end: vec![],
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key,
                        value: value.to_vec(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            client.txn(req).await?;
        }
        // Runs on streams of its own (see `lease_keepalive`).
        Op::LeaseKeepalive { .. } => {}
        Op::WatchLatency(_) => {}
    }
    Ok(())
}

/// The `lease-keepalive` run: returns every request's latency and the error count.
async fn lease_keepalive(
    args: &Args,
    channels: &[Channel],
    leases: u64,
    ttl: i64,
    once: bool,
) -> anyhow::Result<(Vec<Duration>, u64, f64)> {
    let mut grant = LeaseClient::new(channels[0].clone());
    let mut ids = Vec::new();
    for _ in 0..leases.max(1) {
        ids.push(grant.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await?.into_inner().id);
    }
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.clients.max(1) {
        let mut client = LeaseClient::new(channels[i % channels.len()].clone());
        let (ids, next, errors, total) = (ids.clone(), next.clone(), errors.clone(), args.total);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            if once {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return latencies;
                    }
                    let t = Instant::now();
                    let req = LeaseKeepAliveRequest { id: ids[(n % ids.len() as u64) as usize] };
                    let ok = match client.lease_keep_alive(tokio_stream::iter(vec![req])).await {
                        Ok(replies) => matches!(replies.into_inner().message().await, Ok(Some(r)) if r.ttl > 0),
                        Err(_) => false,
                    };
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies.push(t.elapsed());
                }
            }
            let (tx, rx) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(1);
            let mut n = next.fetch_add(1, Ordering::Relaxed);
            if n >= total {
                return latencies;
            }
            let id = |n: u64| ids[(n % ids.len() as u64) as usize];
            let mut t = Instant::now();
            // etcd sends a stream's headers with its first reply: queue that request first.
            if tx.send(LeaseKeepAliveRequest { id: id(n) }).await.is_err() {
                return latencies;
            }
            let Ok(replies) = client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await else {
                errors.fetch_add(1, Ordering::Relaxed);
                return latencies;
            };
            let mut replies = replies.into_inner();
            loop {
                match replies.message().await {
                    Ok(Some(r)) if r.ttl > 0 => {}
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.push(t.elapsed());
                n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                t = Instant::now();
                if tx.send(LeaseKeepAliveRequest { id: id(n) }).await.is_err() {
                    break;
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Leave the server as we found it.
    for id in ids.iter() {
        let _ = grant.lease_revoke(LeaseRevokeRequest { id: *id }).await;
    }
    Ok((all, errors.load(Ordering::Relaxed), elapsed))
}

/// Opens `conns` connections (at least one), connection i to `endpoints[i % endpoints.len()]`.
async fn connect_round_robin(endpoints: &[String], conns: usize) -> anyhow::Result<Vec<Channel>> {
    anyhow::ensure!(!endpoints.is_empty(), "no endpoint given");
    let mut channels = Vec::new();
    for i in 0..conns.max(1) {
        channels.push(Endpoint::from_shared(endpoints[i % endpoints.len()].clone())?.connect().await?);
    }
    Ok(channels)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    keel::runtime::build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Op::WatchLatency(opts) = &args.op {
        return watch_latency::run(&args.endpoint, args.conns, args.total, opts).await;
    }
    let channels = connect_round_robin(&args.endpoint, args.conns).await?;
    let value_size = match &args.op {
        Op::Put { val_size, .. } | Op::TxnPut { val_size, .. } => *val_size,
        Op::Range { .. } | Op::LeaseKeepalive { .. } | Op::WatchLatency(_) => 0,
    };
    let value: Arc<Vec<u8>> = Arc::new((0..value_size).map(|i| b'a' + (i % 26) as u8).collect());
    if let Op::Range { key, .. } = &args.op {
        // Make sure the range reads something.
        let mut c = KvClient::new(channels[0].clone());
        c.put(PutRequest { key: key.clone().into_bytes(), value: vec![b'v'; 256], ..Default::default() }).await?;
    }

    if let Op::LeaseKeepalive { leases, ttl, once } = &args.op {
        let (mut all, errors, elapsed) = lease_keepalive(&args, &channels, *leases, *ttl, *once).await?;
        all.sort_unstable();
        report(&args, if *once { "lease-keepalive-once" } else { "lease-keepalive" }, &all, errors, elapsed);
        return Ok(());
    }

    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.clients.max(1) {
        let mut client = KvClient::new(channels[i % channels.len()].clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let (next, errors, op, value, total) =
            (next.clone(), errors.clone(), args.op.clone(), value.clone(), args.total);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let t = Instant::now();
                if one(&mut client, &op, n, &value).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let name = match &args.op {
        Op::Put { .. } => "put",
        Op::Range { consistency, .. } if consistency == "s" => "range-serializable",
        Op::Range { .. } => "range",
        Op::TxnPut { .. } => "txn-put",
        Op::LeaseKeepalive { .. } => "lease-keepalive",
        Op::WatchLatency(_) => "watch-latency",
    };
    report(&args, name, &all, errors.load(Ordering::Relaxed), elapsed);
    Ok(())
}

fn report(args: &Args, name: &str, all: &[Duration], errors: u64, elapsed: f64) {
    let ops = all.len() as f64 / elapsed;
    println!(
        "{name}: {} requests, {} errors, {:.2}s, {:.0} ops/s; latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3}",
        all.len(),
        errors,
        elapsed,
        ops,
        percentile(all, 0.50),
        percentile(all, 0.90),
        percentile(all, 0.99),
        percentile(all, 0.999)
    );
    println!(
        "RESULT op={name} clients={} conns={} ops_per_sec={ops:.1} p50_ms={:.3} p99_ms={:.3} errors={}",
        args.clients,
        args.conns,
        percentile(all, 0.50),
        percentile(all, 0.99),
        errors
    );
}

mod watch_latency {
    //! `watch-latency`: the writer puts one key at a fixed rate; every watcher of that key should
    //! see each put. The latency of an event is from the moment its put returned to the writer
    //! (0 if the event came first), as etcd's benchmark measures it. Responses are decoded into a
    //! minimal message (event revisions only), so the client spends little CPU and the numbers
    //! are the server's.

    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use keel::proto::etcdserverpb::kv_client::KvClient;
    use keel::proto::etcdserverpb::watch_request::RequestUnion;
    use keel::proto::etcdserverpb::{PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};
    use tonic::transport::{Channel, Endpoint};

    #[derive(clap::Args, Debug, Clone)]
    pub struct Opts {
        /// Watchers in all, spread evenly over the streams.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Puts per second.
        #[arg(long, default_value_t = 1000)]
        put_rate: u64,
        #[arg(long, default_value_t = 32)]
        key_size: usize,
        #[arg(long, default_value_t = 32)]
        val_size: usize,
        /// Ask for prev_kv on every watcher.
        #[arg(long)]
        prev_kv: bool,
        /// Give up waiting for events this long after the last put.
        #[arg(long, default_value_t = 60)]
        drain_secs: u64,
    }

    /// Only what the benchmark needs of a WatchResponse; prost skips the other fields.
    #[derive(Clone, PartialEq, prost::Message)]
    struct LiteResponse {
        #[prost(bool, tag = "3")]
        created: bool,
        #[prost(message, repeated, tag = "11")]
        events: Vec<LiteEvent>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct LiteEvent {
        #[prost(message, optional, tag = "2")]
        kv: Option<LiteKv>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct LiteKv {
        #[prost(int64, tag = "3")]
        mod_revision: i64,
    }

    struct Shared {
        started: Instant,
        /// Put completion time (ns after `started`, 0 = not yet), by revision - `first_rev`.
        put_done: Vec<AtomicU64>,
        first_rev: AtomicU64,
        created: AtomicUsize,
        delivered: AtomicUsize,
        last_event_ns: AtomicU64,
    }

    fn ns_since(start: Instant) -> u64 {
        start.elapsed().as_nanos().max(1) as u64
    }

    /// Opens one stream with `watchers` watchers of `key`; event latencies (µs) go to `out`.
    async fn open_stream(
        channel: Channel,
        key: Vec<u8>,
        watchers: usize,
        prev_kv: bool,
        shared: Arc<Shared>,
        out: Arc<Mutex<Vec<u32>>>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let (tx, rx) = tokio::sync::mpsc::channel(watchers + 1);
        for _ in 0..watchers {
            let create = WatchCreateRequest { key: key.clone(), prev_kv, ..Default::default() };
            tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await?;
        }
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await?;
        let codec = tonic_prost::ProstCodec::<WatchRequest, LiteResponse>::default();
        let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
        let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(tokio::spawn(async move {
            let _keep_open = tx;
            let mut stream = match grpc.streaming(tonic::Request::new(requests), path, codec).await {
                Ok(resp) => resp.into_inner(),
                Err(e) => {
                    eprintln!("watch stream failed: {e}");
                    return;
                }
            };
            while let Ok(Some(resp)) = stream.message().await {
                if resp.created {
                    shared.created.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let now = ns_since(shared.started);
                let first = shared.first_rev.load(Ordering::SeqCst);
                let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                for ev in &resp.events {
                    let rev = ev.kv.as_ref().map_or(0, |kv| kv.mod_revision) as u64;
                    let done = rev
                        .checked_sub(first)
                        .and_then(|i| shared.put_done.get(i as usize))
                        .map_or(0, |d| d.load(Ordering::SeqCst));
                    // etcd's benchmark: an event seen before its put returned counts as 0.
                    let latency = if done == 0 || done > now { 0 } else { now - done };
                    out.push((latency / 1000).min(u32::MAX as u64) as u32);
                }
                drop(out);
                shared.delivered.fetch_add(resp.events.len(), Ordering::SeqCst);
                shared.last_event_ns.store(now, Ordering::SeqCst);
            }
        }))
    }

    fn pct_ms(sorted: &[u32], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
    }

    /// The watchers' connections are spread over `endpoints`; the writer uses the first one.
    pub async fn run(endpoints: &[String], conns: usize, total: u64, o: &Opts) -> anyhow::Result<()> {
        let key: Vec<u8> = (0..o.key_size.max(1)).map(|i| b'a' + (i % 26) as u8).collect();
        let value: Vec<u8> = vec![b'v'; o.val_size];
        let channels = super::connect_round_robin(endpoints, conns).await?;
        let endpoint = endpoints[0].as_str();
        let mut kv = KvClient::new(Endpoint::from_shared(endpoint.to_string())?.connect().await?);
        let shared = Arc::new(Shared {
            started: Instant::now(),
            put_done: (0..total).map(|_| AtomicU64::new(0)).collect(),
            first_rev: AtomicU64::new(u64::MAX),
            created: AtomicUsize::new(0),
            delivered: AtomicUsize::new(0),
            last_event_ns: AtomicU64::new(0),
        });
        let streams = o.streams.max(1);
        let mut readers = Vec::new();
        let mut outs = Vec::new();
        for s in 0..streams {
            let n = o.watchers / streams + usize::from(s < o.watchers % streams);
            let channel = channels[s % channels.len()].clone();
            let out = Arc::new(Mutex::new(Vec::new()));
            readers.push(open_stream(channel, key.clone(), n, o.prev_kv, shared.clone(), out.clone()).await?);
            outs.push(out);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while shared.created.load(Ordering::SeqCst) < o.watchers {
            anyhow::ensure!(Instant::now() < deadline, "watchers not created in 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The revision the first put will get.
        let current = kv
            .range(RangeRequest { key: key.clone(), ..Default::default() })
            .await?
            .into_inner()
            .header
            .map_or(0, |h| h.revision);
        let first_rev = current as u64 + 1;
        shared.first_rev.store(first_rev, Ordering::SeqCst);

        // The writer runs on a thread and runtime of its own, so the readers' decoding work
        // cannot delay its puts or their timing.
        let writer = {
            let (shared, endpoint, key, value, rate) =
                (shared.clone(), endpoint.to_string(), key.clone(), value.clone(), o.put_rate.max(1));
            std::thread::spawn(move || -> anyhow::Result<(Instant, Vec<Duration>, u64)> {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async move {
                    let mut kv = KvClient::new(Endpoint::from_shared(endpoint)?.connect().await?);
                    let interval = Duration::from_secs_f64(1.0 / rate as f64);
                    let puts_started = Instant::now();
                    let mut put_latencies = Vec::with_capacity(total as usize);
                    let mut errors = 0u64;
                    for i in 0..total {
                        // Token-bucket pacing: put i is due at start + i / rate; a writer that is
                        // late does not sleep, so a slow server shows up as a lower rate.
                        let due = puts_started + interval.mul_f64(i as f64);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            tokio::time::sleep(wait).await;
                        }
                        let t = Instant::now();
                        let put = PutRequest { key: key.clone(), value: value.clone(), ..Default::default() };
                        match kv.put(put).await {
                            Ok(resp) => {
                                let rev = resp.into_inner().header.map_or(0, |h| h.revision) as u64;
                                let done = ns_since(shared.started);
                                let slot = rev.checked_sub(first_rev).and_then(|i| shared.put_done.get(i as usize));
                                if let Some(slot) = slot {
                                    slot.store(done, Ordering::SeqCst);
                                }
                            }
                            Err(_) => errors += 1,
                        }
                        put_latencies.push(t.elapsed());
                    }
                    Ok((puts_started, put_latencies, errors))
                })
            })
        };
        let (puts_started, mut put_latencies, errors) =
            writer.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        let put_secs = puts_started.elapsed().as_secs_f64();
        let expected = o.watchers * total as usize;
        let drain_deadline = Instant::now() + Duration::from_secs(o.drain_secs);
        while shared.delivered.load(Ordering::SeqCst) < expected && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the readers flush what they hold, then stop them.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for r in &readers {
            r.abort();
        }
        let delivered = shared.delivered.load(Ordering::SeqCst);
        let first_put_ns = (puts_started - shared.started).as_nanos() as u64;
        let span = shared.last_event_ns.load(Ordering::SeqCst).saturating_sub(first_put_ns) as f64 / 1e9;
        let mut latencies: Vec<u32> = Vec::with_capacity(delivered);
        for out in outs {
            latencies.append(&mut out.lock().unwrap_or_else(|p| p.into_inner()));
        }
        latencies.sort_unstable();
        put_latencies.sort_unstable();
        let put_ms = |q: f64| {
            if put_latencies.is_empty() {
                0.0
            } else {
                put_latencies[((put_latencies.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
            }
        };
        let put_rate = total as f64 / put_secs;
        let events_per_sec = if span > 0.0 { delivered as f64 / span } else { 0.0 };
        println!(
            "watch-latency: {} watchers on {streams} streams ({} conns), {total} puts at {}/s requested: writer \
             {put_rate:.0} puts/s (put p50 {:.2} ms, p99 {:.2} ms, {errors} errors); {delivered} of {expected} \
             events delivered, {events_per_sec:.0} events/s; put-to-event latency ms p50 {:.2} p90 {:.2} p99 {:.2} \
             p99.9 {:.2} max {:.2}",
            o.watchers,
            channels.len(),
            o.put_rate,
            put_ms(0.5),
            put_ms(0.99),
            pct_ms(&latencies, 0.5),
            pct_ms(&latencies, 0.9),
            pct_ms(&latencies, 0.99),
            pct_ms(&latencies, 0.999),
            pct_ms(&latencies, 1.0),
        );
        println!(
            "RESULT op=watch-latency watchers={} streams={streams} put_rate={} achieved_put_rate={put_rate:.1} \
             events_per_sec={events_per_sec:.0} delivered={delivered} expected={expected} p50_ms={:.3} p99_ms={:.3}",
            o.watchers,
            o.put_rate,
            pct_ms(&latencies, 0.5),
            pct_ms(&latencies, 0.99),
        );
        Ok(())
    }
}
