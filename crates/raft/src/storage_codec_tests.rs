//! Tests of `storage_codec.rs`: every record round-trips; records written
//! today decode after a field is added and the other way round; golden
//! bytes encoded today keep decoding to the same values.

use super::*;
use keel_api::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest};
use keel_api::keelpb::{
    write_request, LeaseCheckpoint, LeaseCheckpointRequest, MemberAttributes, WriteBatch, WriteRequest,
};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term), index)
}

fn node(name: &str, port: u16) -> MemberNode {
    MemberNode {
        name: name.to_string(),
        peer_url: format!("http://127.0.0.1:{port}"),
    }
}

fn write_batch() -> WriteBatch {
    WriteBatch {
        requests: vec![
            WriteRequest {
                checked_auth_revision: 0,
                request: Some(write_request::Request::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    lease: 0,
                    prev_kv: true,
                    ..Default::default()
                })),
            },
            WriteRequest {
                checked_auth_revision: 0,
                request: Some(write_request::Request::DeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"b".to_vec(),
                    prev_kv: false,
                })),
            },
            WriteRequest {
                checked_auth_revision: 0,
                request: Some(write_request::Request::MemberAttributes(MemberAttributes {
                    member_id: 11,
                    name: "m1".to_string(),
                    client_urls: vec!["http://127.0.0.1:2379".to_string()],
                })),
            },
        ],
    }
}

/// The lease requests: grant (ID chosen), a put attaching a key, a
/// checkpoint and a revoke.
fn lease_batch() -> WriteBatch {
    let request = |request| WriteRequest {
        checked_auth_revision: 0,
        request: Some(request),
    };
    WriteBatch {
        requests: vec![
            request(write_request::Request::LeaseGrant(LeaseGrantRequest {
                ttl: 60,
                id: 7,
            })),
            request(write_request::Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                lease: 7,
                ..Default::default()
            })),
            request(write_request::Request::LeaseCheckpoint(LeaseCheckpointRequest {
                checkpoints: vec![LeaseCheckpoint {
                    id: 7,
                    remaining_ttl: 42,
                }],
            })),
            request(write_request::Request::LeaseRevoke(LeaseRevokeRequest { id: 7 })),
        ],
    }
}

/// A joint configuration with a learner: every part of a membership.
fn joint_membership() -> Membership<NodeId, MemberNode> {
    Membership::new(
        vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([2, 3, 4])],
        BTreeMap::from([
            (1, node("m1", 2380)),
            (2, node("m2", 2381)),
            (3, node("m3", 2382)),
            (4, node("m4", 2383)),
            (5, node("learner", 2384)),
        ]),
    )
    .expect("a valid membership")
}

fn every_entry_kind() -> Vec<Entry> {
    vec![
        Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(2, 7),
            payload: EntryPayload::Normal(write_batch().into()),
        },
        Entry {
            log_id: log_id(2, 8),
            payload: EntryPayload::Normal(WriteBatch::default().into()),
        },
        Entry {
            log_id: log_id(3, 9),
            payload: EntryPayload::Membership(joint_membership()),
        },
        Entry {
            log_id: log_id(0, 0),
            payload: EntryPayload::Membership(Membership::default()),
        },
        Entry {
            log_id: log_id(4, 10),
            payload: EntryPayload::Normal(lease_batch().into()),
        },
    ]
}

#[test]
fn every_entry_kind_round_trips() {
    for entry in every_entry_kind() {
        let bytes = encode_entry(&entry);
        assert_eq!(
            bytes,
            entry_to_pb(entry.clone()).encode_to_vec(),
            "encoded in place as the record would be"
        );
        assert_eq!(decode_entry(&bytes).expect("decode"), entry);
        assert_eq!(decode_entry_log_id(&bytes).expect("log id"), entry.log_id);
    }
}

