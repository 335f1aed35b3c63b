//! What one load-generator run does: the mode, the flags the issue names
//! (`--endpoints --conns --clients --total|--duration --key-size --val-size
//! --key-space --target`), how the clients reach the members (`--cacert`
//! for `https://` endpoints, `--user` to authenticate), and the key layout
//! every mode shares. A spec can print itself back as the `keel-bench`
//! command line that reproduces it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::load::targets::Access;

/// The kind of request each client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Put one random key of the key space.
    Put,
    /// Linearizable get of one random key.
    Range,
    /// Serializable get of one random key (member-local, no round trip).
    RangeSerializable,
    /// Txn: compare the key's mod_revision with the last one this client saw,
    /// then put; on failure read the key back (a CAS conflict, not an error).
    TxnCas,
    /// Linearizable gets and puts, `--read-ratio` of them gets.
    Mixed,
    /// Linearizable range over every key under `--prefix`
    /// (`--keys-only` for `get --prefix --keys-only`).
    PrefixList,
    /// LeaseGrant (`--lease-ttl`, the server picks the ID), then
    /// LeaseRevoke of that lease: one request is the pair.
    LeaseGrantRevoke,
    /// Put one random key attached to a lease: `--leases` leases granted
    /// before the run (0: one per key of the key space), key `i` on lease
    /// `i mod leases`; revoked (with their keys) after it.
    PutWithLease,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Put => "put",
            Mode::Range => "range",
            Mode::RangeSerializable => "range-serializable",
            Mode::TxnCas => "txn-cas",
            Mode::Mixed => "mixed",
            Mode::PrefixList => "prefix-list",
            Mode::LeaseGrantRevoke => "lease-grant-revoke",
            Mode::PutWithLease => "put-with-lease",
        }
    }
}

/// Which members the connections go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The member every other one names as leader (found through Status).
    Leader,
    /// Every member but the leader.
    Followers,
    /// Every endpoint given.
    All,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Leader => "leader",
            Target::Followers => "followers",
            Target::All => "all",
        }
    }
}

/// Parses `10`, `2.5`, `10s`, `500ms`, `2m` into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct LoadSpec {
    /// Comma-separated client endpoints (host:port).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// gRPC connections (each its own HTTP/2 connection), spread over the targets.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Concurrent requests in flight, spread over the connections.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Stop after this many measured requests.
    #[arg(long, conflicts_with = "duration")]
    pub total: Option<u64>,
    /// Stop after this long (default 10s when --total is not given).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Run this long before measuring (not counted, not recorded).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Bytes of each key after --prefix (zero-padded decimal index).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Bytes of each value written.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Number of distinct keys requests pick from (uniformly).
    #[arg(long, default_value_t = 10_000)]
    pub key_space: u64,
    #[arg(long, value_enum, default_value = "leader")]
    pub target: Target,
    /// Fraction of requests that are reads in `mixed` mode.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Prefix of every key; `prefix-list` lists everything under it.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// `prefix-list` asks for keys only.
    #[arg(long)]
    pub keys_only: bool,
    /// Before measuring, put every key of the key space once (--val-size values).
    #[arg(long)]
    pub preload: bool,
    /// A request that takes longer than this counts as an error ("timeout").
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub request_timeout: Duration,
    /// `put-with-lease`: leases the keys are attached to (0: one per key).
    #[arg(long, default_value_t = 4)]
    pub leases: u64,
    /// TTL in seconds of the leases the lease modes grant.
    #[arg(long, default_value_t = 60)]
    pub lease_ttl: i64,
    /// PEM file of the CA that `https://` endpoints' certificates must chain to (etcdctl's --cacert).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Authenticate as `name:password` (etcdctl's --user); every request carries the token.
    #[arg(long)]
    pub user: Option<String>,
    /// Free text copied into the JSON line (e.g. "etcd" or "keel").
    #[arg(long)]
    pub label: Option<String>,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

