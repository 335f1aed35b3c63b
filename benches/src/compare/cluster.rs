//! The clusters a comparison measures: real etcd or real keel members from
//! the `keel-tests` fixture, both with etcd's default timings (election
//! 1000 ms, heartbeat 100 ms) and fsync on (no unsafe flags), with data
//! under the comparison's data root (the filesystem whose fdatasync latency
//! is reported), removed when dropped. A cluster can be started
//! [`Security::Tls`] (TLS on the client port, certificates made by the
//! `keel-tests` PKI helper into its directory) or [`Security::Auth`]
//! (plaintext, etcd's auth enabled with a root user and a user the load
//! clients authenticate as); its [`BenchCluster::access`] says how to reach it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_api::authpb::{permission::Type as PermissionType, Permission};
use keel_api::etcdserverpb::auth_client::AuthClient;
use keel_api::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest,
};
use keel_client::TlsOptions;
use keel_tests::tls::TestCertificates;
use keel_tests::{ClientPortTls, Cluster, ClusterOptions, Flavor};
use tonic::transport::Endpoint;

use crate::load::{member_status, Access, LoadSpec};
use crate::machine::{cpu_seconds, process_memory, Memory};

/// etcd's default election timeout, used for both systems.
pub const ELECTION_TIMEOUT_MS: u64 = 1000;
/// etcd's default heartbeat interval, used for both systems.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;

pub fn system_name(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::Etcd => "etcd",
        Flavor::Keel => "keel",
    }
}

/// The order the two systems run in at repetition `rep`: alternating, so
/// that drift (page cache, other load, thermal) hits both alike.
pub fn order(rep: usize) -> [Flavor; 2] {
    if rep.is_multiple_of(2) {
        [Flavor::Etcd, Flavor::Keel]
    } else {
        [Flavor::Keel, Flavor::Etcd]
    }
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// What protects a cluster's client port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plaintext, auth disabled.
    Plain,
    /// Server TLS on the client port (`--cert-file`, `--key-file`,
    /// `https://` client URLs); clients verify the CA, present no certificate.
    Tls,
    /// Plaintext, auth enabled: `root` (role root) and [`BENCH_USER`], whose
    /// role may read and write every key.
    Auth,
}

impl Security {
    pub fn name(self) -> &'static str {
        match self {
            Security::Plain => "plain",
            Security::Tls => "tls",
            Security::Auth => "auth",
        }
    }
}

/// The user load clients authenticate as on a [`Security::Auth`] cluster.
pub const BENCH_USER: &str = "bench";
const BENCH_PASSWORD: &str = "bench-password";
const BENCH_ROLE: &str = "bench-readwrite";
const ROOT_PASSWORD: &str = "root-password";

pub struct BenchCluster {
    cluster: Option<Cluster>,
    dir: PathBuf,
    pub flavor: Flavor,
    access: Access,
}

impl BenchCluster {
    /// Starts `size` members of `flavor` under `data_root` and waits for a leader.
    pub async fn start(flavor: Flavor, size: usize, data_root: &Path) -> anyhow::Result<BenchCluster> {
        BenchCluster::start_secured(flavor, size, data_root, Security::Plain).await
    }

    /// Starts `size` members of `flavor` protected by `security` under
    /// `data_root`, waits for a leader and (auth) enables auth.
    pub async fn start_secured(
        flavor: Flavor,
        size: usize,
        data_root: &Path,
        security: Security,
    ) -> anyhow::Result<BenchCluster> {
        let name = system_name(flavor);
        let dir = data_root.join(format!(
            "{name}-{size}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let mut options = match flavor {
            Flavor::Etcd => ClusterOptions::etcd(size),
            Flavor::Keel => ClusterOptions::keel(size),
        };
        options.election_timeout_ms = ELECTION_TIMEOUT_MS;
        options.heartbeat_interval_ms = HEARTBEAT_INTERVAL_MS;
        options.base_dir = Some(dir.clone());
        let mut access = Access::default();
        match security {
            Security::Plain => {}
            Security::Tls => {
                let certificates_dir = dir.join("certificates");
                std::fs::create_dir_all(&certificates_dir)
                    .with_context(|| format!("creating {}", certificates_dir.display()))?;
                let certificates = TestCertificates::generate(&certificates_dir)?;
                access.trusted_ca_file = Some(certificates.ca.clone());
                options.client_tls = Some(ClientPortTls {
                    member_flags: certificates.member_flags(false),
                    client: TlsOptions {
                        trusted_ca_file: Some(certificates.ca),
                        ..TlsOptions::default()
                    },
                });
            }
            Security::Auth => {
                access.credentials = Some((BENCH_USER.to_string(), BENCH_PASSWORD.to_string()));
            }
        }
        // From here on the directory is removed on drop, whatever fails.
        let mut bench = BenchCluster {
            cluster: None,
            dir,
            flavor,
            access,
        };
        bench.cluster = Some(Cluster::spawn(options).with_context(|| format!("starting {name} ×{size}"))?);
        let leader = match bench.cluster_mut().wait_for_leader(Duration::from_secs(60)).await {
            Ok(leader) => leader,
            Err(error) => {
                let tail = bench.cluster().log_tail(0, 15);
                anyhow::bail!("{name} ×{size} elected no leader: {error}; member 1's log ends:\n{tail}");
            }
        };
        if security == Security::Auth {
            enable_auth(&bench.cluster().endpoint(leader))
                .await
                .with_context(|| format!("enabling auth on {name} ×{size}"))?;
        }
        tracing::info!(system = name, size, security = security.name(), "cluster up");
        Ok(bench)
    }

    /// How load clients reach this cluster (its CA, its user).
    pub fn access(&self) -> Access {
        self.access.clone()
    }

    pub fn cluster(&self) -> &Cluster {
        match &self.cluster {
            Some(cluster) => cluster,
            None => unreachable!("the cluster is set once spawned and only taken out when dropped"),
        }
    }

    pub fn cluster_mut(&mut self) -> &mut Cluster {
        match &mut self.cluster {
            Some(cluster) => cluster,
            None => unreachable!("the cluster is set once spawned and only taken out when dropped"),
        }
    }

    pub fn name(&self) -> &'static str {
        system_name(self.flavor)
    }

