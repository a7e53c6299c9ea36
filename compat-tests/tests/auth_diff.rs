//! Auth and RBAC against etcd 3.5.16: etcdctl sequences with `--user` run on Keel and on real etcd and
//! must print the same (auth enable/disable/status, user and role management and their errors,
//! permission denied on get/put/del/txn/watch/lease revoke/snapshot, etcdctl lock and elect);
//! simple tokens look like etcd's; JWTs issued by Keel are verified here with the openssl CLI (a
//! code path independent of Keel's jsonwebtoken), and bad, forged and expired tokens get etcd's
//! error on both servers.

use std::path::Path;
use std::process::Command;

use compat_tests::etcdctl::{cmd, cmd_args, run_differential, Case, Cmd};
use compat_tests::runner::check_all;
use compat_tests::server::connect;
use compat_tests::{chosen, Server, ServerKind};
use keel::proto::etcdserverpb::auth_client::AuthClient;
use keel::proto::etcdserverpb::kv_client::KvClient;
use keel::proto::etcdserverpb::{AuthenticateRequest, PutRequest, RangeRequest};
use tonic::metadata::MetadataValue;

const CANDIDATE: ServerKind = ServerKind::Keel;

/// root (password rpw) with the root role, auth enabled, and alice (apw) holding role r1:
/// readwrite on prefix foo, read on key k1, read from key m on.
fn setup() -> Vec<Cmd> {
    vec![
        cmd("user add root --new-user-password=rpw"),
        cmd("auth enable"),
        cmd("--user root:rpw user add alice --new-user-password=apw"),
        cmd("--user root:rpw role add r1"),
        cmd("--user root:rpw role grant-permission r1 readwrite --prefix foo"),
        cmd("--user root:rpw role grant-permission r1 read k1"),
        cmd("--user root:rpw role grant-permission r1 read --from-key m"),
        cmd("--user root:rpw user grant-role alice r1"),
    ]
}

fn with_setup(name: &'static str, rest: Vec<Cmd>) -> Case {
    let mut cmds = setup();
    cmds.extend(rest);
    Case { name, cmds }
}

