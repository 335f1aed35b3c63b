//! `keel local-cluster`: runs a 3- or 5-member cluster of real `keel`
//! processes on 127.0.0.1 from one command, streams their logs with a
//! per-member prefix, reports a member that dies, and on Ctrl-C or SIGTERM
//! stops every member cleanly. While it runs, lines on its standard input
//! add a member (`add`) or remove one (`remove keel2`) through etcd's
//! membership calls, so a member replacement can be practised on one
//! machine. Run again on the same data dir, it resumes the same cluster,
//! with the members it had (`local_cluster_roster.rs`), and its data. With
//! `--tls` the client ports and the members' peer traffic use mutual TLS
//! with certificates it makes (see local_pki.rs); a cluster made with
//! `--tls` keeps `https://` peer URLs and must be resumed with it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use keel_client::launch::{wait_for_leader, LeaderWaitError, MemberLaunch};
use keel_client::{membership_change_when_ready, Client, ClientConfig, TlsOptions};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::local_cluster_roster::{Roster, RosterMember};
use crate::local_pki::{local_pki, LocalPki};

#[derive(Debug, Clone, clap::Args)]
pub struct LocalClusterFlags {
    /// Number of members (3 or 5; at most 5). A data dir that holds a local
    /// cluster resumes it with the members it has.
    #[arg(long, default_value_t = 3)]
    pub size: usize,
    /// Directory holding one data dir per member.
    #[arg(long, default_value = "keel-data")]
    pub data_dir: PathBuf,
    /// First client port; every port of the cluster shifts with it.
    #[arg(long, default_value_t = 2379)]
    pub base_port: u16,
    /// Do not stream the members' logs (a member that exits on an error
    /// or panics still has its report shown).
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

fn member_command(
    flags: &LocalClusterFlags,
    member: &RosterMember,
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
        joins_running_cluster: member.joined,
    };
    let mut command = Command::new(exe);
    command.args(launch.args());
    if let Some(pki) = pki {
        command
            .arg(format!("--cert-file={}", pki.member_cert.display()))
            .arg(format!("--key-file={}", pki.member_key.display()))
            .arg(format!("--trusted-ca-file={}", pki.ca.display()))
            .arg("--client-cert-auth");
        if member.peer_url.starts_with("https://") {
            // Mutual TLS between members, with the same member certificate.
            command
                .arg(format!("--peer-cert-file={}", pki.member_cert.display()))
                .arg(format!("--peer-key-file={}", pki.member_key.display()))
                .arg(format!("--peer-trusted-ca-file={}", pki.ca.display()))
                .arg("--peer-client-cert-auth");
        }
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
/// the member closes it; the returned task ends then. With `quiet`, only
/// what says why a member died or failed ([`QuietFilter`]) is copied, to
/// stderr.
fn stream_lines(
    prefix: String,
    output: impl AsyncRead + Unpin + Send + 'static,
    quiet: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(output).lines();
        let mut filter = QuietFilter::default();
        while let Ok(Some(line)) = lines.next_line().await {
            if !quiet {
                println!("{prefix} | {line}");
            } else if filter.keeps(&line) {
                eprintln!("{prefix} | {line}");
            }
        }
    })
}

/// How a member's exit report begins: `main` returned an error.
const MEMBER_EXIT_REPORT_START: &str = "Error: ";

/// What a quiet local-cluster still shows of a member's output: the report
/// a member prints when `main` returns an error (its `Error: ...` line and
/// every line after it), and a panic's report from any thread (`thread
/// 'name' (id) panicked at ...` and the lines after it: the message, the
/// note, a backtrace) up to the member's next log line.
#[derive(Default)]
struct QuietFilter {
    in_exit_report: bool,
    in_panic_report: bool,
}

impl QuietFilter {
    fn keeps(&mut self, line: &str) -> bool {
        self.in_exit_report |= line.starts_with(MEMBER_EXIT_REPORT_START);
        if self.in_exit_report {
            return true;
        }
        let is_panic = line.starts_with("thread '") && line.contains(" panicked at ");
        self.in_panic_report = is_panic || (self.in_panic_report && !is_log_line(line));
        self.in_panic_report
    }
}

