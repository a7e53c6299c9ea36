//! Encrypted backups end to end. The snapshot tests' history (leases, many versions, a txn,
//! deletes, an overflow-page value, a compaction) runs on Keel and on real etcd 3.5.16; then
//! - `keel snapshot save --encrypt-key-file` from Keel is restored with `keel snapshot restore
//!   --decrypt-key-file`, and the Keel served from it answers Range at every retained revision and
//!   the lease queries exactly as the original;
//! - `keel snapshot decrypt` gives back etcd's plain file, which real `etcdutl snapshot status`
//!   reads and `etcdutl snapshot restore` turns into a data dir that real etcd serves, again with
//!   the same answers at every revision;
//! - a plain `keel snapshot save` is byte-identical to what `etcdctl snapshot save` stores;
//! - an encrypted save from a real etcd endpoint restores into Keel with etcd's history;
//! - a wrong key, a missing key and a tampered file fail with a clear message and leave no data
//!   directory behind.

use std::path::Path;

use compat_tests::server::{etcd_bin_dir, keel_bin, Server, ServerKind};
use compat_tests::snapshots::{
    assert_same_history, assert_same_leases, etcdutl_status, run, script, snapshot_save, start_restored,
};

/// A value the history never writes in clear anywhere but the server: it must not show in the
/// encrypted file.
const CANARY: &[u8] = b"canary-value-that-must-not-appear-in-the-backup";

