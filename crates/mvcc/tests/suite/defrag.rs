//! Defragmentation: the keyspace is the same after it (records, revisions,
//! leases, hashes), the file system gets back the space compactions freed,
//! `live_bytes` stays exact, and a crash at any step leaves a store that
//! opens with everything.

use keel_api::etcdserverpb::PutRequest;
use keel_mvcc::{DefragStep, MvccError, MvccStore};
use keel_storage::{sled, Database};

use crate::common::*;

/// A store with history, a compaction, a lease with a key and app meta.
fn with_history(store: &MvccStore) {
    for round in 0..4 {
        let mut batch = store.begin_apply();
        for i in 0..25 {
            batch
                .put(&put_request(&format!("key/{i:02}"), &format!("{round}-{i}")))
                .expect("put");
        }
        batch.commit().expect("commit");
        delete(store, &format!("key/{round:02}"), "");
    }
    compact(store, 60).expect("compact");
    let mut batch = store.begin_apply();
    batch.lease_grant(7, 60).expect("grant");
    batch
        .put(&PutRequest {
            lease: 7,
            ..put_request("leased", "v")
        })
        .expect("put");
    batch.set_app_meta("raft/last_applied", b"applied".to_vec());
    batch.commit().expect("commit");
}

/// What a reader sees, plus what the fingerprint leaves out.
fn everything(store: &MvccStore) -> Vec<String> {
    let mut seen = fingerprint(store);
    seen.push(format!("keyspace hash {:?}", store.hash().expect("hash")));
    seen.push(format!("leases {:?}", store.leases().expect("leases")));
    seen.push(format!("lease keys {:?}", store.lease_keys(7).expect("keys")));
    seen.push(format!("live bytes {}", store.live_bytes()));
    seen
}

fn keyspace_trees(db: &Database) -> Vec<sled::IVec> {
    db.sled()
        .tree_names()
        .into_iter()
        .filter(|name| name.starts_with(b"keel-mvcc/keyspace/"))
        .collect()
}

#[test]
fn defrag_keeps_every_record_revision_and_lease_and_writes_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let before = {
        let db = open_db(&path);
        let store = MvccStore::open(&db).expect("open");
        with_history(&store);
        let before = everything(&store);
        let stats = store.defragment().expect("defragment");
        assert!(stats.records > 50, "{stats:?}");
        assert_eq!(stats.bytes, store.live_bytes());
        assert_eq!(everything(&store), before);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("db.current")).expect("pointer"),
            "1\n",
            "the fresh database is the current generation"
        );
        // Twice in a row, and writes after it.
        store.defragment().expect("defragment again");
        assert_eq!(everything(&store), before);
        let revision = store.current_revision();
        assert_eq!(
            header_revision(&put(&store, "after", "defrag").header),
            revision + 1
        );
        delete(&store, "after", "");
        store.flush().expect("flush");
        everything(&store)
    };
    let db = open_db(&path);
    let store = MvccStore::open(&db).expect("reopen");
    assert_eq!(everything(&store), before, "a reopen reads the defragmented tree");
    assert_eq!(
        keyspace_trees(&db),
        vec![sled::IVec::from(&b"keel-mvcc/keyspace/2"[..])]
    );
}

#[test]
fn live_bytes_follow_every_commit_exactly_and_drop_with_a_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let (counted, before_compaction, after_compaction) = {
        let db = open_db(&path);
        let store = MvccStore::open(&db).expect("open");
        let empty = store.live_bytes();
        assert!(empty > 0, "the store meta");
        put(&store, "k", "0123456789");
        assert!(store.live_bytes() > empty + 10);
        with_history(&store);
        for i in 0..50 {
            put(&store, &format!("big/{i}"), &"x".repeat(1000));
        }
        delete(&store, "big/", "big0");
        let before_compaction = store.live_bytes();
        compact(&store, store.current_revision()).expect("compact");
        let mut batch = store.begin_apply();
        batch.lease_revoke(7).expect("revoke");
        batch.commit().expect("commit");
        store.flush().expect("flush");
        (store.live_bytes(), before_compaction, store.live_bytes())
    };
    assert!(
        after_compaction + 50_000 < before_compaction,
        "the compaction freed the 50 values: {before_compaction} -> {after_compaction}"
    );
    let db = open_db(&path);
    let store = MvccStore::open(&db).expect("reopen");
    assert_eq!(
        store.live_bytes(),
        counted,
        "a recount on open finds what the commits kept"
    );
}