/// A line of the member's log: it starts with its timestamp (`2026-12-05T...`).
fn is_log_line(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() > 5 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b'-'
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

/// The members' processes and their log streams.
struct RunningMembers {
    members: Vec<RunningMember>,
    log_streams: Vec<tokio::task::JoinHandle<()>>,
    /// The certificates of a `--tls` cluster.
    pki: Option<LocalPki>,
}

impl RunningMembers {
    fn start(
        &mut self,
        flags: &LocalClusterFlags,
        member: &RosterMember,
        initial_cluster: &str,
    ) -> anyhow::Result<()> {
        let mut child = member_command(flags, member, initial_cluster, CLUSTER_TOKEN, self.pki.as_ref())?
            .spawn()
            .with_context(|| format!("cannot start member {}", member.name))?;
        if let Some(stdout) = child.stdout.take() {
            self.log_streams
                .push(stream_lines(member.name.clone(), stdout, flags.quiet));
        }
        if let Some(stderr) = child.stderr.take() {
            self.log_streams
                .push(stream_lines(member.name.clone(), stderr, flags.quiet));
        }
        self.members.push(RunningMember {
            name: member.name.clone(),
            client_url: member.client_url.clone(),
            child,
            exited: false,
        });
        Ok(())
    }
}

const CLUSTER_TOKEN: &str = "keel-local-cluster";

pub async fn run_local_cluster(flags: LocalClusterFlags) -> anyhow::Result<()> {
    std::fs::create_dir_all(&flags.data_dir)
        .with_context(|| format!("cannot create {}", flags.data_dir.display()))?;
    let mut roster = match Roster::load(&flags.data_dir)? {
        Some(roster) => roster,
        None => {
            let mut roster = Roster::plan(flags.size, flags.base_port)?;
            if flags.tls {
                roster.use_peer_tls();
            }
            roster.save(&flags.data_dir)?;
            roster
        }
    };
    // Peer URLs keep the scheme the cluster was made with (members' ids
    // derive from them).
    match (roster.peer_tls(), flags.tls) {
        (true, false) => {
            bail!("this local cluster was made with --tls: its members talk over peer TLS; run it with --tls")
        }
        (false, true) => {
            eprintln!("warning: this local cluster was made without --tls: peer traffic stays plaintext")
        }
        _ => {}
    }
    // The client URLs' scheme follows this run's --tls.
    roster.use_client_tls(flags.tls);
    let pki = if flags.tls {
        let dir = std::path::absolute(flags.data_dir.join("tls")).context("the TLS directory's path")?;
        Some(local_pki(&dir)?)
    } else {
        None
    };
    let client_tls = client_tls_options(pki.as_ref());
    if roster.members.len().is_multiple_of(2) {
        eprintln!(
            "warning: a cluster of {} members tolerates no more failures than one of {}; prefer 3 or 5",
            roster.members.len(),
            roster.members.len() - 1
        );
    }
    // Installed before any member starts, so a signal that arrives while
    // they start still stops them cleanly.
    let mut signals = crate::signals::ShutdownSignals::install()?;
    let mut running = RunningMembers {
        members: Vec::new(),
        log_streams: Vec::new(),
        pki,
    };
    for member in &roster.members {
        running.start(&flags, member, &roster.initial_cluster_for(member))?;
    }

    let asked: Vec<Option<String>> = roster.client_endpoints().into_iter().map(Some).collect();
    let leader_deadline = Duration::from_millis(flags.election_timeout * 20).max(Duration::from_secs(20));
    let first_exited = |running: &mut [RunningMember]| {
        report_exited(running);
        running.iter().find(|m| m.exited).map(|m| m.name.clone())
    };
    let waited = tokio::select! {
        waited = wait_for_leader(&asked, &client_tls, leader_deadline, LEADER_POLL, || first_exited(&mut running.members)) => waited,
        _ = signals.recv() => return stop_all(running).await,
    };
    if let Err(error) = waited {
        let _ = stop_all(running).await;
        match error {
            LeaderWaitError::MemberExited { member } => {
                bail!("member {member} exited before the cluster elected a leader; see its log above")
            }
            LeaderWaitError::NoLeader(waited) => {
                bail!("the cluster elected no leader within {waited:?}; see the members' logs above")
            }
        }
    }
    println!("keel local cluster of {} members is up:", running.members.len());
    for member in &running.members {
        let pid = member
            .child
            .id()
            .map_or_else(|| "?".to_string(), |pid| pid.to_string());
        println!("  {}  {}  pid {}", member.name, member.client_url, pid);
    }
    println!("export KEELCTL_ENDPOINTS={}", roster.client_endpoints().join(","));
    if let Some(pki) = &running.pki {
        println!("export KEELCTL_CACERT={}", pki.ca.display());
        println!("export KEELCTL_CERT={}", pki.client_cert.display());
        println!("export KEELCTL_KEY={}", pki.client_key.display());
    }
    println!("type `add` to add a member, `remove <name>` to remove one, `members` to list them");

    let mut commands = Some(stdin_lines());
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            line = next_command(&mut commands) => match line {
                Some(line) => {
                    if let Err(error) = run_command(&flags, &mut roster, &mut running, &client_tls, line.trim()).await {
                        eprintln!("{}: {error:#}", line.trim());
                    }
                }
                // Standard input closed: no more commands.
                None => commands = None,
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                report_exited(&mut running.members);
                if running.members.iter().all(|m| m.exited) {
                    bail!("every member has exited; stopping");
                }
            }
        }
    }
    stop_all(running).await
}

/// What keel's own client presents to a `--tls` local cluster.
fn client_tls_options(pki: Option<&LocalPki>) -> TlsOptions {
    match pki {
        Some(pki) => TlsOptions {
            trusted_ca_file: Some(pki.ca.clone()),
            cert_file: Some(pki.client_cert.clone()),
            key_file: Some(pki.client_key.clone()),
            ..TlsOptions::default()
        },
        None => TlsOptions::default(),
    }
}

