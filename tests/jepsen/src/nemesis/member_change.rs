//! The `member` nemesis: removes a member (the leader half of the time)
//! through `MemberRemove`, waits until it has stopped (a removed member
//! exits by itself; one still running after [`EXIT_BOUND`] is killed -9 and
//! the record says so), then adds a fresh member in its roster slot (new
//! name, new empty data dir, new ports picked free on 127.0.0.1) through
//! `MemberAdd` and starts it with `--initial-cluster-state existing` and
//! the `--initial-cluster` the add answered. The new member dials its peers
//! through the slot's link proxies, which are led to its peer listener, so
//! the partition nemeses cut it as they cut the member it replaced.
//!
//! Invariants:
//! - a membership call whose effect is unknown (timeout, leader changed,
//!   connection lost, ...) is never repeated blindly: `MemberList` tells
//!   whether it took effect, and only a change that does not show there
//!   after [`SETTLE`] is asked again; a refusal the server gives before it
//!   proposes anything (`Unhealthy`, `MemberNotEnoughStarted`) is retried
//!   as it is;
//! - a slot is vacant (`Nemesis::vacancy`) only between a removal and the
//!   new member's start; the end of the fault and the final healing fill it,
//!   so a run ends with its original number of members.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use keel_api::etcdserverpb::{Member, MemberAddResponse, MemberListResponse};
use keel_client::launch::initial_cluster_after_add;
use keel_client::{Client, ClientConfig, ClientError};
use tokio::time::Instant;

use super::{Fault, Nemesis, NemesisError};
use crate::config::NemesisKind;
use crate::monitor::MemberAddress;
use crate::worker::member_client;

const KIND: NemesisKind = NemesisKind::Member;
/// How long one membership change may take, retries included.
const CHANGE_BOUND: Duration = Duration::from_secs(30);
/// How long a removed member may take to stop by itself.
pub const EXIT_BOUND: Duration = Duration::from_secs(10);
/// How long a change whose effect is unknown gets to show in `MemberList`
/// before it is asked again.
const SETTLE: Duration = Duration::from_secs(3);
const RETRY_PAUSE: Duration = Duration::from_millis(300);
/// The timeout of one membership call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the members get to apply an add before the new member starts
/// (it asks them for its id, and exits if the one that answers does not
/// list it yet, as etcd does).
const LISTED_BOUND: Duration = Duration::from_secs(10);

/// A slot whose member was removed, and the member prepared to fill it.
#[derive(Debug, Clone)]
pub(super) struct Vacancy {
    slot: usize,
    removed: String,
    since: Instant,
    prepared: Option<Prepared>,
}

#[derive(Debug, Clone)]
struct Prepared {
    name: String,
    peer_url: String,
}

/// What filling a vacancy came to.
pub(super) enum Filled {
    /// There was no vacancy.
    Nothing,
    /// A new member was added and started; what happened.
    Added(String),
    /// The slot is still vacant; why.
    NotYet(String),
}

impl Filled {
    pub(super) fn describe(self) -> String {
        match self {
            Filled::Nothing => "every slot holds a member".to_string(),
            Filled::Added(detail) => detail,
            Filled::NotYet(why) => format!("the slot stays vacant for now: {why}"),
        }
    }
}

enum Change<'a> {
    Remove(u64),
    Add { peer_url: &'a str, name: &'a str },
}

enum Done {
    Removed,
    Added { id: u64, initial_cluster: String },
}

/// How a change went, for the record.
#[derive(Default)]
struct Attempts {
    refused: Vec<String>,
    unknown: Vec<String>,
}

impl Attempts {
    fn describe(&self) -> String {
        let mut notes = Vec::new();
        if !self.refused.is_empty() {
            notes.push(format!(
                "{} refused and retried ({})",
                self.refused.len(),
                self.refused[0]
            ));
        }
        if !self.unknown.is_empty() {
            notes.push(format!(
                "{} of unknown effect, settled through MemberList ({})",
                self.unknown.len(),
                self.unknown[0]
            ));
        }
        if notes.is_empty() {
            String::new()
        } else {
            format!(" [{}]", notes.join("; "))
        }
    }
}

