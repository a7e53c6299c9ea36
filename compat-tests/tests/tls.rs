//! TLS and mutual TLS on the client port, Keel against real etcd 3.5.16: etcdctl and the
//! etcd-client crate over TLS, the refusals (plaintext client, foreign CA, missing client
//! certificate, TLS 1.1), a cipher-suite restriction, and certificate rotation without restart.
//! Certificates come from `scripts/gen-certs.sh`; handshakes are probed with `openssl s_client`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use compat_tests::etcdctl::{cmd, mask_output, run_cmd, Mask};
use compat_tests::server::{connect, gen_certs, probe_range, run_to_exit, Server, ServerKind, TlsClientFiles};

const KINDS: [ServerKind; 2] = [ServerKind::Etcd, ServerKind::Keel];

fn path_arg(flag: &str, p: &Path) -> String {
    format!("--{flag}={}", p.display())
}

/// The serving flags, with `--client-cert-auth` and the CA when `mutual`.
fn server_flags(certs: &Path, mutual: bool) -> Vec<String> {
    let mut flags =
        vec![path_arg("cert-file", &certs.join("server.crt")), path_arg("key-file", &certs.join("server.key"))];
    if mutual {
        flags.push(path_arg("trusted-ca-file", &certs.join("ca.crt")));
        flags.push("--client-cert-auth".to_string());
    }
    flags
}

fn client_files(certs: &Path, client: Option<&str>) -> TlsClientFiles {
    TlsClientFiles {
        ca: certs.join("ca.crt"),
        cert: client.map(|c| certs.join(format!("{c}.crt"))),
        key: client.map(|c| certs.join(format!("{c}.key"))),
    }
}

async fn start(kind: ServerKind, client: TlsClientFiles, flags: &[String]) -> Server {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start_tls(kind, client, &flags).await.unwrap_or_else(|e| panic!("starting {kind}: {e}"))
}

/// What `openssl s_client` saw: whether the handshake completed, the protocol and serial of the
/// served certificate, and stderr (alerts).
struct Handshake {
    ok: bool,
    serial: Option<String>,
    stderr: String,
}

