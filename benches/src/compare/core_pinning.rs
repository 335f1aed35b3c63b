//! Gives the servers and the bench's own process separate CPUs for one
//! measurement, so that a case measures what the servers deliver with a
//! core of their own, as with a client on another machine, rather than
//! what is left of the cores they share with the client. Every thread of
//! each server process and of this process is pinned (threads started
//! later inherit the pinning of the thread that starts them); the bench's
//! threads get their CPUs back when the [`CorePinning`] is dropped.

use anyhow::Context;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The bench's process is pinned to one CPU and the servers to another
/// while this lives.
pub struct CorePinning {
    bench_cpus_before: CpuSet,
}

impl CorePinning {
    pub fn pin(servers: &[u32], server_cpu: usize, client_cpu: usize) -> anyhow::Result<CorePinning> {
        let bench_cpus_before = sched_getaffinity(Pid::from_raw(0)).context("reading this process's CPUs")?;
        let pinning = CorePinning { bench_cpus_before };
        for &server in servers {
            pin_every_thread(&format!("/proc/{server}/task"), &only(server_cpu)?)
                .with_context(|| format!("pinning server process {server} to CPU {server_cpu}"))?;
        }
        pin_every_thread("/proc/self/task", &only(client_cpu)?)
            .with_context(|| format!("pinning the bench to CPU {client_cpu}"))?;
        Ok(pinning)
    }
}

impl Drop for CorePinning {
    fn drop(&mut self) {
        if let Err(error) = pin_every_thread("/proc/self/task", &self.bench_cpus_before) {
            tracing::warn!(%error, "giving the bench's threads their CPUs back failed");
        }
    }
}

fn only(cpu: usize) -> anyhow::Result<CpuSet> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    Ok(set)
}

fn pin_every_thread(task_dir: &str, cpus: &CpuSet) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(task_dir)? {
        let Some(thread) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        match sched_setaffinity(Pid::from_raw(thread), cpus) {
            Ok(()) => {}
            // A thread that ended since the listing.
            Err(nix::errno::Errno::ESRCH) => {}
            Err(error) => return Err(error).with_context(|| format!("thread {thread}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus_of(pid: i32) -> Vec<usize> {
        let set = sched_getaffinity(Pid::from_raw(pid)).expect("affinity");
        (0..CpuSet::count())
            .filter(|cpu| set.is_set(*cpu).unwrap_or(false))
            .collect()
    }

    #[test]
    fn servers_and_the_bench_get_their_own_cpu_and_the_bench_gets_its_cpus_back() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        if cpus < 2 {
            eprintln!("skipped: this machine has {cpus} CPU");
            return;
        }
        let mut server = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("a child process");
        let server_pid = i32::try_from(server.id()).expect("a pid");
        let bench_before = cpus_of(0);
        {
            let _pinning = CorePinning::pin(&[server.id()], 0, 1).expect("pins");
            assert_eq!(cpus_of(server_pid), vec![0]);
            assert_eq!(cpus_of(0), vec![1]);
            // A thread started while pinned inherits the pinning.
            let inherited = std::thread::spawn(|| cpus_of(0)).join().expect("thread");
            assert_eq!(inherited, vec![1]);
        }
        assert_eq!(cpus_of(0), bench_before);
        let _ = server.kill();
        let _ = server.wait();
    }
}
