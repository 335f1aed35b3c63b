//! The `keel` member's command line, with etcd's flag names, defaults and
//! meanings, and the parsing of its URL lists.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

#[derive(Debug, Clone, clap::Args)]
pub struct MemberFlags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: ./<name>.keel).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,
    /// This member's client URLs to advertise to the cluster (comma-separated).
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic (comma-separated).
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS", default_value = "http://127.0.0.1:2380")]
    pub listen_peer_urls: String,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping: name=peer-url,...
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state: 'new' or 'existing'.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Initial cluster token, so that clusters with the same members get different ids.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout: a follower that heard
    /// no leader for a fresh random time in [election-timeout + 2 heartbeats,
    /// 2 x election-timeout) campaigns (after a pre-vote).
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1572864)]
    pub max_request_bytes: usize,
    /// Raise alarms when the keyspace database exceeds this many bytes (0:
    /// etcd's default, 2 GiB; negative: no quota); writes that need space are
    /// then refused until the alarm is disarmed.
    #[arg(
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,
    /// Maximum concurrent streams that each client connection can open (gRPC
    /// and the HTTP/2 JSON gateway alike).
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,
    /// Duration of periodical watch progress notification (Go syntax: 10m, 500ms).
    #[arg(long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = keel_api::go_format::parse_duration)]
    pub experimental_watch_progress_notify_interval: std::time::Duration,
    /// How often the leader records leases' remaining TTLs through Raft
    /// (etcd's lease checkpoints, on in keel), so a new leader keeps their
    /// deadlines (Go syntax: 5m, 500ms).
    #[arg(long, default_value = "5m", value_parser = keel_api::go_format::parse_duration)]
    pub lease_checkpoint_interval: std::time::Duration,
    /// Auth token type: `simple` (etcd's simple tokens), or
    /// `jwt,pub-key=FILE,priv-key=FILE,sign-method=ES256,ttl=5m` (signed tokens
    /// any member verifies; sign-method RS256/384/512, PS256/384/512,
    /// ES256/384; without priv-key the member verifies but cannot issue).
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// How long (seconds) a simple token lives without use.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost for hashing auth passwords (4 to 31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Memory (MiB) for the keyspace's page cache (sled's `cache_capacity`).
    #[arg(long, default_value_t = 256)]
    pub keyspace_cache_mb: u64,
    /// Number of committed log entries between two snapshots.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100000)]
    pub snapshot_count: u64,
    /// Test hook: dial these addresses instead of the named members' peer
    /// URLs (name=url,...), so a fault-injection harness can put a proxy on
    /// every directed link. Member ids still derive from --initial-cluster.
    #[arg(long, hide = true)]
    pub peer_dial_overrides: Option<String>,
    /// Log level: debug, info, warn, error (etcd's panic and fatal log as error).
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info",
          value_parser = ["debug", "info", "warn", "error", "panic", "fatal"])]
    pub log_level: String,
    /// Logger: capnslog (plain text lines, etcd 3.4's default) or zap (JSON lines).
    #[arg(long, env = "ETCD_LOGGER", default_value = "capnslog", value_parser = ["capnslog", "zap"])]
    pub logger: String,
    /// Where the log goes: default (stderr), stderr, stdout, or file paths
    /// (comma-separated).
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,
    /// URLs to also serve /metrics and /health on, over plain HTTP (comma-separated).
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// Path to the client server TLS cert file (served on https:// client URLs).
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<String>,
    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<String>,
    /// Path to the client server TLS trusted CA cert file; clients must then
    /// present a certificate it signed (as in etcd).
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<String>,
    /// Enable client cert authentication (against --trusted-ca-file).
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub client_cert_auth: Option<bool>,
    /// Path to the client certificate revocation list file (PEM).
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<String>,
    /// Client TLS using generated certificates (self-signed, in
    /// <data-dir>/fixtures/client) when --cert-file and --key-file are not given.
    #[arg(long, env = "ETCD_AUTO_TLS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub auto_tls: Option<bool>,
    /// Comma-separated list of supported TLS 1.2 cipher suites between client
    /// and server (Go's names; default: rustls' safe defaults).
    #[arg(long, env = "ETCD_CIPHER_SUITES")]
    pub cipher_suites: Option<String>,
    /// Path to the peer server TLS cert file, served on https:// peer URLs and
    /// presented to https:// peers as the client certificate.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<String>,
    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<String>,
    /// Path to the peer server TLS trusted CA file: verifies the peers'
    /// certificates (and peers must then present one, as in etcd).
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<String>,
    /// Enable peer client cert authentication (against --peer-trusted-ca-file).
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub peer_client_cert_auth: Option<bool>,
    /// Path to the peer certificate revocation list file (PEM).
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<String>,
    /// Peer TLS using generated certificates (self-signed, in
    /// <data-dir>/fixtures/peer; peers' certificates are not verified).
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub peer_auto_tls: Option<bool>,
    /// Allowed CommonName of peers' certificates.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// etcd's YAML configuration file: its settings replace the command line's.
    #[arg(long, env = "ETCD_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// etcd's flags that keel accepts without acting on them, or refuses.
    #[command(flatten)]
    pub etcd_only: crate::etcd_flags::EtcdOnlyFlags,
}

