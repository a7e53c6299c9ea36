//! etcdctl comparisons: the stock etcdctl 3.5.16 runs the same command sequence against each server,
//! and stdout, stderr and exit code must match once member ids, terms, ports, timings, pointers and
//! timestamps are masked. `endpoint status` and `member list` are compared by shape (columns, version,
//! leader/learner flags), since sizes and raft indexes are implementation details.

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use regex::Regex;
use tokio::io::AsyncWriteExt;

use crate::diff;
use crate::server::{etcdctl_path, HarnessError, Server, ServerKind};

/// A whole etcdctl invocation may take this long (its own command timeout is shorter).
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// How an output is normalised before comparing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Mask ids, terms, ports, timings, pointers and timestamps; everything else must match.
    Standard,
    /// Additionally mask every number and hex id (for status / member listings).
    Shape,
}

/// One etcdctl invocation: arguments after the global flags, optional stdin.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub args: Vec<String>,
    pub stdin: Option<String>,
    pub mask: Mask,
}

/// etcdctl with whitespace-separated arguments (no argument contains spaces).
pub fn cmd(line: &str) -> Cmd {
    Cmd { args: line.split_whitespace().map(str::to_string).collect(), stdin: None, mask: Mask::Standard }
}

/// etcdctl with explicit arguments (for empty strings or spaces).
pub fn cmd_args(args: &[&str]) -> Cmd {
    Cmd { args: args.iter().map(|s| s.to_string()).collect(), stdin: None, mask: Mask::Standard }
}

impl Cmd {
    pub fn stdin(mut self, input: &str) -> Cmd {
        self.stdin = Some(input.to_string());
        self
    }

    pub fn shape(mut self) -> Cmd {
        self.mask = Mask::Shape;
        self
    }

    fn describe(&self) -> String {
        let mut s = format!("etcdctl {}", self.args.join(" "));
        if let Some(input) = &self.stdin {
            s.push_str(&format!(" <<< {input:?}"));
        }
        s
    }
}

/// A named command sequence run on one fresh server.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub cmds: Vec<Cmd>,
}

/// What a client sees from one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    fn render(&self) -> String {
        format!("exit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.exit_code, self.stdout, self.stderr)
    }
}

/// Runs one invocation against `server`, with a hard deadline (the child is killed on timeout).
pub async fn run_cmd(server: &Server, cmd: &Cmd) -> Result<CmdOutput, HarnessError> {
    run_cmd_at(&server.client_addr(), cmd).await
}

