//! `keel local-cluster` driven as a person would, with keelctl only: start
//! a 3-member cluster as a child process, write, list, run a txn from
//! stdin, delete a prefix, read every member's status as JSON; stop it with
//! SIGTERM (exit 0), start it again on the same data dir and read the data
//! back; with `--tls`, keelctl reaches it with the certificates it prints,
//! and its members talk over mutual peer TLS (plaintext peer requests fail).
//! The child (and through it its members) is killed if the test fails.

use crate::keelctl_support;

use std::net::{Ipv4Addr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use keelctl_support::{args, keelctl_path, run, run_with_variables, Ran};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a test waits for an expected output line.
const LINE_WAIT: Duration = Duration::from_secs(30);

/// Client port offsets of a 3-member local cluster; peers are client + 1.
const OFFSETS: [u16; 3] = [0, 20000, 30000];

/// The client port offset of the first member added to a 3-member local
/// cluster (its fourth slot).
const ADDED_MEMBER_OFFSET: u16 = 40000;

/// A base port whose ports (those of the three members and of one added
/// member) are free and claimed for this test process
/// (`keel_tests::ports::claim_ports`), so no other test's member takes one.
/// Bases are multiples of 10, so that one cluster's peer port is never
/// another's client port. The three members' ports stay below Linux's
/// ephemeral range (from 32768), where no outgoing connection draws a port
/// (a CI run lost keel2 with exit status 1 while the other tests' clusters
/// were busy, most likely to such a race: --quiet then hid its reason).
fn free_base_port() -> u16 {
    const LOWEST_BASE: u16 = 1_030;
    const BASES: u16 = (32_768 - 1 - OFFSETS[2] - LOWEST_BASE) / 10;
    let seed = std::process::id() as u16;
    for attempt in 0..2000u16 {
        let slot = seed.wrapping_add(attempt.wrapping_mul(7919)) % BASES;
        let base = LOWEST_BASE + slot * 10;
        let ports: Vec<u16> = OFFSETS
            .iter()
            .chain([&ADDED_MEMBER_OFFSET])
            .flat_map(|offset| [base + offset, base + offset + 1])
            .collect();
        if keel_tests::ports::claim_ports(&ports).expect("claiming test ports") {
            return base;
        }
    }
    panic!("no free base port for a local cluster");
}

/// The running `keel local-cluster`; SIGKILLed on drop if still running
/// (its members then get SIGTERM from the kernel, see local_cluster.rs).
struct LocalCluster {
    child: Child,
    /// local-cluster's standard input, for `add`/`remove` commands.
    commands: Option<tokio::process::ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl LocalCluster {
    fn start(base_port: u16, data_dir: &std::path::Path) -> LocalCluster {
        LocalCluster::start_with(base_port, data_dir, &["--size", "3"])
    }

    fn start_with(base_port: u16, data_dir: &std::path::Path, extra: &[&str]) -> LocalCluster {
        LocalCluster::launch(base_port, data_dir, extra, Stdio::null())
    }

    fn launch(base_port: u16, data_dir: &std::path::Path, extra: &[&str], stdin: Stdio) -> LocalCluster {
        let keel = keel_tests::built_binary("keel").expect("keel is built");
        let mut child = Command::new(keel)
            .args([
                "local-cluster",
                "--base-port",
                &base_port.to_string(),
                "--data-dir",
            ])
            .arg(data_dir)
            .args(["--election-timeout", "500", "--heartbeat-interval", "50"])
            .args(extra)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("keel local-cluster starts");
        let (sender, lines) = tokio::sync::mpsc::unbounded_channel();
        if let Some(stdout) = child.stdout.take() {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    let _ = sender.send(line);
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    let _ = sender.send(format!("stderr: {line}"));
                }
            });
        }
        LocalCluster {
            commands: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Types `command` on local-cluster's standard input.
    async fn type_command(&mut self, command: &str) {
        use tokio::io::AsyncWriteExt;
        let input = self
            .commands
            .as_mut()
            .expect("local-cluster was started with a piped stdin");
        input
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("local-cluster reads its stdin");
        input.flush().await.expect("flush");
    }

    /// Waits for the line `export KEELCTL_ENDPOINTS=...`; returns its value.
    async fn endpoints(&mut self) -> String {
        const EXPORT: &str = "export KEELCTL_ENDPOINTS=";
        let line = self.line_containing(EXPORT, Duration::from_secs(60)).await;
        line.trim_start_matches(EXPORT).to_string()
    }

    /// Waits (at most `wait`) for an output line containing `needle`; returns it.
    async fn line_containing(&mut self, needle: &str, wait: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no line with {needle:?} within {wait:?}:\n{}",
                        self.seen.join("\n")
                    )
                })
                .unwrap_or_else(|| panic!("local-cluster ended:\n{}", self.seen.join("\n")));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// The pid local-cluster printed for `member`.
    fn member_pid(&self, member: &str) -> i32 {
        self.seen
            .iter()
            .filter(|l| l.trim_start().starts_with(&format!("{member} ")))
            .find_map(|l| l.split("pid ").nth(1))
            .and_then(|pid| pid.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid printed for {member}: {:?}", self.seen))
    }

    /// The lines seen from the named members' own output (`<name> | ...`,
    /// copied to local-cluster's stdout or stderr).
    fn lines_of_members(&self, members: &[&str]) -> Vec<&String> {
        self.seen
            .iter()
            .filter(|line| {
                members
                    .iter()
                    .any(|member| line.contains(&format!("{member} | ")))
            })
            .collect()
    }

    /// SIGTERM, then the exit code (within 30s).
    async fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().expect("local-cluster is running");
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("local-cluster stops within 30s of SIGTERM")
            .expect("wait");
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        status.code()
    }
}

