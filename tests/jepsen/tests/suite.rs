//! The partition suite end to end, through the real `keel-jepsen` binary
//! against real 3-member keel clusters (`cargo build --workspace --bins`
//! first, as test.sh does):
//! - serializable reads under `partition-leader` are reported as stale
//!   (linearizability FAIL, exit 1) while the same run with linearizable
//!   reads is valid (exit 0);
//! - the CI short suite: every workload under every nemesis for a short
//!   run, each valid (`register-serializable` may only fail its
//!   linearizability check, which serializable reads are allowed to fail);
//!   the watch workload in a test of its own, with shorter runs, so that
//!   neither test nears nextest's limit;
//! - the `member` nemesis (members removed and fresh ones added while the
//!   workload runs) under `register` and `set`, each valid, with members
//!   really replaced;
//! - a check out of time on a huge history says unknown (exit 2), never
//!   valid (no cluster needed).
//!
//! The cluster runs share 2 cores, so they take a lock and run one at a
//! time. A failing run's directory is kept and its path printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Instant;

use keel_jepsen::config::{NemesisKind, RunConfig, Workload};
use keel_jepsen::invariants::{FinalState, StatusSample};

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn keel_jepsen() -> PathBuf {
    keel_tests::built_binary("keel-jepsen")
        .ok()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_keel-jepsen")))
}

/// A directory for a run, removed when the run passed.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn new(name: &str) -> RunDir {
        let path = std::env::temp_dir().join(format!("keel-jepsen-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        RunDir { path, keep: false }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!("kept run directory {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

struct Finished {
    code: i32,
    stdout: String,
}

fn run_suite(dir: &Path, args: &[&str]) -> Finished {
    let started = Instant::now();
    let output: Output = Command::new(keel_jepsen())
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(dir)
        .env("KEEL_JEPSEN_LOG", "warn")
        .output()
        .expect("keel-jepsen runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!(
        "keel-jepsen run {} -> {:?} in {:.0?}\n{stdout}{}",
        args.join(" "),
        output.status.code(),
        started.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
    Finished {
        code: output.status.code().unwrap_or(-1),
        stdout,
    }
}

/// The outcome word of check `name` in a report (`PASS`, `FAIL`, `UNKNOWN`).
fn outcome_of<'a>(report: &'a str, name: &str) -> Option<&'a str> {
    report.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let outcome = words.next()?;
        (words.next()? == name).then_some(outcome)
    })
}

/// (outcome, name) of every check line of a report.
fn check_lines(report: &str) -> Vec<(String, String)> {
    report
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let outcome = words.next()?;
            if !["PASS", "FAIL", "UNKNOWN"].contains(&outcome) || line.starts_with(' ') {
                return None;
            }
            Some((outcome.to_string(), words.next()?.to_string()))
        })
        .collect()
}

