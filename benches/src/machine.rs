//! Facts about the machine a measurement ran on, so that every number in
//! RESULTS.md can be read against it: cores, CPU, kernel, memory, load
//! average, the filesystem of the data dirs, and the disk's own fdatasync
//! latency there (the floor under any durable write); and members' resident
//! memory from `/proc/<pid>/status`.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
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
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        MachineFacts {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            memory_gib: memory_kib / (1024.0 * 1024.0),
            load_average: load_average(),
            filesystem: filesystem_of(data_dir),
            etcd_version: command_first_line("etcd", &["--version"]),
            keel_commit: command_first_line("git", &["describe", "--always", "--dirty"]),
        }
    }
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
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
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let mount_point = fields.next()?;
            let fs_type = fields.next()?;
            path.starts_with(mount_point).then(|| {
                (
                    mount_point.len(),
                    format!("{fs_type} on {device} ({mount_point})"),
                )
            })
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, text)| text)
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading stat of {pid}"))?;
    // The command name (field 2) is parenthesized and may hold spaces.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |at: usize| -> anyhow::Result<f64> {
        fields
            .get(at)
            .and_then(|field| field.parse::<f64>().ok())
            .with_context(|| format!("no CPU time in /proc/{pid}/stat"))
    };
    // utime and stime are fields 14 and 15; `fields` starts at field 3.
    Ok((ticks(11)? + ticks(12)?) / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

/// Peak and current resident memory of a process, in MiB.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Memory {
    pub vm_hwm_mib: f64,
    pub vm_rss_mib: f64,
}

/// `VmHWM` and `VmRSS` of process `pid`.
pub fn process_memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading status of {pid}"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kib / 1024.0)
    };
    Ok(Memory {
        vm_hwm_mib: field("VmHWM:")?,
        vm_rss_mib: field("VmRSS:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_facts() {
        let memory = process_memory(std::process::id()).unwrap();
        assert!(memory.vm_rss_mib > 0.0 && memory.vm_hwm_mib >= memory.vm_rss_mib);
        let facts = MachineFacts::read(Path::new("/"));
        let mut spin = 0u64;
        for i in 0..20_000_000u64 {
            spin = spin.wrapping_add(i ^ (spin >> 3));
        }
        assert!(spin != 1);
        assert!(cpu_seconds("self").unwrap() >= 0.0);
        assert!(facts.cores >= 1);
    }

    #[test]
    fn measures_fdatasync() {
        let dir = tempfile::tempdir().unwrap();
        let latency = fdatasync_latency(dir.path(), 5).unwrap();
        assert_eq!(latency.samples, 5);
        assert!(latency.max_ms >= latency.p50_ms);
    }
}
