//! `etcdctl watch` against the reference etcd and the candidate. A watch never exits by itself, so
//! a case step may run in the background: it starts, the following steps (puts, deletes…) run
//! while it watches, and once the case is over (and at least its window has passed) it is killed
//! and its output so far is what gets compared. Outputs are masked as in `etcdctl.rs`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Child;

use crate::diff;
use crate::etcdctl::{mask_output, run_cmd, Cmd, CmdOutput};
use crate::server::{etcdctl_path, HarnessError, Server, ServerKind};

/// One step: an etcdctl command that runs to completion, or one that watches in the background.
#[derive(Debug, Clone)]
pub enum WatchCmd {
    Run(Cmd),
    /// Started now, killed at the end of the case but not before `window` has passed; stdin (if
    /// any) is written and kept open, as for a user typing into `watch -i`.
    Background {
        cmd: Cmd,
        window: Duration,
    },
    /// Pause between steps.
    Sleep(Duration),
}

#[derive(Debug, Clone)]
pub struct WatchCase {
    pub name: &'static str,
    /// Extra server flags (both servers speak etcd's flags).
    pub flags: Vec<&'static str>,
    pub steps: Vec<WatchCmd>,
}

fn run(line: &str) -> WatchCmd {
    WatchCmd::Run(crate::etcdctl::cmd(line))
}

fn bg(line: &str, window_ms: u64) -> WatchCmd {
    WatchCmd::Background { cmd: crate::etcdctl::cmd(line), window: Duration::from_millis(window_ms) }
}

fn bg_stdin(line: &str, input: &str, window_ms: u64) -> WatchCmd {
    WatchCmd::Background { cmd: crate::etcdctl::cmd(line).stdin(input), window: Duration::from_millis(window_ms) }
}

fn sleep(ms: u64) -> WatchCmd {
    WatchCmd::Sleep(Duration::from_millis(ms))
}

/// Time for a background etcdctl to connect and set up its watch before the next step writes.
const SETTLE_MS: u64 = 700;

pub fn all_cases() -> Vec<WatchCase> {
    vec![
        WatchCase {
            name: "watch_prefix_and_rev",
            flags: vec![],
            steps: vec![
                run("put a/1 v1"),
                run("put a/2 v2"),
                run("put b x"),
                run("del a/1"),
                bg("watch --prefix a/ --rev=1", 1500),
                bg("watch a/2 --rev=3", 1500),
                bg("watch a/ a/3 --rev=2", 1500),
                sleep(SETTLE_MS),
                run("put a/3 v3"),
                run("put a/2 v22"),
            ],
        },
        WatchCase {
            name: "watch_prev_kv_and_formats",
            flags: vec![],
            steps: vec![
                run("put k v1"),
                run("put k v2"),
                run("del k"),
                bg("watch --prev-kv --rev=1 k", 1500),
                bg("watch --rev=1 k -w json", 1500),
                bg("watch --rev=2 k -w fields", 1500),
                bg("watch --prev-kv k --hex", 1500),
                sleep(SETTLE_MS),
                run("put k v3"),
                run("put k v4"),
            ],
        },
        WatchCase {
            name: "watch_compacted_rev",
            flags: vec![],
            steps: vec![
                run("put c 1"),
                run("put c 2"),
                run("put c 3"),
                run("compaction 3"),
                bg("watch c --rev=2", 1500),
                bg("watch c --rev=3", 1500),
            ],
        },
        WatchCase {
            name: "watch_progress_notify",
            flags: vec!["--experimental-watch-progress-notify-interval=1s"],
            steps: vec![
                run("put p 1"),
                bg("watch --progress-notify p", 1600),
                bg("watch --progress-notify q -w json", 1600),
            ],
        },
        WatchCase {
            name: "watch_interactive",
            flags: vec![],
            steps: vec![
                run("put i1 a"),
                run("put j1 a"),
                // Watchers on disjoint keys, so the order of their output is the order of writes.
                bg_stdin("watch -i", "watch i1\nwatch --prefix j --rev=1\nwatch --prev-kv k2\n", 2000),
                sleep(SETTLE_MS),
                run("put i1 b"),
                run("put j2 c"),
                run("put k2 c"),
                run("put k2 d"),
                run("del i1"),
                run("del j1"),
            ],
        },
    ]
}

/// Cases chosen by `KEEL_SCENARIO` (same syntax as elsewhere), or all.
pub fn selected_cases() -> Vec<WatchCase> {
    all_cases().into_iter().filter(|c| crate::chosen(c.name)).collect()
}

