//! Checking a run from its directory alone — the same code for `run` (once
//! the run is over) and for `keel-jepsen check DIR` — and rendering the
//! report: the statistics, one line per check, the smallest failing
//! sub-histories, and the closing `N passed, N failed` line.
//!
//! The run directory's files:
//! `run.json` (the RunConfig), `history.jsonl` (client ops and nemesis
//! events), `nemesis.jsonl` (the nemesis timeline alone), `status.jsonl`
//! (the monitor's Status samples), `final.json` (convergence, crashes,
//! whether the run broke), `verdict.txt` (this report), `m<i>.log` (member
//! logs), for the watch workload `watches.jsonl` (what its watchers saw)
//! and, when the run did not pass, `m<i>.data` (member data dirs).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{RunConfig, Workload};
use crate::finale::FinalReport;
use crate::history::{f, read_history, Event, HistoryError};
use crate::invariants::{convergence_check, leader_changes, leader_per_term_check, StatusSample};
use crate::lease_check::lease_checks;
use crate::lock_check::lock_checks;
use crate::register_check::{linearizability_check, named_linearizability_check, CheckLimits};
use crate::set_check::set_check;
use crate::stats::RunStats;
use crate::verdict::{CheckResult, Outcome, Verdict};
use crate::watch_check::watch_checks;
use crate::watch_log::{read_watch_log, WatchRecord};

pub const CONFIG_FILE: &str = "run.json";
pub const HISTORY_FILE: &str = "history.jsonl";
pub const NEMESIS_FILE: &str = "nemesis.jsonl";
pub const STATUS_FILE: &str = "status.jsonl";
pub const FINAL_FILE: &str = "final.json";
pub const VERDICT_FILE: &str = "verdict.txt";
pub const WATCH_FILE: &str = "watches.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// A checked run: the verdict and the full text report.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub verdict: Verdict,
    pub text: String,
}

pub fn load_config(dir: &Path) -> Result<RunConfig, CheckError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| CheckError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| CheckError::Json { path, source })
}

/// Reads `status.jsonl`; a torn last line (the run died mid-write) is
/// skipped.
pub fn load_samples(dir: &Path) -> Result<Vec<StatusSample>, CheckError> {
    let path = dir.join(STATUS_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CheckError::Io { path, source }),
    };
    let mut samples = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|source| CheckError::Io {
            path: path.clone(),
            source,
        })?;
        if let Ok(sample) = serde_json::from_str(&line) {
            samples.push(sample);
        }
    }
    Ok(samples)
}

/// `final.json`, or `None` when the run never got that far.
pub fn load_final(dir: &Path) -> Option<FinalReport> {
    FinalReport::load(&dir.join(FINAL_FILE)).ok()
}

/// Checks the run saved in `dir`.
pub fn check_dir(dir: &Path, limits: &CheckLimits) -> Result<RunReport, CheckError> {
    let config = load_config(dir)?;
    let events = read_history(&dir.join(HISTORY_FILE))?;
    let samples = load_samples(dir)?;
    let final_report = load_final(dir);
    let watches = read_watch_log(&dir.join(WATCH_FILE))?;
    Ok(check_run(
        &config,
        &RunRecords {
            events: &events,
            watches: &watches,
            samples: &samples,
        },
        final_report.as_ref(),
        limits,
    ))
}

/// What a run recorded, as the checks read it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunRecords<'a> {
    /// `history.jsonl`.
    pub events: &'a [Event],
    /// `watches.jsonl` (empty but for the watch workload).
    pub watches: &'a [WatchRecord],
    /// `status.jsonl`.
    pub samples: &'a [StatusSample],
}

/// The checks a run is judged by.
pub fn workload_checks(
    config: &RunConfig,
    records: &RunRecords<'_>,
    final_report: Option<&FinalReport>,
    limits: &CheckLimits,
) -> Vec<CheckResult> {
    let events = records.events;
    let mut checks = Vec::new();
    match config.workload {
        Workload::Register => checks.push(linearizability_check(events, limits)),
        Workload::RegisterSerializable => {
            // Serializable reads may be stale: this check is expected to
            // fail under partitions. Updates are linearizable regardless.
            checks.push(linearizability_check(events, limits));
            let updates: Vec<Event> = events.iter().filter(|e| e.f != f::READ).cloned().collect();
            checks.push(named_linearizability_check(
                "linearizable-updates",
                &updates,
                limits,
            ));
        }
        Workload::Set => checks.push(set_check(events)),
        Workload::Watch => checks.extend(watch_checks(events, records.watches, config.nodes)),
        Workload::Lease => checks.extend(lease_checks(events)),
        Workload::Lock => checks.extend(lock_checks(events)),
    }
    checks.push(leader_per_term_check(records.samples));
    checks.push(match final_report {
        Some(report) => convergence_check(&report.states, &report.unreachable),
        None => CheckResult::new(
            "convergence",
            Outcome::Unknown,
            "no final.json: the run ended before healing",
        ),
    });
    checks
}