#[test]
fn serializable_reads_under_partition_leader_are_caught_and_linearizable_ones_pass() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let common = [
        "--nodes",
        "3",
        "--nemesis",
        "partition-leader",
        "--time-limit",
        "20",
        "--interval",
        "4",
        // Few keys and short op timeouts: the isolated old leader's workers
        // spend less time stuck on writes and read the keys the majority
        // writes, so a stale read shows up in every partition window, also
        // on a loaded CI machine (with 10 keys and 1.5 s timeouts a run there
        // once saw none).
        "--keys",
        "2",
        "--op-timeout-ms",
        "500",
        "--seed",
        "11",
    ];

    let stale_dir = RunDir::new("serializable");
    let mut args = common.to_vec();
    args.extend(["--workload", "register-serializable"]);
    let stale = run_suite(&stale_dir.path, &args);
    assert_eq!(
        stale.code, 1,
        "stale serializable reads must be reported as an anomaly"
    );
    assert_eq!(outcome_of(&stale.stdout, "linearizability"), Some("FAIL"));
    assert_eq!(outcome_of(&stale.stdout, "linearizable-updates"), Some("PASS"));
    assert!(
        stale.stdout.contains("smallest failing sub-history") && stale.stdout.contains("read -> "),
        "the report must show a failing read"
    );
    assert!(
        stale_dir.path.join("m1.data").is_dir(),
        "a failed run keeps its data dirs"
    );

    let valid_dir = RunDir::new("linearizable");
    let mut args = common.to_vec();
    args.extend(["--workload", "register"]);
    let valid = run_suite(&valid_dir.path, &args);
    assert_eq!(
        valid.code, 0,
        "linearizable reads under the same faults must be valid"
    );
    assert_eq!(outcome_of(&valid.stdout, "linearizability"), Some("PASS"));
    assert!(valid.stdout.trim_end().ends_with("3 passed, 0 failed"));
    assert!(
        !valid_dir.path.join("m1.data").exists(),
        "a passing run drops its data dirs"
    );
    for file in [
        "history.jsonl",
        "nemesis.jsonl",
        "status.jsonl",
        "final.json",
        "m1.log",
        "verdict.txt",
    ] {
        assert!(valid_dir.path.join(file).is_file(), "{file} missing");
    }

    // A saved run re-checks to the same verdict.
    let recheck = Command::new(keel_jepsen())
        .arg("check")
        .arg(&valid_dir.path)
        .output()
        .expect("keel-jepsen check");
    assert_eq!(recheck.status.code(), Some(0));
}

/// Seconds per run of the short suite: 21 runs (3 workloads x 7 nemeses),
/// each with about four faults at a 3 s interval, must stay under the 6
/// minutes the suite may take of CI's 30 on 2 cores.
const SHORT_RUN_SECONDS: &str = "14";

/// Seconds per run of the watch workload's short suite (one run per
/// nemesis, about 15 s each).
const SHORT_WATCH_RUN_SECONDS: &str = "12";

/// The workloads the main short suite runs (watch has its own test).
const SHORT_SUITE_WORKLOADS: [Workload; 3] =
    [Workload::Register, Workload::Set, Workload::RegisterSerializable];

#[test]
fn short_suite_every_workload_under_every_nemesis_is_valid() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let mut failures = Vec::new();
    for (w, workload) in SHORT_SUITE_WORKLOADS.into_iter().enumerate() {
        for (n, nemesis) in NemesisKind::ALL.into_iter().enumerate() {
            let mut dir = RunDir::new(&format!("{workload}-{nemesis}"));
            let seed = (100 + 10 * w + n).to_string();
            let run = run_suite(
                &dir.path,
                &[
                    "--nodes",
                    "3",
                    "--workload",
                    workload.name(),
                    "--nemesis",
                    nemesis.name(),
                    "--time-limit",
                    SHORT_RUN_SECONDS,
                    "--interval",
                    "3",
                    "--seed",
                    &seed,
                    "--check-time-limit",
                    "60",
                ],
            );
            let checks = check_lines(&run.stdout);
            let acceptable = match workload {
                // Stale serializable reads are allowed; nothing else is.
                Workload::RegisterSerializable => {
                    (run.code == 0 || run.code == 1)
                        && checks.len() == 4
                        && checks
                            .iter()
                            .all(|(outcome, name)| outcome == "PASS" || name == "linearizability")
                }
                Workload::Register | Workload::Set => run.code == 0 && checks.len() == 3,
                Workload::Watch | Workload::Lease | Workload::Lock => {
                    unreachable!("{workload} runs in its own test")
                }
            };
            if !acceptable {
                dir.keep = true;
                failures.push(format!(
                    "{workload} under {nemesis}: exit {} ({checks:?}); kept {}",
                    run.code,
                    dir.path.display()
                ));
            }
        }
    }
    eprintln!("short suite took {:.0?}", started.elapsed());
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The watch workload under every nemesis: a watcher on every member,
/// each run valid with its three watch checks, and the watchers' record
/// kept. (`kill-during-snapshot` was left out until the two server bugs
/// its short watch runs found were fixed, `e2f2fd7` and `8c1e5ad`; see
/// tests/JEPSEN.md, "The watch workload".)
#[test]
fn short_suite_watch_under_every_nemesis_is_valid() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let mut failures = Vec::new();
    for (n, nemesis) in NemesisKind::ALL.into_iter().enumerate() {
        let mut dir = RunDir::new(&format!("watch-{nemesis}"));
        let seed = (200 + n).to_string();
        let run = run_suite(
            &dir.path,
            &[
                "--nodes",
                "3",
                "--workload",
                "watch",
                "--nemesis",
                nemesis.name(),
                "--time-limit",
                SHORT_WATCH_RUN_SECONDS,
                "--interval",
                "3",
                "--seed",
                &seed,
            ],
        );
        let checks = check_lines(&run.stdout);
        let names: Vec<&str> = checks.iter().map(|(_, name)| name.as_str()).collect();
        let acceptable = run.code == 0
            && names
                == [
                    "watch-order",
                    "watch-final-state",
                    "watch-complete",
                    "leader-per-term",
                    "convergence",
                ]
            && ["m1-w0 on m1", "m2-w0 on m2", "m3-w0 on m3"]
                .iter()
                .all(|watcher| run.stdout.contains(watcher))
            && dir.path.join("watches.jsonl").is_file();
        if !acceptable {
            dir.keep = true;
            failures.push(format!(
                "watch under {nemesis}: exit {} ({checks:?}); kept {}",
                run.code,
                dir.path.display()
            ));
        }
    }
    eprintln!("watch short suite took {:.0?}", started.elapsed());
    assert!(failures.is_empty(), "{failures:#?}");
}

