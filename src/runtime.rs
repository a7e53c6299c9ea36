//! The tokio runtime Keel's binaries (the server and the load generator) run on: multi-thread, one
//! worker per core, with tokio's LIFO slot turned off.
//!
//! With the LIFO slot, a task woken by the task running now is polled next on the same worker. When
//! apply answers a batch of writes (or the reads of one read index), each request task, as it hands
//! its response to hyper, wakes its connection's HTTP/2 task, which then ran at once and flushed that
//! single response: one `writev` per response, each also doing the receiver's TCP work on loopback.
//! Queued behind the other woken request tasks instead, the connection task flushes all their
//! responses in one write (put at 100 clients: 0.9 writev per request before, 0.12 after), the way
//! gRPC-Go's writer coalesces what is queued. Range and keep-alive throughput rose 20-30%.
//!
//! `disable_lifo_slot` needs `--cfg tokio_unstable` (set in `.cargo/config.toml`); a build without it
//! runs with tokio's default scheduling, as does any process started with `KEEL_LIFO` set in its
//! environment (for comparing the two).

/// A multi-thread runtime with every driver enabled, as `#[tokio::main]` builds, minus the LIFO slot.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    #[cfg(tokio_unstable)]
    if std::env::var_os("KEEL_LIFO").is_none() {
        runtime.disable_lifo_slot();
    }
    runtime.build()
}
