//! The one encoding of everything keel's Raft storage keeps on disk: the
//! protobuf records of `proto/keel/raft_storage.proto` (`keelstoragepb`),
//! converted from and to openraft's types here and nowhere else. The log
//! store (entries, vote, committed and purged ids), the state machine
//! (last applied id, membership, member attribute table) and the snapshot
//! directory (the current snapshot's meta) all go through this module.
//!
//! Invariant: bytes written by this module decode with any keel whose
//! records only added fields (protobuf skips unknown fields), and a decode
//! never guesses: a record that lacks a field keel needs, or a log entry
//! whose payload this build does not know, is a [`StorageDecodeError`],
//! never a default value. A log id of 0/0 is a real log id; absence is
//! told by an absent message (`OptionalLogId`), not by zeros.

use std::collections::{BTreeMap, BTreeSet};

use keel_api::keelstoragepb as pb;
use openraft::{EntryPayload, Membership};
use prost::Message;

use crate::apply::{AlarmTable, MemberAttributeTable, RaisedAlarm, RemovedMembers};
use crate::type_config::{
    CommittedLeaderId, Entry, LogId, MemberNode, NodeId, SnapshotMeta, StoredMembership, Vote,
};

/// Why a stored record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum StorageDecodeError {
    /// The bytes are not the protobuf encoding of the record.
    #[error("a stored {record} is not valid protobuf: {source}")]
    Protobuf {
        record: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    /// A field the record cannot do without is absent.
    #[error("a stored {record} has no {field}")]
    MissingField {
        record: &'static str,
        field: &'static str,
    },
    /// A log entry whose payload is none this build knows (blank, write
    /// batch, membership): written by a newer keel, or damaged.
    #[error("the stored log entry at index {index} has a payload this build does not know")]
    UnknownPayload { index: u64 },
    /// A membership that openraft refuses (an empty voter set, a voter
    /// without a member record).
    #[error("a stored membership is invalid: {0}")]
    InvalidMembership(#[from] openraft::errors::MembershipError<NodeId>),
}

fn decode_message<M: Message + Default>(record: &'static str, bytes: &[u8]) -> Result<M, StorageDecodeError> {
    M::decode(bytes).map_err(|source| StorageDecodeError::Protobuf { record, source })
}

fn required<T>(value: Option<T>, record: &'static str, field: &'static str) -> Result<T, StorageDecodeError> {
    value.ok_or(StorageDecodeError::MissingField { record, field })
}

/// A small Raft storage record (everything but log entries, which have
/// [`encode_entry`] and [`decode_entry`] so that their payload is moved, not
/// copied), with its protobuf encoding.
pub trait StorageRecord: Sized {
    fn encode_record(&self) -> Vec<u8>;
    fn decode_record(bytes: &[u8]) -> Result<Self, StorageDecodeError>;
}

fn log_id_to_pb(log_id: &LogId) -> pb::LogId {
    pb::LogId {
        term: log_id.leader_id.term,
        index: log_id.index,
    }
}

fn log_id_from_pb(log_id: pb::LogId) -> LogId {
    LogId::new(CommittedLeaderId::new(log_id.term), log_id.index)
}

impl StorageRecord for LogId {
    fn encode_record(&self) -> Vec<u8> {
        log_id_to_pb(self).encode_to_vec()
    }

    fn decode_record(bytes: &[u8]) -> Result<Self, StorageDecodeError> {
        Ok(log_id_from_pb(decode_message("log id", bytes)?))
    }
}

impl StorageRecord for Option<LogId> {
    fn encode_record(&self) -> Vec<u8> {
        pb::OptionalLogId {
            log_id: self.as_ref().map(log_id_to_pb),
        }
        .encode_to_vec()
    }

    fn decode_record(bytes: &[u8]) -> Result<Self, StorageDecodeError> {
        let record: pb::OptionalLogId = decode_message("optional log id", bytes)?;
        Ok(record.log_id.map(log_id_from_pb))
    }
}

impl StorageRecord for Vote {
    fn encode_record(&self) -> Vec<u8> {
        pb::Vote {
            term: self.leader_id.term,
            voted_for: self.leader_id.voted_for,
            committed: self.committed,
        }
        .encode_to_vec()
    }

    fn decode_record(bytes: &[u8]) -> Result<Self, StorageDecodeError> {
        let vote: pb::Vote = decode_message("vote", bytes)?;
        Ok(if vote.committed {
            Vote::new_committed(vote.term, vote.voted_for)
        } else {
            Vote::new(vote.term, vote.voted_for)
        })
    }
}

fn membership_to_pb(membership: &Membership<NodeId, MemberNode>) -> pb::Membership {
    pb::Membership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|voters| pb::VoterSet {
                voter_ids: voters.iter().copied().collect(),
            })
            .collect(),
        nodes: membership
            .nodes()
            .map(|(id, node)| {
                (
                    *id,
                    pb::MemberNode {
                        name: node.name.clone(),
                        peer_url: node.peer_url.clone(),
                    },
                )
            })
            .collect(),
    }
}