#[test]
fn every_other_record_round_trips() {
    for vote in [Vote::new(4, 2), Vote::new_committed(5, 3), Vote::new(0, 0)] {
        assert_eq!(Vote::decode_record(&vote.encode_record()).expect("vote"), vote);
    }
    for id in [None, Some(log_id(0, 0)), Some(log_id(6, 1_000_000))] {
        assert_eq!(
            Option::<LogId>::decode_record(&id.encode_record()).expect("optional"),
            id
        );
    }
    let purged = log_id(7, 42);
    assert_eq!(
        LogId::decode_record(&purged.encode_record()).expect("log id"),
        purged
    );
    for stored in [
        StoredMembership::default(),
        StoredMembership::new(Some(log_id(3, 9)), joint_membership()),
    ] {
        let decoded = StoredMembership::decode_record(&stored.encode_record()).expect("membership");
        assert_eq!(decoded, stored);
    }
    let table: MemberAttributeTable = [11, 12]
        .into_iter()
        .map(|id| {
            let attributes = MemberAttributes {
                member_id: id,
                name: format!("m{id}"),
                client_urls: vec![format!("http://127.0.0.1:{}", 2000 + id)],
            };
            (id, attributes)
        })
        .collect();
    assert_eq!(
        MemberAttributeTable::decode_record(&table.encode_record()).expect("table"),
        table
    );
    let alarms: AlarmTable = [(1, 11), (1, 12), (2, 11)]
        .into_iter()
        .map(|(alarm, member_id)| RaisedAlarm { alarm, member_id })
        .collect();
    assert_eq!(
        AlarmTable::decode_record(&alarms.encode_record()).expect("alarms"),
        alarms
    );
    let snapshot = CurrentSnapshotRecord {
        meta: SnapshotMeta {
            last_log_id: Some(log_id(3, 90)),
            last_membership: StoredMembership::new(Some(log_id(3, 9)), joint_membership()),
        },
        data_file: Some("snapshot-3-90.data".to_string()),
    };
    let decoded = CurrentSnapshotRecord::decode_record(&snapshot.encode_record()).expect("snapshot");
    assert_eq!(decoded, snapshot);
    let without_dump = CurrentSnapshotRecord {
        data_file: None,
        ..snapshot
    };
    let decoded = CurrentSnapshotRecord::decode_record(&without_dump.encode_record()).expect("snapshot");
    assert_eq!(decoded, without_dump);
}

#[test]
fn records_that_lack_what_keel_needs_are_typed_errors() {
    let no_log_id = pb::LogEntry {
        log_id: None,
        payload: Some(pb::log_entry::Payload::Blank(pb::BlankPayload {})),
    }
    .encode_to_vec();
    assert!(matches!(
        decode_entry(&no_log_id),
        Err(StorageDecodeError::MissingField { field: "log_id", .. })
    ));
    let no_payload = pb::LogEntry {
        log_id: Some(pb::LogId { term: 1, index: 3 }),
        payload: None,
    }
    .encode_to_vec();
    assert!(matches!(
        decode_entry(&no_payload),
        Err(StorageDecodeError::UnknownPayload { index: 3 })
    ));
    assert!(matches!(
        decode_entry(&[0xff, 0xff, 0xff]),
        Err(StorageDecodeError::Protobuf { .. })
    ));
    // A voter without a member record is refused, not half-loaded.
    let voter_without_record = pb::StoredMembership {
        log_id: None,
        membership: Some(pb::Membership {
            configs: vec![pb::VoterSet { voter_ids: vec![9] }],
            nodes: BTreeMap::new(),
        }),
    }
    .encode_to_vec();
    assert!(matches!(
        StoredMembership::decode_record(&voter_without_record),
        Err(StorageDecodeError::InvalidMembership(_))
    ));
    assert!(matches!(
        StoredMembership::decode_record(&[]),
        Err(StorageDecodeError::MissingField {
            field: "membership",
            ..
        })
    ));
}