impl LoadSpec {
    /// How many leases `put-with-lease` grants (`--leases`, 0 meaning one
    /// per key of the key space).
    pub fn lease_count(&self) -> u64 {
        if self.leases == 0 {
            self.key_space
        } else {
            self.leases
        }
    }

    /// A spec with the CLI's defaults for `endpoints`.
    pub fn new(endpoints: Vec<String>) -> Self {
        LoadSpec {
            endpoints,
            conns: 1,
            clients: 1,
            total: None,
            duration: None,
            warmup: Duration::ZERO,
            key_size: 8,
            val_size: 256,
            key_space: 10_000,
            target: Target::Leader,
            read_ratio: 0.9,
            prefix: String::new(),
            keys_only: false,
            preload: false,
            request_timeout: Duration::from_secs(10),
            leases: 4,
            lease_ttl: 60,
            cacert: None,
            user: None,
            label: None,
            no_progress: true,
        }
    }

    /// How long a duration-bound run measures (`None` when bound by --total).
    pub fn measured_duration(&self) -> Option<Duration> {
        match (self.total, self.duration) {
            (Some(_), _) => None,
            (None, Some(duration)) => Some(duration),
            (None, None) => Some(DEFAULT_DURATION),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.endpoints.is_empty() {
            bail!("--endpoints is empty");
        }
        if self.conns == 0 || self.clients == 0 {
            bail!("--conns and --clients must be at least 1");
        }
        if self.key_space == 0 {
            bail!("--key-space must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            bail!("--read-ratio must be within 0..=1");
        }
        if self.lease_ttl <= 0 {
            bail!("--lease-ttl must be at least 1 (seconds)");
        }
        KeyLayout::new(&self.prefix, self.key_size, self.key_space)?;
        self.access()?;
        Ok(())
    }

    /// How the clients reach the members (`--cacert`, `--user`).
    pub fn access(&self) -> anyhow::Result<Access> {
        let credentials = match &self.user {
            None => None,
            Some(user) => {
                let (name, password) = user.split_once(':').context("--user takes name:password")?;
                Some((name.to_string(), password.to_string()))
            }
        };
        Ok(Access {
            trusted_ca_file: self.cacert.clone(),
            credentials,
        })
    }

    /// Sets the fields that give `access` (the inverse of [`Self::access`]).
    pub fn set_access(&mut self, access: &Access) {
        self.cacert = access.trusted_ca_file.clone();
        self.user = access
            .credentials
            .as_ref()
            .map(|(name, password)| format!("{name}:{password}"));
    }

    pub fn layout(&self) -> anyhow::Result<KeyLayout> {
        KeyLayout::new(&self.prefix, self.key_size, self.key_space)
    }

    /// The `keel-bench` command line that runs this spec again.
    pub fn command_line(&self, mode: Mode) -> String {
        let mut words = vec![
            "keel-bench".to_string(),
            mode.name().to_string(),
            format!("--endpoints {}", self.endpoints.join(",")),
            format!("--target {}", self.target.name()),
            format!("--conns {}", self.conns),
            format!("--clients {}", self.clients),
        ];
        match (self.total, self.measured_duration()) {
            (Some(total), _) => words.push(format!("--total {total}")),
            (None, Some(duration)) => words.push(format!("--duration {}", format_duration(duration))),
            (None, None) => {}
        }
        if !self.warmup.is_zero() {
            words.push(format!("--warmup {}", format_duration(self.warmup)));
        }
        words.push(format!("--key-size {}", self.key_size));
        words.push(format!("--val-size {}", self.val_size));
        words.push(format!("--key-space {}", self.key_space));
        if mode == Mode::Mixed {
            words.push(format!("--read-ratio {}", self.read_ratio));
        }
        if !self.prefix.is_empty() {
            words.push(format!("--prefix {}", self.prefix));
        }
        if self.keys_only {
            words.push("--keys-only".into());
        }
        if mode == Mode::PutWithLease {
            words.push(format!("--leases {}", self.leases));
        }
        if matches!(mode, Mode::PutWithLease | Mode::LeaseGrantRevoke) {
            words.push(format!("--lease-ttl {}", self.lease_ttl));
        }
        if self.preload {
            words.push("--preload".into());
        }
        if let Some(cacert) = &self.cacert {
            words.push(format!("--cacert {}", cacert.display()));
        }
        if let Some(user) = &self.user {
            words.push(format!("--user {user}"));
        }
        words.join(" ")
    }
}

/// Keys are `prefix` + the key's index as zero-padded decimal of `width`
/// digits, so they sort by index and are all the same length.
#[derive(Debug, Clone)]
pub struct KeyLayout {
    prefix: Vec<u8>,
    width: usize,
    space: u64,
}

impl KeyLayout {
    pub fn new(prefix: &str, width: usize, space: u64) -> anyhow::Result<Self> {
        if width == 0 && prefix.is_empty() {
            bail!("keys would be empty: give --key-size or --prefix");
        }
        let capacity = u32::try_from(width)
            .ok()
            .and_then(|w| 10u64.checked_pow(w))
            .unwrap_or(u64::MAX);
        if width < 20 && capacity < space {
            bail!("--key-size {width} holds {capacity} distinct keys, fewer than --key-space {space}");
        }
        Ok(KeyLayout {
            prefix: prefix.as_bytes().to_vec(),
            width,
            space,
        })
    }

    pub fn space(&self) -> u64 {
        self.space
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The index a key of this layout stands for (`None` for other keys).
    pub fn index_of(&self, key: &[u8]) -> Option<u64> {
        let digits = key.strip_prefix(self.prefix.as_slice())?;
        if digits.len() != self.width.max(1) && self.width != 0 {
            return None;
        }
        let text = std::str::from_utf8(digits).ok()?;
        let index: u64 = text.parse().ok()?;
        (index < self.space).then_some(index)
    }

    /// The key of `index` (one allocation of the exact size).
    pub fn key(&self, index: u64) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + self.width);
        key.extend_from_slice(&self.prefix);
        push_padded_decimal(&mut key, index, self.width);
        key
    }
}

/// Appends `value` in decimal, left-padded with `0` to `width` digits
/// (wider values keep all their digits).
pub fn push_padded_decimal(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut rest = value;
    let mut count = 0;
    loop {
        digits[19 - count] = b'0' + (rest % 10) as u8;
        count += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for _ in count..width {
        out.push(b'0');
    }
    out.extend_from_slice(&digits[20 - count..]);
}

/// A value of `size` bytes that does not compress (printable, pseudo-random).
pub fn filler_value(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b'!' + (state % 94) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_and_prefixed() {
        let layout = KeyLayout::new("/a/", 8, 1000).unwrap();
        assert_eq!(layout.key(42), b"/a/00000042".to_vec());
        assert_eq!(layout.index_of(b"/a/00000042"), Some(42));
        assert_eq!(layout.index_of(b"/a/0000042"), None);
        assert_eq!(layout.index_of(b"/b/00000042"), None);
        assert!(KeyLayout::new("", 2, 1000).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn access_round_trips_through_the_flags() {
        let mut spec = LoadSpec::new(vec!["https://127.0.0.1:2379".into()]);
        let access = Access {
            trusted_ca_file: Some(PathBuf::from("/tmp/ca.pem")),
            credentials: Some(("bench".into(), "pass:word".into())),
        };
        spec.set_access(&access);
        assert_eq!(spec.access().unwrap(), access);
        let command = spec.command_line(Mode::Put);
        assert!(
            command.ends_with("--cacert /tmp/ca.pem --user bench:pass:word"),
            "{command}"
        );
        spec.user = Some("no-password".into());
        assert!(spec.validate().is_err());
    }
}
