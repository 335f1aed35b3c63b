//! The members a `keel local-cluster` runs, kept in
//! `<data-dir>/local-cluster.json`, so that a cluster whose members were
//! added or removed resumes with the same members, and the ports each
//! member slot uses.
//!
//! Invariant: a member's name is never reused (an added member gets a
//! number above every member's so far), and the roster on disk changes only
//! after the cluster accepted the change.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Client port offsets from --base-port, as in etcd's local Procfile
/// (2379, 22379, 32379, 42379, 52379), then two more slots for members
/// added to a running cluster; each peer port is the client port + 1.
const CLIENT_PORT_OFFSETS: [u16; 7] = [0, 20000, 30000, 40000, 50000, 10000, 60000];

/// How many members a new local cluster may start with.
pub const MAX_INITIAL_MEMBERS: usize = 5;

const ROSTER_FILE: &str = "local-cluster.json";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RosterMember {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    /// Added to the running cluster (`--initial-cluster-state existing`),
    /// not one of its first members.
    pub joined: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Roster {
    /// The first members' `--initial-cluster`, which they keep passing.
    pub initial_cluster: String,
    pub members: Vec<RosterMember>,
    /// The highest member number used so far (`keel<N>`).
    pub last_number: usize,
}

/// The ports of slot `slot`: `(client URL, peer URL)`, or `None` when the
/// slot's ports do not fit above `base_port`.
fn slot_urls(base_port: u16, slot: usize) -> Option<(String, String)> {
    let client_port = base_port.checked_add(*CLIENT_PORT_OFFSETS.get(slot)?)?;
    let peer_port = client_port.checked_add(1)?;
    Some((
        format!("http://127.0.0.1:{client_port}"),
        format!("http://127.0.0.1:{peer_port}"),
    ))
}

/// `url` with the `https` scheme when `tls`, else `http`.
fn with_scheme(url: &str, tls: bool) -> String {
    let address = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    format!("{}://{address}", if tls { "https" } else { "http" })
}

impl Roster {
    /// A new cluster of `size` members from `base_port` on.
    pub fn plan(size: usize, base_port: u16) -> anyhow::Result<Roster> {
        if size == 0 || size > MAX_INITIAL_MEMBERS {
            bail!("--size must be between 1 and {MAX_INITIAL_MEMBERS}");
        }
        let mut members = Vec::new();
        for slot in 0..size {
            let Some((client_url, peer_url)) = slot_urls(base_port, slot) else {
                bail!("--base-port {base_port} leaves no room for {size} members' ports");
            };
            members.push(RosterMember {
                name: format!("keel{}", slot + 1),
                client_url,
                peer_url,
                joined: false,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Roster {
            initial_cluster,
            members,
            last_number: size,
        })
    }

    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(ROSTER_FILE)
    }

    /// The roster a previous run left in `data_dir`, if any.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Roster>> {
        let path = Roster::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("{} is not a roster", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the roster atomically (a new file renamed over the old one).
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = Roster::path(data_dir);
        let temporary = data_dir.join(format!("{ROSTER_FILE}.tmp"));
        std::fs::write(&temporary, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        std::fs::rename(&temporary, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// Makes every client URL `https://` (or `http://`), as this run's
    /// `--tls` asks; the ports stay.
    pub fn use_client_tls(&mut self, tls: bool) {
        for member in &mut self.members {
            member.client_url = with_scheme(&member.client_url, tls);
        }
    }

    /// Makes a new cluster's peer URLs `https://` (members talk over
    /// mutual TLS). Only before the first start: a member's id derives from
    /// its peer URLs, so a cluster keeps its peer URLs' scheme for good.
    pub fn use_peer_tls(&mut self) {
        for member in &mut self.members {
            member.peer_url = with_scheme(&member.peer_url, true);
        }
        self.initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
    }

    /// True when the members' peer URLs are `https://`.
    pub fn peer_tls(&self) -> bool {
        self.members.iter().any(|m| m.peer_url.starts_with("https://"))
    }

    /// The next member to add: a new name, on the first slot whose ports
    /// no current member uses.
    pub fn next_member(&self, base_port: u16) -> anyhow::Result<RosterMember> {
        let tls = self.members.iter().any(|m| m.client_url.starts_with("https://"));
        let peer_tls = self.peer_tls();
        let free_slot = (0..CLIENT_PORT_OFFSETS.len())
            .filter_map(|slot| slot_urls(base_port, slot))
            .map(|(client_url, peer_url)| (with_scheme(&client_url, tls), with_scheme(&peer_url, peer_tls)))
            .find(|(client_url, _)| self.members.iter().all(|m| &m.client_url != client_url));
        let Some((client_url, peer_url)) = free_slot else {
            bail!(
                "no free port slot for another member (a local cluster has at most {})",
                CLIENT_PORT_OFFSETS.len()
            );
        };
        Ok(RosterMember {
            name: format!("keel{}", self.last_number + 1),
            client_url,
            peer_url,
            joined: true,
        })
    }

    /// The `--initial-cluster` a member is started with: the first
    /// members' for them, every current member for an added one.
    pub fn initial_cluster_for(&self, member: &RosterMember) -> String {
        if !member.joined {
            return self.initial_cluster.clone();
        }
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| m.client_url.trim_start_matches("http://").to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_etcds_local_layout_and_shift_with_base_port() {
        let mut tls = Roster::plan(3, 2379).expect("plan");
        tls.use_peer_tls();
        assert!(tls.peer_tls());
        assert_eq!(tls.members[1].peer_url, "https://127.0.0.1:22380");
        assert!(tls.initial_cluster.contains("keel2=https://127.0.0.1:22380"));
        assert!(tls
            .next_member(2379)
            .expect("a free slot")
            .peer_url
            .starts_with("https://"));
        let roster = Roster::plan(5, 2379).expect("plan");
        assert!(!roster.peer_tls());
        let clients: Vec<&str> = roster.members.iter().map(|m| m.client_url.as_str()).collect();
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
        assert_eq!(roster.members[1].peer_url, "http://127.0.0.1:22380");
        let shifted = Roster::plan(3, 3379).expect("plan");
        assert_eq!(shifted.members[2].client_url, "http://127.0.0.1:33379");
    }

    #[test]
    fn sizes_beyond_five_or_ports_beyond_range_are_refused() {
        assert!(Roster::plan(6, 2379).is_err());
        assert!(Roster::plan(5, 20000).is_err());
    }

    #[test]
    fn an_added_member_gets_a_new_name_and_the_first_free_slot() {
        let mut roster = Roster::plan(3, 2379).expect("plan");
        let removed = roster.members.remove(1);
        let added = roster.next_member(2379).expect("a slot");
        assert_eq!(added.name, "keel4", "names are never reused");
        assert_eq!(added.client_url, removed.client_url, "the freed slot is reused");
        assert!(added.joined);
        roster.members.push(added.clone());
        roster.last_number = 4;
        assert!(roster
            .initial_cluster_for(&added)
            .contains("keel4=http://127.0.0.1:22380"));
        assert_eq!(
            roster.initial_cluster_for(&roster.members[0]),
            roster.initial_cluster
        );
    }
}
