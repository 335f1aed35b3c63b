//! Running `watch` with etcdctl and keelctl as children, for the watch
//! golden tests: a watch runs until the server ends it, so each case runs
//! etcdctl first, until it exits or its output has been quiet for a while
//! (then it is killed); then keelctl, until it exits or has printed at least
//! as much as etcdctl did (plus a grace period to catch more), then it is
//! killed. A killed tool's exit is recorded as -1. `-i` cases feed their
//! lines one step at a time, each step waiting for that step's output.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{etcdctl_path, keelctl_path, without_client_logs, Ran};

/// How long etcdctl's output must stay unchanged before a step is done.
pub const QUIET: Duration = Duration::from_millis(400);
/// How long keelctl may keep printing after it has caught up with etcdctl.
pub const GRACE: Duration = Duration::from_millis(250);
/// The longest any step waits.
pub const STEP_DEADLINE: Duration = Duration::from_secs(10);

/// What a step of a case waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The tool prints something (on either stream) or exits.
    Output,
    /// The tool exits (its input closed, or a fatal line).
    Exit,
    /// Nothing: the step only feeds input (a line without its newline).
    Silence,
}

#[derive(Clone, Debug)]
pub struct Step {
    /// Written to the tool's stdin before waiting; `None` closes stdin.
    pub input: Option<String>,
    pub expect: Expect,
}

pub fn line(text: &str) -> Step {
    Step {
        input: Some(format!("{text}\n")),
        expect: Expect::Output,
    }
}