const SHORT_LEASE_LOCK_RUN_SECONDS: &str = "20";

/// The number right before `word` in `line` (`"... (23 leases expired)"`).
fn number_before(line: &str, word: &str) -> Option<u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| w.trim_matches(|c: char| !c.is_alphanumeric()) == word)?;
    words
        .get(at.checked_sub(1)?)?
        .trim_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

/// The summary line of check `name`.
fn check_line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|line| line.split_whitespace().nth(1) == Some(name))
        .unwrap_or_default()
}

/// The `lease` and `lock` workloads once each under every nemesis of
/// `all`: valid, and not vacuously: leases were seen to expire and were
/// revoked, increments were applied, and a holder that lost its lock had an
/// increment refused by the fencing compare.
#[test]
fn short_suite_lease_and_lock_under_all_nemeses_are_valid() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let mut failures = Vec::new();
    for (n, workload) in [Workload::Lease, Workload::Lock].into_iter().enumerate() {
        let mut dir = RunDir::new(&format!("{workload}-all"));
        let seed = (300 + n).to_string();
        let run = run_suite(
            &dir.path,
            &[
                "--nodes",
                "3",
                "--workload",
                workload.name(),
                "--nemesis",
                "all",
                "--time-limit",
                SHORT_LEASE_LOCK_RUN_SECONDS,
                "--interval",
                "3",
                "--seed",
                &seed,
            ],
        );
        let checks = check_lines(&run.stdout);
        let names: Vec<&str> = checks.iter().map(|(_, name)| name.as_str()).collect();
        let history = std::fs::read_to_string(dir.path.join("history.jsonl")).unwrap_or_default();
        let acceptable = run.code == 0
            && match workload {
                Workload::Lease => {
                    let expiry = check_line(&run.stdout, "lease-no-early-expiry");
                    let gone = check_line(&run.stdout, "lease-no-resurrection");
                    names
                        == [
                            "lease-no-resurrection",
                            "lease-no-early-expiry",
                            "leader-per-term",
                            "convergence",
                        ]
                        && number_before(expiry, "leases").is_some_and(|expired| expired > 0)
                        && number_before(gone, "leases").is_some_and(|gone| gone > 0)
                        && history.contains(r#""type":"ok","f":"lease-revoke""#)
                }
                _ => {
                    let counter = check_line(&run.stdout, "lock-counter");
                    names == ["lock-counter", "lock-fencing", "leader-per-term", "convergence"]
                        && number_before(counter, "acknowledged").is_some_and(|count| count > 0)
                        && history.contains("fenced comparison failed")
                }
            };
        if !acceptable {
            dir.keep = true;
            failures.push(format!(
                "{workload} under all: exit {} ({checks:?}); kept {}",
                run.code,
                dir.path.display()
            ));
        }
    }
    eprintln!("lease and lock short suite took {:.0?}", started.elapsed());
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Seconds per run of the `member` nemesis's short test.
const SHORT_MEMBER_RUN_SECONDS: &str = "15";

/// The `member` nemesis (not in `all`, so not in the loops above) under
/// `register` and `set` on 3 members: each run valid, and members really
/// replaced: the nemesis recorded removals and additions, the status
/// samples name more member ids than the cluster has members, and the
/// final states come from a member that was not among the first three.
#[test]
fn short_suite_member_replacement_keeps_register_and_set_valid() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let mut failures = Vec::new();
    for (n, workload) in [Workload::Register, Workload::Set].into_iter().enumerate() {
        let mut dir = RunDir::new(&format!("{workload}-member"));
        let seed = (400 + n).to_string();
        let run = run_suite(
            &dir.path,
            &[
                "--nodes",
                "3",
                "--workload",
                workload.name(),
                "--nemesis",
                "member",
                "--time-limit",
                SHORT_MEMBER_RUN_SECONDS,
                "--interval",
                "2",
                "--seed",
                &seed,
            ],
        );
        let checks = check_lines(&run.stdout);
        let timeline = std::fs::read_to_string(dir.path.join("nemesis.jsonl")).unwrap_or_default();
        let removed = timeline.matches("removed m").count();
        let added = timeline.matches("added m").count();
        let member_ids: std::collections::BTreeSet<u64> =
            std::fs::read_to_string(dir.path.join("status.jsonl"))
                .unwrap_or_default()
                .lines()
                .filter_map(|line| serde_json::from_str::<StatusSample>(line).ok())
                .map(|sample| sample.member_id)
                .collect();
        let final_members: Vec<String> = std::fs::read_to_string(dir.path.join("final.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|report| {
                let states = report.get("states")?.as_array()?.clone();
                Some(
                    states
                        .iter()
                        .filter_map(|state| Some(state.get("member")?.as_str()?.to_string()))
                        .collect(),
                )
            })
            .unwrap_or_default();
        let newcomer_in_the_end = final_members
            .iter()
            .any(|m| !["m1", "m2", "m3"].contains(&m.as_str()));
        let acceptable = run.code == 0
            && checks.len() == 3
            && removed >= 1
            && added == removed
            && member_ids.len() > 3
            && final_members.len() == 3
            && newcomer_in_the_end;
        if !acceptable {
            dir.keep = true;
            failures.push(format!(
                "{workload} under member: exit {} ({checks:?}), {removed} removed, {added} added, \
                 member ids {member_ids:?}, final members {final_members:?}; kept {}",
                run.code,
                dir.path.display()
            ));
        }
    }
    eprintln!("member short suite took {:.0?}", started.elapsed());
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A run directory holding `events` as its history and a clean end.
fn write_saved_run(dir: &Path, history: &str) {
    std::fs::create_dir_all(dir).expect("dir");
    let config = RunConfig {
        nodes: 3,
        concurrency_per_member: 2,
        workload: Workload::Register,
        nemeses: vec![],
        interval_ms: 1_000,
        time_limit_ms: 1_000,
        keys: 10,
        ops_per_key: 200,
        op_timeout_ms: 1_500,
        rate: 0,
        election_timeout_ms: 500,
        heartbeat_ms: 50,
        seed: 1,
        check_time_limit_ms: 120_000,
        snapshot_count: None,
    };
    std::fs::write(
        dir.join("run.json"),
        serde_json::to_string(&config).expect("json"),
    )
    .expect("run.json");
    std::fs::write(dir.join("history.jsonl"), history).expect("history");
    let sample = StatusSample {
        time: 0,
        member: "m1".into(),
        member_id: 1,
        leader: 1,
        term: 2,
        raft_index: 10,
        applied_index: 10,
        revision: 5,
    };
    std::fs::write(
        dir.join("status.jsonl"),
        serde_json::to_string(&sample).expect("json") + "\n",
    )
    .expect("status");
    let states: Vec<FinalState> = ["m1", "m2", "m3"]
        .iter()
        .map(|member| FinalState {
            member: member.to_string(),
            applied_index: 10,
            revision: 5,
            hash: 7,
            hash_revision: 5,
        })
        .collect();
    let report = serde_json::json!({
        "states": states, "unreachable": [], "crashed": [], "broken": null,
        "proxy_connections": [0, 0, 0]
    });
    std::fs::write(dir.join("final.json"), report.to_string()).expect("final");
}

/// Many overlapping writes, reads of each, and one read of a value nobody
/// wrote: deciding it means visiting every order of the writes.
fn huge_history(writers: u64) -> String {
    let mut lines = Vec::new();
    let mut index = 0;
    let mut line = |process: u64, kind: &str, f: &str, value: String, start: u64, end: Option<u64>| {
        let end = end.map_or(String::new(), |e| format!(",\"end\":{e}"));
        lines.push(format!(
            "{{\"index\":{index},\"process\":{process},\"type\":\"{kind}\",\"f\":\"{f}\",\"key\":\"k\",\"value\":{value},\"start\":{start}{end}}}"
        ));
        index += 1;
    };
    for i in 0..writers {
        line(i, "invoke", "write", (i + 1).to_string(), i, None);
    }
    for i in 0..writers {
        line(500 + i, "invoke", "read", "null".into(), 500 + i, None);
    }
    for i in 0..writers {
        line(i, "ok", "write", (i + 1).to_string(), i, Some(1_000 + i));
    }
    for i in 0..writers {
        line(
            500 + i,
            "ok",
            "read",
            (i + 1).to_string(),
            500 + i,
            Some(2_000 + i),
        );
    }
    line(999, "invoke", "read", "null".into(), 5_000, None);
    line(999, "ok", "read", "1000000".into(), 5_000, Some(5_001));
    lines.join("\n") + "\n"
}

#[test]
fn a_check_out_of_time_is_unknown_exit_2_never_valid() {
    let dir = RunDir::new("huge-history");
    write_saved_run(&dir.path, &huge_history(60));
    let output = Command::new(keel_jepsen())
        .arg("check")
        .arg(&dir.path)
        .args(["--check-time-limit", "0.5"])
        .output()
        .expect("keel-jepsen check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    assert_eq!(
        outcome_of(&stdout, "linearizability"),
        Some("UNKNOWN"),
        "{stdout}"
    );
    assert!(stdout.contains("time limit reached"), "{stdout}");
    assert!(stdout.trim_end().ends_with("2 passed, 1 failed"), "{stdout}");
}

#[test]
fn a_cluster_that_never_starts_is_a_broken_run_exit_2() {
    use std::os::unix::fs::PermissionsExt;
    let dir = RunDir::new("never-starts");
    let bin = dir.path.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let fake = bin.join("keel");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'fake keel refuses to start' >&2\nexit 3\n",
    )
    .expect("fake keel");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = dir.path.join("run");
    let output = Command::new(keel_jepsen())
        .args(["run", "--time-limit", "5", "--nemesis", "none", "--out"])
        .arg(&out)
        .env("KEEL_BIN_DIR", &bin)
        .env("KEEL_JEPSEN_LOG", "warn")
        .output()
        .expect("keel-jepsen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("BROKEN"), "{stdout}");
    assert!(stdout.contains("the cluster did not start"), "{stdout}");
    assert!(out.join("m1.log").is_file(), "member logs are kept");
    assert!(out.join("verdict.txt").is_file());
}