/// Runs one invocation against `endpoints` (comma-separated `host:port`s), with a hard deadline.
pub async fn run_cmd_at(endpoints: &str, cmd: &Cmd) -> Result<CmdOutput, HarnessError> {
    let mut command = tokio::process::Command::new(etcdctl_path());
    command
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=5s")
        .args(&cmd.args)
        .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Only the flags above may configure etcdctl.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            command.env_remove(&key);
        }
    }
    command.env("ETCDCTL_API", "3");
    let mut child =
        command.spawn().map_err(|e| HarnessError::io(format!("spawning {}", etcdctl_path().display()), e))?;
    if let (Some(input), Some(mut pipe)) = (&cmd.stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.map_err(|e| HarnessError::io("writing etcdctl stdin", e))?;
        // Dropping the pipe closes it: etcdctl reads stdin to EOF.
        drop(pipe);
    }
    match tokio::time::timeout(CMD_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(CmdOutput {
            exit_code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        Ok(Err(e)) => Err(HarnessError::io("waiting for etcdctl", e)),
        Err(_) => Err(HarnessError::Other(format!("`{}` did not finish within {CMD_TIMEOUT:?}", cmd.describe()))),
    }
}

struct Maskers {
    standard: Vec<(Regex, &'static str)>,
    size: Regex,
    number: Regex,
}

fn maskers() -> Option<&'static Maskers> {
    static MASKERS: OnceLock<Option<Maskers>> = OnceLock::new();
    MASKERS
        .get_or_init(|| {
            let rules: [(&str, &'static str); 13] = [
                // Lease TTLs print as Go-like durations but are numbers to compare exactly.
                (r"\b(TTL|remaining)\((-?\d+)s\)", "$1(${2} seconds)"),
                (r#""cluster_id":\d+"#, r#""cluster_id":<cluster_id>"#),
                (r#""member_id":\d+"#, r#""member_id":<member_id>"#),
                (r#""raft_term":\d+"#, r#""raft_term":<raft_term>"#),
                (r#""ClusterID" : \d+"#, r#""ClusterID" : <cluster_id>"#),
                (r#""MemberID" : \d+"#, r#""MemberID" : <member_id>"#),
                (r#""RaftTerm" : \d+"#, r#""RaftTerm" : <raft_term>"#),
                (r#""ts":"[^"]*""#, r#""ts":"<ts>""#),
                (r"0xc[0-9a-f]{6,}", "0x<ptr>"),
                (r"127\.0\.0\.1:\d+", "127.0.0.1:<port>"),
                (r"took = [0-9.]+[a-zµ]*", "took = <duration>"),
                (r#""took":"[^"]*""#, r#""took":"<duration>""#),
                // Go durations elsewhere (the TOOK column of `endpoint health -w table`).
                (r"\b\d+(?:\.\d+)?(?:ns|µs|us|ms|s)\b", "<duration>"),
            ];
            let mut standard = Vec::new();
            for (pattern, replacement) in rules {
                standard.push((Regex::new(pattern).ok()?, replacement));
            }
            Some(Maskers {
                standard,
                size: Regex::new(r"\b\d+(?:\.\d+)? ?[kMGT]?B\b").ok()?,
                number: Regex::new(r"\b[0-9a-f]+(?:\.[0-9]+)*\b").ok()?,
            })
        })
        .as_ref()
}

/// Table borders and cell padding depend on the widest cell; compare cells, not widths.
fn normalise_tables(text: &str) -> String {
    text.lines()
        .map(|line| {
            let t = line.trim_end();
            if t.len() > 1 && t.starts_with('+') && t.ends_with('+') && t.chars().all(|c| c == '+' || c == '-') {
                "+-table-border-+".to_string()
            } else if t.len() > 1 && t.starts_with('|') && t.ends_with('|') {
                let cells: Vec<&str> = t[1..t.len() - 1].split('|').map(str::trim).collect();
                format!("| {} |", cells.join(" | "))
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Applies the masking rules of `mode` to one stream of output.
pub fn mask_text(text: &str, mode: Mask) -> String {
    let Some(m) = maskers() else {
        return text.to_string();
    };
    let mut out = normalise_tables(text);
    for (re, replacement) in &m.standard {
        out = re.replace_all(&out, *replacement).into_owned();
    }
    if mode == Mask::Shape {
        out = m.size.replace_all(&out, "<size>").into_owned();
        out = m
            .number
            .replace_all(&out, |caps: &regex::Captures<'_>| {
                let token = &caps[0];
                // Dotted tokens are versions ("3.5.16"); digit-free tokens are words ("bad", "cafe").
                if token.contains('.') || !token.bytes().any(|c| c.is_ascii_digit()) {
                    token.to_string()
                } else {
                    "<n>".to_string()
                }
            })
            .into_owned();
    }
    out
}

pub fn mask_output(output: &CmdOutput, mode: Mask) -> CmdOutput {
    CmdOutput {
        exit_code: output.exit_code,
        stdout: mask_text(&output.stdout, mode),
        stderr: log_lines_sorted(&mask_text(&output.stderr, mode)),
    }
}

/// etcdctl's JSON log lines come from several goroutines (a snapshot download logs "fetching
/// snapshot" while the stream's reader logs its failure), so their order varies from run to run:
/// they are compared sorted, ahead of the other lines, which keep their order.
fn log_lines_sorted(stderr: &str) -> String {
    let (mut logs, rest): (Vec<&str>, Vec<&str>) = stderr.lines().partition(|l| l.starts_with("{\"level\""));
    logs.sort_unstable();
    let mut out = logs.into_iter().chain(rest).collect::<Vec<_>>().join("\n");
    if stderr.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Runs every command of `case` on `server`, returning masked outputs.
pub async fn run_case(server: &Server, case: &Case) -> Result<Vec<CmdOutput>, HarnessError> {
    let mut outputs = Vec::with_capacity(case.cmds.len());
    let mut leases = LeaseIds::default();
    for cmd in &case.cmds {
        let cmd = leases.substitute(cmd);
        let out = run_cmd(server, &cmd).await?;
        leases.capture(&cmd, &out);
        outputs.push(leases.mask(mask_output(&out, cmd.mask)));
    }
    Ok(outputs)
}

/// Lease ids the servers picked in `lease grant` (each server picks its own): a later argument
/// `$L1`, `$L2`, … stands for the first, second, … id granted in the case, and every id in an
/// output is shown as `<lease1>`, `<lease2>`, … (etcdctl prints them in hex, and in decimal in JSON).
#[derive(Default)]
struct LeaseIds {
    /// (hex, decimal) of each granted id, in order.
    ids: Vec<(String, String)>,
}

impl LeaseIds {
    fn substitute(&self, cmd: &Cmd) -> Cmd {
        let mut out = cmd.clone();
        for arg in &mut out.args {
            // Highest numbers first, so `$L1` does not eat the front of `$L10`.
            for (n, (hex, _)) in self.ids.iter().enumerate().rev() {
                *arg = arg.replace(&format!("$L{}", n + 1), hex);
            }
        }
        out
    }

    fn capture(&mut self, cmd: &Cmd, out: &CmdOutput) {
        if cmd.args.first().map(String::as_str) != Some("lease") || cmd.args.get(1).map(String::as_str) != Some("grant")
        {
            return;
        }
        static TEXT: OnceLock<Option<Regex>> = OnceLock::new();
        static JSON: OnceLock<Option<Regex>> = OnceLock::new();
        let text = TEXT.get_or_init(|| Regex::new(r"lease ([0-9a-f]+) granted with TTL").ok()).as_ref();
        let json = JSON.get_or_init(|| Regex::new(r#""ID":(\d+)"#).ok()).as_ref();
        let id = text
            .and_then(|re| re.captures(&out.stdout))
            .and_then(|c| i64::from_str_radix(&c[1], 16).ok())
            .or_else(|| json.and_then(|re| re.captures(&out.stdout)).and_then(|c| c[1].parse::<i64>().ok()));
        if let Some(id) = id {
            self.ids.push((format!("{id:016x}"), id.to_string()));
        }
    }

    fn mask(&self, mut out: CmdOutput) -> CmdOutput {
        for (n, (hex, dec)) in self.ids.iter().enumerate() {
            let name = format!("<lease{}>", n + 1);
            for text in [&mut out.stdout, &mut out.stderr] {
                *text = text.replace(hex.as_str(), &name).replace(dec.as_str(), &name);
            }
        }
        out
    }
}

/// With `KEEL_COMPAT_DUMP=<dir>`, writes `<dir>/etcdctl.<case>.<role>-<kind>.txt` (masked outputs).
fn dump_outputs(case: &Case, role: &str, kind: ServerKind, outputs: &[CmdOutput]) {
    let Some(dir) = std::env::var_os("KEEL_COMPAT_DUMP") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let path = dir.join(format!("etcdctl.{}.{role}-{kind}.txt", case.name));
    let mut text = String::new();
    for (cmd, out) in case.cmds.iter().zip(outputs) {
        text.push_str(&format!("$ {}\n{}\n\n", cmd.describe(), out.render()));
    }
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text));
    if let Err(e) = written {
        eprintln!("compat: could not write {}: {e}", path.display());
    }
}

/// Runs `case` on a fresh reference and a fresh candidate server and compares; `Err` is a report.
pub async fn run_differential(case: &Case, reference: ServerKind, candidate: ServerKind) -> Result<(), String> {
    async fn one(kind: ServerKind, case: &Case) -> Result<(Vec<CmdOutput>, Server), HarnessError> {
        let server = Server::start(kind).await?;
        let outputs = run_case(&server, case).await?;
        Ok((outputs, server))
    }
    let (r, c) = tokio::join!(one(reference, case), one(candidate, case));
    let (ref_out, _ref_server) = r.map_err(|e| format!("case `{}`: {reference} (reference): {e}", case.name))?;
    let (cand_out, cand_server) = c.map_err(|e| format!("case `{}`: {candidate} (candidate): {e}", case.name))?;
    dump_outputs(case, "reference", reference, &ref_out);
    dump_outputs(case, "candidate", candidate, &cand_out);
    let Some(index) = ref_out.iter().zip(&cand_out).position(|(a, b)| a != b) else {
        return Ok(());
    };
    let mut report = format!(
        "case `{}`: command {} of {} differs ({reference} = reference, {candidate} = candidate)\n",
        case.name,
        index + 1,
        case.cmds.len()
    );
    for (i, cmd) in case.cmds.iter().enumerate().take(index + 1) {
        report.push_str(&format!("  {:>3}. {}\n", i + 1, cmd.describe()));
    }
    report.push_str(&format!(
        "output diff (- {reference}, + {candidate}):\n{}",
        diff::line_diff(&ref_out[index].render(), &cand_out[index].render())
    ));
    report.push_str(&format!(
        "--- last lines of the {candidate} log ({}) ---\n{}\n",
        cand_server.log_path().display(),
        cand_server.log_tail(15)
    ));
    Err(report)
}

/// The etcdctl case catalogue.
pub fn all_cases() -> Vec<Case> {
    let txn_success = "value(\"k\") = \"v\"\n\nput k ok\nget k\n\nput k bad\n\n";
    let txn_failure = "value(\"k\") = \"nope\"\n\nput k ok\n\nput k bad\nget k\n\n";
    let txn_many_compares = concat!(
        "mod(\"k\") > \"0\"\n",
        "create(\"k\") = \"2\"\n",
        "version(\"k\") = \"1\"\n",
        "value(\"k\") != \"x\"\n",
        "\n",
        "put a 1\n",
        "get k\n",
        "del k\n",
        "\n",
        "put b 2\n",
        "\n",
    );
    vec![
        Case {
            name: "put_get_basic",
            cmds: vec![
                cmd("put foo bar"),
                cmd("get foo"),
                cmd("get missing"),
                cmd("put foo bar2"),
                cmd("get foo --print-value-only"),
                cmd("get foo -w json"),
                cmd("get foo -w fields"),
                cmd("put foo2 baz -w json"),
            ],
        },
        Case {
            name: "get_prefix_range_from_key",
            cmds: vec![
                cmd("put a/1 v1"),
                cmd("put a/2 v2"),
                cmd("put a/3 v3"),
                cmd("put b x"),
                cmd("get --prefix a/"),
                cmd("get --prefix a/ --keys-only"),
                cmd("get --prefix a/ --count-only -w fields"),
                cmd("get --prefix a/ --count-only"),
                cmd("get a/1 a/3"),
                cmd("get --from-key a/2"),
                cmd_args(&["get", "--prefix", ""]),
                cmd("get --prefix a/ -w fields"),
            ],
        },
        Case {
            name: "get_limit_and_rev",
            cmds: vec![
                cmd("put x 1"),
                cmd("put x 2"),
                cmd("put y 3"),
                cmd("get x --rev=2"),
                cmd("get x --rev=1"),
                cmd("get x --rev=99"),
                cmd("get --prefix x --rev=0"),
                cmd_args(&["get", "--prefix", "", "--limit=1"]),
                cmd_args(&["get", "--prefix", "", "--limit=1", "-w", "json"]),
            ],
        },
        Case {
            name: "get_sort",
            cmds: vec![
                cmd("put k3 c"),
                cmd("put k1 e"),
                cmd("put k2 d"),
                cmd("put k3 c2"),
                cmd("get --prefix k --sort-by=KEY --order=DESCEND"),
                cmd("get --prefix k --sort-by=VERSION --order=ASCEND"),
                cmd("get --prefix k --sort-by=CREATE --order=DESCEND"),
                cmd("get --prefix k --sort-by=MODIFY --order=ASCEND"),
                cmd("get --prefix k --sort-by=VALUE --order=DESCEND"),
                cmd("get --prefix k --order=DESCEND"),
                cmd("get --prefix k --sort-by=MODIFY --limit=2 -w json"),
            ],
        },
        Case {
            name: "get_serializable_and_hex",
            cmds: vec![
                cmd("put k1 a"),
                cmd("put k2 b"),
                cmd("put k1 c"),
                cmd("get k1 --consistency=s"),
                cmd("get --prefix k --consistency=s -w json"),
                cmd("get --prefix k --hex"),
                cmd("get k2 --hex -w fields"),
                cmd("get --prefix k --keys-only --limit=1 --order=DESCEND"),
            ],
        },
        Case {
            name: "del_variants",
            cmds: vec![
                cmd("put a/1 1"),
                cmd("put a/2 2"),
                cmd("put a/3 3"),
                cmd("put b 4"),
                cmd("put c 5"),
                cmd("put d 6"),
                cmd("del a/1"),
                cmd("del --prefix a/"),
                cmd("del --prev-kv b"),
                cmd("del missing"),
                cmd("del --from-key c -w json"),
                cmd_args(&["get", "--prefix", ""]),
            ],
        },
        Case {
            name: "put_options",
            cmds: vec![
                cmd("put k v --prev-kv"),
                cmd("put k v2 --prev-kv"),
                cmd("put k --ignore-value"),
                cmd("put k v3 --ignore-value"),
                cmd("put missing --ignore-value"),
                cmd("put k v4 --ignore-lease"),
                cmd("put k v5 --lease=1234"),
                cmd("get k -w json"),
                cmd_args(&["put", "", "v"]),
            ],
        },
        Case {
            name: "txn_interactive",
            cmds: vec![
                cmd("put k v"),
                cmd("txn -i").stdin(txn_success),
                cmd("txn -i").stdin(txn_failure),
                cmd("txn -i -w json").stdin(txn_failure),
                cmd("txn").stdin(txn_success),
                cmd("get k"),
            ],
        },
        Case {
            name: "txn_compares_and_ops",
            cmds: vec![
                cmd("put k v"),
                cmd("txn -i").stdin(txn_many_compares),
                cmd("txn -i").stdin(txn_many_compares),
                cmd_args(&["get", "--prefix", ""]),
            ],
        },
        Case {
            name: "compaction",
            cmds: vec![
                cmd("put x 1"),
                cmd("put x 2"),
                cmd("put x 3"),
                cmd("put x 4"),
                cmd("compaction 3"),
                cmd("get x --rev=2"),
                cmd("get x --rev=3"),
                cmd("compaction 3"),
                cmd("compaction --physical 4"),
                cmd("get x --rev=4 -w json"),
                cmd("compaction 100"),
            ],
        },
        Case {
            name: "lease_grant_revoke_timetolive",
            cmds: vec![
                cmd("lease grant 60"),
                // Raised to the 2 s minimum; revoked at once so its expiry cannot race the case.
                cmd("lease grant 1"),
                cmd("lease timetolive --keys $L2"),
                cmd("lease revoke $L2"),
                cmd("lease grant 30"),
                cmd("put --lease=$L1 k1 v1"),
                cmd("get k1 -w json"),
                cmd("lease timetolive $L1"),
                cmd("lease timetolive --keys $L1"),
                // Soonest expiry first.
                cmd("lease list"),
                cmd("lease keep-alive --once $L1"),
                cmd("lease revoke $L1"),
                cmd("get k1"),
                cmd("lease timetolive $L1"),
                cmd("lease revoke $L1"),
                cmd("lease keep-alive --once $L1"),
                cmd("lease list"),
                cmd("lease grant 9000000001"),
                cmd("lease timetolive 1234abcd"),
                cmd("put --lease=1234abcd k2 v2"),
                cmd("lease revoke zz"),
            ],
        },
        Case {
            name: "lease_json_output",
            cmds: vec![
                cmd("lease grant 30 -w json"),
                cmd("put --lease=$L1 a 1 -w json"),
                cmd("lease timetolive --keys $L1 -w json"),
                cmd("lease list -w json"),
                cmd("lease keep-alive --once $L1 -w json"),
                cmd("lease revoke $L1 -w json"),
                cmd("lease timetolive $L1 -w json"),
                cmd("get a -w json"),
            ],
        },
        Case {
            name: "endpoint_status",
            cmds: vec![
                cmd("put a 1"),
                cmd("endpoint status").shape(),
                cmd("endpoint status -w table").shape(),
                cmd("endpoint status -w json").shape(),
            ],
        },
        Case {
            name: "endpoint_health",
            cmds: vec![cmd("endpoint health"), cmd("endpoint health -w json"), cmd("endpoint health -w table")],
        },
        Case {
            name: "member_list",
            cmds: vec![
                cmd("member list").shape(),
                cmd("member list -w table").shape(),
                cmd("member list -w json").shape(),
            ],
        },
    ]
}

/// Cases chosen by `KEEL_SCENARIO` (same syntax as for KV scenarios), or all.
pub fn selected_cases() -> Vec<Case> {
    all_cases().into_iter().filter(|c| crate::chosen(c.name)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_mask_hides_ids_ports_and_timings() {
        let raw = r#"{"header":{"cluster_id":123,"member_id":456,"revision":6,"raft_term":2}} 127.0.0.1:55743 is healthy: successfully committed proposal: took = 1.6ms {"level":"warn","ts":"2026-01-01T00:00:00Z","target":"etcd-endpoints://0xc000396b40/127.0.0.1:1"}"#;
        let masked = mask_text(raw, Mask::Standard);
        assert_eq!(
            masked,
            r#"{"header":{"cluster_id":<cluster_id>,"member_id":<member_id>,"revision":6,"raft_term":<raft_term>}} 127.0.0.1:<port> is healthy: successfully committed proposal: took = <duration> {"level":"warn","ts":"<ts>","target":"etcd-endpoints://0x<ptr>/127.0.0.1:<port>"}"#
        );
    }

    #[test]
    fn shape_mask_keeps_version_and_flags() {
        let a = "127.0.0.1:55743, bdae9bbc11dd390d, 3.5.16, 20 kB, true, false, 2, 10, 10, ";
        let b = "127.0.0.1:40001, 91dcca825558900, 3.5.16, 1.2 MB, true, false, 3, 7, 7, ";
        assert_eq!(mask_text(a, Mask::Shape), mask_text(b, Mask::Shape));
        assert!(mask_text(a, Mask::Shape).contains("3.5.16, <size>, true, false"));
    }

    #[test]
    fn tables_compare_by_cells() {
        let a = "+----+---+\n| ID | X |\n+----+---+\n| ab | 1 |\n+----+---+";
        let b = "+--------+---+\n|   ID   | X |\n+--------+---+\n|   ab   | 1 |\n+--------+---+";
        assert_eq!(normalise_tables(a), normalise_tables(b));
    }
}