/// One member of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses `name=url,name=url2,other=url3` (a name may repeat for several
/// URLs). A name may be empty, as in the `ETCD_INITIAL_CLUSTER` that
/// `member add` prints while a member has not yet published its name: each
/// such entry is a member of its own.
pub fn parse_initial_cluster(spec: &str) -> anyhow::Result<Vec<InitialMember>> {
    let mut members: Vec<InitialMember> = Vec::new();
    for item in split_urls(spec) {
        let (name, url) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("--initial-cluster entry {item:?} is not name=url"))?;
        if url.is_empty() {
            bail!("--initial-cluster entry {item:?} is not name=url");
        }
        match members.iter_mut().find(|m| !name.is_empty() && m.name == name) {
            Some(member) => member.peer_urls.push(url.to_string()),
            None => members.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
            }),
        }
    }
    if members.is_empty() {
        bail!("--initial-cluster is empty");
    }
    Ok(members)
}

/// The host of a `scheme://host:port` URL (`::1` for `http://[::1]:2379`).
pub fn url_host(url: &str) -> &str {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or(authority);
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A listen URL's scheme: whether it serves TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenScheme {
    Http,
    Https,
}

/// Resolves an `http://host:port` or `https://host:port` URL to the socket
/// address to bind, and says which of the two it is.
pub async fn listen_address(url: &str) -> anyhow::Result<(SocketAddr, ListenScheme)> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (ListenScheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (ListenScheme::Https, rest)
    } else {
        bail!("URL {url:?} must start with http:// or https://");
    };
    let host_port = rest.trim_end_matches('/');
    let mut addresses = tokio::net::lookup_host(host_port)
        .await
        .with_context(|| format!("cannot resolve listen URL {url:?}"))?;
    let address = addresses
        .next()
        .ok_or_else(|| anyhow!("listen URL {url:?} resolves to no address"))?;
    Ok((address, scheme))
}

impl MemberFlags {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.keel", self.name)))
    }

    pub fn initial_members(&self) -> anyhow::Result<Vec<InitialMember>> {
        match &self.initial_cluster {
            Some(spec) => parse_initial_cluster(spec),
            None => Ok(vec![InitialMember {
                name: self.name.clone(),
                peer_urls: split_urls(&self.initial_advertise_peer_urls),
            }]),
        }
    }

    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout)
    }

    /// The JWT keys `--auth-token jwt,...` names (their files read and
    /// parsed); `None` for `--auth-token simple`.
    pub fn jwt_tokens(&self) -> anyhow::Result<Option<keel_auth::jwt::JwtTokens>> {
        match self.auth_token.split_once(',') {
            _ if self.auth_token == "simple" => Ok(None),
            Some(("jwt", options)) => Ok(Some(keel_auth::jwt::JwtTokens::from_options(
                options,
                keel_api::go_format::parse_duration,
            )?)),
            _ => bail!(
                "--auth-token {:?} is not served: use simple, or jwt,pub-key=...,priv-key=...,sign-method=...",
                self.auth_token
            ),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.etcd_only.refuse_unserved()?;
        if self.heartbeat_interval == 0 {
            bail!("--heartbeat-interval must be > 0");
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            bail!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout,
                self.heartbeat_interval
            );
        }
        if self.max_txn_ops == 0 {
            bail!("--max-txn-ops must be > 0");
        }
        if self.snapshot_count == 0 {
            bail!("--snapshot-count must be > 0");
        }
        if self.lease_checkpoint_interval.is_zero() {
            bail!("--lease-checkpoint-interval must be > 0");
        }
        if self.experimental_watch_progress_notify_interval.is_zero() {
            bail!("--experimental-watch-progress-notify-interval must be > 0");
        }
        self.jwt_tokens()?;
        if self.auth_token_ttl == 0 {
            bail!("--auth-token-ttl must be > 0");
        }
        if !(4..=31).contains(&self.bcrypt_cost) {
            bail!("--bcrypt-cost must be between 4 and 31, got {}", self.bcrypt_cost);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_groups_urls_by_name() {
        let members = parse_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2,a=http://127.0.0.1:3")
            .expect("valid spec");
        assert_eq!(members.len(), 2);
        assert_eq!(
            members[0].peer_urls,
            vec!["http://127.0.0.1:1", "http://127.0.0.1:3"]
        );
    }

    #[test]
    fn url_hosts_drop_the_scheme_port_and_brackets() {
        assert_eq!(url_host("https://127.0.0.1:2379"), "127.0.0.1");
        assert_eq!(url_host("http://[::1]:2379/"), "::1");
        assert_eq!(url_host("https://etcd.example"), "etcd.example");
    }

    #[test]
    fn initial_cluster_keeps_each_unnamed_entry_member_add_printed_apart() {
        let members = parse_initial_cluster(
            "m4=http://127.0.0.1:4,m1=http://127.0.0.1:1,=http://127.0.0.1:2,=http://127.0.0.1:3",
        )
        .expect("member add's output parses");
        let unnamed: Vec<&InitialMember> = members.iter().filter(|m| m.name.is_empty()).collect();
        assert_eq!(members.len(), 4);
        assert_eq!(unnamed.len(), 2);
        assert_eq!(unnamed[0].peer_urls, vec!["http://127.0.0.1:2"]);
        assert_eq!(unnamed[1].peer_urls, vec!["http://127.0.0.1:3"]);
    }

    #[test]
    fn initial_cluster_rejects_entries_without_a_url() {
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("a=").is_err());
    }
}