/// Puts `count` values of `size` bytes, deletes them all but a few, and
/// compacts: most of the database is then free space.
fn fill_then_free(store: &MvccStore, count: usize, size: usize) {
    let value = "v".repeat(size);
    for chunk in 0..count / 100 {
        let mut batch = store.begin_apply();
        for i in 0..100 {
            batch
                .put(&put_request(&format!("bulk/{:06}", chunk * 100 + i), &value))
                .expect("put");
        }
        batch.commit().expect("commit");
    }
    delete(store, "bulk/000010", "bulk0");
    compact(store, store.current_revision()).expect("compact");
    store.flush().expect("flush");
}

/// Regression (issue 13): a defragmentation copied the keyspace into a
/// fresh tree of the same sled database, and sled 0.34 never shrinks a file
/// it keeps using, so `db_size` never came down. It now copies into a fresh
/// database and deletes the old one: the size on disk falls to about what
/// lives, and `live_bytes` (Status' `db_size_in_use`) is what was copied.
#[test]
fn defrag_of_a_mostly_compacted_keyspace_gives_the_freed_space_back_to_the_file_system() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let db = open_db(&path);
    let store = MvccStore::open(&db).expect("open");
    drop(db);
    fill_then_free(&store, 4000, 2000);
    let full = store.size_on_disk();
    assert!(full > 8_000_000, "{full}");
    let live = store.live_bytes();
    assert!(live < full / 100, "10 values of 2 kB are live: {live} of {full}");
    let stats = store.defragment().expect("defragment");
    assert_eq!(stats.size_before, full);
    assert_eq!(stats.bytes, live, "nothing but the live entries is copied");
    assert!(stats.records < 40, "{stats:?}");
    assert!(
        stats.size_after < full / 4,
        "the freed space is given back: {full} bytes on disk before, {} after ({live} live)",
        stats.size_after
    );
    assert_eq!(store.size_on_disk(), stats.size_after);
    assert!(!path.exists(), "the replaced database's files are deleted");
    assert_eq!(keys_of(&range(&store, "bulk/", "bulk0").kvs).len(), 10);
    put(&store, "after", "defrag");
    store.flush().expect("flush");
    drop(store);
    let reopened = MvccStore::open(&open_db(&path)).expect("reopen");
    assert_eq!(
        get(&reopened, "after").map(|kv| value_of(&kv)),
        Some("defrag".into())
    );
    assert_eq!(keys_of(&range(&reopened, "bulk/", "bulk0").kvs).len(), 10);
}

fn crash_at(step: DefragStep) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let before = {
        let db = open_db(&path);
        let store = MvccStore::open(&db).expect("open");
        with_history(&store);
        store.flush().expect("flush");
        let before = everything(&store);
        let reader = store.clone();
        let crashed = store.defragment_stopping_at(&mut |reached| {
            // Reads go on while the defragmentation holds the writer slot.
            assert_eq!(reader.range(&range_request("", "\0")).expect("read").count, 25);
            if reached == step {
                Err(MvccError::Corrupt(format!("crashed at {reached:?}")))
            } else {
                Ok(())
            }
        });
        assert!(matches!(crashed, Err(MvccError::Corrupt(_))), "{crashed:?}");
        // Reads go on against whichever tree is active.
        assert_eq!(everything(&store), before, "{step:?}");
        before
    };
    let db = open_db(&path);
    let store = MvccStore::open(&db).expect("reopen");
    assert_eq!(everything(&store), before, "after a crash at {step:?}");
    assert_eq!(keyspace_trees(&db).len(), 1, "one keyspace tree");
    let generations = std::fs::read_dir(dir.path())
        .expect("list")
        .filter(|entry| {
            let name = entry.as_ref().expect("entry").file_name();
            name.to_string_lossy().starts_with("db") && !name.to_string_lossy().ends_with(".current")
        })
        .count();
    assert_eq!(generations, 1, "open deletes the other database generation");
    put(&store, "after", "crash");
    store.defragment().expect("a later defragmentation");
    assert_eq!(get(&store, "after").map(|kv| value_of(&kv)), Some("crash".into()));
}

#[test]
fn a_crash_before_the_switch_leaves_the_old_tree_with_everything() {
    crash_at(DefragStep::BeforeSwitch);
}

#[test]
fn a_crash_before_the_old_tree_is_dropped_leaves_the_new_tree_with_everything() {
    crash_at(DefragStep::BeforeDroppingOld);
}
