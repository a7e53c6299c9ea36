//! Peer TLS, Keel against real etcd 3.5.16: three members with `https://` peer URLs and
//! `--peer-client-cert-auth` elect a leader and replicate a put to every member; the peer port
//! speaks TLS and refuses a member without a certificate; a member whose peer certificate comes
//! from another CA cannot join while the two good members keep serving; an `https://` peer URL
//! without a certificate fails the start with etcd's text. Certificates from `scripts/gen-certs.sh`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use compat_tests::cluster::{Cluster, ClusterSpec};
use compat_tests::server::{gen_certs, run_to_exit, ServerKind};
use keel::proto::etcdserverpb::{PutRequest, RangeRequest};

const KINDS: [ServerKind; 2] = [ServerKind::Etcd, ServerKind::Keel];

/// The peer TLS flags of a member whose certificates live in `certs` (the same flag set for etcd
/// and Keel: that is what this test proves).
fn peer_flags(certs: &Path) -> Vec<String> {
    let file = |flag: &str, name: &str| format!("--{flag}={}", certs.join(name).display());
    vec![
        file("peer-cert-file", "peer.crt"),
        file("peer-key-file", "peer.key"),
        file("peer-trusted-ca-file", "ca.crt"),
        "--peer-client-cert-auth".to_string(),
    ]
}

fn tls_cluster(kind: ServerKind, certs: &Path) -> ClusterSpec {
    let flags = peer_flags(certs);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    ClusterSpec::local(kind, 3).expect("ports").with_https_peers().with_args(&flags)
}

/// Put `key` through member `via`.
async fn put(cluster: &Cluster, via: usize, key: &str) {
    let mut kv = cluster.kv(via).await.expect("client");
    let put = PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() };
    kv.put(put).await.unwrap_or_else(|e| panic!("{}: put via m{via}: {e}", cluster.spec.kind));
}

/// Wait until member `i` holds `key` in its own store (a serializable read answers locally, so
/// this proves replication to that member).
async fn wait_replicated(cluster: &Cluster, i: usize, key: &str) {
    let kind = cluster.spec.kind;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut kv = cluster.kv(i).await.expect("client");
        let read = RangeRequest { key: key.into(), serializable: true, ..Default::default() };
        let found = kv.range(read).await.map(|r| r.into_inner().kvs.len()).unwrap_or(0);
        if found == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "{kind}: m{i} never received {key}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a TLS 1.2 handshake with the peer port completes (TLS 1.2, so that a refused client
/// certificate fails the handshake itself rather than the first read).
fn handshake(peer_url: &str, args: &[String]) -> bool {
    let addr = peer_url.trim_start_matches("https://");
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "localhost", "-tls1_2"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    out.status.success() && stdout.contains("Cipher is ") && !stdout.contains("Cipher is (NONE)")
}

/// The index of the leader members 0 and 1 agree on (member 2 is cut off, so `Cluster::leader`,
/// which asks every running member, would not answer).
async fn leader_of_two(cluster: &Cluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ids = Vec::new();
        for i in 0..2 {
            if let Ok(status) = cluster.status(i).await {
                ids.push((status.leader, status.header.map(|h| h.member_id).unwrap_or_default()));
            }
        }
        if let [(l0, id0), (l1, id1)] = ids[..] {
            if l0 != 0 && l0 == l1 {
                if let Some(i) = [id0, id1].iter().position(|id| *id == l0) {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "{}: members 0 and 1 agree on no leader between them", cluster.spec.kind);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_members_replicate_over_mutual_tls_like_etcd() {
    let certs = gen_certs();
    let dir = certs.path();
    for kind in KINDS {
        let cluster = Cluster::start(tls_cluster(kind, dir)).await.unwrap_or_else(|e| panic!("{e}"));
        let leader = cluster.wait_leader(Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{kind}: {e}"));
        // Through a follower too, so that forwarding to the leader crosses TLS as well.
        put(&cluster, leader, "peer-tls-a").await;
        put(&cluster, (leader + 1) % 3, "peer-tls-b").await;
        for i in 0..3 {
            wait_replicated(&cluster, i, "peer-tls-a").await;
            wait_replicated(&cluster, i, "peer-tls-b").await;
        }
        // The peer port serves TLS with the peer certificate and wants the member's certificate.
        let url = &cluster.members[0].spec.listen_peer_url;
        let ca = format!("-CAfile={}", dir.join("ca.crt").display());
        let with_cert = [
            ca.clone(),
            format!("-cert={}", dir.join("peer.crt").display()),
            format!("-key={}", dir.join("peer.key").display()),
        ];
        assert!(handshake(url, &with_cert), "{kind}: the peer certificate was refused on the peer port");
        assert!(!handshake(url, &[ca]), "{kind}: the peer port accepted a client without a certificate");
    }
}

#[tokio::test]
async fn member_with_a_foreign_ca_cannot_join_like_etcd() {
    let certs = gen_certs();
    let foreign = gen_certs();
    for kind in KINDS {
        let mut spec = tls_cluster(kind, certs.path());
        // m2's certificate and trust come from another CA: the others refuse its client
        // certificate and it refuses their server certificates.
        spec.members[2].extra_args = peer_flags(foreign.path());
        let mut cluster = Cluster::spawn(spec).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..2 {
            cluster.wait_ready(i, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let leader = leader_of_two(&cluster).await;
        put(&cluster, leader, "peer-tls-foreign").await;
        for i in 0..2 {
            wait_replicated(&cluster, i, "peer-tls-foreign").await;
        }
        // m2 never hears from the cluster: no leader, so no linearizable read, and no data.
        let joined = cluster.wait_ready(2, Duration::from_secs(3)).await;
        assert!(joined.is_err(), "{kind}: the member with a foreign certificate joined");
        let mut kv = cluster.kv(2).await.expect("client");
        let read = RangeRequest { key: b"peer-tls-foreign".to_vec(), serializable: true, ..Default::default() };
        let held = kv.range(read).await.map(|r| r.into_inner().kvs.len()).unwrap_or(0);
        assert_eq!(held, 0, "{kind}: the member with a foreign certificate received data");
        // Both log the refused handshakes with the same words.
        let logs: String =
            (0..2).map(|i| std::fs::read_to_string(cluster.members[i].log_path()).unwrap_or_default()).collect();
        assert!(logs.contains("rejected connection on peer endpoint"), "{kind}: no refused peer handshake logged");
    }
}

/// An `https://` peer URL needs `--peer-cert-file` / `--peer-key-file`: etcd's start-up error.
#[test]
fn https_peer_url_without_certificate_fails_like_etcd() {
    for kind in KINDS {
        let (ok, log) = run_to_exit(kind, "http", "https", &[]);
        assert!(!ok, "{kind} started without a peer certificate");
        assert!(log.contains("KeyFile and CertFile are not presented"), "{kind}: {log}");
        assert!(log.contains("cannot listen on TLS for 127.0.0.1:"), "{kind}: {log}");
    }
}
