//! The run's current members, one per slot: a run starts with `--nodes`
//! members in slots 0..n, and the `member` nemesis puts a fresh member (new
//! name, ports and data dir) in the slot of each member it removes. The
//! workers, the status monitor, the nemesis and the final reads all address
//! members through the roster, so they follow the cluster as members come
//! and go.
//!
//! Invariant: a slot names the member that the harness last started in it;
//! every name that ever held a slot stays listed in [`Roster::every_name`]
//! (its data dir and log live in the run directory).

use std::sync::RwLock;

use crate::monitor::MemberAddress;

#[derive(Debug)]
pub struct Roster {
    slots: RwLock<Vec<MemberAddress>>,
    every: RwLock<Vec<String>>,
}

impl Roster {
    pub fn new(members: Vec<MemberAddress>) -> Roster {
        let every = members.iter().map(|m| m.name.clone()).collect();
        Roster {
            slots: RwLock::new(members),
            every: RwLock::new(every),
        }
    }

    pub fn size(&self) -> usize {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The member in `slot` now.
    pub fn member(&self, slot: usize) -> Option<MemberAddress> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(slot)
            .cloned()
    }

    /// Every slot's member now.
    pub fn members(&self) -> Vec<MemberAddress> {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `member` in `slot` (in place of a removed one).
    pub fn replace(&self, slot: usize, member: MemberAddress) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = slots.get_mut(slot) {
            self.every
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(member.name.clone());
            *held = member;
        }
    }

    /// The name of every member that ever held a slot, in order.
    pub fn every_name(&self) -> Vec<String> {
        self.every.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, port: u16) -> MemberAddress {
        MemberAddress {
            name: name.into(),
            endpoint: format!("127.0.0.1:{port}"),
        }
    }

    #[test]
    fn a_replaced_slot_names_the_new_member_and_every_name_is_kept() {
        let roster = Roster::new(vec![member("m1", 1), member("m2", 2)]);
        roster.replace(1, member("m3", 3));
        roster.replace(7, member("nowhere", 9));
        assert_eq!(roster.member(1).map(|m| m.endpoint), Some("127.0.0.1:3".into()));
        assert_eq!(roster.member(0).map(|m| m.name), Some("m1".into()));
        assert_eq!(roster.size(), 2);
        assert_eq!(roster.every_name(), vec!["m1", "m2", "m3"]);
    }
}
