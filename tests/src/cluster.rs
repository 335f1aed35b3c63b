//! One `Cluster` interface over real member processes, keel or etcd: both
//! take etcd's flags, so the same fixture starts either, and the same test
//! can run against both (compatibility tests compare their answers).
//!
//! Invariant: every child process a `Cluster` starts is killed and reaped
//! when the `Cluster` is dropped, and its directory (data dirs, logs) is
//! removed unless `KEEL_TEST_KEEP_DIRS` is set; if the test is panicking the
//! members' log tails are printed first so the failure can be understood.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_client::launch::MemberLaunch;
use keel_client::{Client, ClientConfig, ClientError, TlsOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

use crate::binaries::{built_binary, BinaryError};
use crate::ports::free_port;

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Binary(#[from] BinaryError),
    #[error("client: {0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Timeout(String),
    #[error("member {member} is not running")]
    NotRunning { member: String },
    #[error("member {member} still runs")]
    StillRunning { member: String },
}

/// Which server the cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Keel,
    Etcd,
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub flavor: Flavor,
    pub size: usize,
    /// ms; etcd's default is 1000, tests use less to run faster.
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub snapshot_count: Option<u64>,
    /// Extra flags passed to every member.
    pub extra_args: Vec<String>,
    /// Extra flags for member `i` only (`member_args[i]`), e.g. keel's
    /// hidden `--peer-dial-overrides` for a harness that proxies peer links.
    pub member_args: Vec<Vec<String>>,
    /// `(client, peer)` ports per member, when the caller picked them (for
    /// example to point proxies at them before the members start).
    pub ports: Option<Vec<(u16, u16)>>,
    /// Where data dirs and logs go. `None`: a temporary directory removed on
    /// drop; `Some(dir)`: the caller's directory, kept.
    pub base_dir: Option<PathBuf>,
    /// TLS on the members' client ports (`https://` client URLs).
    pub client_tls: Option<ClientPortTls>,
    /// `https://` peer URLs (the members' `--peer-*` TLS flags go in
    /// `extra_args` or `member_args`).
    pub peer_tls: bool,
}

/// TLS on the members' client ports.
#[derive(Debug, Clone)]
pub struct ClientPortTls {
    /// The members' TLS flags (`--cert-file=...`, `--key-file=...`, ...).
    pub member_flags: Vec<String>,
    /// How the fixture's own clients dial the members.
    pub client: TlsOptions,
}

impl ClusterOptions {
    pub fn keel(size: usize) -> Self {
        ClusterOptions {
            flavor: Flavor::Keel,
            size,
            election_timeout_ms: 500,
            heartbeat_interval_ms: 50,
            snapshot_count: None,
            extra_args: Vec::new(),
            member_args: Vec::new(),
            ports: None,
            base_dir: None,
            client_tls: None,
            peer_tls: false,
        }
    }