fn keel(args: &[&str]) -> Result<String, compat_tests::HarnessError> {
    run(&keel_bin(), args)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `keel snapshot save` from `server` into `file`, encrypted with `key` when given.
fn keel_save(server: &Server, file: &Path, key: Option<&Path>) {
    let endpoint = server.client_addr();
    let mut args = vec!["snapshot", "save", path(file), "--endpoints", &endpoint];
    if let Some(key) = key {
        args.extend(["--encrypt-key-file", path(key)]);
    }
    keel(&args).unwrap_or_else(|e| panic!("keel snapshot save from {}: {e}", server.kind()));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A restore that must fail: its message must contain `expect`, and no data directory may remain.
fn assert_restore_fails(file: &Path, key: Option<&Path>, dir: &Path, expect: &str) {
    let data = dir.join("must-not-exist");
    let mut args = vec!["snapshot", "restore", path(file), "--data-dir", path(&data)];
    if let Some(key) = key {
        args.extend(["--decrypt-key-file", path(key)]);
    }
    let err = keel(&args).expect_err("restore must fail").to_string();
    assert!(err.contains(expect), "restore of {} with key {key:?}: {err}", file.display());
    assert!(!data.exists(), "a failed restore left {}", data.display());
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("must-not-exist"))
        .collect();
    assert!(leftovers.is_empty(), "a failed restore left {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_backups_restore_into_keel_and_decrypt_for_etcd() {
    let (etcd, source) = tokio::join!(Server::etcd(), Server::keel());
    let (etcd, source) = (etcd.expect("start etcd"), source.expect("start keel"));
    let (ce, compacted) = tokio::join!(script(&etcd), script(&source));
    assert_eq!(ce, compacted);
    for server in [&etcd, &source] {
        let put = keel::proto::etcdserverpb::PutRequest {
            key: b"canary".to_vec(),
            value: CANARY.to_vec(),
            ..Default::default()
        };
        server.kv().await.unwrap().put(put).await.expect("put canary");
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let file = |name: &str| tmp.path().join(name);
    let (key, other_key) = (file("backup.key"), file("other.key"));
    keel(&["snapshot", "keygen", path(&key)]).expect("keygen");
    keel(&["snapshot", "keygen", path(&other_key)]).expect("keygen");
    assert!(keel(&["snapshot", "keygen", path(&key)]).is_err(), "keygen never overwrites a key file");

    // Plain save: the default, byte for byte what etcdctl stores from the same server.
    let (plain, by_etcdctl) = (file("plain.db"), file("etcdctl.db"));
    keel_save(&source, &plain, None);
    snapshot_save(&source, &by_etcdctl);
    assert_eq!(std::fs::read(&plain).unwrap(), std::fs::read(&by_etcdctl).unwrap(), "plain save vs etcdctl");

    // Encrypted save: the magic, no plaintext, and no .part left.
    let sealed = file("backup.enc");
    keel_save(&source, &sealed, Some(&key));
    let sealed_bytes = std::fs::read(&sealed).unwrap();
    assert_eq!(&sealed_bytes[..8], b"\x89KEELBAK");
    assert!(contains(&std::fs::read(&plain).unwrap(), CANARY), "the plain snapshot holds the canary");
    assert!(!contains(&sealed_bytes, CANARY), "the encrypted backup shows a value in clear");
    assert!(!file("backup.enc.part").exists());

    // Status through the envelope matches the plain file's.
    let status_plain = keel(&["snapshot", "status", path(&plain)]).expect("status plain");
    let status_sealed =
        keel(&["snapshot", "status", path(&sealed), "--decrypt-key-file", path(&key)]).expect("status sealed");
    assert_eq!(status_plain, status_sealed);

    // Failures: wrong key, no key, tampered body, truncated file; none leaves a data dir.
    assert_restore_fails(&sealed, Some(&other_key), tmp.path(), "failed authentication at chunk 0");
    assert_restore_fails(&sealed, None, tmp.path(), "encrypted Keel backup: pass --decrypt-key-file");
    let mut tampered = sealed_bytes.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x04;
    std::fs::write(file("tampered.enc"), &tampered).unwrap();
    assert_restore_fails(&file("tampered.enc"), Some(&key), tmp.path(), "failed authentication at chunk");
    std::fs::write(file("truncated.enc"), &sealed_bytes[..sealed_bytes.len() - 100]).unwrap();
    assert_restore_fails(&file("truncated.enc"), Some(&key), tmp.path(), "encrypted backup");
    let decrypted_bad = file("tampered.db");
    let err = keel(&["snapshot", "decrypt", path(&file("tampered.enc")), path(&decrypted_bad), "--decrypt-key-file"])
        .expect_err("decrypt needs a key file value");
    assert!(err.to_string().contains("needs a value"), "{err}");
    assert!(keel(&[
        "snapshot",
        "decrypt",
        path(&file("tampered.enc")),
        path(&decrypted_bad),
        "--decrypt-key-file",
        path(&key)
    ])
    .is_err());
    assert!(!decrypted_bad.exists(), "a failed decrypt leaves no output");

    // Encrypted backup restored into Keel: same history and leases as the source.
    let restored = start_restored(ServerKind::Keel, keel_bin(), &sealed, &["--decrypt-key-file", path(&key)]).await;
    assert_same_history(&source, &restored, compacted, "encrypted keel backup restored into keel").await;
    assert_same_leases(&source, &restored, "encrypted keel backup restored into keel").await;

    // Decrypted for etcd: etcdutl reads it like the plain save, and real etcd serves it.
    let decrypted = file("decrypted.db");
    keel(&["snapshot", "decrypt", path(&sealed), path(&decrypted), "--decrypt-key-file", path(&key)]).expect("decrypt");
    assert_eq!(etcdutl_status(&decrypted), etcdutl_status(&plain), "etcdutl status of decrypted vs plain");
    let etcd_restored = start_restored(ServerKind::Etcd, etcd_bin_dir().join("etcdutl"), &decrypted, &[]).await;
    assert_same_history(&source, &etcd_restored, compacted, "decrypted keel backup restored into etcd").await;
    assert_same_leases(&source, &etcd_restored, "decrypted keel backup restored into etcd").await;

    // An encrypted save from a real etcd endpoint restores into Keel with etcd's history.
    let from_etcd = file("etcd.enc");
    keel_save(&etcd, &from_etcd, Some(&key));
    assert!(!contains(&std::fs::read(&from_etcd).unwrap(), CANARY));
    let keel_from_etcd =
        start_restored(ServerKind::Keel, keel_bin(), &from_etcd, &["--decrypt-key-file", path(&key)]).await;
    assert_same_history(&etcd, &keel_from_etcd, compacted, "encrypted etcd backup restored into keel").await;
    assert_same_leases(&etcd, &keel_from_etcd, "encrypted etcd backup restored into keel").await;
    // And its decrypted file is what etcdutl reads as an etcd snapshot.
    let etcd_plain = file("etcd-decrypted.db");
    keel(&["snapshot", "decrypt", path(&from_etcd), path(&etcd_plain), "--decrypt-key-file", path(&key)])
        .expect("decrypt etcd backup");
    let by_etcdctl = file("etcd-etcdctl.db");
    snapshot_save(&etcd, &by_etcdctl);
    let (ours, theirs) = (etcdutl_status(&etcd_plain), etcdutl_status(&by_etcdctl));
    assert_eq!(ours["revision"], theirs["revision"], "etcdutl status: decrypted {ours} vs etcdctl's {theirs}");
    assert_eq!(ours["totalKey"], theirs["totalKey"], "etcdutl status: decrypted {ours} vs etcdctl's {theirs}");
}