/// Start etcdctl on `server` in the background (stdin, if any, written and kept open).
pub async fn spawn(server: &Server, cmd: &Cmd) -> Result<Child, HarnessError> {
    let mut command = tokio::process::Command::new(etcdctl_path());
    command
        .arg(format!("--endpoints={}", server.client_addr()))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=5s")
        .args(&cmd.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            command.env_remove(&key);
        }
    }
    command.env("ETCDCTL_API", "3");
    let mut child =
        command.spawn().map_err(|e| HarnessError::io(format!("spawning {}", etcdctl_path().display()), e))?;
    if let (Some(input), Some(pipe)) = (&cmd.stdin, child.stdin.as_mut()) {
        pipe.write_all(input.as_bytes()).await.map_err(|e| HarnessError::io("writing etcdctl stdin", e))?;
        pipe.flush().await.map_err(|e| HarnessError::io("flushing etcdctl stdin", e))?;
    }
    Ok(child)
}

/// Runs a case on `server`: one masked output per step (sleeps give an empty one).
pub async fn run_case(server: &Server, case: &WatchCase) -> Result<Vec<CmdOutput>, HarnessError> {
    let empty = CmdOutput { exit_code: None, stdout: String::new(), stderr: String::new() };
    let mut outputs = vec![empty; case.steps.len()];
    let mut background = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        match step {
            WatchCmd::Run(cmd) => outputs[i] = mask_output(&run_cmd(server, cmd).await?, cmd.mask),
            WatchCmd::Background { cmd, window } => {
                let child = spawn(server, cmd).await?;
                background.push((i, child, tokio::time::Instant::now() + *window, cmd.mask));
            }
            WatchCmd::Sleep(d) => tokio::time::sleep(*d).await,
        }
    }
    // Let events of the last writes reach every watcher before the watchers are stopped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, mut child, deadline, mask) in background {
        tokio::time::sleep_until(deadline).await;
        // The child is ours (spawned above); kill it by its handle and keep what it printed.
        let _ = child.start_kill();
        let out = child.wait_with_output().await.map_err(|e| HarnessError::io("waiting for etcdctl", e))?;
        let raw = CmdOutput {
            // Killed on purpose: the exit status says nothing about the server.
            exit_code: None,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        outputs[i] = mask_output(&raw, mask);
    }
    Ok(outputs)
}

fn describe(step: &WatchCmd) -> String {
    match step {
        WatchCmd::Run(cmd) => format!("etcdctl {}", cmd.args.join(" ")),
        WatchCmd::Background { cmd, window } => {
            let input = cmd.stdin.as_ref().map(|s| format!(" <<< {s:?}")).unwrap_or_default();
            format!("etcdctl {}{input} (background, {window:?})", cmd.args.join(" "))
        }
        WatchCmd::Sleep(d) => format!("sleep {d:?}"),
    }
}

fn render(o: &CmdOutput) -> String {
    format!("exit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", o.exit_code, o.stdout, o.stderr)
}

/// Runs `case` on a fresh reference and a fresh candidate server and compares; `Err` is a report.
pub async fn run_differential(case: &WatchCase, reference: ServerKind, candidate: ServerKind) -> Result<(), String> {
    async fn one(kind: ServerKind, case: &WatchCase) -> Result<(Vec<CmdOutput>, Server), HarnessError> {
        let server = Server::start_with(kind, &case.flags).await?;
        let outputs = run_case(&server, case).await?;
        Ok((outputs, server))
    }
    let (r, c) = tokio::join!(one(reference, case), one(candidate, case));
    let (ref_out, _r) = r.map_err(|e| format!("case `{}`: {reference}: {e}", case.name))?;
    let (cand_out, cand_server) = c.map_err(|e| format!("case `{}`: {candidate}: {e}", case.name))?;
    if let Some(dir) = std::env::var_os("KEEL_COMPAT_DUMP") {
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for (kind, role, out) in [(reference, "reference", &ref_out), (candidate, "candidate", &cand_out)] {
            let text: String =
                case.steps.iter().zip(out).map(|(s, o)| format!("$ {}\n{}\n\n", describe(s), render(o))).collect();
            let _ = std::fs::write(dir.join(format!("etcdctl-watch.{}.{role}-{kind}.txt", case.name)), text);
        }
    }
    let Some(index) = ref_out.iter().zip(&cand_out).position(|(a, b)| a != b) else {
        return Ok(());
    };
    let mut report = format!(
        "case `{}`: step {} of {} differs ({reference} = reference, {candidate} = candidate)\n",
        case.name,
        index + 1,
        case.steps.len()
    );
    for (i, step) in case.steps.iter().enumerate() {
        report.push_str(&format!("  {:>3}. {}\n", i + 1, describe(step)));
    }
    report.push_str(&format!(
        "output diff (- {reference}, + {candidate}):\n{}",
        diff::line_diff(&render(&ref_out[index]), &render(&cand_out[index]))
    ));
    report.push_str(&format!("--- last lines of the {candidate} log ---\n{}\n", cand_server.log_tail(15)));
    Err(report)
}
