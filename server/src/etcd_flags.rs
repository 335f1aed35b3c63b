//! etcd 3.4's server flags that keel takes but does not act on, so that an
//! operator's unit file, environment file or static pod manifest works
//! unchanged: those of etcd's internals (WAL and snapshot retention, bbolt
//! tuning, pprof, v2, proxy and discovery timings, ...) are accepted and
//! logged once as having no effect; those that would turn on something
//! keel does not serve yet (discovery, proxy mode, forcing a new
//! cluster) are refused with a message saying so, never silently ignored.
//! Every flag also comes from its `ETCD_<FLAG>` environment variable. The
//! peer TLS flags (`--peer-cert-file` and the others) are served: see
//! peer_tls_flags.rs.

use anyhow::bail;

macro_rules! valued_flags {
    ($name:ident { $( $field:ident : $flag:literal, $env:literal; )* }) => {
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct $name {
            $(
                #[arg(long = $flag, env = $env, hide = true, value_name = "VALUE")]
                pub $field: Option<String>,
            )*
        }

        impl $name {
            /// The flags given, with their values.
            pub fn given(&self) -> Vec<(&'static str, &str)> {
                let mut given = Vec::new();
                $( if let Some(value) = &self.$field { given.push(($flag, value.as_str())); } )*
                given
            }
        }
    };
}

/// Go's boolean flags: `--flag` (true) or `--flag=true|false`.
macro_rules! switch_flags {
    ($name:ident { $( $field:ident : $flag:literal, $env:literal; )* }) => {
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct $name {
            $(
                #[arg(long = $flag, env = $env, hide = true, num_args = 0..=1, require_equals = true,
                      default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
                pub $field: Option<bool>,
            )*
        }

        impl $name {
            /// The flags given as true.
            pub fn set(&self) -> Vec<&'static str> {
                let mut set = Vec::new();
                $( if self.$field == Some(true) { set.push($flag); } )*
                set
            }

            /// Every flag given, true or false.
            pub fn given(&self) -> Vec<&'static str> {
                let mut given = Vec::new();
                $( if self.$field.is_some() { given.push($flag); } )*
                given
            }
        }
    };
}

valued_flags!(ValuedFlagsWithoutEffect {
    auto_compaction_mode: "auto-compaction-mode", "ETCD_AUTO_COMPACTION_MODE";
    auto_compaction_retention: "auto-compaction-retention", "ETCD_AUTO_COMPACTION_RETENTION";
    backend_batch_interval: "backend-batch-interval", "ETCD_BACKEND_BATCH_INTERVAL";
    backend_batch_limit: "backend-batch-limit", "ETCD_BACKEND_BATCH_LIMIT";
    client_cert_allowed_hostname: "client-cert-allowed-hostname", "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME";
    cors: "cors", "ETCD_CORS";
    discovery_fallback: "discovery-fallback", "ETCD_DISCOVERY_FALLBACK";
    discovery_proxy: "discovery-proxy", "ETCD_DISCOVERY_PROXY";
    discovery_srv_name: "discovery-srv-name", "ETCD_DISCOVERY_SRV_NAME";
    backend_bbolt_freelist_type: "experimental-backend-bbolt-freelist-type", "ETCD_EXPERIMENTAL_BACKEND_BBOLT_FREELIST_TYPE";
    compaction_batch_limit: "experimental-compaction-batch-limit", "ETCD_EXPERIMENTAL_COMPACTION_BATCH_LIMIT";
    corrupt_check_time: "experimental-corrupt-check-time", "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME";
    enable_v2v3: "experimental-enable-v2v3", "ETCD_EXPERIMENTAL_ENABLE_V2V3";
    warning_apply_duration: "experimental-warning-apply-duration", "ETCD_EXPERIMENTAL_WARNING_APPLY_DURATION";
    grpc_keepalive_interval: "grpc-keepalive-interval", "ETCD_GRPC_KEEPALIVE_INTERVAL";
    grpc_keepalive_min_time: "grpc-keepalive-min-time", "ETCD_GRPC_KEEPALIVE_MIN_TIME";
    grpc_keepalive_timeout: "grpc-keepalive-timeout", "ETCD_GRPC_KEEPALIVE_TIMEOUT";
    host_whitelist: "host-whitelist", "ETCD_HOST_WHITELIST";
    log_package_levels: "log-package-levels", "ETCD_LOG_PACKAGE_LEVELS";
    max_snapshots: "max-snapshots", "ETCD_MAX_SNAPSHOTS";
    max_wals: "max-wals", "ETCD_MAX_WALS";
    metrics: "metrics", "ETCD_METRICS";
    peer_cert_allowed_hostname: "peer-cert-allowed-hostname", "ETCD_PEER_CERT_ALLOWED_HOSTNAME";
    proxy_dial_timeout: "proxy-dial-timeout", "ETCD_PROXY_DIAL_TIMEOUT";
    proxy_failure_wait: "proxy-failure-wait", "ETCD_PROXY_FAILURE_WAIT";
    proxy_read_timeout: "proxy-read-timeout", "ETCD_PROXY_READ_TIMEOUT";
    proxy_refresh_interval: "proxy-refresh-interval", "ETCD_PROXY_REFRESH_INTERVAL";
    proxy_write_timeout: "proxy-write-timeout", "ETCD_PROXY_WRITE_TIMEOUT";
    wal_dir: "wal-dir", "ETCD_WAL_DIR";
});