fn listed_with_url<'a>(list: &'a MemberListResponse, peer_url: &str) -> Option<&'a Member> {
    list.members
        .iter()
        .find(|member| member.peer_ur_ls.iter().any(|url| url == peer_url))
}

/// `initial_cluster` with a name for every entry: a member that has not
/// published its name yet is listed (by `member add`, as by etcdctl) as
/// `=url`, which a starting member refuses; the harness knows the name it
/// started that member with (`names_by_url`).
fn name_unnamed(initial_cluster: &str, names_by_url: &HashMap<String, String>) -> String {
    initial_cluster
        .split(',')
        .map(|entry| match entry.strip_prefix('=') {
            Some(url) => match names_by_url.get(url) {
                Some(name) => format!("{name}={url}"),
                None => entry.to_string(),
            },
            None => entry.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The effect of `change`, if `list` shows it.
fn shown_in(list: &MemberListResponse, change: &Change<'_>) -> Option<Done> {
    match change {
        Change::Remove(id) => (!list.members.iter().any(|m| m.id == *id)).then_some(Done::Removed),
        Change::Add { peer_url, name } => {
            let added = listed_with_url(list, peer_url)?;
            // The `--initial-cluster` the add would have answered.
            let answer = MemberAddResponse {
                header: None,
                member: Some(added.clone()),
                members: list.members.clone(),
            };
            Some(Done::Added {
                id: added.id,
                initial_cluster: initial_cluster_after_add(&answer, name),
            })
        }
    }
}

impl Nemesis {
    /// A client over every member's endpoint but `except`'s.
    fn admin_client(&self, except: Option<usize>) -> Result<Client, ClientError> {
        let endpoints: Vec<String> = (0..self.members.len())
            .filter(|&slot| Some(slot) != except)
            .map(|slot| self.members[slot].endpoint.clone())
            .collect();
        Client::connect_lazy(
            ClientConfig::new(endpoints)
                .with_dial_timeout(Duration::from_secs(1))
                .with_request_timeout(CALL_TIMEOUT),
        )
    }

    /// `MemberList`, asked until it answers or `deadline` passes.
    async fn member_list(client: &Client, deadline: Instant) -> Result<MemberListResponse, ClientError> {
        loop {
            match client.member_list().await {
                Ok(list) => return Ok(list),
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }

    /// Makes `change` through `client` (see the invariants at the top).
    async fn change_membership(
        client: &Client,
        change: &Change<'_>,
        attempts: &mut Attempts,
    ) -> Result<Done, String> {
        let deadline = Instant::now() + CHANGE_BOUND;
        loop {
            let answer = match change {
                Change::Remove(id) => client.member_remove(*id).await.map(|_| Done::Removed),
                Change::Add { peer_url, name } => client
                    .member_add(vec![peer_url.to_string()], false)
                    .await
                    .map(|response| Done::Added {
                        id: response.member.as_ref().map_or(0, |m| m.id),
                        initial_cluster: initial_cluster_after_add(&response, name),
                    }),
            };
            let error = match answer {
                Ok(done) => return Ok(done),
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                return Err(format!("not done within {CHANGE_BOUND:?}; last: {error}"));
            }
            if error.membership_change_refused_before_proposing() {
                attempts.refused.push(error.to_string());
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            // Its effect is unknown: learn it before asking again.
            attempts.unknown.push(error.to_string());
            let settle_until = (Instant::now() + SETTLE).min(deadline);
            loop {
                let list = Nemesis::member_list(client, settle_until)
                    .await
                    .map_err(|e| format!("{error}, then MemberList failed: {e}"))?;
                if let Some(done) = shown_in(&list, change) {
                    return Ok(done);
                }
                if Instant::now() >= settle_until {
                    break;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Waits until every member but `slot`'s lists `peer_url` in its own
    /// (serializable) `MemberList`; the names of those that did not within
    /// [`LISTED_BOUND`].
    async fn wait_listed_everywhere(&self, peer_url: &str, slot: usize) -> Vec<String> {
        let deadline = Instant::now() + LISTED_BOUND;
        let mut waiting: Vec<&MemberAddress> = (0..self.members.len())
            .filter(|&at| at != slot)
            .map(|at| &self.members[at])
            .collect();
        while !waiting.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for member in waiting {
                let lists = match member_client(&member.endpoint, Duration::from_secs(1)) {
                    Ok(client) => client
                        .member_list()
                        .await
                        .is_ok_and(|list| listed_with_url(&list, peer_url).is_some()),
                    Err(_) => false,
                };
                if !lists {
                    still.push(member);
                }
            }
            waiting = still;
            if !waiting.is_empty() {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        waiting.iter().map(|member| member.name.clone()).collect()
    }

    /// Removes a member and adds a fresh one in its slot.
    pub(super) async fn replace_a_member(&mut self) -> Result<Fault, NemesisError> {
        let start = self.history.now();
        if self.vacancy.is_some() {
            // An earlier fault could not add the new member: do that first.
            let detail = self.fill_vacancy().await?.describe();
            self.record("start", Some(KIND), detail, start, None);
            return Ok(Fault::Replaced);
        }
        let began = Instant::now();
        let (slot, was_leader) = self.victim().await;
        let name = self.members[slot].name.clone();
        let role = if was_leader { " (leader)" } else { "" };
        let peer_url = self.cluster.lock().await.peer_url(slot);
        let removal = async {
            let client = self.admin_client(Some(slot)).map_err(|e| e.to_string())?;
            let list = Nemesis::member_list(&client, Instant::now() + CHANGE_BOUND)
                .await
                .map_err(|e| format!("MemberList failed: {e}"))?;
            let id = listed_with_url(&list, &peer_url)
                .map(|m| m.id)
                .ok_or_else(|| format!("MemberList does not list {peer_url}"))?;
            let mut attempts = Attempts::default();
            Nemesis::change_membership(&client, &Change::Remove(id), &mut attempts)
                .await
                .map(|_| (id, attempts))
        };
        let (id, attempts) = match removal.await {
            Ok(removed) => removed,
            Err(why) => {
                // A request of unknown outcome may still take effect.
                self.maybe_removed = Some(name.clone());
                let detail = format!("removing {name}{role} failed, nothing replaced: {why}");
                self.record("start", Some(KIND), detail, start, Some(slot));
                return Ok(Fault::Replaced);
            }
        };
        let removed_in = began.elapsed();
        let stopped = {
            let mut cluster = self.cluster.lock().await;
            let exited = cluster.wait_for_exit(slot, EXIT_BOUND).await;
            // Reaps it (or kills it -9 when it still runs).
            let _ = cluster.kill(slot);
            match exited {
                Some(status) => format!(
                    "it stopped by itself ({status}) {:.1?} later",
                    began.elapsed() - removed_in
                ),
                None => format!("it still ran {EXIT_BOUND:?} later: KILLED it -9"),
            }
        };
        let detail = format!(
            "removed {name}{role} (id {id:x}) in {removed_in:.1?}{}; {stopped}",
            attempts.describe()
        );
        self.record("start", Some(KIND), detail, start, Some(slot));
        self.vacancy = Some(Vacancy {
            slot,
            removed: name,
            since: began,
            prepared: None,
        });
        let step_start = self.history.now();
        let detail = self.fill_vacancy().await?.describe();
        self.record("step", Some(KIND), detail, step_start, Some(slot));
        Ok(Fault::Replaced)
    }

    /// Member `slot` (reaped) stopped after a removal that had seemed to
    /// fail: its slot is vacant, and is filled now.
    pub(super) async fn removed_after_all(&mut self, slot: usize, start: u64) -> Result<(), NemesisError> {
        let name = self.members[slot].name.clone();
        let detail = format!("{name} stopped: an earlier MemberRemove of it took effect after all");
        self.record("step", Some(KIND), detail, start, Some(slot));
        self.vacancy = Some(Vacancy {
            slot,
            removed: name,
            since: Instant::now(),
            prepared: None,
        });
        let step_start = self.history.now();
        let detail = self.fill_vacancy().await?.describe();
        self.record("step", Some(KIND), detail, step_start, Some(slot));
        Ok(())
    }

    /// Adds and starts a fresh member in the vacant slot, if there is one.
    pub(super) async fn fill_vacancy(&mut self) -> Result<Filled, NemesisError> {
        let Some(mut vacancy) = self.vacancy.clone() else {
            return Ok(Filled::Nothing);
        };
        let slot = vacancy.slot;
        let prepared = match vacancy.prepared.clone() {
            Some(prepared) => prepared,
            None => {
                let name = format!("m{}", self.roster.every_name().len() + 1);
                let mut cluster = self.cluster.lock().await;
                cluster.replace_member(slot, &name)?;
                let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, cluster.peer_port(slot)));
                self.network.retarget_member(slot, peer)?;
                let prepared = Prepared {
                    name,
                    peer_url: cluster.peer_url(slot),
                };
                vacancy.prepared = Some(prepared.clone());
                self.vacancy = Some(vacancy.clone());
                prepared
            }
        };
        let client = match self.admin_client(Some(slot)) {
            Ok(client) => client,
            Err(error) => return Ok(Filled::NotYet(format!("no client: {error}"))),
        };
        let mut attempts = Attempts::default();
        let change = Change::Add {
            peer_url: &prepared.peer_url,
            name: &prepared.name,
        };
        let (id, initial_cluster) = match Nemesis::change_membership(&client, &change, &mut attempts).await {
            Ok(Done::Added { id, initial_cluster }) => (id, initial_cluster),
            Ok(Done::Removed) => return Ok(Filled::NotYet("MemberAdd answered as a removal".into())),
            Err(why) => {
                return Ok(Filled::NotYet(format!(
                    "adding {} in place of {} failed{}: {why}",
                    prepared.name,
                    vacancy.removed,
                    attempts.describe()
                )))
            }
        };
        let mut names = self.names();
        names[slot] = prepared.name.clone();
        let names_by_url: HashMap<String, String> = {
            let cluster = self.cluster.lock().await;
            names
                .iter()
                .enumerate()
                .map(|(at, name)| (cluster.peer_url(at), name.clone()))
                .collect()
        };
        let initial_cluster = name_unnamed(&initial_cluster, &names_by_url);
        // Its peers, each through the slot's link proxy (every member the
        // add's `--initial-cluster` names).
        let known: Vec<String> = names
            .iter()
            .map(|n| {
                if initial_cluster.contains(&format!("{n}=")) {
                    n.clone()
                } else {
                    String::new()
                }
            })
            .collect();
        let overrides = self.network.dial_overrides(slot, &known);
        let unlisted = self.wait_listed_everywhere(&prepared.peer_url, slot).await;
        let listed = if unlisted.is_empty() {
            "every member listed it".to_string()
        } else {
            format!("{} did not list it within {LISTED_BOUND:?}", unlisted.join(" "))
        };
        let endpoint = {
            let mut cluster = self.cluster.lock().await;
            cluster.set_member_args(slot, vec!["--peer-dial-overrides".into(), overrides]);
            cluster.start_joining(slot, &initial_cluster)?;
            cluster.endpoint(slot)
        };
        self.roster.replace(
            slot,
            MemberAddress {
                name: prepared.name.clone(),
                endpoint,
            },
        );
        self.refresh_members();
        self.vacancy = None;
        Ok(Filled::Added(format!(
            "added {} (id {id:x}) in place of {}{}; {listed}; started it with --initial-cluster-state existing; the replacement took {:.1?}",
            prepared.name,
            vacancy.removed,
            attempts.describe(),
            vacancy.since.elapsed()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_that_has_not_published_its_name_is_named_by_its_url() {
        let names: HashMap<String, String> = [
            ("http://127.0.0.1:3".to_string(), "m18".to_string()),
            ("http://127.0.0.1:1".to_string(), "m1".to_string()),
        ]
        .into();
        assert_eq!(
            name_unnamed(
                "m1=http://127.0.0.1:1,=http://127.0.0.1:3,m19=http://127.0.0.1:4",
                &names
            ),
            "m1=http://127.0.0.1:1,m18=http://127.0.0.1:3,m19=http://127.0.0.1:4"
        );
        assert_eq!(name_unnamed("=http://127.0.0.1:9", &names), "=http://127.0.0.1:9");
    }
}
