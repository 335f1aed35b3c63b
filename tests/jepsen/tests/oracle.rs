//! The register checker against independent judges:
//! - `todc-utils`'s Wing–Gong–Lowe checker on randomly generated histories
//!   (simulated executions, some with a corrupted read, with concurrent and
//!   indeterminate writes and CASes): both must give the same verdict;
//! - the Jepsen etcd logs shipped inside the published `todc-utils` crate,
//!   with the verdicts its own test suite asserts (taken from Horn and
//!   Kroening's linearizability-checker): ours must match every one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keel_jepsen::history::{Event, EventType};
use keel_jepsen::linearizable::{check_register, Budget, Linearizability};
use keel_jepsen::model::{Op, RegOp};
use keel_jepsen::register_check::{linearizability_check, CheckLimits};
use keel_jepsen::verdict::Outcome;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};
use todc_utils::linearizability::history::{Action, History};
use todc_utils::linearizability::WGLChecker;
use todc_utils::specifications::etcd::{EtcdOperation, EtcdSpecification, EtcdStatus};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Read(Option<u32>),
    Write(u32),
    Cas(u32, u32, bool),
}

/// One simulated operation: `call < lin < ret` in time; `ret == None` for
/// an indeterminate op (which took effect at `lin` only if `applied`).
#[derive(Debug, Clone)]
struct SimOp {
    process: usize,
    call: u64,
    lin: u64,
    ret: Option<u64>,
    applied: bool,
    kind: Kind,
}

/// How random histories are drawn.
#[derive(Clone, Copy)]
struct Shape {
    /// Chance that a write or CAS is indeterminate.
    indeterminate: f64,
    /// Values are drawn from 0..domain (small: collisions, as in Jepsen's
    /// etcd test; large: unique in practice, as in keel-jepsen).
    domain: u32,
}

/// A simulated execution of a register by `processes` sequential clients.
fn simulate(rng: &mut StdRng, processes: usize, ops_per_process: usize, shape: Shape) -> Vec<SimOp> {
    let mut ops = Vec::new();
    let mut next_id = processes;
    for first in 0..processes {
        let mut process = first;
        let mut clock = rng.gen_range(0..20u64);
        for _ in 0..ops_per_process {
            let call = clock + rng.gen_range(1..15);
            let lin = call + rng.gen_range(1..25);
            let ret = lin + rng.gen_range(1..25);
            let kind = match rng.gen_range(0..3) {
                0 => Kind::Read(None),
                1 => Kind::Write(rng.gen_range(0..shape.domain)),
                _ => Kind::Cas(
                    rng.gen_range(0..shape.domain),
                    rng.gen_range(0..shape.domain),
                    false,
                ),
            };
            let indeterminate = !matches!(kind, Kind::Read(_)) && rng.gen_bool(shape.indeterminate);
            ops.push(SimOp {
                process,
                call,
                lin,
                ret: (!indeterminate).then_some(ret),
                applied: !indeterminate || rng.gen_bool(0.5),
                kind,
            });
            if indeterminate {
                // Jepsen's rule: a process whose op is in doubt is replaced.
                process = next_id;
                next_id += 1;
            }
            clock = ret;
        }
    }
    // Apply every op that took effect at its linearization point.
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| (ops[i].lin, i));
    let mut state: Option<u32> = None;
    for i in order {
        if !ops[i].applied {
            continue;
        }
        ops[i].kind = match ops[i].kind {
            Kind::Read(_) => Kind::Read(state),
            Kind::Write(value) => {
                state = Some(value);
                Kind::Write(value)
            }
            Kind::Cas(from, to, _) => {
                let succeeded = state == Some(from);
                if succeeded {
                    state = Some(to);
                }
                Kind::Cas(from, to, succeeded)
            }
        };
    }
    ops
}

/// Sometimes changes one read's result, which may make the history
/// non-linearizable (or not: both checkers must agree either way).
fn corrupt(rng: &mut StdRng, ops: &mut [SimOp], domain: u32) {
    let reads: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i].kind, Kind::Read(_)))
        .collect();
    if reads.is_empty() || rng.gen_bool(0.4) {
        return;
    }
    let victim = reads[rng.gen_range(0..reads.len())];
    let value = if rng.gen_bool(0.2) {
        None
    } else {
        // Mostly a value some op wrote, so the corruption is subtle.
        let written: Vec<u32> = ops
            .iter()
            .filter_map(|op| match op.kind {
                Kind::Write(v) | Kind::Cas(_, v, _) => Some(v),
                Kind::Read(_) => None,
            })
            .collect();
        match written.len() {
            0 => Some(rng.gen_range(0..domain)),
            n => Some(written[rng.gen_range(0..n)]),
        }
    };
    ops[victim].kind = Kind::Read(value);
}