fn cases(snapshot_path: &str) -> Vec<Case> {
    vec![
        Case {
            name: "auth_enable_disable_status",
            cmds: vec![
                cmd("auth status"),
                cmd("auth enable"),
                cmd("user add root --new-user-password=rpw"),
                cmd("user list"),
                // etcdctl grants the missing root role itself and retries.
                cmd("auth enable"),
                cmd("auth enable"),
                cmd("auth status"),
                cmd("--user root:rpw auth status"),
                cmd("--user root:bad auth status"),
                cmd("--user nobody:x auth status"),
                cmd("--user root:rpw role get root"),
                cmd("--user root:rpw user get root"),
                cmd("--user root:rpw auth disable"),
                cmd("auth status"),
                cmd("auth disable"),
                cmd("--user root:rpw get k"),
                cmd("auth enable"),
                cmd("--user root:rpw auth status"),
            ],
        },
        with_setup(
            "auth_user_role_management",
            vec![
                cmd("--user root:rpw role get r1"),
                cmd("--user root:rpw user get alice"),
                cmd("--user root:rpw user get alice --detail"),
                cmd("--user root:rpw user list"),
                cmd("--user root:rpw role list"),
                cmd("--user root:rpw auth status"),
                cmd("--user root:rpw user add alice --new-user-password=x"),
                cmd("--user root:rpw role add r1"),
                cmd("--user root:rpw user get nosuch"),
                cmd("--user root:rpw role get nosuch"),
                cmd("--user root:rpw user grant-role alice nosuch"),
                cmd("--user root:rpw user grant-role nosuch r1"),
                cmd("--user root:rpw user grant-role alice r1"),
                cmd("--user root:rpw user revoke-role alice nosuch"),
                cmd("--user root:rpw role revoke-permission r1 nokey"),
                cmd("--user root:rpw role grant-permission nosuch read a"),
                cmd_args(&["--user", "root:rpw", "role", "grant-permission", "r1", "read", "b", "a"]),
                // Same key and range: the type is replaced, not added.
                cmd("--user root:rpw role grant-permission r1 write k1"),
                cmd("--user root:rpw role grant-permission r1 read --prefix k"),
                cmd("--user root:rpw role get r1"),
                cmd("--user root:rpw role revoke-permission r1 k1"),
                cmd("--user root:rpw role revoke-permission r1 --prefix k"),
                cmd("--user root:rpw role get r1"),
                cmd("--user root:rpw user delete root"),
                cmd("--user root:rpw role delete root"),
                cmd("--user root:rpw user revoke-role root root"),
                cmd("--user root:rpw user add bob --no-password"),
                cmd("--user bob:x get foo"),
                cmd("--user root:rpw user passwd alice --interactive=false").stdin("newpw\n"),
                cmd("--user alice:apw get foo"),
                cmd("--user alice:newpw get foo"),
                cmd("--user root:rpw role delete r1"),
                cmd("--user root:rpw user get alice"),
                cmd("--user root:rpw user delete alice"),
                cmd("--user root:rpw user delete alice"),
                cmd("--user root:rpw user list"),
                cmd("--user root:rpw auth status"),
            ],
        ),
        with_setup(
            "auth_permission_denied",
            vec![
                cmd("--user alice:apw put foo1 v1"),
                cmd("--user alice:apw put bar v"),
                cmd("--user alice:apw get foo1"),
                cmd("--user alice:apw get k1"),
                cmd("--user alice:apw put k1 v"),
                cmd("--user alice:apw get --prefix foo"),
                cmd("--user alice:apw get foo fop"),
                cmd("--user alice:apw get foo foq"),
                cmd_args(&["--user", "alice:apw", "get", "--prefix", ""]),
                cmd("--user alice:apw get --from-key m"),
                cmd("--user alice:apw get --from-key a"),
                cmd("get foo1"),
                cmd("--user alice:bad get foo1"),
                cmd("--user alice:apw del bar"),
                cmd("--user alice:apw del foo1 --prev-kv"),
                cmd("--user alice:apw put foo2 v --prev-kv"),
                cmd("--user alice:apw put mm v"),
                // Txn: every compare and every op is checked.
                cmd("--user alice:apw txn").stdin("value(\"foo2\") = \"v\"\n\nput foo3 x\n\nput foo4 y\n\n"),
                cmd("--user alice:apw txn").stdin("value(\"bar\") = \"v\"\n\nput foo3 x\n\n\n"),
                cmd("--user alice:apw txn").stdin("value(\"foo2\") = \"v\"\n\nput foo3 x\n\nput bar y\n\n"),
                cmd("--user alice:apw txn").stdin("\nget zz\n\n\n"),
                // Watch: READ on the range, refused at create.
                cmd("--user alice:apw watch bar"),
                cmd("watch foo"),
                // Lease revoke needs WRITE on every attached key.
                cmd("lease grant 100 --user root:rpw"),
                cmd("--user root:rpw put bar v --lease=$L1"),
                cmd("lease revoke $L1 --user alice:apw"),
                // Listing a lease's keys needs READ on them (etcd 3.5's CVE-2023-32082 fix).
                cmd("lease timetolive $L1 --keys --user alice:apw"),
                cmd("lease timetolive $L1 --keys"),
                cmd("--user alice:apw put foo9 v --lease=$L1"),
                cmd("lease revoke $L1 --user root:rpw"),
                cmd("lease grant 100 --user alice:apw"),
                cmd("--user alice:apw put foo9 v --lease=$L2"),
                cmd("lease revoke $L2 --user alice:apw"),
                // Admin calls.
                cmd(&format!("--user alice:apw snapshot save {snapshot_path}")),
                cmd("--user alice:apw defrag"),
                cmd("--user alice:apw endpoint hashkv"),
                cmd("--user alice:apw member add x --peer-urls=http://127.0.0.1:1"),
                cmd("--user alice:apw member remove 1234"),
                cmd("--user alice:apw auth status"),
                cmd("--user alice:apw user get alice"),
                cmd("--user alice:apw user get root"),
                cmd("--user alice:apw role get r1"),
                cmd("--user alice:apw role get root"),
                cmd("--user alice:apw user list"),
                cmd("--user alice:apw user add eve --new-user-password=e"),
                cmd("--user alice:apw compaction 1"),
                cmd("--user root:rpw get --prefix foo"),
            ],
        ),
        // etcdctl's lock and elect run clientv3's recipes over KV and Lease as the --user: alice may
        // lock under foo, not under bar (no READ there for elect -l either); without a user or with
        // a wrong password they are refused. (The Lock and Election services: tests/lock_election.rs.)
        with_setup(
            "auth_etcdctl_lock_elect",
            vec![
                cmd("--user alice:apw lock foolock echo held"),
                cmd("--user alice:apw lock bar echo held"),
                cmd("lock foolock echo held"),
                cmd("--user alice:bad lock foolock echo held"),
                cmd("--user alice:apw elect bar x"),
                cmd("--user alice:apw elect -l bar"),
                cmd("elect foo x"),
                cmd("elect -l foo"),
                cmd("--user root:rpw get --prefix foo"),
            ],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_auth_outputs_match_etcd() {
    let candidate = ServerKind::from_env_or(CANDIDATE);
    let dir = tempfile::tempdir().unwrap();
    // Refused before anything is written; a shared path keeps the two outputs comparable.
    let snapshot = dir.path().join("denied.db");
    let items = cases(&snapshot.display().to_string())
        .into_iter()
        .filter(|c| chosen(c.name))
        .map(|c| (c.name.to_string(), c))
        .collect();
    let checked = check_all(&format!("auth etcdctl cases (etcd vs {candidate})"), items, move |case| async move {
        run_differential(&case, ServerKind::Etcd, candidate).await
    })
    .await;
    if let Err(report) = checked {
        panic!("{report}");
    }
}

/// Enable auth with root/rpw and alice/apw (role r1: readwrite on prefix foo) over gRPC.
async fn enable_auth(server: &Server) {
    for c in setup() {
        let out = compat_tests::etcdctl::run_cmd(server, &c).await.unwrap();
        assert_eq!(out.exit_code, Some(0), "{:?}: {}", c.args, out.stderr);
    }
}

async fn authenticate(server: &Server, name: &str, password: &str) -> Result<String, tonic::Status> {
    let mut auth = AuthClient::new(connect(&server.endpoint()).await.unwrap());
    let req = AuthenticateRequest { name: name.into(), password: password.into() };
    auth.authenticate(req).await.map(|r| r.into_inner().token)
}

/// A Range with `token`: the status code and message a client sees (or "ok").
async fn get_with_token(server: &Server, token: &str, key: &str) -> String {
    let mut kv = KvClient::new(connect(&server.endpoint()).await.unwrap());
    match kv.range(with_token(RangeRequest { key: key.into(), ..Default::default() }, token)).await {
        Ok(_) => "ok".to_string(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tokens_look_like_etcds_and_bad_ones_are_refused_alike() {
    if !chosen("auth_simple_tokens") {
        return;
    }
    let shape = regex::Regex::new(r"^[a-zA-Z]{16}\.[0-9]+$").unwrap();
    let mut seen = Vec::new();
    for kind in [ServerKind::Etcd, ServerKind::from_env_or(CANDIDATE)] {
        let server = Server::start(kind).await.unwrap();
        enable_auth(&server).await;
        let token = authenticate(&server, "alice", "apw").await.unwrap();
        assert!(shape.is_match(&token), "{kind}: token {token:?} is not etcd's simple-token shape");
        let bad = authenticate(&server, "alice", "nope").await.unwrap_err();
        let mut kv = KvClient::new(connect(&server.endpoint()).await.unwrap());
        seen.push(vec![
            // The request is validated before the token is looked at.
            put_with_token(&mut kv, "garbage", "").await,
            put_with_token(&mut kv, "garbage", "foo1").await,
            put_with_token(&mut kv, &token, "foo1").await,
            get_with_token(&server, &token, "foo1").await,
            get_with_token(&server, &token, "bar").await,
            get_with_token(&server, "AAAAAAAAAAAAAAAA.1", "foo1").await,
            format!("{:?}: {}", bad.code(), bad.message()),
        ]);
    }
    assert_eq!(seen[0], seen[1], "etcd (left) and the candidate (right) differ");
}

/// A Put with `token`: the status code and message a client sees (or "ok").
async fn put_with_token(kv: &mut KvClient<tonic::transport::Channel>, token: &str, key: &str) -> String {
    let req = with_token(PutRequest { key: key.into(), value: "v".into(), ..Default::default() }, token);
    kv.put(req).await.map(|_| "ok".to_string()).unwrap_or_else(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn b64url_decode(text: &str) -> Vec<u8> {
    let mut padded = text.replace('-', "+").replace('_', "/");
    while !padded.len().is_multiple_of(4) {
        padded.push('=');
    }
    let out = Command::new("openssl")
        .args(["base64", "-d", "-A"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(padded.as_bytes())?;
            child.wait_with_output()
        })
        .expect("openssl base64");
    out.stdout
}

fn b64url_encode(bytes: &[u8], dir: &Path) -> String {
    let input = dir.join("b64-in");
    std::fs::write(&input, bytes).unwrap();
    let out = Command::new("openssl").args(["base64", "-A", "-in"]).arg(&input).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().trim_end_matches('=').replace('+', "-").replace('/', "_")
}

/// Sign `header.payload` with openssl (RS256) to mint tokens Keel never issued.
fn openssl_sign(dir: &Path, priv_key: &Path, claims: &str) -> String {
    let header = b64url_encode(br#"{"alg":"RS256","typ":"JWT"}"#, dir);
    let payload = b64url_encode(claims.as_bytes(), dir);
    let signing_input = format!("{header}.{payload}");
    let input = dir.join("sign-in");
    let sig = dir.join("sign-out");
    std::fs::write(&input, &signing_input).unwrap();
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        priv_key.to_str().unwrap(),
        "-out",
        sig.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    format!("{signing_input}.{}", b64url_encode(&std::fs::read(&sig).unwrap(), dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_verify_independently_and_bad_ones_match_etcd() {
    if !chosen("auth_jwt") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (priv_key, pub_key) = (dir.path().join("jwt.key"), dir.path().join("jwt.pub"));
    openssl(&["genrsa", "-out", priv_key.to_str().unwrap(), "2048"]);
    openssl(&["rsa", "-in", priv_key.to_str().unwrap(), "-pubout", "-out", pub_key.to_str().unwrap()]);
    let flag = format!("jwt,pub-key={},priv-key={},sign-method=RS256,ttl=5m", pub_key.display(), priv_key.display());

    let mut seen = Vec::new();
    for kind in [ServerKind::Etcd, ServerKind::from_env_or(CANDIDATE)] {
        let server = Server::start_with(kind, &["--auth-token", &flag]).await.unwrap();
        enable_auth(&server).await;
        let token = authenticate(&server, "alice", "apw").await.unwrap();

        // Independent check: openssl verifies the RS256 signature with the public key.
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{kind}: {token}");
        let signing_input = dir.path().join(format!("{kind}-input"));
        let signature = dir.path().join(format!("{kind}-sig"));
        std::fs::write(&signing_input, format!("{}.{}", parts[0], parts[1])).unwrap();
        std::fs::write(&signature, b64url_decode(parts[2])).unwrap();
        openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            pub_key.to_str().unwrap(),
            "-signature",
            signature.to_str().unwrap(),
            signing_input.to_str().unwrap(),
        ]);
        let header: serde_json::Value = serde_json::from_slice(&b64url_decode(parts[0])).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&b64url_decode(parts[1])).unwrap();
        assert_eq!(header["alg"], "RS256", "{kind}");
        assert_eq!(claims["username"], "alice", "{kind}");
        let revision = claims["revision"].as_u64().unwrap();
        let exp = claims["exp"].as_i64().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((now + 290..=now + 310).contains(&exp), "{kind}: exp {exp} is not about now + 5m");

        // A token for root minted with the right key but expired; one whose payload was swapped
        // (signature no longer matches); one signed by another key.
        let expired = openssl_sign(
            dir.path(),
            &priv_key,
            &format!(r#"{{"exp":{},"revision":{revision},"username":"root"}}"#, now - 10),
        );
        let forged_payload = b64url_encode(
            format!(r#"{{"exp":{},"revision":{revision},"username":"root"}}"#, now + 300).as_bytes(),
            dir.path(),
        );
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        let other_key = dir.path().join("other.key");
        openssl(&["genrsa", "-out", other_key.to_str().unwrap(), "2048"]);
        let wrong_key = openssl_sign(
            dir.path(),
            &other_key,
            &format!(r#"{{"exp":{},"revision":{revision},"username":"root"}}"#, now + 300),
        );
        let valid_minted = openssl_sign(
            dir.path(),
            &priv_key,
            &format!(r#"{{"exp":{},"revision":{revision},"username":"alice"}}"#, now + 300),
        );

        // A write with an auth-revision-stale token: root changes the auth state first.
        let root = authenticate(&server, "root", "rpw").await.unwrap();
        let mut kv = KvClient::new(connect(&server.endpoint()).await.unwrap());
        let before_change = put_with_token(&mut kv, &token, "foo1").await;
        let out = compat_tests::etcdctl::run_cmd(&server, &cmd("--user root:rpw role add r2")).await.unwrap();
        assert_eq!(out.exit_code, Some(0));
        let stale = put_with_token(&mut kv, &token, "foo1").await;
        seen.push(vec![
            get_with_token(&server, &valid_minted, "foo1").await,
            get_with_token(&server, &expired, "foo1").await,
            get_with_token(&server, &forged, "foo1").await,
            get_with_token(&server, &wrong_key, "foo1").await,
            get_with_token(&server, "garbage", "foo1").await,
            get_with_token(&server, &root, "bar").await,
            before_change,
            stale,
        ]);
    }
    assert_eq!(seen[0], seen[1], "etcd (left) and the candidate (right) differ");
}

/// Users, roles, permissions, the enabled flag and the auth revision travel in snapshots, in etcd's
/// `auth`, `authUsers` and `authRoles` buckets: a Keel snapshot restored into real etcd (and an
/// etcd snapshot restored into Keel) answers the same auth questions as the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_state_moves_through_snapshots_both_ways() {
    if !chosen("auth_snapshot") {
        return;
    }
    let questions = [
        cmd("--user root:rpw auth status"),
        cmd("--user root:rpw user list"),
        cmd("--user root:rpw role get r1"),
        cmd("--user alice:apw put foo1 v"),
        cmd("--user alice:apw put bar v"),
        cmd("--user alice:nope get foo1"),
        cmd("get foo1"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut answers = Vec::new();
    for (source_kind, restored_kind) in [(ServerKind::Keel, ServerKind::Etcd), (ServerKind::Etcd, ServerKind::Keel)] {
        let source = Server::start(source_kind).await.unwrap();
        enable_auth(&source).await;
        let file = dir.path().join(format!("{source_kind}.db"));
        let save = cmd(&format!("--user root:rpw snapshot save {}", file.display()));
        let out = compat_tests::etcdctl::run_cmd(&source, &save).await.unwrap();
        assert_eq!(out.exit_code, Some(0), "snapshot save from {source_kind}: {}", out.stderr);
        let tool = match restored_kind {
            ServerKind::Etcd => compat_tests::server::etcd_bin_dir().join("etcdutl"),
            ServerKind::Keel => compat_tests::server::keel_bin(),
        };
        let file_arg = file.display().to_string();
        let mut prepare = |data: &Path, peer: &str| {
            let cluster = format!("{}={peer}", compat_tests::server::MEMBER_NAME);
            let out = Command::new(&tool)
                .args(["snapshot", "restore", &file_arg, "--data-dir", data.to_str().unwrap()])
                .args(["--name", compat_tests::server::MEMBER_NAME, "--initial-cluster", &cluster])
                .args(["--initial-advertise-peer-urls", peer])
                .output()
                .map_err(|e| compat_tests::HarnessError::Other(e.to_string()))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(compat_tests::HarnessError::Other(String::from_utf8_lossy(&out.stderr).into_owned()))
            }
        };
        let restored = Server::start_prepared(restored_kind, &[], &mut prepare).await.unwrap();
        for server in [&source, &restored] {
            let mut seen = Vec::new();
            for q in &questions {
                let out = compat_tests::etcdctl::run_cmd(server, q).await.unwrap();
                let out = compat_tests::etcdctl::mask_output(&out, compat_tests::etcdctl::Mask::Standard);
                seen.push(format!("{:?}\n{}\n{}", out.exit_code, out.stdout, out.stderr));
            }
            answers.push((format!("{} ({source_kind} snapshot)", server.kind()), seen));
        }
    }
    for (who, seen) in &answers[1..] {
        assert_eq!(&answers[0].1, seen, "{} and {who} answer differently", answers[0].0);
    }
}

/// With the same key pair, a JWT issued by etcd is accepted by Keel and one issued by Keel by
/// etcd (each verifies the other's signature), for RSA and for EC keys (P-256, and P-521 for
/// ES512, which Keel signs without jsonwebtoken) in the SEC1 files that `openssl ecparam -genkey` writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_are_interchangeable_with_etcd() {
    if !chosen("auth_jwt_interop") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for method in ["RS256", "ES256", "ES512"] {
        let (priv_key, pub_key) = (dir.path().join(format!("{method}.key")), dir.path().join(format!("{method}.pub")));
        let (priv_s, pub_s) = (priv_key.to_str().unwrap(), pub_key.to_str().unwrap());
        if method == "RS256" {
            openssl(&["genrsa", "-out", priv_s, "2048"]);
            openssl(&["rsa", "-in", priv_s, "-pubout", "-out", pub_s]);
        } else {
            let curve = if method == "ES512" { "secp521r1" } else { "prime256v1" };
            openssl(&["ecparam", "-name", curve, "-genkey", "-noout", "-out", priv_s]);
            openssl(&["ec", "-in", priv_s, "-pubout", "-out", pub_s]);
        }
        let flag = format!("jwt,pub-key={pub_s},priv-key={priv_s},sign-method={method}");
        let candidate = ServerKind::from_env_or(CANDIDATE);
        let args = ["--auth-token", flag.as_str()];
        let (etcd, keel) =
            tokio::join!(Server::start_with(ServerKind::Etcd, &args), Server::start_with(candidate, &args));
        let (etcd, keel) = (etcd.unwrap(), keel.unwrap());
        tokio::join!(enable_auth(&etcd), enable_auth(&keel));
        let from_etcd = authenticate(&etcd, "alice", "apw").await.unwrap();
        let from_keel = authenticate(&keel, "alice", "apw").await.unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&b64url_decode(from_keel.split('.').next().unwrap())).unwrap();
        assert_eq!(header["alg"], method);
        assert_eq!(get_with_token(&keel, &from_etcd, "foo1").await, "ok", "{method}: keel refused etcd's token");
        assert_eq!(get_with_token(&etcd, &from_keel, "foo1").await, "ok", "{method}: etcd refused keel's token");
        assert_eq!(get_with_token(&keel, &from_etcd, "bar").await, get_with_token(&etcd, &from_keel, "bar").await);
    }
}

/// With auth enabled, an expired lease still deletes its keys: the server revokes as root
/// (etcd's `WithRoot`), not as the anonymous caller that would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_delete_their_keys_with_auth_enabled() {
    if !chosen("auth_lease_expiry") {
        return;
    }
    let mut seen = Vec::new();
    for kind in [ServerKind::Etcd, ServerKind::from_env_or(CANDIDATE)] {
        let server = Server::start(kind).await.unwrap();
        enable_auth(&server).await;
        let grant = compat_tests::etcdctl::run_cmd(&server, &cmd("lease grant 2 --user alice:apw")).await.unwrap();
        let id = grant.stdout.split_whitespace().nth(1).unwrap_or_default().to_string();
        let put = cmd(&format!("--user alice:apw put foo/lease v --lease={id}"));
        let out = compat_tests::etcdctl::run_cmd(&server, &put).await.unwrap();
        assert_eq!(out.exit_code, Some(0), "{kind}: {}", out.stderr);
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        let token = authenticate(&server, "alice", "apw").await.unwrap();
        let mut kv = KvClient::new(connect(&server.endpoint()).await.unwrap());
        let req = with_token(RangeRequest { key: "foo/lease".into(), ..Default::default() }, &token);
        seen.push(kv.range(req).await.unwrap().into_inner().count);
    }
    assert_eq!(seen, vec![0, 0], "(etcd, candidate) keys left after the lease expired");
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("token", MetadataValue::try_from(token).unwrap());
    req
}

/// What etcd does with a client's `hashedPassword`: UserAdd hashes the plain password and ignores
/// it; UserChangePassword keeps it when no plain password is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_password_hashes_are_treated_as_etcd_does() {
    use base64::Engine as _;
    use keel::proto::etcdserverpb::{AuthUserAddRequest, AuthUserChangePasswordRequest};
    if !chosen("auth_hashed_password") {
        return;
    }
    let hash_of = |pw: &str| base64::engine::general_purpose::STANDARD.encode(bcrypt::hash(pw, 4).unwrap());
    let mut seen = Vec::new();
    for kind in [ServerKind::Etcd, ServerKind::from_env_or(CANDIDATE)] {
        let server = Server::start(kind).await.unwrap();
        enable_auth(&server).await;
        let root = authenticate(&server, "root", "rpw").await.unwrap();
        let mut auth = AuthClient::new(connect(&server.endpoint()).await.unwrap());
        let add = AuthUserAddRequest {
            name: "carol".into(),
            password: "plain".into(),
            hashed_password: hash_of("hashed"),
            ..Default::default()
        };
        auth.user_add(with_token(add, &root)).await.unwrap();
        let mut outcome = Vec::new();
        for pw in ["plain", "hashed"] {
            outcome.push(authenticate(&server, "carol", pw).await.is_ok());
        }
        let change = AuthUserChangePasswordRequest {
            name: "carol".into(),
            password: String::new(),
            hashed_password: hash_of("second"),
        };
        auth.user_change_password(with_token(change, &root)).await.unwrap();
        for pw in ["plain", "second"] {
            outcome.push(authenticate(&server, "carol", pw).await.is_ok());
        }
        seen.push(outcome);
    }
    assert_eq!(seen[0], seen[1], "etcd (left) and the candidate (right) differ");
}