    pub fn size(&self) -> usize {
        self.cluster().size()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.cluster().endpoints()
    }

    /// A load spec against this cluster with the CLI's defaults.
    pub fn spec(&self) -> LoadSpec {
        let mut spec = LoadSpec::new(self.endpoints());
        spec.label = Some(self.name().to_string());
        spec.set_access(&self.access);
        spec
    }

    /// VmHWM/VmRSS of every running member, in member order.
    pub fn memory(&self) -> anyhow::Result<Vec<Memory>> {
        (0..self.size())
            .map(|index| {
                let pid = self
                    .cluster()
                    .pid(index)
                    .with_context(|| format!("member {} is not running", index + 1))?;
                process_memory(pid)
            })
            .collect()
    }

    /// CPU seconds used so far by all running members together.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        (0..self.size())
            .filter_map(|index| self.cluster().pid(index))
            .map(|pid| cpu_seconds(&pid.to_string()))
            .sum()
    }

    /// Waits until every member answers Status and has caught up with the
    /// leader's raft index (or `timeout` passes).
    pub async fn wait_until_settled(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        self.cluster_mut().wait_for_leader(timeout).await?;
        let endpoints = self.endpoints();
        let access = &self.access;
        loop {
            let statuses = futures::future::join_all(
                endpoints
                    .iter()
                    .map(|e| member_status(e, access, Duration::from_secs(1))),
            )
            .await;
            let indexes: Vec<u64> = statuses
                .iter()
                .filter_map(|s| s.as_ref().ok().map(|s| s.raft_index))
                .collect();
            let caught_up = indexes.len() == endpoints.len()
                && indexes
                    .iter()
                    .max()
                    .zip(indexes.iter().min())
                    .is_some_and(|(max, min)| max - min <= 2);
            if caught_up {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{} did not settle within {timeout:?}: raft indexes {indexes:?}",
                    self.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Names a member that exited on its own (crashed, or was signalled by
    /// something else on the machine) with its log's last lines.
    pub fn exited_report(&mut self) -> Option<String> {
        let name = self.cluster_mut().exited_member()?;
        let index = (0..self.size()).find(|&i| self.cluster().member_name(i) == name)?;
        Some(format!(
            "member {name} of {} exited; its log ends: {}",
            self.name(),
            self.cluster().log_tail(index, 6).replace('\n', " | ")
        ))
    }

    /// The last `lines` log lines of every member, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        (0..self.size())
            .map(|index| {
                format!(
                    "--- member {} ---\n{}",
                    index + 1,
                    self.cluster().log_tail(index, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Through the plaintext `endpoint` (the leader): users `root` (role root)
/// and [`BENCH_USER`] (a role that reads and writes every key), then
/// AuthEnable.
pub async fn enable_auth(endpoint: &str) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(keel_client::endpoint_url(endpoint))
        .with_context(|| format!("bad endpoint {endpoint}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let mut auth = AuthClient::new(channel);
    for (user, password) in [("root", ROOT_PASSWORD), (BENCH_USER, BENCH_PASSWORD)] {
        auth.user_add(AuthUserAddRequest {
            name: user.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("adding user {user}"))?;
    }
    for role in ["root", BENCH_ROLE] {
        auth.role_add(AuthRoleAddRequest { name: role.into() })
            .await
            .with_context(|| format!("adding role {role}"))?;
    }
    // Key "\0" to range end "\0": every key from "\0" on, i.e. all of them.
    // (etcd 3.4 grants nothing for an empty key with range end "\0"; keel
    // grants every key, so only this form means the same to both.)
    auth.role_grant_permission(AuthRoleGrantPermissionRequest {
        name: BENCH_ROLE.into(),
        perm: Some(Permission {
            perm_type: PermissionType::Readwrite as i32,
            key: vec![0],
            range_end: vec![0],
        }),
    })
    .await
    .context("granting readwrite on every key")?;
    for (user, role) in [("root", "root"), (BENCH_USER, BENCH_ROLE)] {
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .with_context(|| format!("granting role {role} to {user}"))?;
    }
    auth.auth_enable(AuthEnableRequest {})
        .await
        .context("enabling auth")?;
    Ok(())
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        // Kill and reap the members first, then remove their data.
        drop(self.cluster.take());
        if std::env::var_os("KEEL_TEST_KEEP_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