/// What a later keel might declare: today's `LogEntry` plus a field (the
/// proposing member, say) and a payload kind this build does not know.
#[derive(Clone, PartialEq, prost::Message)]
struct LogEntryWithAddedFields {
    #[prost(message, optional, tag = "1")]
    log_id: Option<pb::LogId>,
    #[prost(oneof = "PayloadWithAddedKind", tags = "2, 3, 4, 6")]
    payload: Option<PayloadWithAddedKind>,
    #[prost(uint64, tag = "5")]
    proposed_by: u64,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum PayloadWithAddedKind {
    #[prost(message, tag = "2")]
    Blank(pb::BlankPayload),
    #[prost(message, tag = "3")]
    WriteBatch(WriteBatch),
    #[prost(message, tag = "4")]
    Membership(pb::Membership),
    #[prost(string, tag = "6")]
    LeaseGrant(String),
}

#[test]
fn an_entry_written_today_decodes_after_a_field_is_added_and_the_other_way_round() {
    // Today's bytes, read by the extended declaration: every field intact,
    // the added one at its default.
    let today = Entry {
        log_id: log_id(2, 7),
        payload: EntryPayload::Normal(write_batch().into()),
    };
    let extended = LogEntryWithAddedFields::decode(encode_entry(&today).as_slice()).expect("extended");
    assert_eq!(extended.log_id, Some(pb::LogId { term: 2, index: 7 }));
    assert_eq!(
        extended.payload,
        Some(PayloadWithAddedKind::WriteBatch(write_batch()))
    );
    assert_eq!(extended.proposed_by, 0);

    // Bytes of the extended declaration with the new field set, read by
    // today's code: the same entry, payload intact, the new field skipped.
    let newer = LogEntryWithAddedFields {
        log_id: Some(pb::LogId { term: 2, index: 7 }),
        payload: Some(PayloadWithAddedKind::WriteBatch(write_batch())),
        proposed_by: 11,
    }
    .encode_to_vec();
    assert_eq!(decode_entry(&newer).expect("today's decode"), today);
    let membership = LogEntryWithAddedFields {
        log_id: Some(pb::LogId { term: 3, index: 9 }),
        payload: Some(PayloadWithAddedKind::Membership(membership_to_pb(
            &joint_membership(),
        ))),
        proposed_by: 11,
    }
    .encode_to_vec();
    assert_eq!(
        decode_entry(&membership).expect("today's decode").payload,
        EntryPayload::Membership(joint_membership())
    );

    // A payload kind today's code does not know is refused by name, never
    // applied as something else.
    let unknown_kind = LogEntryWithAddedFields {
        log_id: Some(pb::LogId { term: 4, index: 12 }),
        payload: Some(PayloadWithAddedKind::LeaseGrant("lease".to_string())),
        proposed_by: 11,
    }
    .encode_to_vec();
    assert!(matches!(
        decode_entry(&unknown_kind),
        Err(StorageDecodeError::UnknownPayload { index: 12 })
    ));
    assert_eq!(
        decode_entry_log_id(&unknown_kind).expect("the id still reads"),
        log_id(4, 12)
    );
}

fn from_hex(hex: &str) -> Vec<u8> {
    let hex: String = hex.split_whitespace().collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Asserts that `golden` (bytes keel wrote when this test was written)
/// decodes to `expected`, and that keel still writes exactly those bytes.
fn assert_golden<T: std::fmt::Debug + PartialEq>(
    golden_hex: &str,
    expected: T,
    decode: impl Fn(&[u8]) -> Result<T, StorageDecodeError>,
    encode: impl Fn(T) -> Vec<u8>,
) {
    let golden = from_hex(golden_hex);
    assert_eq!(decode(&golden).expect("golden bytes decode"), expected);
    assert_eq!(
        to_hex(&encode(expected)),
        to_hex(&golden),
        "the encoding changed: records already on disk would no longer match"
    );
}

/// A write-batch entry at term 2, index 7: `put k=v (prev_kv)`,
/// `delete [a, b)`, and member 11's attributes.
const GOLDEN_WRITE_BATCH_ENTRY: &str =
    "0a04080210071a370a0a0a080a016b12017620010a0812060a01611201620a1f2a1d080b\
    12026d311a15687474703a2f2f3132372e302e302e313a32333739";
/// A membership entry at term 3, index 9: voters {1,2,3} then {2,3,4}, learner 5.
const GOLDEN_MEMBERSHIP_ENTRY: &str =
    "0a040803100922b8010a050a030102030a050a03020304121f0801121b0a026d31121568\
    7474703a2f2f3132372e302e302e313a32333830121f0802121b0a026d32121568747470\
    3a2f2f3132372e302e302e313a32333831121f0803121b0a026d331215687474703a2f2f\
    3132372e302e302e313a32333832121f0804121b0a026d341215687474703a2f2f313237\
    2e302e302e313a323338331224080512200a076c6561726e65721215687474703a2f2f31\
    32372e302e302e313a32333834";
/// A write-batch entry at term 4, index 10 with the lease requests: grant
/// lease 7 (TTL 60), `put k=v` on it, checkpoint 42 s left, revoke.
const GOLDEN_LEASE_ENTRY: &str =
    "0a040804100a1a240a063204083c10070a0a0a080a016b12017618070a0842060a040807102a0a043a020807";
/// A blank entry at term 1, index 1.
const GOLDEN_BLANK_ENTRY: &str = "0a04080110011200";
/// A committed vote for member 3 in term 5.
const GOLDEN_VOTE: &str = "080510031801";

#[test]
fn golden_records_written_today_still_decode_to_the_same_values() {
    let entries = every_entry_kind();
    assert_golden(
        GOLDEN_BLANK_ENTRY,
        entries[0].clone(),
        decode_entry,
        |entry: Entry| encode_entry(&entry),
    );
    assert_golden(
        GOLDEN_WRITE_BATCH_ENTRY,
        entries[1].clone(),
        decode_entry,
        |entry: Entry| encode_entry(&entry),
    );
    assert_golden(
        GOLDEN_MEMBERSHIP_ENTRY,
        entries[3].clone(),
        decode_entry,
        |entry: Entry| encode_entry(&entry),
    );
    assert_golden(
        GOLDEN_LEASE_ENTRY,
        entries[5].clone(),
        decode_entry,
        |entry: Entry| encode_entry(&entry),
    );
    assert_golden(
        GOLDEN_VOTE,
        Vote::new_committed(5, 3),
        Vote::decode_record,
        |vote| vote.encode_record(),
    );
}