pub fn end_of_input() -> Step {
    Step {
        input: None,
        expect: Expect::Exit,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// stdout, stderr and exit code, byte for byte.
    Everything,
    /// The first `Error:` line and the exit code (after a flag error
    /// etcdctl prints its usage text on stdout and the error twice, keelctl
    /// a one-line hint).
    FirstError,
    /// Everything, with stdout's lines compared as a multiset: etcdctl
    /// prints each of several `-i` watches from its own goroutine, so the
    /// order of lines across watches differs from run to run.
    LinesInAnyOrder,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub args: Vec<Vec<u8>>,
    pub variables: Vec<(String, String)>,
    pub steps: Vec<Step>,
    pub compare: Comparison,
}

impl Case {
    pub fn new(args: &[&str]) -> Case {
        Case {
            args: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
            variables: Vec::new(),
            steps: vec![Step {
                input: Some(String::new()),
                expect: Expect::Output,
            }],
            compare: Comparison::Everything,
        }
    }

    pub fn with_variable(mut self, name: &str, value: &str) -> Case {
        self.variables.push((name.to_string(), value.to_string()));
        self
    }

    pub fn interactive(mut self, steps: Vec<Step>) -> Case {
        self.steps = steps;
        self
    }

    pub fn lines_in_any_order(mut self) -> Case {
        self.compare = Comparison::LinesInAnyOrder;
        self
    }

    pub fn first_error_only(mut self) -> Case {
        self.compare = Comparison::FirstError;
        self
    }

    pub fn label(&self) -> String {
        let words: Vec<String> = self
            .args
            .iter()
            .map(|a| format!("{:?}", String::from_utf8_lossy(a)))
            .collect();
        let mut label = format!("watch {}", words.join(" "));
        for (name, value) in &self.variables {
            label.push_str(&format!(" [{name}={value}]"));
        }
        for step in &self.steps {
            if let Some(input) = &step.input {
                if !input.is_empty() {
                    label.push_str(&format!(" <<< {input:?}"));
                }
            }
        }
        label
    }
}

/// A running tool whose output is collected as it arrives.
pub struct Watcher {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    pub stdout: Arc<Mutex<Vec<u8>>>,
    pub stderr: Arc<Mutex<Vec<u8>>>,
    exit: Option<i32>,
}

pub fn collect(mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let into = buffer.clone();
    tokio::spawn(async move {
        let mut chunk = [0u8; 8192];
        while let Ok(read) = from.read(&mut chunk).await {
            if read == 0 {
                break;
            }
            into.lock()
                .expect("output lock")
                .extend_from_slice(&chunk[..read]);
        }
    });
    buffer
}

impl Watcher {
    pub fn spawn(program: &std::path::Path, endpoint: &str, case: &Case) -> Watcher {
        use std::os::unix::ffi::OsStrExt;
        let mut command = super::ctl_command(program);
        command
            .envs(case.variables.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .arg(format!("--endpoints={endpoint}"))
            .arg("watch")
            .args(case.args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()));
        let stdin = child.stdin.take();
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Watcher {
            child,
            stdin,
            stdout,
            stderr,
            exit: None,
        }
    }

    pub fn lengths(&self) -> (usize, usize) {
        (
            self.stdout.lock().expect("lock").len(),
            self.stderr.lock().expect("lock").len(),
        )
    }

    pub fn exited(&mut self) -> bool {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status.code().unwrap_or(-1));
            }
        }
        self.exit.is_some()
    }

    pub async fn feed(&mut self, input: &Option<String>) {
        match input {
            Some(text) if !text.is_empty() => {
                if let Some(stdin) = &mut self.stdin {
                    let _ = stdin.write_all(text.as_bytes()).await;
                    let _ = stdin.flush().await;
                }
            }
            Some(_) => {}
            None => self.stdin = None,
        }
    }

    /// Waits as etcdctl's run does: until it exits, or it has printed more
    /// than `before` and then nothing for `QUIET`.
    pub async fn settle(&mut self, before: (usize, usize), expect: Expect) {
        let deadline = Instant::now() + STEP_DEADLINE;
        let mut last = self.lengths();
        let mut changed_at = Instant::now();
        while Instant::now() < deadline {
            if self.exited() {
                // Let the readers drain the pipes.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.lengths();
            if now != last {
                last = now;
                changed_at = Instant::now();
            }
            if expect == Expect::Output && last != before && changed_at.elapsed() >= QUIET {
                return;
            }
            if expect == Expect::Silence && changed_at.elapsed() >= QUIET {
                return;
            }
        }
    }

    /// Waits as keelctl's run does: until it has caught up with `target`
    /// (and exited when etcdctl had), then `GRACE` for anything extra.
    pub async fn catch_up(&mut self, target: (usize, usize), must_exit: bool) {
        let deadline = Instant::now() + STEP_DEADLINE;
        while Instant::now() < deadline {
            let (out, err) = self.lengths();
            let exited = self.exited();
            if out >= target.0 && err >= target.1 && (exited || !must_exit) {
                break;
            }
            if exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(GRACE).await;
        self.exited();
    }

    /// Kills the tool if it still runs; what it printed and how it ended
    /// (-1: killed).
    pub async fn finish(mut self) -> Ran {
        if !self.exited() {
            let _ = self.child.kill().await;
            self.exit = Some(-1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stdout = self.stdout.lock().expect("lock").clone();
        let stderr = self.stderr.lock().expect("lock").clone();
        Ran {
            code: self.exit.unwrap_or(-1),
            stdout,
            stderr,
        }
    }
}

/// Runs `case` with etcdctl and then keelctl against `endpoint`.
pub async fn run_both(endpoint: &str, case: &Case) -> (Ran, Ran) {
    let mut etcdctl = Watcher::spawn(&etcdctl_path(), endpoint, case);
    let mut marks = Vec::new();
    for step in &case.steps {
        let before = etcdctl.lengths();
        etcdctl.feed(&step.input).await;
        etcdctl.settle(before, step.expect).await;
        marks.push((etcdctl.lengths(), etcdctl.exited()));
    }
    let etcdctl = etcdctl.finish().await;
    let mut keelctl = Watcher::spawn(&keelctl_path(), endpoint, case);
    for (step, ((out, err), exited)) in case.steps.iter().zip(marks) {
        keelctl.feed(&step.input).await;
        // etcdctl's client logs do not count: keelctl prints none.
        let err = without_client_logs(&etcdctl.stderr[..err.min(etcdctl.stderr.len())]).len();
        keelctl.catch_up((out, err), exited).await;
    }
    (etcdctl, keelctl.finish().await)
}

pub fn first_error(ran: &Ran) -> Ran {
    let first = ran
        .stderr_text()
        .lines()
        .find(|l| l.starts_with("Error:"))
        .map(|l| format!("{l}\n"))
        .unwrap_or_default();
    Ran {
        code: ran.code,
        stdout: Vec::new(),
        stderr: first.into_bytes(),
    }
}
