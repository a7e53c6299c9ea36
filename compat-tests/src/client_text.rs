//! How transcripts written with the etcd-client crate render what a client saw, so every such
//! test prints key-values and errors alike.

use etcd_client::KeyValue;

/// A key-value with every field a client can compare.
pub fn kv(k: &KeyValue) -> String {
    format!(
        "{}={} c{} m{} v{} l{}",
        String::from_utf8_lossy(k.key()),
        String::from_utf8_lossy(k.value()),
        k.create_revision(),
        k.mod_revision(),
        k.version(),
        k.lease()
    )
}

/// A failed call: the gRPC code and message a server sent, or what went wrong in the client.
pub fn error(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("error {:?}: {}", s.code(), s.message()),
        other => format!("client error {other}"),
    }
}