/// The lines of standard input, read on a thread of their own: a read
/// blocked on an open terminal must not keep the stopping process alive
/// (tokio's runtime waits for its own blocking reads when it shuts down).
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

/// The next line of standard input; pending forever once it closed.
async fn next_command(commands: &mut Option<tokio::sync::mpsc::UnboundedReceiver<String>>) -> Option<String> {
    match commands {
        Some(lines) => lines.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs one control command typed on local-cluster's standard input.
async fn run_command(
    flags: &LocalClusterFlags,
    roster: &mut Roster,
    running: &mut RunningMembers,
    client_tls: &TlsOptions,
    line: &str,
) -> anyhow::Result<()> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let client = || {
        Client::connect_lazy(
            ClientConfig::new(roster.client_endpoints())
                .with_request_timeout(Duration::from_secs(15))
                .with_tls(client_tls.clone()),
        )
    };
    match words.as_slice() {
        [] => Ok(()),
        ["add"] => {
            let member = roster.next_member(flags.base_port)?;
            let client = client()?;
            let added = membership_change_when_ready(MEMBERSHIP_READY_WAIT, || {
                client.member_add(vec![member.peer_url.clone()], false)
            })
            .await?;
            let id = added.member.as_ref().map_or(0, |m| m.id);
            roster.members.push(member.clone());
            roster.last_number += 1;
            roster.save(&flags.data_dir)?;
            running.start(
                flags,
                &member,
                &keel_client::launch::initial_cluster_after_add(&added, &member.name),
            )?;
            println!(
                "added member {} ({id:x}) at {}; it joins with --initial-cluster-state existing",
                member.name, member.client_url
            );
            Ok(())
        }
        ["remove", name] => {
            let Some(position) = roster.members.iter().position(|m| m.name == *name) else {
                bail!("no member named {name:?}");
            };
            let client = client()?;
            let listed = client.member_list().await?;
            let peer_url = &roster.members[position].peer_url;
            let Some(id) = listed
                .members
                .iter()
                .find(|m| m.peer_ur_ls.contains(peer_url))
                .map(|m| m.id)
            else {
                bail!("the cluster lists no member at {peer_url}");
            };
            membership_change_when_ready(MEMBERSHIP_READY_WAIT, || client.member_remove(id)).await?;
            roster.members.remove(position);
            roster.save(&flags.data_dir)?;
            if let Some(removed) = running.members.iter_mut().find(|m| m.name == *name) {
                // It stops by itself once it learns it was removed.
                removed.exited = true;
                let _ = tokio::time::timeout(Duration::from_secs(10), removed.child.wait()).await;
            }
            println!("removed member {name} ({id:x}); its data dir can be deleted");
            Ok(())
        }
        ["members"] => {
            for member in &roster.members {
                println!("  {}  {}  {}", member.name, member.client_url, member.peer_url);
            }
            Ok(())
        }
        _ => bail!("unknown command; type `add`, `remove <name>` or `members`"),
    }
}

/// How long `add` and `remove` ask again while the cluster refuses the
/// change before proposing it: just after the cluster is up, a member may
/// not have published its attributes (etcd's "started") or been heard
/// from by the leader yet, and etcd's checks refuse a change until it has.
const MEMBERSHIP_READY_WAIT: Duration = Duration::from_secs(20);

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
async fn stop_all(mut running: RunningMembers) -> anyhow::Result<()> {
    let log_streams = std::mem::take(&mut running.log_streams);
    let running = &mut running.members;
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
    use super::QuietFilter;

    fn kept(lines: &[&str]) -> Vec<String> {
        let mut filter = QuietFilter::default();
        lines
            .iter()
            .filter(|line| filter.keeps(line))
            .map(|line| line.to_string())
            .collect()
    }

    #[test]
    fn a_quiet_cluster_shows_a_members_panic_report_and_not_its_log() {
        let output = [
            "2026-12-05T17:14:47.096949Z  INFO member started name=keel1",
            "thread 'main' (4242) panicked at server/src/main.rs:10:5:",
            "the member's panic message",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
            "2026-12-05T17:14:48.000000Z  INFO following leader member=keel1",
            "thread 'tokio-rt-worker' (4250) panicked at crates/node/src/node.rs:1:1:",
            "stack backtrace:",
            "   0: std::panicking::begin_panic",
            "2026-12-05T17:14:49.000000Z  INFO elected leader member=keel1",
        ];
        assert_eq!(
            kept(&output),
            [output[1], output[2], output[3], output[5], output[6], output[7]]
        );
    }

    #[test]
    fn a_quiet_cluster_shows_everything_from_a_members_exit_report_on() {
        let output = [
            "2026-12-05T17:14:47.096949Z  INFO member started name=keel1",
            "Error: could not bind 127.0.0.1:2379",
            "",
            "Caused by:",
            "2026-12-05T17:14:47.100000Z  INFO a line after the report",
        ];
        assert_eq!(kept(&output), output[1..]);
    }
}