fn membership_from_pb(
    membership: pb::Membership,
) -> Result<Membership<NodeId, MemberNode>, StorageDecodeError> {
    let configs: Vec<BTreeSet<NodeId>> = membership
        .configs
        .into_iter()
        .map(|voters| voters.voter_ids.into_iter().collect())
        .collect();
    let nodes: BTreeMap<NodeId, MemberNode> = membership
        .nodes
        .into_iter()
        .map(|(id, node)| {
            (
                id,
                MemberNode {
                    name: node.name,
                    peer_url: node.peer_url,
                },
            )
        })
        .collect();
    Ok(Membership::new(configs, nodes)?)
}

fn stored_membership_to_pb(stored: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: stored.log_id().as_ref().map(log_id_to_pb),
        membership: Some(membership_to_pb(stored.membership())),
    }
}

fn stored_membership_from_pb(stored: pb::StoredMembership) -> Result<StoredMembership, StorageDecodeError> {
    let membership = required(stored.membership, "stored membership", "membership")?;
    Ok(StoredMembership::new(
        stored.log_id.map(log_id_from_pb),
        membership_from_pb(membership)?,
    ))
}

impl StorageRecord for StoredMembership {
    fn encode_record(&self) -> Vec<u8> {
        stored_membership_to_pb(self).encode_to_vec()
    }

    fn decode_record(bytes: &[u8]) -> Result<Self, StorageDecodeError> {
        stored_membership_from_pb(decode_message("stored membership", bytes)?)
    }
}

impl StorageRecord for MemberAttributeTable {
    fn encode_record(&self) -> Vec<u8> {
        pb::MemberAttributeTable {
            members: self.values().cloned().collect(),
        }
        .encode_to_vec()
    }

    fn decode_record(bytes: &[u8]) -> Result<Self, StorageDecodeError> {
        let table: pb::MemberAttributeTable = decode_message("member attribute table", bytes)?;
        Ok(table
            .members
            .into_iter()
            .map(|member| (member.member_id, member))
            .collect())
    }
}

impl StorageRecord for keel_auth::AuthStore {
    fn encode_record(&self) -> Vec<u8> {
        self.to_record().encode_to_vec()
    }

    fn decode_record(bytes: &[u8]) -> Result<Self, StorageDecodeError> {
        Ok(keel_auth::AuthStore::from_record(decode_message(
            "auth store",
            bytes,
        )?))
    }
}

impl StorageRecord for AlarmTable {
    fn encode_record(&self) -> Vec<u8> {
        pb::AlarmTable {
            alarms: self.iter().map(|raised| raised.to_member()).collect(),
        }
        .encode_to_vec()
    }

    fn decode_record(bytes: &[u8]) -> Result<Self, StorageDecodeError> {
        let table: pb::AlarmTable = decode_message("alarm table", bytes)?;
        Ok(table
            .alarms
            .into_iter()
            .map(|member| RaisedAlarm {
                alarm: member.alarm,
                member_id: member.member_id,
            })
            .collect())
    }
}

impl StorageRecord for RemovedMembers {
    fn encode_record(&self) -> Vec<u8> {
        pb::RemovedMembers {
            ids: self.iter().copied().collect(),
        }
        .encode_to_vec()
    }

    fn decode_record(bytes: &[u8]) -> Result<Self, StorageDecodeError> {
        let record: pb::RemovedMembers = decode_message("removed member list", bytes)?;
        Ok(record.ids.into_iter().collect())
    }
}

/// The current snapshot's meta and the name of its data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentSnapshotRecord {
    pub meta: SnapshotMeta,
    /// The dump's file name; none for a snapshot that is the durable
    /// keyspace itself (format version 4).
    pub data_file: Option<String>,
}