fn nemesis_summary(events: &[Event]) -> String {
    let mut out = String::new();
    let actions: Vec<&Event> = events.iter().filter(|e| e.is_nemesis()).collect();
    let _ = writeln!(out, "nemesis timeline ({} actions):", actions.len());
    for event in actions {
        let detail = event
            .value
            .get("detail")
            .and_then(|d| d.as_str())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:>8.2}s  {:<8} {}",
            event.start as f64 / 1e9,
            event.f,
            detail
        );
    }
    out
}

/// "m2, m3 (4 times)": each crashed member once, in order of first crash,
/// with how often it crashed when more than once (a crash-looping member).
fn crash_counts(crashed: &[String]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for name in crashed {
        match counts.iter_mut().find(|(n, _)| n == name) {
            Some((_, count)) => *count += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
        .into_iter()
        .map(|(name, count)| match count {
            1 => name.to_string(),
            _ => format!("{name} ({count} times)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks an in-memory run and renders the report.
pub fn check_run(
    config: &RunConfig,
    records: &RunRecords<'_>,
    final_report: Option<&FinalReport>,
    limits: &CheckLimits,
) -> RunReport {
    let (events, samples) = (records.events, records.samples);
    let mut verdict = Verdict::default();
    for check in workload_checks(config, records, final_report, limits) {
        verdict.push(check);
    }
    let mut broken = Vec::new();
    match final_report {
        None => broken.push("the run ended before healing (no final.json)".to_string()),
        Some(report) => {
            broken.extend(report.broken.clone());
            if !report.crashed.is_empty() {
                broken.push(format!(
                    "members exited on their own: {} (see their logs)",
                    crash_counts(&report.crashed)
                ));
            }
        }
    }
    if !broken.is_empty() {
        verdict.broken = Some(broken.join("; "));
    }
    let nemeses: Vec<&str> = config.nemeses.iter().map(|k| k.name()).collect();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "keel-jepsen: workload {}, nemesis {}, {} members, {} workers, {:.0} s, seed {}",
        config.workload,
        if nemeses.is_empty() {
            "none".to_string()
        } else {
            nemeses.join(",")
        },
        config.nodes,
        config.workers(),
        config.time_limit_ms as f64 / 1e3,
        config.seed
    );
    text.push_str(&nemesis_summary(events));
    let stats = RunStats::from_history(events);
    text.push_str(&stats.render(leader_changes(samples).len().saturating_sub(1)));
    if let Some((forwarded, blackholed, killed)) = final_report.map(|r| r.proxy_connections) {
        let _ = writeln!(
            text,
            "peer connections through the proxies: {forwarded} forwarded, {killed} killed by cuts, {blackholed} blackholed"
        );
    }
    text.push_str(&verdict.render());
    RunReport { verdict, text }
}

/// The default search bound for a run's check.
pub fn limits_for(config: &RunConfig) -> CheckLimits {
    CheckLimits {
        search: Duration::from_millis(config.check_time_limit_ms),
        ..CheckLimits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NemesisKind, RunConfig};
    use crate::invariants::FinalState;

    fn config() -> RunConfig {
        RunConfig {
            nodes: 5,
            concurrency_per_member: 1,
            workload: Workload::Set,
            nemeses: vec![NemesisKind::KillDuringSnapshot],
            interval_ms: 1000,
            time_limit_ms: 1000,
            keys: 1,
            ops_per_key: 1,
            op_timeout_ms: 1000,
            rate: 0,
            election_timeout_ms: 500,
            heartbeat_ms: 50,
            seed: 1,
            check_time_limit_ms: 1000,
            snapshot_count: Some(200),
        }
    }

    #[test]
    fn crash_counts_name_each_member_once() {
        let crashed: Vec<String> = ["m3", "m1", "m3", "m3"].iter().map(|s| s.to_string()).collect();
        assert_eq!(crash_counts(&crashed), "m3 (3 times), m1");
        assert_eq!(crash_counts(&[]), "");
    }

    #[test]
    fn a_member_that_crashed_makes_the_run_fail_and_is_named() {
        let state = |member: &str| FinalState {
            member: member.to_string(),
            applied_index: 10,
            revision: 5,
            hash: 7,
            hash_revision: 5,
        };
        let clean = FinalReport {
            states: ["m1", "m2", "m3", "m4", "m5"].into_iter().map(state).collect(),
            ..FinalReport::default()
        };
        let limits = CheckLimits::default();
        assert_eq!(
            check_run(&config(), &RunRecords::default(), Some(&clean), &limits)
                .verdict
                .broken,
            None
        );
        let crashed = FinalReport {
            crashed: vec!["m2".into(), "m2".into()],
            ..clean
        };
        let report = check_run(&config(), &RunRecords::default(), Some(&crashed), &limits);
        assert_ne!(report.verdict.exit_code(), 0);
        assert!(
            report.text.contains("members exited on their own: m2 (2 times)"),
            "{}",
            report.text
        );
    }
}