async fn keelctl(endpoints: &str, list: &[&str], stdin: &str) -> Ran {
    let mut full = args(&["--endpoints", endpoints]);
    full.extend(args(list));
    let ran = run(&keelctl_path(), &full, stdin.as_bytes()).await;
    assert_eq!(ran.code, 0, "keelctl {list:?} failed: {}", ran.stderr_text());
    ran
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_runs_stops_on_sigterm_and_resumes_its_data() {
    let data = tempfile::tempdir().expect("tempdir");
    let base_port = free_base_port();
    let mut cluster = LocalCluster::start(base_port, data.path());
    let endpoints = cluster.endpoints().await;
    let expected: Vec<String> = OFFSETS
        .iter()
        .map(|o| format!("127.0.0.1:{}", base_port + o))
        .collect();
    assert_eq!(endpoints, expected.join(","));
    for (index, member) in ["keel1", "keel2", "keel3"].iter().enumerate() {
        assert!(
            cluster.seen.iter().any(|l| l.contains(member)
                && l.contains(&format!("http://{}", expected[index]))
                && l.contains("pid ")),
            "member {member} is listed with its URL and pid: {:?}",
            cluster.seen
        );
    }

    let prefixed = cluster.line_containing("keel1 | ", LINE_WAIT).await;
    assert!(
        prefixed.starts_with("keel1 | "),
        "member logs are streamed with the member's name: {prefixed:?}"
    );

    let put = keelctl(&endpoints, &["put", "app/name", "keel"], "").await;
    assert_eq!(put.stdout_text(), "OK\n");
    keelctl(&endpoints, &["put", "app/size", "3"], "").await;
    keelctl(&endpoints, &["put", "tmp/a", "1"], "").await;
    keelctl(&endpoints, &["put", "tmp/b", "2"], "").await;
    let keys = keelctl(&endpoints, &["get", "app", "--prefix", "--keys-only"], "").await;
    assert_eq!(keys.stdout_text(), "app/name\n\napp/size\n\n");
    let txn = keelctl(
        &endpoints,
        &["txn"],
        "value(\"app/name\") = \"keel\"\n\nput app/state ready\nget app/size\n\nput app/state broken\n\n",
    )
    .await;
    assert_eq!(txn.stdout_text(), "SUCCESS\n\nOK\n\napp/size\n3\n");
    let deleted = keelctl(&endpoints, &["del", "tmp", "--prefix"], "").await;
    assert_eq!(deleted.stdout_text(), "2\n");
    let status = keelctl(&endpoints, &["endpoint", "status", "--cluster", "-w", "json"], "").await;
    let statuses: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status is JSON");
    let statuses = statuses.as_array().expect("a JSON array");
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    let leaders: Vec<u64> = statuses
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        leaders.iter().all(|l| *l != 0 && *l == leaders[0]),
        "one leader: {leaders:?}"
    );

    assert_eq!(
        cluster.terminate().await,
        Some(0),
        "exit 0 on SIGTERM: {:?}",
        cluster.seen
    );
    for member in ["keel1", "keel2", "keel3"] {
        assert!(
            cluster
                .seen
                .iter()
                .any(|l| l.contains(&format!("member {member} stopped"))),
            "{member} stopped cleanly: {:?}",
            cluster.seen
        );
    }
    // A normal start and stop is no error: members that are not up yet when
    // the first votes are asked are expected (keel 0.9-era builds logged it).
    let errors: Vec<&String> = cluster.seen.iter().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "errors logged by a normal run: {errors:?}");

    let mut again = LocalCluster::start(base_port, data.path());
    let endpoints = again.endpoints().await;
    let back = keelctl(&endpoints, &["get", "", "--prefix"], "").await;
    assert_eq!(
        back.stdout_text(),
        "app/name\nkeel\napp/size\n3\napp/state\nready\n"
    );
    assert_eq!(again.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_even_quiet_cluster_warns_hides_member_logs_and_reports_a_member_that_dies_without_restarting_it()
{
    let data = tempfile::tempdir().expect("tempdir");
    let base_port = free_base_port();
    let mut cluster = LocalCluster::start_with(base_port, data.path(), &["--size", "2", "--quiet"]);
    let endpoints = cluster.endpoints().await;
    assert_eq!(endpoints.split(',').count(), 2, "{endpoints}");
    let warning = cluster.line_containing("warning:", LINE_WAIT).await;
    assert!(
        warning.starts_with("stderr: ") && warning.contains("no more failures than one of 1"),
        "the even size is warned about on stderr: {warning:?}"
    );
    keelctl(&endpoints, &["put", "k", "v"], "").await;

    let victim = cluster.member_pid("keel2");
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill -9 keel2");
    let report = cluster
        .line_containing("member keel2 exited unexpectedly", LINE_WAIT)
        .await;
    assert!(
        report.starts_with("stderr: ") && report.contains("signal: 9") && report.contains("not restarted"),
        "the death is reported with its exit status: {report:?}"
    );
    // Not restarted: nothing listens on keel2's client port a while later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let keel2_client = base_port + OFFSETS[1];
    assert!(
        TcpListener::bind((Ipv4Addr::LOCALHOST, keel2_client)).is_ok(),
        "keel2's port {keel2_client} should be free: the member must not come back"
    );

    assert_eq!(cluster.terminate().await, Some(0), "{:?}", cluster.seen);
    assert!(
        cluster.seen.iter().any(|l| l.contains("member keel1 stopped")),
        "the survivor stops cleanly: {:?}",
        cluster.seen
    );
    let member_log_lines = cluster.lines_of_members(&["keel1", "keel2"]);
    assert!(
        member_log_lines.is_empty(),
        "--quiet streams no member log: {member_log_lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_cluster_shows_why_a_member_could_not_start() {
    let data = tempfile::tempdir().expect("tempdir");
    let base_port = free_base_port();
    let keel2_peer_port = base_port + OFFSETS[1] + 1;
    let _taken = TcpListener::bind((Ipv4Addr::LOCALHOST, keel2_peer_port)).expect("hold keel2's peer port");
    let mut cluster = LocalCluster::start_with(base_port, data.path(), &["--size", "3", "--quiet"]);
    let report = cluster
        .line_containing("keel2 | Error: cannot listen for peer traffic", LINE_WAIT)
        .await;
    assert!(
        report.starts_with("stderr: ") && report.contains(&keel2_peer_port.to_string()),
        "keel2's exit report goes to stderr even with --quiet: {report:?}"
    );
    cluster
        .line_containing("member keel2 exited unexpectedly", LINE_WAIT)
        .await;
    cluster.terminate().await;
    let other_member_lines = cluster.lines_of_members(&["keel1", "keel3"]);
    assert!(
        other_member_lines.is_empty(),
        "members that did not fail stay quiet: {other_member_lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_does_not_stop_on_sigterm_is_killed_and_local_cluster_exits_non_zero() {
    let data = tempfile::tempdir().expect("tempdir");
    let base_port = free_base_port();
    let mut cluster = LocalCluster::start_with(base_port, data.path(), &["--size", "1", "--quiet"]);
    cluster.endpoints().await;
    // A stopped process keeps SIGTERM pending: it cannot stop cleanly.
    let member = cluster.member_pid("keel1");
    kill(Pid::from_raw(member), Signal::SIGSTOP).expect("SIGSTOP keel1");
    let code = cluster.terminate().await;
    assert_ne!(
        code,
        Some(0),
        "a killed member is not a clean stop: {:?}",
        cluster.seen
    );
    assert!(
        cluster
            .seen
            .iter()
            .any(|l| l.contains("member keel1 did not stop within 10s; killing it")),
        "{:?}",
        cluster.seen
    );
    assert!(
        cluster
            .seen
            .iter()
            .any(|l| l.contains("did not stop cleanly and were killed")),
        "{:?}",
        cluster.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_with_tls_serves_mutual_tls_to_the_certificates_it_prints() {
    let data = tempfile::tempdir().expect("tempdir");
    let base_port = free_base_port();
    let mut cluster = LocalCluster::start_with(base_port, data.path(), &["--size", "3", "--quiet", "--tls"]);
    let endpoints = cluster.endpoints().await;
    let expected: Vec<String> = OFFSETS
        .iter()
        .map(|offset| format!("https://127.0.0.1:{}", base_port + offset))
        .collect();
    assert_eq!(endpoints, expected.join(","));
    let mut exported = Vec::new();
    for variable in ["KEELCTL_CACERT", "KEELCTL_CERT", "KEELCTL_KEY"] {
        let line = cluster
            .line_containing(&format!("export {variable}="), LINE_WAIT)
            .await;
        let value = line
            .split_once('=')
            .map(|(_, value)| value.to_string())
            .expect("a value");
        assert!(std::path::Path::new(&value).is_file(), "{line}");
        exported.push((variable, value));
    }
    let variables: Vec<(&str, &str)> = exported
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let with_endpoints = |list: &[&str]| {
        let mut full = args(&["--endpoints", &endpoints]);
        full.extend(args(list));
        full
    };
    let put = run_with_variables(
        &keelctl_path(),
        &with_endpoints(&["put", "k", "v"]),
        b"",
        &variables,
    )
    .await;
    assert_eq!(
        (put.code, put.stdout_text()),
        (0, "OK\n".to_string()),
        "{}",
        put.stderr_text()
    );
    let get = run_with_variables(&keelctl_path(), &with_endpoints(&["get", "k"]), b"", &variables).await;
    assert_eq!(get.stdout_text(), "k\nv\n", "{}", get.stderr_text());
    // The members ask for the client certificate.
    let without_certificate = run_with_variables(
        &keelctl_path(),
        &with_endpoints(&["get", "k", "--dial-timeout=1s"]),
        b"",
        &variables[..1],
    )
    .await;
    assert_eq!(
        without_certificate.code,
        1,
        "{}",
        without_certificate.stdout_text()
    );
    // The write reached every member over peer TLS: each answers a
    // (linearizable) read alone.
    for member in &expected {
        let read = run_with_variables(
            &keelctl_path(),
            &args(&["--endpoints", member, "get", "k"]),
            b"",
            &variables,
        )
        .await;
        assert_eq!(read.stdout_text(), "k\nv\n", "{member}: {}", read.stderr_text());
    }
    // The peer ports speak mutual TLS only: a plaintext peer request fails,
    // one with the member certificate it made is answered.
    let peer_port = base_port + 1;
    let plaintext = keel_node::join::ask_cluster_members(
        &[format!("http://127.0.0.1:{peer_port}")],
        None,
        Duration::from_secs(1),
    )
    .await;
    assert!(
        plaintext.is_err(),
        "a plaintext peer request was answered: {plaintext:?}"
    );
    let tls_dir = data.path().join("tls");
    let member_tls = keel_node::PeerTlsConfig {
        cert_file: tls_dir.join("member.pem"),
        key_file: tls_dir.join("member-key.pem"),
        trusted_ca_file: Some(tls_dir.join("ca.pem")),
        client_cert_auth: true,
        crl_file: None,
        allowed_cn: None,
        verify_peer_servers: true,
        serve_on_listeners: false,
    };
    let answer = keel_node::join::ask_cluster_members(
        &[format!("https://127.0.0.1:{peer_port}")],
        Some(member_tls),
        Duration::from_secs(10),
    )
    .await
    .expect("a peer request with the member certificate is answered");
    assert_eq!(answer.members.len(), 3);
    assert_eq!(cluster.terminate().await, Some(0), "{:?}", cluster.seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_and_one_removed_through_local_clusters_input_stay_so_after_a_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let base_port = free_base_port();
    let mut cluster = LocalCluster::launch(
        base_port,
        data.path(),
        &["--size", "3", "--quiet"],
        Stdio::piped(),
    );
    let endpoints = cluster.endpoints().await;
    keelctl(&endpoints, &["put", "k", "v"], "").await;

    cluster.type_command("add").await;
    let added = cluster.line_containing("added member keel4", LINE_WAIT).await;
    let added_endpoint = format!("127.0.0.1:{}", base_port + ADDED_MEMBER_OFFSET);
    assert!(added.contains(&added_endpoint), "{added}");
    let deadline = tokio::time::Instant::now() + LINE_WAIT;
    loop {
        let mut full = args(&["--endpoints", &added_endpoint, "get", "k", "--consistency=s"]);
        full.extend(args(&["--print-value-only"]));
        let read = run(&keelctl_path(), &full, b"").await;
        if read.stdout_text() == "v\n" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "keel4 never served k: {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cluster.type_command("remove keel2").await;
    cluster.line_containing("removed member keel2", LINE_WAIT).await;
    let members = keelctl(&format!("{endpoints},{added_endpoint}"), &["member", "list"], "").await;
    let names: Vec<&str> = members
        .stdout_text()
        .lines()
        .filter_map(|line| line.split(", ").nth(2))
        .map(|name| match name {
            "keel1" => "keel1",
            "keel3" => "keel3",
            "keel4" => "keel4",
            _ => "other",
        })
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["keel1", "keel3", "keel4"], "{}", members.stdout_text());
    cluster.type_command("nonsense").await;
    cluster.line_containing("unknown command", LINE_WAIT).await;
    assert_eq!(cluster.terminate().await, Some(0), "{:?}", cluster.seen);

    // Resumed, it runs the members it had at the end.
    let mut resumed = LocalCluster::start_with(base_port, data.path(), &["--size", "3", "--quiet"]);
    let resumed_endpoints = resumed.endpoints().await;
    assert_eq!(
        resumed_endpoints,
        format!(
            "127.0.0.1:{base_port},127.0.0.1:{},{added_endpoint}",
            base_port + OFFSETS[2]
        )
    );
    let read = keelctl(&resumed_endpoints, &["get", "k", "--print-value-only"], "").await;
    assert_eq!(read.stdout_text(), "v\n");
    assert_eq!(resumed.terminate().await, Some(0), "{:?}", resumed.seen);
}