fn s_client(addr: &str, args: &[&str]) -> Handshake {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "localhost", "-showcerts"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // A finished handshake prints the negotiated cipher; a failed one prints "(NONE)" or nothing.
    let ok = out.status.success() && stdout.contains("Cipher is ") && !stdout.contains("Cipher is (NONE)");
    let serial = first_cert_pem(&stdout).and_then(|pem| {
        let mut child = Command::new("openssl")
            .args(["x509", "-noout", "-serial"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        use std::io::Write;
        child.stdin.take()?.write_all(pem.as_bytes()).ok()?;
        let out = child.wait_with_output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    Handshake { ok, serial, stderr }
}

fn first_cert_pem(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find("-----END CERTIFICATE-----")? + start + "-----END CERTIFICATE-----".len();
    Some(text[start..end].to_string())
}

fn file_serial(cert: &Path) -> String {
    let out = Command::new("openssl").args(["x509", "-noout", "-serial", "-in"]).arg(cert).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One Range over gRPC with `files`: Ok when answered.
async fn grpc_range(server: &Server, files: &TlsClientFiles) -> Result<(), String> {
    let channel = compat_tests::server::connect_tls(&server.endpoint(), files).await.map_err(|e| e.to_string())?;
    let mut kv = keel::proto::etcdserverpb::kv_client::KvClient::new(channel);
    let req = keel::proto::etcdserverpb::RangeRequest { key: b"k".to_vec(), ..Default::default() };
    match tokio::time::timeout(Duration::from_secs(3), kv.range(req)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err("timed out".to_string()),
    }
}

/// Everything observable about one server with `--client-cert-auth`, as lines to compare.
async fn mutual_tls_transcript(kind: ServerKind, certs: &Path) -> Vec<String> {
    let good = client_files(certs, Some("client"));
    let server = start(kind, good.clone(), &server_flags(certs, true)).await;
    let mut lines = Vec::new();

    // etcdctl with --cacert --cert --key.
    let tls_args = good.etcdctl_args();
    let tls_args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    for line in ["put tls-key tls-value", "get tls-key", "get tls-key -w json", "endpoint status -w json"] {
        let mut c = cmd(line);
        c.args.splice(0..0, tls_args.iter().map(|a| a.to_string()));
        let mode = if line.starts_with("endpoint") || line.contains("json") { Mask::Shape } else { Mask::Standard };
        let out = mask_output(&run_cmd(&server, &c).await.expect("etcdctl"), mode);
        assert_eq!(out.exit_code, Some(0), "{kind}: etcdctl {line}: {}", out.stderr);
        lines.push(format!("etcdctl {line}: {}", out.stdout.trim()));
    }

    // The etcd-client crate over TLS.
    let options = etcd_client::ConnectOptions::new().with_tls(good.tonic_config().unwrap());
    let mut client =
        etcd_client::Client::connect([server.endpoint()], Some(options)).await.expect("etcd-client connects");
    client.put("crate-key", "crate-value", None).await.expect("etcd-client put");
    let got = client.get("crate-key", None).await.expect("etcd-client get");
    let values: Vec<String> = got.kvs().iter().map(|kv| kv.value_str().unwrap_or("?").to_string()).collect();
    lines.push(format!("etcd-client get: {values:?}"));

    // Refusals: a plaintext client, a client certificate from another CA, none at all.
    let addr = server.client_addr();
    let plain = match connect(&format!("http://{addr}")).await {
        Ok(_) => probe_range(&format!("http://{addr}")).await.map_err(|_| ()),
        Err(_) => Err(()),
    };
    lines.push(format!("plaintext gRPC answered: {}", plain.is_ok()));
    let foreign = TlsClientFiles {
        ca: certs.join("ca.crt"),
        cert: Some(certs.join("other-client.crt")),
        key: Some(certs.join("other-client.key")),
    };
    lines.push(format!("other CA's client answered: {}", grpc_range(&server, &foreign).await.is_ok()));
    lines.push(format!("no client cert answered: {}", grpc_range(&server, &client_files(certs, None)).await.is_ok()));
    lines.push(format!("good client cert answered: {}", grpc_range(&server, &good).await.is_ok()));

    // Protocol versions: TLS 1.1 refused with a protocol_version alert, TLS 1.2 accepted.
    let cert = certs.join("client.crt");
    let key = certs.join("client.key");
    let client_cert = ["-cert", cert.to_str().unwrap(), "-key", key.to_str().unwrap()];
    // SECLEVEL=0 so the local OpenSSL really offers TLS 1.1 instead of refusing on its own.
    let old = s_client(&addr, &[&["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"][..], &client_cert].concat());
    lines.push(format!("TLS 1.1 handshake: {}", old.ok));
    // Known difference: Go answers a TLS 1.1 hello with a protocol_version alert; rustls rejects
    // it earlier (no signature_algorithms extension) with handshake_failure. Either way the
    // client gets an alert and no session.
    let alert = match kind {
        ServerKind::Etcd => "alert protocol version",
        ServerKind::Keel => "alert handshake failure",
    };
    assert!(old.stderr.contains(alert), "{kind}: TLS 1.1 refusal without {alert:?}: {}", old.stderr);
    let tls12 = s_client(&addr, &[&["-tls1_2"][..], &client_cert].concat());
    lines.push(format!("TLS 1.2 handshake: {}", tls12.ok));
    lines
}

#[tokio::test]
async fn mutual_tls_matches_etcd() {
    let certs = gen_certs();
    let etcd = mutual_tls_transcript(ServerKind::Etcd, certs.path()).await;
    let keel = mutual_tls_transcript(ServerKind::Keel, certs.path()).await;
    assert_eq!(keel, etcd);
    // The comparison alone would pass if both servers were broken alike.
    let expect = [
        "etcdctl put tls-key tls-value: OK",
        "etcdctl get tls-key: tls-key\ntls-value",
        "etcd-client get: [\"crate-value\"]",
        "plaintext gRPC answered: false",
        "other CA's client answered: false",
        "no client cert answered: false",
        "good client cert answered: true",
        "TLS 1.1 handshake: false",
        "TLS 1.2 handshake: true",
    ];
    for line in expect {
        assert!(keel.iter().any(|l| l == line), "missing {line:?} in {keel:#?}");
    }
}

/// etcd quirk: `--trusted-ca-file` without `--client-cert-auth` still requires client certificates.
#[tokio::test]
async fn trusted_ca_alone_requires_client_certs_like_etcd() {
    let certs = gen_certs();
    for kind in KINDS {
        let mut flags = server_flags(certs.path(), false);
        flags.push(path_arg("trusted-ca-file", &certs.path().join("ca.crt")));
        let good = client_files(certs.path(), Some("client"));
        let server = start(kind, good.clone(), &flags).await;
        assert!(grpc_range(&server, &client_files(certs.path(), None)).await.is_err(), "{kind}: no cert accepted");
        grpc_range(&server, &good).await.unwrap_or_else(|e| panic!("{kind}: client cert refused: {e}"));
    }
}

#[tokio::test]
async fn cipher_suite_restriction_matches_etcd() {
    let certs = gen_certs();
    for kind in KINDS {
        let mut flags = server_flags(certs.path(), false);
        // The certificates are ECDSA; one ECDSA suite allowed, TLS 1.2 only.
        flags.push("--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_string());
        flags.push("--tls-max-version=TLS1.2".to_string());
        let server = start(kind, client_files(certs.path(), None), &flags).await;
        let addr = server.client_addr();
        let allowed = s_client(&addr, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]);
        let other = s_client(&addr, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]);
        let tls13 = s_client(&addr, &["-tls1_3"]);
        assert!(allowed.ok, "{kind}: the allowed suite was refused: {}", allowed.stderr);
        assert!(!other.ok, "{kind}: a suite outside --cipher-suites was accepted");
        assert!(!tls13.ok, "{kind}: TLS 1.3 accepted despite --tls-max-version=TLS1.2");
    }
}

#[test]
fn unknown_cipher_suite_fails_the_start_like_etcd() {
    let certs = gen_certs();
    for kind in KINDS {
        let mut flags = server_flags(certs.path(), false);
        flags.push("--cipher-suites=TLS_NO_SUCH_SUITE".to_string());
        let (ok, log) = run_to_exit(kind, "https", "http", &flags);
        assert!(!ok, "{kind} exited successfully");
        // etcd logs JSON, where the quotes are escaped.
        let log = log.replace("\\\"", "\"");
        assert!(log.contains("unexpected TLS cipher suite \"TLS_NO_SUCH_SUITE\""), "{kind}: {log}");
    }
}

#[tokio::test]
async fn rotated_certificate_is_served_without_restart() {
    let certs = gen_certs();
    // A second set from the same script: a new key and serial (and CA; s_client does not verify).
    let fresh = gen_certs();
    for kind in KINDS {
        let served = tempfile::tempdir().unwrap();
        for name in ["server.crt", "server.key", "ca.crt"] {
            std::fs::copy(certs.path().join(name), served.path().join(name)).unwrap();
        }
        let server = start(kind, client_files(served.path(), None), &server_flags(served.path(), false)).await;
        let addr = server.client_addr();
        let before = s_client(&addr, &[]).serial;
        assert_eq!(before, Some(file_serial(&certs.path().join("server.crt"))), "{kind}");

        let want = file_serial(&fresh.path().join("server.crt"));
        assert_ne!(before.as_deref(), Some(want.as_str()));
        // Certificate first, then key: in between the pair does not match and must not be used.
        let copy = |name: &str| std::fs::copy(fresh.path().join(name), served.path().join(name)).unwrap();
        copy("server.crt");
        copy("server.key");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = before;
        while seen.as_deref() != Some(want.as_str()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            seen = s_client(&addr, &[]).serial;
        }
        assert_eq!(seen.as_deref(), Some(want.as_str()), "{kind} did not serve the rotated certificate");
        // Still serving requests, now with the new chain.
        let files = TlsClientFiles { ca: fresh.path().join("ca.crt"), cert: None, key: None };
        grpc_range(&server, &files).await.unwrap_or_else(|e| panic!("{kind} after rotation: {e}"));
    }
}

/// With `--client-cert-auth` and auth enabled, a request without a token acts as the user named by
/// its verified client certificate's CN (etcd's `AuthInfoFromTLS`); a token, when given, wins.
/// gen-certs.sh names the client certificate `root`.
async fn certificate_user_transcript(kind: ServerKind, certs: &Path, flags: &[String]) -> Vec<String> {
    let good = client_files(certs, Some("client"));
    let server = start(kind, good.clone(), flags).await;
    let tls_args = good.etcdctl_args();
    let mut lines = Vec::new();
    for line in [
        "user add root --new-user-password=rootpw",
        "role add root",
        "user grant-role root root",
        "user add alice --new-user-password=alicepw",
        "auth enable",
        "put by-certificate v",
        "get by-certificate",
        "--user=alice:alicepw put by-alice v",
        "--user=alice:alicepw get by-certificate",
        "user list",
        "auth disable",
    ] {
        let mut c = cmd(line);
        c.args.splice(0..0, tls_args.iter().cloned());
        let out = mask_output(&run_cmd(&server, &c).await.expect("etcdctl"), Mask::Standard);
        lines.push(format!("etcdctl {line}: {:?} {} {}", out.exit_code, out.stdout.trim(), out.stderr.trim()));
    }
    lines
}

#[tokio::test]
async fn client_certificate_cn_is_the_user_like_etcd() {
    let certs = gen_certs();
    let flags = server_flags(certs.path(), true);
    let etcd = certificate_user_transcript(ServerKind::Etcd, certs.path(), &flags).await;
    let keel = certificate_user_transcript(ServerKind::Keel, certs.path(), &flags).await;
    assert_eq!(etcd, keel);
    let text = keel.join("\n");
    assert!(text.contains("put by-certificate v: Some(0) OK"), "{text}");
    assert!(text.contains("permission denied"), "alice's token must win over the certificate: {text}");

    // etcd quirk: --trusted-ca-file alone demands client certificates but never takes their CN as
    // the user, so once auth is on a request without a token has no user.
    let mut ca_only = server_flags(certs.path(), false);
    ca_only.push(format!("--trusted-ca-file={}", certs.path().join("ca.crt").display()));
    let etcd = certificate_user_transcript(ServerKind::Etcd, certs.path(), &ca_only).await;
    let keel = certificate_user_transcript(ServerKind::Keel, certs.path(), &ca_only).await;
    assert_eq!(etcd, keel);
    let text = keel.join("\n");
    assert!(text.contains("put by-certificate v: Some(1)"), "no user without --client-cert-auth: {text}");
}
