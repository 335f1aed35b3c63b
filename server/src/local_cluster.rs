//! `keel local-cluster`: runs a 3- or 5-member cluster of real `keel`
//! processes on 127.0.0.1 from one command, streams their logs with a
//! per-member prefix, reports a member that dies, and on Ctrl-C or SIGTERM
//! stops every member cleanly. Run again on the same data dir, it resumes
//! the same cluster with its data. With `--tls` the client ports serve
//! mutual TLS with certificates it makes (see local_pki.rs).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use keel_client::launch::{wait_for_leader, LeaderWaitError, MemberLaunch};
use keel_client::TlsOptions;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::local_pki::{local_pki, LocalPki};

/// Client port offsets from --base-port, as in etcd's local Procfile
/// (2379, 22379, 32379, 42379, 52379); each peer port is the client port + 1.
const CLIENT_PORT_OFFSETS: [u16; 5] = [0, 20000, 30000, 40000, 50000];

#[derive(Debug, Clone, clap::Args)]
pub struct LocalClusterFlags {
    /// Number of members (3 or 5; at most 5).
    #[arg(long, default_value_t = 3)]
    pub size: usize,
    /// Directory holding one data dir per member.
    #[arg(long, default_value = "keel-data")]
    pub data_dir: PathBuf,
    /// First client port; every port of the cluster shifts with it.
    #[arg(long, default_value_t = 2379)]
    pub base_port: u16,
    /// Do not stream the members' logs.
    #[arg(long)]
    pub quiet: bool,
    /// Passed to every member (ms).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Passed to every member (ms).
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Serve clients over TLS (https:// client URLs) with mutual TLS: a CA,
    /// a member and a client certificate are made in <data-dir>/tls (kept for
    /// later runs); clients present the client certificate.
    #[arg(long)]
    pub tls: bool,
}

struct PlannedMember {
    name: String,
    client_url: String,
    peer_url: String,
}

fn plan(flags: &LocalClusterFlags) -> anyhow::Result<Vec<PlannedMember>> {
    if flags.size == 0 || flags.size > CLIENT_PORT_OFFSETS.len() {
        bail!("--size must be between 1 and {}", CLIENT_PORT_OFFSETS.len());
    }
    CLIENT_PORT_OFFSETS[..flags.size]
        .iter()
        .enumerate()
        .map(|(index, offset)| {
            let client_port = flags
                .base_port
                .checked_add(*offset)
                .and_then(|p| p.checked_add(1).map(|_| p));
            let Some(client_port) = client_port else {
                bail!(
                    "--base-port {} leaves no room for {} members' ports",
                    flags.base_port,
                    flags.size
                );
            };
            let scheme = if flags.tls { "https" } else { "http" };
            Ok(PlannedMember {
                name: format!("keel{}", index + 1),
                client_url: format!("{scheme}://127.0.0.1:{client_port}"),
                peer_url: format!("http://127.0.0.1:{}", client_port + 1),
            })
        })
        .collect()
}

fn member_command(
    flags: &LocalClusterFlags,
    member: &PlannedMember,
    initial_cluster: &str,
    token: &str,
    pki: Option<&LocalPki>,
) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find the keel executable")?;
    let data_dir = flags.data_dir.join(&member.name);
    let launch = MemberLaunch {
        name: &member.name,
        data_dir: &data_dir,
        client_url: &member.client_url,
        peer_url: &member.peer_url,
        initial_cluster,
        token,
        heartbeat_interval_ms: flags.heartbeat_interval,
        election_timeout_ms: flags.election_timeout,
    };
    let mut command = Command::new(exe);
    command.args(launch.args());
    if let Some(pki) = pki {
        command
            .arg(format!("--cert-file={}", pki.member_cert.display()))
            .arg(format!("--key-file={}", pki.member_key.display()))
            .arg(format!("--trusted-ca-file={}", pki.ca.display()))
            .arg("--client-cert-auth");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C in the terminal reaches only
        // local-cluster, which then stops every member cleanly.
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // the prctl system call, which is async-signal-safe.
    unsafe {
        // If local-cluster itself dies (even by SIGKILL), its members stop too.
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    Ok(command)
}

/// Copies a member's output, line by line with its name as prefix, until
/// the member closes it; the returned task ends then.
fn stream_lines(
    prefix: String,
    output: impl AsyncRead + Unpin + Send + 'static,
    quiet: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if !quiet {
                println!("{prefix} | {line}");
            }
        }
    })
}

