//! The `keel` binary: parse etcd's flags, start logging, serve until SIGINT or SIGTERM. `keel
//! snapshot restore|status <file>` works on etcd snapshot files instead, with etcdutl's flags;
//! `keel snapshot save|keygen|decrypt` takes and unwraps (optionally encrypted) backups.

use tracing_subscriber::EnvFilter;

// Every request allocates and frees a few dozen small buffers (HTTP/2 frames, protobuf messages);
// glibc's malloc spent ~9% of the server's CPU on them under load, mimalloc a third of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let outcome = keel::runtime::build().map_err(anyhow::Error::from).and_then(|runtime| runtime.block_on(serve()));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A failed start (a port in use, a bad flag, an unreadable data dir) is the operator's to
        // fix: one line with the whole cause chain, not anyhow's backtrace, which under
        // RUST_BACKTRACE=1 buried the cause under thirty frames.
        Err(err) => {
            eprintln!("Error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    // The snapshot tool has etcdutl's flags, not the server's: dispatch before the server parses.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("snapshot") {
        return snapshot_command(&args[2..]).await;
    }
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

/// `keel snapshot restore <file> [--data-dir DIR] [--name N] [--initial-cluster C]
/// [--initial-cluster-token T] [--initial-advertise-peer-urls U] [--skip-hash-check]
/// [--storage-engine redb|sled] [--decrypt-key-file K]` and `keel snapshot status <file>
/// [--decrypt-key-file K]`, as etcdutl's commands; `keel snapshot save <file> --endpoints URL
/// [--encrypt-key-file K]` as etcdctl's; `keel snapshot keygen <keyfile>` and `keel snapshot
/// decrypt <in> <out> --decrypt-key-file K` for encrypted backups (`snapshot::envelope`).
async fn snapshot_command(args: &[String]) -> anyhow::Result<()> {
    use keel::snapshot::{backup, envelope::Key, RestoreOptions};
    const USAGE: &str = "usage: keel snapshot restore <file> [--data-dir DIR] [--name NAME] \
        [--initial-cluster CLUSTER] [--initial-cluster-token TOKEN] [--initial-advertise-peer-urls URLS] \
        [--skip-hash-check] [--storage-engine redb|sled] [--decrypt-key-file KEY] \
        | keel snapshot status <file> [--decrypt-key-file KEY] \
        | keel snapshot save <file> --endpoints URL [--encrypt-key-file KEY] \
        | keel snapshot keygen <keyfile> | keel snapshot decrypt <in> <out> --decrypt-key-file KEY";
    let Some(action) = args.first() else { anyhow::bail!(USAGE) };
    let mut opts = RestoreOptions::default();
    // The server picks its engine from --storage-engine or KEEL_STORAGE_ENGINE; a restored
    // directory must be in the engine the server will open.
    if let Ok(engine) = std::env::var("KEEL_STORAGE_ENGINE") {
        opts.engine = engine.parse()?;
    }
    let mut files: Vec<String> = Vec::new();
    let (mut endpoints, mut encrypt_key, mut decrypt_key) = (None, None, None);
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(f) => match f.split_once('=') {
                Some((f, v)) => (Some(f), Some(v.to_string())),
                None => (Some(f), None),
            },
            None => (None, None),
        };
        let Some(flag) = flag else {
            files.push(arg.clone());
            continue;
        };
        if flag == "skip-hash-check" {
            opts.skip_hash_check = inline.as_deref().map(|v| v == "true" || v == "1").unwrap_or(true);
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => rest.next().cloned().ok_or_else(|| anyhow::anyhow!("flag --{flag} needs a value\n{USAGE}"))?,
        };
        match flag {
            "data-dir" => opts.data_dir = Some(value.into()),
            "name" => opts.name = value,
            "initial-cluster" => opts.initial_cluster = value,
            "initial-cluster-token" => opts.initial_cluster_token = value,
            "initial-advertise-peer-urls" => {
                opts.initial_advertise_peer_urls = value.split(',').map(str::to_string).collect()
            }
            "storage-engine" => opts.engine = value.parse()?,
            "endpoints" => endpoints = Some(value),
            "encrypt-key-file" => encrypt_key = Some(Key::read_file(value.as_ref())?),
            "decrypt-key-file" => decrypt_key = Some(Key::read_file(value.as_ref())?),
            other => anyhow::bail!("unknown flag: --{other}\n{USAGE}"),
        }
    }
    let wanted = if action == "decrypt" { 2 } else { 1 };
    anyhow::ensure!(files.len() <= wanted, "snapshot path must be given once\n{USAGE}");
    let Some(file) = files.first() else { anyhow::bail!("snapshot path is required\n{USAGE}") };
    opts.snapshot = file.into();
    match action.as_str() {
        "save" => {
            let Some(endpoints) = endpoints else { anyhow::bail!("--endpoints is required\n{USAGE}") };
            let endpoint = backup::single_endpoint(&endpoints)?;
            let report = backup::save(&endpoint, &opts.snapshot, encrypt_key.as_ref()).await?;
            let how = if report.encrypted { "encrypted snapshot" } else { "snapshot" };
            eprintln!("saved {how} of {} bytes to {}", report.snapshot_bytes, opts.snapshot.display());
            Ok(())
        }
        "keygen" => {
            Key::generate_file(&opts.snapshot)?;
            eprintln!("wrote a new 32-byte key (hex) to {}", opts.snapshot.display());
            Ok(())
        }
        "decrypt" => {
            let Some(out) = files.get(1) else { anyhow::bail!("decrypt needs <in> <out>\n{USAGE}") };
            let Some(key) = decrypt_key else { anyhow::bail!("--decrypt-key-file is required\n{USAGE}") };
            let n = backup::decrypt_file(&key, &opts.snapshot, out.as_ref())?;
            eprintln!("decrypted {} into {out} ({n} bytes)", opts.snapshot.display());
            Ok(())
        }
        "restore" => {
            let report = backup::restore_file(&opts, decrypt_key.as_ref())?;
            eprintln!(
                "restored snapshot {} into {}: {} revision rows, {} leases, revision {}, compacted at {}",
                opts.snapshot.display(),
                opts.data_dir().display(),
                report.rows,
                report.leases,
                report.revision,
                report.compact_revision.map_or_else(|| "none".to_string(), |r| r.to_string()),
            );
            for skipped in &report.skipped {
                eprintln!("skipped {skipped}");
            }
            Ok(())
        }
        "status" => {
            let st = backup::status_file(&opts.snapshot, decrypt_key.as_ref())?;
            println!("{{\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}", st.revision, st.total_keys, st.total_size);
            Ok(())
        }
        other => anyhow::bail!("unknown snapshot command {other:?}\n{USAGE}"),
    }
}
