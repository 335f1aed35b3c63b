//! A tool (etcdctl or keelctl) running in the background, for commands that
//! run until interrupted (`lock`, `elect`): its output collected as it
//! arrives, waits for output, SIGINT or SIGKILL, and its end. The child is
//! killed when dropped; a child started as a process group's leader
//! ([`Background::spawn_group`]) is killed with everything it started, even
//! the commands it left behind when it was killed itself.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::watch_runner::collect;
use super::Ran;

pub struct Background {
    child: tokio::process::Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The process group the child leads, when it leads one.
    group: Option<Pid>,
}

impl Background {
    /// Starts `program --endpoints=<endpoint> args...`.
    pub fn spawn(program: &std::path::Path, endpoint: &str, args: &[&str]) -> Background {
        Background::start(program, endpoint, args, false)
    }

    /// As [`Background::spawn`], the child leading a new process group that
    /// is killed as a whole when this is dropped.
    pub fn spawn_group(program: &std::path::Path, endpoint: &str, args: &[&str]) -> Background {
        Background::start(program, endpoint, args, true)
    }

    fn start(program: &std::path::Path, endpoint: &str, args: &[&str], own_group: bool) -> Background {
        let mut command = super::ctl_command(program);
        if own_group {
            command.process_group(0);
        }
        command
            .arg(format!("--endpoints={endpoint}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()));
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        let group = own_group
            .then(|| child.id().map(|pid| Pid::from_raw(pid as i32)))
            .flatten();
        Background {
            child,
            stdout,
            stderr,
            group,
        }
    }

    pub fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().expect("lock").clone()
    }

    pub fn stderr(&self) -> Vec<u8> {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits (at most `limit`) until stdout holds `lines` lines or the tool
    /// exits; true when the lines are there.
    pub async fn wait_for_lines(&mut self, lines: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let count = self.stdout().iter().filter(|b| **b == b'\n').count();
            if count >= lines {
                return true;
            }
            if Instant::now() >= deadline || matches!(self.child.try_wait(), Ok(Some(_))) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return self.stdout().iter().filter(|b| **b == b'\n').count() >= lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// SIGINT (Ctrl-C).
    pub fn interrupt(&self) {
        self.signal(Signal::SIGINT);
    }

    /// SIGKILL: the tool dies without cleaning up.
    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    /// Waits (at most `limit`) for the tool to exit; kills it otherwise
    /// (exit -1). What it printed and how it ended.
    pub async fn finish(mut self, limit: Duration) -> Ran {
        let code = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => status.code().unwrap_or(-1),
            _ => {
                let _ = self.child.kill().await;
                -1
            }
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ran {
            code,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// Waits (at most `limit`) for the tool to exit by itself; the instant
    /// it was seen gone, or `None`.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<Instant> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(_)) => Some(Instant::now()),
            _ => None,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        }
    }
}
