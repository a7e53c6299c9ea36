//! `keel-bench`: a load generator for any etcd v3 endpoint, shaped like etcd's own benchmark tool
//! (`--conns` gRPC connections shared by `--clients` concurrent clients). Prints throughput and
//! latency percentiles, plus one `RESULT` line that `scripts/bench.sh` collects.

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

#[derive(Parser, Debug)]
#[command(name = "keel-bench", about = "Load generator for etcd v3 endpoints")]
struct Args {
    /// Client URL of the server under test.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoint: String,
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

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut channels = Vec::new();
    for _ in 0..args.conns.max(1) {
        channels.push(Endpoint::from_shared(args.endpoint.clone())?.connect().await?);
    }
    let value_size = match &args.op {
        Op::Put { val_size, .. } | Op::TxnPut { val_size, .. } => *val_size,
        Op::Range { .. } | Op::LeaseKeepalive { .. } => 0,
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