fn ours(ops: &[SimOp]) -> Vec<Op> {
    ops.iter()
        .enumerate()
        .map(|(line, op)| Op {
            process: op.process as u64,
            call: op.call,
            ret: op.ret,
            op: match (op.kind, op.ret.is_some()) {
                (Kind::Read(seen), _) => RegOp::Read(seen.map(u64::from)),
                (Kind::Write(value), _) => RegOp::Write(u64::from(value)),
                (Kind::Cas(from, to, true), true) => RegOp::CasOk {
                    from: u64::from(from),
                    to: u64::from(to),
                },
                (Kind::Cas(from, _, false), true) => RegOp::CasFail {
                    from: u64::from(from),
                },
                (Kind::Cas(from, to, _), false) => RegOp::CasUnknown {
                    from: u64::from(from),
                    to: u64::from(to),
                },
            },
            line: line as u64,
        })
        .collect()
}

fn todc_verdict(ops: &[SimOp]) -> bool {
    use EtcdOperation::{CompareAndSwap, Read, Write};
    use EtcdStatus::{Fail, Invoke, Okay, Unknown};
    // (time, is_return, op): calls before returns at equal times, as our
    // checker orders them; indeterminate returns go after everything.
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, false, i));
        events.push((op.ret.unwrap_or(u64::MAX), true, i));
    }
    events.sort();
    let actions = events
        .into_iter()
        .map(|(_, is_return, i)| {
            let op = &ops[i];
            let action = match (is_return, op.kind, op.ret.is_some()) {
                (false, Kind::Read(_), _) => Action::Call(Read(Invoke, None)),
                (false, Kind::Write(v), _) => Action::Call(Write(Invoke, v)),
                (false, Kind::Cas(f, t, _), _) => Action::Call(CompareAndSwap(Invoke, (f, t))),
                (true, Kind::Read(seen), _) => Action::Response(Read(Okay, seen)),
                (true, Kind::Write(v), true) => Action::Response(Write(Okay, v)),
                (true, Kind::Write(v), false) => Action::Response(Write(Unknown, v)),
                (true, Kind::Cas(f, t, true), true) => Action::Response(CompareAndSwap(Okay, (f, t))),
                (true, Kind::Cas(f, t, false), true) => Action::Response(CompareAndSwap(Fail, (f, t))),
                (true, Kind::Cas(f, t, _), false) => Action::Response(CompareAndSwap(Unknown, (f, t))),
            };
            (op.process, action)
        })
        .collect();
    WGLChecker::<EtcdSpecification>::is_linearizable(History::from_actions(actions))
}

/// Draws `rounds` histories of `shape`; both checkers must agree on each,
/// and both verdicts must occur often enough for the comparison to mean
/// something.
fn compare_on_random_histories(seed: u64, rounds: usize, max_processes: usize, max_ops: usize, shape: Shape) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut valid, mut invalid) = (0, 0);
    for round in 0..rounds {
        let processes = rng.gen_range(2..=max_processes);
        let per_process = rng.gen_range(2..=max_ops);
        let mut ops = simulate(&mut rng, processes, per_process, shape);
        corrupt(&mut rng, &mut ops, shape.domain);
        let expected = todc_verdict(&ops);
        let got = check_register(&ours(&ops), &mut Budget::generous());
        assert!(
            !matches!(got, Linearizability::Unknown { .. }),
            "round {round}: no verdict"
        );
        assert_eq!(
            got.is_linearizable(),
            expected,
            "round {round}: todc says {expected}, we say {got:?} for {ops:#?}"
        );
        if expected {
            valid += 1;
        } else {
            invalid += 1;
        }
    }
    let enough = rounds / 6;
    assert!(
        valid > enough && invalid > enough,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn random_histories_get_the_same_verdict_from_both_checkers() {
    let shape = Shape {
        indeterminate: 0.15,
        domain: 5,
    };
    compare_on_random_histories(0x6b65656c, 600, 4, 5, shape);
}

#[test]
fn random_histories_rich_in_indeterminate_ops_get_the_same_verdict() {
    // Many writes and CASes in doubt, unique values: the shape a partition
    // leaves behind, where the checker's pruning of optional ops matters.
    let shape = Shape {
        indeterminate: 0.45,
        domain: 1_000_000,
    };
    compare_on_random_histories(0x6a657073, 500, 5, 5, shape);
    let colliding = Shape {
        indeterminate: 0.45,
        domain: 3,
    };
    compare_on_random_histories(0x656e, 500, 5, 5, colliding);
}

/// todc-utils' package directory in cargo's registry cache.
fn todc_package() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registry = cargo_home.join("registry").join("src");
    let entries = std::fs::read_dir(&registry).unwrap_or_else(|e| panic!("{}: {e}", registry.display()));
    entries
        .flatten()
        .map(|index| index.path().join("todc-utils-0.1.1"))
        .find(|candidate| candidate.join("tests/linearizability/etcd").is_dir())
        .unwrap_or_else(|| {
            panic!(
                "todc-utils-0.1.1 with its etcd logs not found under {}",
                registry.display()
            )
        })
}

