//! Runs many independent differential checks with bounded parallelism and turns their results into
//! one pass/fail verdict with every failure's report.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Parallel checks at once: `KEEL_COMPAT_JOBS`, default 4 (each check runs two servers).
pub fn jobs() -> usize {
    std::env::var("KEEL_COMPAT_JOBS").ok().and_then(|s| s.parse::<usize>().ok()).filter(|&n| n > 0).unwrap_or(4)
}

/// Longest a single check may run: `KEEL_COMPAT_CHECK_TIMEOUT` seconds, default 180.
pub fn check_timeout() -> Duration {
    let secs = std::env::var("KEEL_COMPAT_CHECK_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(180);
    Duration::from_secs(secs)
}

/// Outcome of one named check.
#[derive(Debug)]
pub struct CheckResult {
    pub name: String,
    pub elapsed: Duration,
    pub result: Result<(), String>,
}

/// Runs `check(item)` for every item, at most `jobs` at a time, printing one line per finished check.
pub async fn run_parallel<T, F, Fut>(items: Vec<(String, T)>, jobs: usize, check: F) -> Vec<CheckResult>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(jobs.max(1)));
    let check = Arc::new(check);
    let mut handles = Vec::with_capacity(items.len());
    for (name, item) in items {
        let permits = Arc::clone(&permits);
        let check = Arc::clone(&check);
        handles.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let started = Instant::now();
            let result = match tokio::time::timeout(check_timeout(), check(item)).await {
                Ok(result) => result,
                Err(_) => {
                    Err(format!("{name}: gave up after {:?} (KEEL_COMPAT_CHECK_TIMEOUT seconds)", check_timeout()))
                }
            };
            let elapsed = started.elapsed();
            let verdict = if result.is_ok() { "ok  " } else { "FAIL" };
            eprintln!("compat: {verdict} {name} ({:.1}s)", elapsed.as_secs_f64());
            CheckResult { name, elapsed, result }
        }));
    }
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok(r) => results.push(r),
            Err(e) => results.push(CheckResult {
                name: "<task>".to_string(),
                elapsed: Duration::ZERO,
                result: Err(format!("check task failed: {e}")),
            }),
        }
    }
    results
}

/// Runs every check (`jobs()` at a time) and gives [`verdict`]'s answer under the title `what`.
pub async fn check_all<T, F, Fut>(what: &str, items: Vec<(String, T)>, check: F) -> Result<(), String>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let results = run_parallel(items, jobs(), check).await;
    verdict(what, &results)
}

/// `Ok` if every check passed, else one report listing the failed names and each failure in full.
pub fn verdict(what: &str, results: &[CheckResult]) -> Result<(), String> {
    let failed: Vec<&CheckResult> = results.iter().filter(|r| r.result.is_err()).collect();
    eprintln!("compat: {what}: {} passed, {} failed", results.len() - failed.len(), failed.len());
    if results.is_empty() {
        return Err(format!("{what}: nothing selected (check KEEL_SCENARIO)"));
    }
    if failed.is_empty() {
        return Ok(());
    }
    let mut report = format!(
        "{what}: {} of {} failed: {}\n",
        failed.len(),
        results.len(),
        failed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    for r in failed {
        if let Err(e) = &r.result {
            report.push_str("\n==============================================================\n");
            report.push_str(e);
            report.push('\n');
        }
    }
    Err(report)
}