switch_flags!(SwitchFlagsWithoutEffect {
    debug: "debug", "ETCD_DEBUG";
    enable_pprof: "enable-pprof", "ETCD_ENABLE_PPROF";
    enable_v2: "enable-v2", "ETCD_ENABLE_V2";
    enable_lease_checkpoint: "experimental-enable-lease-checkpoint", "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT";
    initial_corrupt_check: "experimental-initial-corrupt-check", "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK";
    peer_skip_client_san_verification: "experimental-peer-skip-client-san-verification", "ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION";
    initial_election_tick_advance: "initial-election-tick-advance", "ETCD_INITIAL_ELECTION_TICK_ADVANCE";
    pre_vote: "pre-vote", "ETCD_PRE_VOTE";
    strict_reconfig_check: "strict-reconfig-check", "ETCD_STRICT_RECONFIG_CHECK";
});

valued_flags!(ValuedFlagsNotServedYet {
    discovery: "discovery", "ETCD_DISCOVERY";
    discovery_srv: "discovery-srv", "ETCD_DISCOVERY_SRV";
    proxy: "proxy", "ETCD_PROXY";
});

switch_flags!(SwitchFlagsNotServedYet {
    force_new_cluster: "force-new-cluster", "ETCD_FORCE_NEW_CLUSTER";
});

/// The etcd flags keel accepts without acting on them, or refuses.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdOnlyFlags {
    #[command(flatten)]
    valued_without_effect: ValuedFlagsWithoutEffect,
    #[command(flatten)]
    switches_without_effect: SwitchFlagsWithoutEffect,
    #[command(flatten)]
    valued_not_served: ValuedFlagsNotServedYet,
    #[command(flatten)]
    switches_not_served: SwitchFlagsNotServedYet,
}

impl EtcdOnlyFlags {
    /// Refuses a flag that asks for something keel does not serve yet (an
    /// empty value, `--proxy=off` and a false switch ask for nothing).
    pub fn refuse_unserved(&self) -> anyhow::Result<()> {
        for (flag, value) in self.valued_not_served.given() {
            let asks_for_nothing = value.is_empty() || (flag == "proxy" && value == "off");
            if !asks_for_nothing {
                bail!("--{flag}={value}: keel does not serve this yet (no discovery or proxy mode); refusing to start rather than ignore it");
            }
        }
        if let Some(flag) = self.switches_not_served.set().first() {
            bail!("--{flag}: keel does not serve this yet; refusing to start rather than ignore it");
        }
        Ok(())
    }

    /// Names of the flags given that keel does not act on.
    pub fn without_effect(&self) -> Vec<String> {
        let valued = self
            .valued_without_effect
            .given()
            .into_iter()
            .map(|(flag, _)| flag);
        let switches = self.switches_without_effect.given().into_iter();
        let harmless = self
            .valued_not_served
            .given()
            .into_iter()
            .map(|(flag, _)| flag)
            .chain(self.switches_not_served.given());
        valued
            .chain(switches)
            .chain(harmless)
            .map(|flag| format!("--{flag}"))
            .collect()
    }
}