impl StorageRecord for CurrentSnapshotRecord {
    fn encode_record(&self) -> Vec<u8> {
        pb::SnapshotMeta {
            last_log_id: self.meta.last_log_id.as_ref().map(log_id_to_pb),
            last_membership: Some(stored_membership_to_pb(&self.meta.last_membership)),
            data_file: self.data_file.clone().unwrap_or_default(),
        }
        .encode_to_vec()
    }

    fn decode_record(bytes: &[u8]) -> Result<Self, StorageDecodeError> {
        let record: pb::SnapshotMeta = decode_message("snapshot meta", bytes)?;
        let last_membership = required(record.last_membership, "snapshot meta", "last_membership")?;
        Ok(CurrentSnapshotRecord {
            meta: SnapshotMeta {
                last_log_id: record.last_log_id.map(log_id_from_pb),
                last_membership: stored_membership_from_pb(last_membership)?,
            },
            data_file: (!record.data_file.is_empty()).then_some(record.data_file),
        })
    }
}

/// The protobuf record of `entry` (`keelstoragepb.LogEntry`); the payload is
/// moved into it, not copied, unless another clone of the entry shares it.
pub fn entry_to_pb(entry: Entry) -> pb::LogEntry {
    use pb::log_entry::Payload;
    let payload = match entry.payload {
        EntryPayload::Blank => Payload::Blank(pb::BlankPayload {}),
        EntryPayload::Normal(write_batch) => Payload::WriteBatch(write_batch.into_write_batch()),
        EntryPayload::Membership(membership) => Payload::Membership(membership_to_pb(&membership)),
    };
    pb::LogEntry {
        log_id: Some(log_id_to_pb(&entry.log_id)),
        payload: Some(payload),
    }
}

/// The entry a `keelstoragepb.LogEntry` record holds.
pub fn entry_from_pb(record: pb::LogEntry) -> Result<Entry, StorageDecodeError> {
    use pb::log_entry::Payload;
    let log_id = log_id_from_pb(required(record.log_id, "log entry", "log_id")?);
    let payload = match record.payload {
        Some(Payload::Blank(_)) => EntryPayload::Blank,
        Some(Payload::WriteBatch(write_batch)) => EntryPayload::Normal(write_batch.into()),
        Some(Payload::Membership(membership)) => EntryPayload::Membership(membership_from_pb(membership)?),
        // An unknown oneof field is skipped by the decoder: it reads as none.
        None => return Err(StorageDecodeError::UnknownPayload { index: log_id.index }),
    };
    Ok(Entry { log_id, payload })
}

/// The bytes the log store keeps for `entry`: `keelstoragepb.LogEntry`,
/// with a write batch encoded from where it is rather than copied into the
/// record (the log store keeps the entry itself in `recent_entries.rs`). The
/// fields come in tag order, as prost writes them, so the bytes are those of
/// [`entry_to_pb`]'s record (the golden tests hold both to that).
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    /// `keelstoragepb.LogEntry.write_batch`'s field number.
    const WRITE_BATCH_FIELD: u32 = 3;
    let EntryPayload::Normal(shared_write_batch) = &entry.payload else {
        return entry_to_pb(entry.clone()).encode_to_vec();
    };
    let write_batch: &keel_api::keelpb::WriteBatch = shared_write_batch;
    let log_id = pb::LogEntry {
        log_id: Some(log_id_to_pb(&entry.log_id)),
        payload: None,
    };
    let mut bytes = Vec::with_capacity(
        log_id.encoded_len() + prost::encoding::message::encoded_len(WRITE_BATCH_FIELD, write_batch),
    );
    log_id.encode_raw(&mut bytes);
    prost::encoding::message::encode(WRITE_BATCH_FIELD, write_batch, &mut bytes);
    bytes
}

/// The entry the log store kept as `bytes`.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageDecodeError> {
    entry_from_pb(decode_message("log entry", bytes)?)
}

/// The log id of the entry kept as `bytes`, without decoding its payload
/// (a whole batch of writes) when the log store only needs the id.
pub fn decode_entry_log_id(bytes: &[u8]) -> Result<LogId, StorageDecodeError> {
    /// The leading fields of `keelstoragepb.LogEntry` (same numbers); the
    /// payload's field is skipped as unknown.
    #[derive(Clone, PartialEq, prost::Message)]
    struct LogEntryId {
        #[prost(message, optional, tag = "1")]
        log_id: Option<pb::LogId>,
    }
    let record: LogEntryId = decode_message("log entry", bytes)?;
    Ok(log_id_from_pb(required(record.log_id, "log entry", "log_id")?))
}

#[cfg(test)]
#[path = "storage_codec_tests.rs"]
mod tests;