    pub fn etcd(size: usize) -> Self {
        ClusterOptions {
            flavor: Flavor::Etcd,
            ..ClusterOptions::keel(size)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Running,
    Paused,
    Stopped,
}

struct Member {
    name: String,
    /// For a member added to the running cluster: the `--initial-cluster`
    /// `member add` printed (it then starts with `--initial-cluster-state
    /// existing`).
    joining_cluster: Option<String>,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
}

pub struct Cluster {
    options: ClusterOptions,
    dir: Option<tempfile::TempDir>,
    kept_dir: Option<PathBuf>,
    binary: PathBuf,
    token: String,
    initial_cluster: String,
    members: Vec<Member>,
}

impl Cluster {
    /// Starts the members and waits until they agree on a leader.
    pub async fn start(options: ClusterOptions) -> Result<Cluster, FixtureError> {
        let mut cluster = Cluster::spawn(options)?;
        cluster.wait_for_leader(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Starts the members without waiting for a leader.
    pub fn spawn(options: ClusterOptions) -> Result<Cluster, FixtureError> {
        let binary = match options.flavor {
            Flavor::Keel => built_binary("keel")?,
            Flavor::Etcd => which("etcd").ok_or_else(|| BinaryError {
                name: "etcd".into(),
                searched: vec!["$PATH".into()],
            })?,
        };
        let (dir, kept_dir) = match &options.base_dir {
            Some(base) => {
                std::fs::create_dir_all(base)?;
                (None, Some(base.clone()))
            }
            None => (
                Some(tempfile::Builder::new().prefix("keel-test-cluster-").tempdir()?),
                None,
            ),
        };
        let root = dir.as_ref().map_or_else(
            || kept_dir.clone().unwrap_or_default(),
            |d| d.path().to_path_buf(),
        );
        let mut members = Vec::new();
        for index in 0..options.size {
            let name = format!("m{}", index + 1);
            let (client_port, peer_port) = match &options.ports {
                Some(ports) => ports[index],
                None => (free_port()?, free_port()?),
            };
            members.push(Member {
                joining_cluster: None,
                data_dir: root.join(format!("{name}.data")),
                log_path: root.join(format!("{name}.log")),
                name,
                client_port,
                peer_port,
                child: None,
                paused: false,
            });
        }
        let peer_scheme = if options.peer_tls { "https" } else { "http" };
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={peer_scheme}://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "test-{}",
            root.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        );
        let mut cluster = Cluster {
            options,
            dir,
            kept_dir,
            binary,
            token,
            initial_cluster,
            members,
        };
        for index in 0..cluster.members.len() {
            cluster.launch(index)?;
        }
        Ok(cluster)
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn flavor(&self) -> Flavor {
        self.options.flavor
    }

    /// The directory holding every member's data dir and log.
    pub fn dir(&self) -> &Path {
        match (&self.dir, &self.kept_dir) {
            (Some(temporary), _) => temporary.path(),
            (None, Some(kept)) => kept,
            (None, None) => Path::new("."),
        }
    }

    pub fn member_name(&self, index: usize) -> &str {
        &self.members[index].name
    }

    pub fn data_dir(&self, index: usize) -> &Path {
        &self.members[index].data_dir
    }

    pub fn log_path(&self, index: usize) -> &Path {
        &self.members[index].log_path
    }

    /// `127.0.0.1:port` of member `index`'s client listener
    /// (`https://127.0.0.1:port` when it serves TLS).
    pub fn endpoint(&self, index: usize) -> String {
        let port = self.members[index].client_port;
        match &self.options.client_tls {
            Some(_) => format!("https://127.0.0.1:{port}"),
            None => format!("127.0.0.1:{port}"),
        }
    }

    /// How the fixture's clients dial the members (plaintext: the default).
    pub fn client_tls(&self) -> TlsOptions {
        self.options
            .client_tls
            .as_ref()
            .map(|tls| tls.client.clone())
            .unwrap_or_default()
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn pid(&self, index: usize) -> Option<u32> {
        self.members[index].child.as_ref().map(Child::id)
    }

    pub fn state(&self, index: usize) -> MemberState {
        let member = &self.members[index];
        match (&member.child, member.paused) {
            (None, _) => MemberState::Stopped,
            (Some(_), true) => MemberState::Paused,
            (Some(_), false) => MemberState::Running,
        }
    }

    /// A client over every member's endpoint (with failover).
    pub fn client(&self) -> Result<Client, FixtureError> {
        Ok(Client::connect_lazy(self.client_config(self.endpoints()))?)
    }

    /// A client that talks to member `index` only.
    pub fn member_client(&self, index: usize) -> Result<Client, FixtureError> {
        Ok(Client::connect_lazy(
            self.client_config(vec![self.endpoint(index)]),
        )?)
    }

    fn client_config(&self, endpoints: Vec<String>) -> ClientConfig {
        ClientConfig::new(endpoints)
            .with_request_timeout(Duration::from_secs(15))
            .with_tls(self.client_tls())
    }

    /// The command line of member `index`: etcd's flags, which keel shares.
    pub fn member_args(&self, index: usize) -> Vec<OsString> {
        let member = &self.members[index];
        let scheme = if self.options.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let client_url = format!("{scheme}://127.0.0.1:{}", member.client_port);
        let peer_url = self.peer_url(index);
        let mut args = MemberLaunch {
            name: &member.name,
            data_dir: &member.data_dir,
            client_url: &client_url,
            peer_url: &peer_url,
            initial_cluster: member.joining_cluster.as_deref().unwrap_or(&self.initial_cluster),
            token: &self.token,
            heartbeat_interval_ms: self.options.heartbeat_interval_ms,
            election_timeout_ms: self.options.election_timeout_ms,
            joins_running_cluster: member.joining_cluster.is_some(),
        }
        .args();
        if let Some(count) = self.options.snapshot_count {
            args.extend(["--snapshot-count".into(), count.to_string().into()]);
        }
        if let Some(tls) = &self.options.client_tls {
            args.extend(tls.member_flags.iter().map(OsString::from));
        }
        args.extend(self.options.extra_args.iter().map(OsString::from));
        if let Some(own) = self.options.member_args.get(index) {
            args.extend(own.iter().map(OsString::from));
        }
        args
    }

    fn launch(&mut self, index: usize) -> Result<(), FixtureError> {
        let args = self.member_args(index);
        let member = &mut self.members[index];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_path)?;
        let child = Command::new(&self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        member.child = Some(child);
        member.paused = false;
        Ok(())
    }

    /// kill -9 member `index`.
    pub fn kill(&mut self, index: usize) -> Result<(), FixtureError> {
        let member = &mut self.members[index];
        let mut child = member.child.take().ok_or_else(|| FixtureError::NotRunning {
            member: member.name.clone(),
        })?;
        child.kill()?;
        child.wait()?;
        member.paused = false;
        Ok(())
    }

    /// SIGTERM member `index` and wait for it to exit.
    pub async fn stop(&mut self, index: usize) -> Result<(), FixtureError> {
        let member = &mut self.members[index];
        let mut child = member.child.take().ok_or_else(|| FixtureError::NotRunning {
            member: member.name.clone(),
        })?;
        let pid = Pid::from_raw(child.id() as i32);
        if member.paused {
            let _ = kill(pid, Signal::SIGCONT);
            member.paused = false;
        }
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                child.kill()?;
                child.wait()?;
                return Err(FixtureError::Timeout(format!(
                    "{} did not stop within 10s of SIGTERM",
                    member.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a stopped (or killed) member again on its data dir.
    pub fn restart(&mut self, index: usize) -> Result<(), FixtureError> {
        if self.members[index].child.is_some() {
            return Ok(());
        }
        self.launch(index)
    }

    /// SIGSTOP member `index`.
    pub fn pause(&mut self, index: usize) -> Result<(), FixtureError> {
        let member = &mut self.members[index];
        let child = member.child.as_ref().ok_or_else(|| FixtureError::NotRunning {
            member: member.name.clone(),
        })?;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGSTOP).map_err(std::io::Error::from)?;
        member.paused = true;
        Ok(())
    }

    /// SIGCONT member `index`.
    pub fn resume(&mut self, index: usize) -> Result<(), FixtureError> {
        let member = &mut self.members[index];
        let child = member.child.as_ref().ok_or_else(|| FixtureError::NotRunning {
            member: member.name.clone(),
        })?;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT).map_err(std::io::Error::from)?;
        member.paused = false;
        Ok(())
    }

    /// The index of the member that leads, as the running members report
    /// it: a majority of the cluster must name the same member, which must
    /// itself answer.
    pub async fn leader(&self) -> Option<usize> {
        keel_client::launch::agreed_leader(&self.running_endpoints(), &self.client_tls()).await
    }

    /// Each member's endpoint if it is running (not stopped or paused).
    fn running_endpoints(&self) -> Vec<Option<String>> {
        (0..self.members.len())
            .map(|index| (self.state(index) == MemberState::Running).then(|| self.endpoint(index)))
            .collect()
    }

    /// Starts a cluster and waits (up to 10 s) until it has a leader.
    pub async fn start_led(options: ClusterOptions) -> Result<Cluster, FixtureError> {
        let mut cluster = Cluster::start(options).await?;
        cluster.wait_for_leader(Duration::from_secs(10)).await?;
        Ok(cluster)
    }

    /// Waits until a majority agrees on a leader; returns its index.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> Result<usize, FixtureError> {
        let endpoints = self.running_endpoints();
        let tls = self.client_tls();
        let poll = Duration::from_millis(50);
        let waited =
            keel_client::launch::wait_for_leader(&endpoints, &tls, timeout, poll, || self.exited_member())
                .await;
        waited.map_err(|error| {
            let exited_log = match &error {
                keel_client::launch::LeaderWaitError::MemberExited { member } => self
                    .members
                    .iter()
                    .position(|m| &m.name == member)
                    .map(|index| format!("; the end of its log:\n{}", self.log_tail(index, 20))),
                keel_client::launch::LeaderWaitError::NoLeader(_) => None,
            };
            FixtureError::Timeout(format!("{error}{}", exited_log.unwrap_or_default()))
        })
    }

    /// The name of a member whose process exited on its own, if any.
    pub fn exited_member(&mut self) -> Option<String> {
        self.members
            .iter_mut()
            .find_map(|m| match m.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(_))) => Some(m.name.clone()),
                _ => None,
            })
    }

    /// The last `lines` lines of member `index`'s log.
    pub fn log_tail(&self, index: usize, lines: usize) -> String {
        tail(&self.members[index].log_path, lines)
    }

    /// Member `index`'s whole log once it contains `line`, or `None` when it
    /// does not within `limit`. A member logs an event just after its effect
    /// is visible (a snapshot installed, then the line), so a test that saw
    /// the effect must still wait for the line.
    pub async fn wait_for_log_line(&self, index: usize, line: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let log = std::fs::read_to_string(&self.members[index].log_path).unwrap_or_default();
            if log.contains(line) {
                return Some(log);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until member `index` (a leader) has purged its Raft log past
    /// `raft_index` (its `keel_raft_log_purged_index` gauge), so that a
    /// member whose log ends at `raft_index` must catch up by snapshot.
    /// Taking a snapshot is not enough: the leader keeps entries behind it,
    /// and postpones the purge while a replication session to a lagging
    /// member (a paused one's, say) may still read them. False when the log
    /// is not purged that far within `limit`.
    pub async fn wait_for_log_purged_past(&self, index: usize, raft_index: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let purged = self.metric(index, "keel_raft_log_purged_index").await;
            if purged.is_some_and(|purged| purged > raft_index as f64) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of the unlabeled sample `name` on member `index`'s
    /// `/metrics` (a keel member's client port), or `None` when it has none.
    pub async fn metric(&self, index: usize, name: &str) -> Option<f64> {
        let scheme = if self.options.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://127.0.0.1:{}/metrics", self.members[index].client_port);
        let exposition = crate::curl(&url, &["--max-time", "5", "--insecure"]).await.body;
        exposition.lines().find_map(|line| {
            let (sample, value) = line.split_once(' ')?;
            (sample == name).then(|| value.trim().parse::<f64>().ok())?
        })
    }

    /// Keeps the directory (data dirs, logs) after the cluster is dropped.
    pub fn keep_dir(&mut self) -> Option<PathBuf> {
        if let Some(temporary) = self.dir.take() {
            self.kept_dir = Some(temporary.keep());
        }
        self.kept_dir.clone()
    }

    /// Member `index`'s peer port.
    pub fn peer_port(&self, index: usize) -> u16 {
        self.members[index].peer_port
    }

    /// `http://127.0.0.1:<peer port>` of member `index` (`https://` with
    /// [`ClusterOptions::peer_tls`]).
    pub fn peer_url(&self, index: usize) -> String {
        let scheme = if self.options.peer_tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[index].peer_port)
    }

    /// Picks the ports and data dir of a new member named `name`, not
    /// started yet (its peer URL is what `member add` needs); returns its
    /// index.
    pub fn prepare_member(&mut self, name: &str) -> Result<usize, FixtureError> {
        let member = self.fresh_member(name)?;
        self.members.push(member);
        Ok(self.members.len() - 1)
    }

    /// A member named `name` with new free ports and its own data dir and
    /// log in the cluster's dir, not started.
    fn fresh_member(&self, name: &str) -> Result<Member, FixtureError> {
        let root = self.dir();
        Ok(Member {
            name: name.to_string(),
            joining_cluster: None,
            client_port: free_port()?,
            peer_port: free_port()?,
            data_dir: root.join(format!("{name}.data")),
            log_path: root.join(format!("{name}.log")),
            child: None,
            paused: false,
        })
    }

    /// Puts a fresh member named `name` (new ports, data dir and log, not
    /// started yet) in place of member `index`, whose process must have
    /// ended (a member removed from the cluster): index `index` then names
    /// the new member, whose peer URL is what `member add` needs.
    pub fn replace_member(&mut self, index: usize, name: &str) -> Result<(), FixtureError> {
        let old = &self.members[index];
        if old.child.is_some() {
            return Err(FixtureError::StillRunning {
                member: old.name.clone(),
            });
        }
        self.members[index] = self.fresh_member(name)?;
        Ok(())
    }

    /// Replaces the extra flags of member `index` alone (see
    /// [`ClusterOptions::member_args`]), used from its next start on.
    pub fn set_member_args(&mut self, index: usize, args: Vec<String>) {
        let own = &mut self.options.member_args;
        if own.len() <= index {
            own.resize(index + 1, Vec::new());
        }
        own[index] = args;
    }

    /// Starts prepared member `index` as one added to the running cluster,
    /// with the `--initial-cluster` that `member add` printed.
    pub fn start_joining(&mut self, index: usize, initial_cluster: &str) -> Result<(), FixtureError> {
        self.members[index].joining_cluster = Some(initial_cluster.to_string());
        self.launch(index)
    }

    /// Waits until member `index`'s process exits; its status, or `None`
    /// when it still runs after `limit`.
    pub async fn wait_for_exit(&mut self, index: usize, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let child = self.members[index].child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if failing {
            for (index, member) in self.members.iter().enumerate() {
                eprintln!(
                    "---- last log lines of {} ----\n{}",
                    member.name,
                    self.log_tail(index, 40)
                );
            }
        }
        if std::env::var_os("KEEL_TEST_KEEP_DIRS").is_some() {
            if let Some(dir) = self.keep_dir() {
                eprintln!("kept cluster directory {}", dir.display());
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_ok() {
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until the member list shows `members` members that each
/// published their name and client URLs (etcd's "started" members, which
/// `member add` and `--cluster` commands count on); panics after 10 s.
pub async fn wait_for_published_members(client: &Client, members: usize) {
    let published_by = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = client.member_list().await.expect("member list").members;
        if listed.len() == members && listed.iter().all(|member| !member.client_ur_ls.is_empty()) {
            return;
        }
        assert!(
            Instant::now() < published_by,
            "members never published their client URLs: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first `name` on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
