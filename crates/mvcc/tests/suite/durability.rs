//! State survives dropping and reopening the sled database.

use keel_api::etcdserverpb::RangeRequest;
use keel_mvcc::{MvccError, MvccStore};
use keel_storage::{sled, Database};

use crate::common::*;

#[test]
fn data_history_revisions_compaction_and_app_meta_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let (hash_before, everything_before, at_5_before) = {
        let db = open_db(&path);
        let store = MvccStore::open(&db).expect("open");
        let mut batch = store.begin_apply();
        for i in 0..20 {
            batch
                .put(&put_request(&format!("k{i:02}"), &i.to_string()))
                .expect("put");
        }
        batch.set_app_meta("raft/last_applied", b"entry-1".to_vec());
        batch.commit().expect("commit");
        let mut batch = store.begin_apply();
        batch.put(&put_request("k00", "rewritten")).expect("put");
        batch
            .delete_range(&keel_api::etcdserverpb::DeleteRangeRequest {
                key: "k10".into(),
                range_end: "k15".into(),
                prev_kv: false,
            })
            .expect("delete");
        batch.compact(5).expect("compact");
        batch.set_app_meta("raft/last_applied", b"entry-2".to_vec());
        batch.commit().expect("commit");
        store.flush().expect("flush");
        assert!(store.size_on_disk() > 0);
        let at_5 = store
            .range(&RangeRequest {
                revision: 5,
                ..range_request("", "\0")
            })
            .expect("range");
        (store.hash_kv(0).expect("hash"), range(&store, "", "\0"), at_5)
    };
    let db = open_db(&path);
    let store = MvccStore::open(&db).expect("reopen");
    assert_eq!(store.current_revision(), 23);
    assert_eq!(store.compact_revision(), 5);
    assert_eq!(
        store.app_meta("raft/last_applied").expect("meta"),
        Some(b"entry-2".to_vec())
    );
    assert_eq!(range(&store, "", "\0"), everything_before);
    assert_eq!(everything_before.count, 15);
    assert_eq!(
        store
            .range(&RangeRequest {
                revision: 5,
                ..range_request("", "\0")
            })
            .expect("range"),
        at_5_before
    );
    assert_eq!(store.hash_kv(0).expect("hash"), hash_before);
    let next = put(&store, "after", "reopen");
    assert_eq!(header_revision(&next.header), 24);
}

fn active_tree(db: &Database) -> sled::Tree {
    let db = db.sled();
    let name = db
        .get(b"keel-mvcc/active-keyspace")
        .expect("get")
        .expect("the store writes its pointer");
    db.open_tree(name).expect("open active tree")
}

#[test]
fn open_drops_a_half_installed_keyspace_and_keeps_the_active_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    {
        let db = open_db(&path);
        let store = MvccStore::open(&db).expect("open");
        put(&store, "kept", "1");
        let leftover = db.sled().open_tree("keel-mvcc/keyspace/9").expect("tree");
        leftover.insert(b"\x01junk", b"junk").expect("insert");
        db.make_durable().expect("flush");
    }
    let db = open_db(&path);
    let store = MvccStore::open(&db).expect("reopen");
    assert_eq!(keys_of(&range(&store, "", "\0").kvs), vec!["kept"]);
    let names: Vec<_> = db
        .sled()
        .tree_names()
        .into_iter()
        .filter(|name| name.starts_with(b"keel-mvcc/"))
        .collect();
    assert_eq!(names, vec![sled::IVec::from(&b"keel-mvcc/keyspace/0"[..])]);
}

/// The raw key of the revision record at `main.sub` (layout of format 2).
fn revision_key(main: i64, sub: i64) -> Vec<u8> {
    let mut key = vec![0x03];
    key.extend_from_slice(&main.to_be_bytes());
    key.extend_from_slice(&sub.to_be_bytes());
    key
}

#[test]
fn corrupt_records_are_errors_not_panics() {
    let t = temp_store();
    put(&t.store, "good", "1");
    put(&t.store, "good", "2");
    put(&t.store, "other", "1");
    let tree = active_tree(&t.db);
    // The record the current version of "good" (revision 3) points at is garbage.
    tree.insert(revision_key(3, 0), &b"\xff\xff\xff"[..])
        .expect("insert");
    let result = t.store.range(&range_request("a", "z"));
    assert!(matches!(result, Err(MvccError::Corrupt(_))), "{result:?}");
    // Keys-only and count-only reads come from the index alone.
    let keys_only = t
        .store
        .range(&RangeRequest {
            keys_only: true,
            ..range_request("a", "z")
        })
        .expect("keys only");
    assert_eq!(keys_of(&keys_only.kvs), vec!["good", "other"]);
    assert_eq!(
        get_at(&t.store, "good", 2).expect("read").map(|kv| value_of(&kv)),
        Some("1".into())
    );
    // A record of another key where the index expects one of "good".
    tree.insert(revision_key(2, 0), &b"p\x05other\x02\x01\x00x"[..])
        .expect("insert");
    assert!(matches!(get_at(&t.store, "good", 2), Err(MvccError::Corrupt(_))));
    // A record the index names is missing.
    tree.remove(revision_key(4, 0)).expect("remove");
    assert!(matches!(
        t.store.range(&range_request("other", "")),
        Err(MvccError::Corrupt(_))
    ));
    drop(tree);
    let TestStore { dir: _dir, db, store } = t;
    drop(store);
    // Rebuilding the index on open decodes every record.
    assert!(matches!(MvccStore::open(&db), Err(MvccError::Corrupt(_))));
    let tree = active_tree(&db);
    tree.remove(revision_key(3, 0)).expect("remove");
    MvccStore::open(&db).expect("open without the garbage record");
    tree.insert(b"\x00\x00compact", &b"short"[..]).expect("insert");
    assert!(matches!(MvccStore::open(&db), Err(MvccError::Corrupt(_))));
}

#[test]
fn a_keyspace_of_another_format_is_refused() {
    let t = temp_store();
    put(&t.store, "k", "v");
    let tree = active_tree(&t.db);
    tree.insert(b"\x00\x00format", &1u32.to_be_bytes()[..])
        .expect("insert");
    drop(tree);
    let TestStore { dir: _dir, db, store } = t;
    drop(store);
    match MvccStore::open(&db) {
        Err(MvccError::Corrupt(message)) => assert!(message.contains("format 1"), "{message}"),
        other => panic!("expected a format error, got {:?}", other.map(|_| ())),
    }
}