/// How often a starting local-cluster asks the members for a leader.
const LEADER_POLL: Duration = Duration::from_millis(200);

/// How long a stopping local-cluster waits for the members' last log lines.
const LOG_DRAIN_WAIT: Duration = Duration::from_secs(2);

struct RunningMember {
    name: String,
    client_url: String,
    child: Child,
    exited: bool,
}

pub async fn run_local_cluster(flags: LocalClusterFlags) -> anyhow::Result<()> {
    let members = plan(&flags)?;
    if flags.size.is_multiple_of(2) {
        eprintln!(
            "warning: a cluster of {} members tolerates no more failures than one of {}; prefer 3 or 5",
            flags.size,
            flags.size - 1
        );
    }
    std::fs::create_dir_all(&flags.data_dir)
        .with_context(|| format!("cannot create {}", flags.data_dir.display()))?;
    let pki = if flags.tls {
        let dir = std::path::absolute(flags.data_dir.join("tls")).context("the TLS directory's path")?;
        Some(local_pki(&dir)?)
    } else {
        None
    };
    let client_tls = match &pki {
        Some(pki) => TlsOptions {
            trusted_ca_file: Some(pki.ca.clone()),
            cert_file: Some(pki.client_cert.clone()),
            key_file: Some(pki.client_key.clone()),
            ..TlsOptions::default()
        },
        None => TlsOptions::default(),
    };
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    let token = "keel-local-cluster";
    // Installed before any member starts, so a signal that arrives while
    // they start still stops them cleanly.
    let mut signals = crate::signals::ShutdownSignals::install()?;
    let mut running = Vec::new();
    let mut log_streams = Vec::new();
    for member in &members {
        let mut child = member_command(&flags, member, &initial_cluster, token, pki.as_ref())?
            .spawn()
            .with_context(|| format!("cannot start member {}", member.name))?;
        if let Some(stdout) = child.stdout.take() {
            log_streams.push(stream_lines(member.name.clone(), stdout, flags.quiet));
        }
        if let Some(stderr) = child.stderr.take() {
            log_streams.push(stream_lines(member.name.clone(), stderr, flags.quiet));
        }
        running.push(RunningMember {
            name: member.name.clone(),
            client_url: member.client_url.clone(),
            child,
            exited: false,
        });
    }

    let endpoints: Vec<String> = members
        .iter()
        .map(|m| m.client_url.trim_start_matches("http://").to_string())
        .collect();
    let asked: Vec<Option<String>> = endpoints.iter().cloned().map(Some).collect();
    let leader_deadline = Duration::from_millis(flags.election_timeout * 20).max(Duration::from_secs(20));
    let first_exited = |running: &mut [RunningMember]| {
        report_exited(running);
        running.iter().find(|m| m.exited).map(|m| m.name.clone())
    };
    let waited = tokio::select! {
        waited = wait_for_leader(&asked, &client_tls, leader_deadline, LEADER_POLL, || first_exited(&mut running)) => waited,
        _ = signals.recv() => return stop_all(&mut running, log_streams).await,
    };
    if let Err(error) = waited {
        let _ = stop_all(&mut running, log_streams).await;
        match error {
            LeaderWaitError::MemberExited { member } => {
                bail!("member {member} exited before the cluster elected a leader; see its log above")
            }
            LeaderWaitError::NoLeader(waited) => {
                bail!("the cluster elected no leader within {waited:?}; see the members' logs above")
            }
        }
    }
    println!("keel local cluster of {} members is up:", running.len());
    for member in &running {
        let pid = member
            .child
            .id()
            .map_or_else(|| "?".to_string(), |pid| pid.to_string());
        println!("  {}  {}  pid {}", member.name, member.client_url, pid);
    }
    println!("export KEELCTL_ENDPOINTS={}", endpoints.join(","));
    if let Some(pki) = &pki {
        println!("export KEELCTL_CACERT={}", pki.ca.display());
        println!("export KEELCTL_CERT={}", pki.client_cert.display());
        println!("export KEELCTL_KEY={}", pki.client_key.display());
    }

    loop {
        tokio::select! {
            _ = signals.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                report_exited(&mut running);
                if running.iter().all(|m| m.exited) {
                    bail!("every member has exited; stopping");
                }
            }
        }
    }
    stop_all(&mut running, log_streams).await
}