/// The verdicts todc-utils' own test asserts: `test_000: ("000", false),`.
fn known_verdicts(package: &Path) -> BTreeMap<String, bool> {
    let source = std::fs::read_to_string(package.join("tests/linearizability/etcd.rs")).expect("etcd.rs");
    source
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("test_"))
        .filter_map(|line| {
            let (_, rest) = line.split_once("(\"")?;
            let (number, rest) = rest.split_once('"')?;
            Some((number.to_string(), rest.contains("true")))
        })
        .collect()
}

fn jepsen_value(word: &str) -> Json {
    if word == "nil" {
        Json::Null
    } else {
        word.parse::<u64>().map_or(Json::Null, |v| json!(v))
    }
}

/// A Jepsen etcd log as this suite's history: one event per `jepsen.util`
/// line, times from line numbers, all on one key.
fn history_from_jepsen_log(path: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(path).expect("log");
    let mut open: BTreeMap<u64, Event> = BTreeMap::new();
    let mut events = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 6 || words[1] != "jepsen.util" || words[3] == ":nemesis" {
            continue;
        }
        let Ok(process) = words[3].parse::<u64>() else {
            continue;
        };
        let time = number as u64 * 1_000;
        let f = words[5].trim_start_matches(':');
        let value = match f {
            "cas" => {
                let from = words.get(6).map(|w| w.trim_start_matches('[')).unwrap_or("");
                let to = words.get(7).map(|w| w.trim_end_matches(']')).unwrap_or("");
                json!([jepsen_value(from), jepsen_value(to)])
            }
            _ => words.get(6).map_or(Json::Null, |w| jepsen_value(w)),
        };
        let kind = match words[4] {
            ":invoke" => EventType::Invoke,
            ":ok" => EventType::Ok,
            ":fail" => EventType::Fail,
            _ => EventType::Info,
        };
        let mut event = if kind == EventType::Invoke {
            let value = if f == "read" { Json::Null } else { value };
            let invoke = Event::invoke(process, f, Some("k"), value, time);
            open.insert(process, invoke.clone());
            invoke
        } else {
            let Some(invoke) = open.remove(&process) else {
                continue;
            };
            let value = if f == "read" { value } else { invoke.value.clone() };
            Event::complete(&invoke, kind, value, time)
        };
        event.index = events.len() as u64;
        events.push(event);
    }
    events
}

#[test]
fn jepsen_etcd_reference_logs_get_their_known_verdicts() {
    let package = todc_package();
    let verdicts = known_verdicts(&package);
    assert!(
        verdicts.len() >= 100,
        "expected ~102 known verdicts, found {}",
        verdicts.len()
    );
    let limits = CheckLimits {
        search: std::time::Duration::from_secs(60),
        ..CheckLimits::default()
    };
    let mut disagreements = Vec::new();
    for (number, expected) in &verdicts {
        let path = package.join(format!("tests/linearizability/etcd/etcd_{number}.log"));
        let events = history_from_jepsen_log(&path);
        assert!(events.len() > 50, "{}: too few events", path.display());
        let result = linearizability_check(&events, &limits);
        let got = match result.outcome {
            Outcome::Pass => Some(true),
            Outcome::Fail => Some(false),
            Outcome::Unknown => None,
        };
        if got != Some(*expected) {
            disagreements.push(format!("etcd_{number}: expected {expected}, got {result:?}"));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
