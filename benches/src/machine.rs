//! Facts about the machine a measurement ran on, so that every number in
//! RESULTS.md can be read against it: cores, CPU, kernel, memory, load
//! average, the filesystem of the data dirs, and the disk's own fdatasync
//! latency there (the floor under any durable write); and members' resident
//! memory and CPU time, from `/proc` (through the `procfs` crate).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use procfs::Current;
use serde::{Deserialize, Serialize};

use crate::load::report::new_histogram;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachineFacts {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
    pub memory_gib: f64,
    /// 1-minute load average when read.
    pub load_average: f64,
    pub filesystem: String,
    pub etcd_version: String,
    pub keel_commit: String,
}

impl MachineFacts {
    pub fn read(data_dir: &Path) -> Self {
        let cpu = procfs::CpuInfo::current()
            .ok()
            .and_then(|info| info.model_name(0).map(str::to_string))
            .unwrap_or_else(|| "unknown".into());
        let memory_bytes = procfs::Meminfo::current().map_or(0, |info| info.mem_total);
        MachineFacts {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: nix::sys::utsname::uname()
                .map(|name| name.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            memory_gib: memory_bytes as f64 / (1024.0 * 1024.0 * 1024.0),
            load_average: load_average(),
            filesystem: filesystem_of(data_dir),
            etcd_version: command_first_line("etcd", &["--version"]),
            keel_commit: command_first_line("git", &["describe", "--always", "--dirty"]),
        }
    }
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    procfs::LoadAverage::current().map_or(0.0, |load| f64::from(load.one))
}

fn command_first_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// `type device` of the mount that holds `path` (longest mount-point prefix).
pub fn filesystem_of(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    procfs::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|mount| path.starts_with(&mount.fs_file))
        .max_by_key(|mount| mount.fs_file.len())
        .map(|mount| format!("{} on {} ({})", mount.fs_vfstype, mount.fs_spec, mount.fs_file))
        .unwrap_or_else(|| "unknown".into())
}

/// The disk's own durable-write latency in a directory.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct FsyncLatency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Writes 4 KiB then `fdatasync`s, `samples` times, into a preallocated file
/// in `dir` (as a write-ahead log does), and times each write + sync.
pub fn fdatasync_latency(dir: &Path, samples: usize) -> anyhow::Result<FsyncLatency> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("fdatasync-probe");
    let block = [0x5au8; 4096];
    let slots = 1024u64;
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_len(slots * 4096)?;
    file.sync_all()?;
    let mut histogram = new_histogram();
    for sample in 0..samples as u64 {
        let started = Instant::now();
        file.seek(SeekFrom::Start((sample % slots) * 4096))?;
        file.write_all(&block)?;
        file.sync_data()?;
        histogram.saturating_record((started.elapsed().as_micros() as u64).max(1));
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(FsyncLatency {
        samples,
        p50_ms: ms(histogram.value_at_quantile(0.5)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
    })
}

/// User + system CPU seconds used so far by process `pid` (all its threads;
/// `"self"` for this process), from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let process = if pid == "self" {
        procfs::process::Process::myself()
    } else {
        let number: i32 = pid.parse().with_context(|| format!("not a process id: {pid}"))?;
        procfs::process::Process::new(number)
    }
    .with_context(|| format!("no process {pid}"))?;
    let stat = process.stat().with_context(|| format!("reading stat of {pid}"))?;
    Ok((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// Peak and current resident memory of a process, in MiB.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Memory {
    pub vm_hwm_mib: f64,
    pub vm_rss_mib: f64,
}

/// `VmHWM` and `VmRSS` of process `pid`.
pub fn process_memory(pid: u32) -> anyhow::Result<Memory> {
    let number = i32::try_from(pid).with_context(|| format!("not a process id: {pid}"))?;
    let status = procfs::process::Process::new(number)
        .and_then(|process| process.status())
        .with_context(|| format!("reading status of {pid}"))?;
    let mib = |kib: Option<u64>, name: &str| -> anyhow::Result<f64> {
        let kib = kib.with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kib as f64 / 1024.0)
    };
    Ok(Memory {
        vm_hwm_mib: mib(status.vmhwm, "VmHWM")?,
        vm_rss_mib: mib(status.vmrss, "VmRSS")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// User + system CPU time of this process, as `getrusage` reports it.
    fn rusage_cpu_seconds() -> f64 {
        let usage =
            nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).expect("getrusage");
        let seconds = |time: nix::sys::time::TimeVal| time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6;
        seconds(usage.user_time()) + seconds(usage.system_time())
    }

    #[test]
    fn cpu_seconds_agree_with_getrusage() {
        // Spin until the kernel has charged this process a tenth of a second.
        let spun_since = Instant::now();
        let mut spin = 0u64;
        while rusage_cpu_seconds() < 0.1 {
            for i in 0..1_000_000u64 {
                spin = spin.wrapping_add(i ^ (spin >> 3));
            }
            assert!(
                spun_since.elapsed().as_secs() < 60,
                "no CPU time charged in a minute"
            );
        }
        assert!(spin != 1);
        let before = rusage_cpu_seconds();
        let read = cpu_seconds("self").expect("cpu seconds of self");
        let by_pid = cpu_seconds(&std::process::id().to_string()).expect("cpu seconds by pid");
        let after = rusage_cpu_seconds();
        // /proc counts user and system time each in whole clock ticks
        // (10 ms, rounded down), getrusage in microseconds.
        let slack = 2.0 / procfs::ticks_per_second() as f64 + 1e-6;
        assert!(
            read >= before - slack && read <= after + slack,
            "{before} <= {read} <= {after}"
        );
        assert!(
            by_pid >= read && by_pid <= after + slack,
            "{read} <= {by_pid} <= {after}"
        );
        assert!(cpu_seconds("not-a-pid").is_err());
    }

    #[test]
    fn reads_own_memory_and_the_machine() {
        let before = process_memory(std::process::id()).expect("own memory");
        assert!(
            before.vm_rss_mib > 0.0 && before.vm_hwm_mib >= before.vm_rss_mib,
            "{before:?}"
        );
        // 64 MiB written (every page touched) must show in the resident size.
        let block = vec![0x5au8; 64 << 20];
        let during = process_memory(std::process::id()).expect("own memory");
        assert!(block.iter().step_by(4096).all(|byte| *byte == 0x5a));
        assert!(
            during.vm_rss_mib >= before.vm_rss_mib + 48.0,
            "{before:?} then {during:?}"
        );
        assert!(during.vm_hwm_mib >= during.vm_rss_mib, "{during:?}");
        assert!(process_memory(u32::MAX).is_err());
        let facts = MachineFacts::read(Path::new("/"));
        assert!(facts.cores >= 1);
        assert!(facts.memory_gib > 0.1, "{facts:?}");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        assert_eq!(facts.kernel, release.trim());
        assert!(facts.filesystem.ends_with("(/)"), "{facts:?}");
    }

    #[test]
    fn measures_fdatasync() {
        let dir = tempfile::tempdir().unwrap();
        let latency = fdatasync_latency(dir.path(), 5).unwrap();
        assert_eq!(latency.samples, 5);
        assert!(latency.max_ms >= latency.p50_ms);
    }
}