/// Reports (by name, with the exit status) each member that exited since
/// the last look; such a member is not restarted. Returns how many did.
fn report_exited(running: &mut [RunningMember]) -> usize {
    let mut count = 0;
    for member in running.iter_mut().filter(|m| !m.exited) {
        if let Ok(Some(status)) = member.child.try_wait() {
            member.exited = true;
            count += 1;
            eprintln!(
                "member {} exited unexpectedly ({status}); it is not restarted",
                member.name
            );
        }
    }
    count
}

/// SIGTERMs every running member and waits for each; a member still up
/// 10 s later is killed, and then local-cluster reports an error (it did
/// not stop cleanly). Waits briefly for the members' last log lines.
async fn stop_all(
    running: &mut [RunningMember],
    log_streams: Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    for member in running.iter_mut().filter(|m| !m.exited) {
        if let Some(pid) = member.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let mut killed = Vec::new();
    for member in running.iter_mut().filter(|m| !m.exited) {
        match tokio::time::timeout(Duration::from_secs(10), member.child.wait()).await {
            Ok(Ok(status)) => println!("member {} stopped ({status})", member.name),
            _ => {
                eprintln!("member {} did not stop within 10s; killing it", member.name);
                let _ = member.child.kill().await;
                killed.push(member.name.clone());
            }
        }
        member.exited = true;
    }
    let drained = futures::future::join_all(log_streams);
    let _ = tokio::time::timeout(LOG_DRAIN_WAIT, drained).await;
    if !killed.is_empty() {
        bail!(
            "members {} did not stop cleanly and were killed",
            killed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(size: usize, base_port: u16) -> LocalClusterFlags {
        LocalClusterFlags {
            size,
            data_dir: PathBuf::from("d"),
            base_port,
            quiet: true,
            heartbeat_interval: 100,
            election_timeout: 1000,
            tls: false,
        }
    }

    #[test]
    fn ports_follow_etcds_local_layout_and_shift_with_base_port() {
        let members = plan(&flags(5, 2379)).expect("plan");
        let clients: Vec<&str> = members.iter().map(|m| m.client_url.as_str()).collect();
        assert_eq!(
            clients,
            [
                "http://127.0.0.1:2379",
                "http://127.0.0.1:22379",
                "http://127.0.0.1:32379",
                "http://127.0.0.1:42379",
                "http://127.0.0.1:52379"
            ]
        );
        assert_eq!(members[1].peer_url, "http://127.0.0.1:22380");
        let shifted = plan(&flags(3, 3379)).expect("plan");
        assert_eq!(shifted[2].client_url, "http://127.0.0.1:33379");
        let tls = plan(&LocalClusterFlags {
            tls: true,
            ..flags(1, 2379)
        })
        .expect("plan");
        assert_eq!(tls[0].client_url, "https://127.0.0.1:2379");
    }

    #[test]
    fn sizes_beyond_five_or_ports_beyond_range_are_refused() {
        assert!(plan(&flags(6, 2379)).is_err());
        assert!(plan(&flags(5, 20000)).is_err());
    }
}
