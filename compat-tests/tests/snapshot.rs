//! Snapshots both ways against etcd 3.5.16: the same scripted history (puts with many versions, a
//! multi-op txn, deletes, a range delete, a value spanning overflow pages, a compaction) runs on
//! etcd and on Keel; stock `etcdctl snapshot save` takes a snapshot of each; `etcdutl snapshot
//! status` must report the same revision and key count for both; then
//! - etcd's snapshot is restored with `keel snapshot restore` and Keel served from it, and
//! - Keel's snapshot is restored with `etcdutl snapshot restore` and real etcd served from it
//!   (and with `keel snapshot restore` too),
//!
//! and each restored server must answer Range at every retained revision exactly as the server the
//! snapshot came from (key-values, count, header revision; errors below the compaction), and know
//! the same leases with the same keys attached.

use compat_tests::server::{etcd_bin_dir, keel_bin, Server, ServerKind};
use compat_tests::snapshots::{
    assert_same_history, assert_same_leases, assert_same_next_write, etcdutl_status, script, snapshot_save,
    start_restored,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_move_between_etcd_and_keel() {
    let (etcd, keel) = tokio::join!(Server::etcd(), Server::keel());
    let (etcd, keel) = (etcd.expect("start etcd"), keel.expect("start keel"));
    let (ce, ck) = tokio::join!(script(&etcd), script(&keel));
    assert_eq!(ce, ck);
    let compacted = ce;

    let tmp = tempfile::tempdir().expect("tempdir");
    let (etcd_file, keel_file) = (tmp.path().join("etcd.db"), tmp.path().join("keel.db"));
    snapshot_save(&etcd, &etcd_file);
    snapshot_save(&keel, &keel_file);

    // etcdutl reads Keel's file and sees the same revision and row count as in etcd's.
    let (se, sk) = (etcdutl_status(&etcd_file), etcdutl_status(&keel_file));
    assert_eq!(sk["revision"], se["revision"], "etcdutl status revision: keel {sk} etcd {se}");
    assert_eq!(sk["totalKey"], se["totalKey"], "etcdutl status totalKey: keel {sk} etcd {se}");

    // Migration in: etcd's snapshot served by Keel.
    let keel_from_etcd = start_restored(ServerKind::Keel, keel_bin(), &etcd_file, &[]).await;
    // Migration out: Keel's snapshot served by real etcd.
    let etcd_from_keel = start_restored(ServerKind::Etcd, etcd_bin_dir().join("etcdutl"), &keel_file, &[]).await;
    // And Keel's own snapshot back into Keel.
    let keel_from_keel = start_restored(ServerKind::Keel, keel_bin(), &keel_file, &[]).await;

    assert_same_history(&etcd, &keel_from_etcd, compacted, "etcd snapshot restored into keel").await;
    assert_same_history(&keel, &etcd_from_keel, compacted, "keel snapshot restored into etcd").await;
    assert_same_history(&keel, &keel_from_keel, compacted, "keel snapshot restored into keel").await;
    assert_same_leases(&etcd, &keel_from_etcd, "etcd snapshot restored into keel").await;
    assert_same_leases(&keel, &etcd_from_keel, "keel snapshot restored into etcd").await;
    assert_same_leases(&keel, &keel_from_keel, "keel snapshot restored into keel").await;
    assert_same_next_write(&etcd, &keel_from_etcd, "etcd snapshot restored into keel").await;
    assert_same_next_write(&etcd_from_keel, &keel_from_keel, "keel snapshot restored into etcd and keel").await;
}
