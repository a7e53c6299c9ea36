//! The `keel` binary: parse etcd's flags, start logging, serve until SIGINT or SIGTERM.

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, warnings) = keel::config::parse()?;
    let filter = EnvFilter::try_from_env("KEEL_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{},openraft=warn", config.log_level.as_str())));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    for w in &warnings {
        tracing::warn!("{w}");
    }
    keel::server::run(config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("received a signal to stop");
}
