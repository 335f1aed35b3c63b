//! Snapshot dumps and installs: equal state after install, atomic failure.

use keel_api::etcdserverpb::RangeRequest;
use keel_mvcc::{MvccError, MvccStore};

use crate::common::*;

fn with_history() -> TestStore {
    let t = temp_store();
    for round in 0..5 {
        let mut batch = t.store.begin_apply();
        for i in 0..30 {
            batch
                .put(&put_request(&format!("key/{i:02}"), &format!("{round}-{i}")))
                .expect("put");
        }
        batch.commit().expect("commit");
        delete(&t.store, &format!("key/{round:02}"), "");
    }
    compact(&t.store, 70).expect("compact");
    let mut batch = t.store.begin_apply();
    batch.set_app_meta("raft/last_applied", b"applied".to_vec());
    batch.commit().expect("commit");
    t
}

#[test]
fn an_installed_snapshot_reads_and_hashes_like_its_source() {
    let source = with_history();
    let mut stream = Vec::new();
    let written = source.store.write_snapshot(&mut stream).expect("write snapshot");
    assert_eq!(written.bytes, stream.len() as u64);
    assert!(written.records > 100);

    let target = temp_store();
    put(&target.store, "unrelated", "data");
    let installed = target
        .store
        .install_snapshot(&mut stream.as_slice())
        .expect("install");
    assert_eq!(installed, written);
    assert_eq!(fingerprint(&target.store), fingerprint(&source.store));
    assert_eq!(get(&target.store, "unrelated"), None);
    assert!(matches!(
        target.store.range(&RangeRequest {
            revision: 69,
            ..range_request("", "\0")
        }),
        Err(MvccError::Compacted { .. })
    ));
    // The target keeps working, and a reopen follows the flipped pointer.
    let next = put(&target.store, "key/99", "after");
    assert_eq!(header_revision(&next.header), source.store.current_revision() + 1);
    let expected = fingerprint(&target.store);
    let TestStore { dir, db, store } = target;
    drop(store);
    db.make_durable().expect("flush");
    drop(db);
    let db = open_db(&dir.path().join("db"));
    let reopened = MvccStore::open(&db).expect("reopen");
    assert_eq!(fingerprint(&reopened), expected);
    let keyspace_trees = db
        .sled()
        .tree_names()
        .iter()
        .filter(|name| name.starts_with(b"keel-mvcc/keyspace/"))
        .count();
    assert_eq!(keyspace_trees, 1, "the replaced tree is gone");
}

#[test]
fn a_truncated_or_corrupt_stream_leaves_the_target_as_it_was() {
    let source = with_history();
    let mut stream = Vec::new();
    source.store.write_snapshot(&mut stream).expect("write snapshot");
    let target = temp_store();
    put(&target.store, "mine", "1");
    put(&target.store, "mine", "2");
    let before = fingerprint(&target.store);
    let cuts = [
        0,
        5,
        12,
        13,
        100,
        stream.len() / 2,
        stream.len() - 13,
        stream.len() - 4,
        stream.len() - 1,
    ];
    for cut in cuts {
        let result = target.store.install_snapshot(&mut &stream[..cut]);
        assert!(
            matches!(result, Err(MvccError::InvalidSnapshot(_))),
            "a stream cut at {cut} of {} must fail, got {result:?}",
            stream.len()
        );
        assert_eq!(fingerprint(&target.store), before, "cut at {cut}");
    }
    for position in [20, stream.len() / 3, stream.len() - 6] {
        let mut damaged = stream.clone();
        damaged[position] ^= 0x40;
        assert!(
            target.store.install_snapshot(&mut damaged.as_slice()).is_err(),
            "flip at {position}"
        );
        assert_eq!(fingerprint(&target.store), before);
    }
    assert!(target
        .store
        .install_snapshot(&mut &b"not a snapshot at all"[..])
        .is_err());
    assert_eq!(fingerprint(&target.store), before);
    // Still writable, and the good stream still installs afterwards.
    put(&target.store, "mine", "3");
    target
        .store
        .install_snapshot(&mut stream.as_slice())
        .expect("install");
    assert_eq!(fingerprint(&target.store), fingerprint(&source.store));
}

#[test]
fn a_snapshot_of_an_empty_store_installs_as_an_empty_store() {
    let empty = temp_store();
    let mut stream = Vec::new();
    empty.store.write_snapshot(&mut stream).expect("write");
    let target = temp_store();
    put(&target.store, "a", "1");
    target
        .store
        .install_snapshot(&mut stream.as_slice())
        .expect("install");
    assert_eq!(target.store.current_revision(), 1);
    assert_eq!(target.store.compact_revision(), -1);
    assert!(range(&target.store, "", "\0").kvs.is_empty());
}

#[test]
fn readers_see_the_old_or_the_new_keyspace_during_an_install_never_a_mix() {
    let source = with_history();
    let mut stream = Vec::new();
    source.store.write_snapshot(&mut stream).expect("write snapshot");
    let new_view = range(&source.store, "", "\0");
    let target = temp_store();
    let mut batch = target.store.begin_apply();
    for i in 0..40 {
        batch
            .put(&put_request(&format!("old/{i:02}"), "old"))
            .expect("put");
    }
    batch.commit().expect("commit");
    let old_view = range(&target.store, "", "\0");
    let reader_store = target.store.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader_done = done.clone();
    let reader = std::thread::spawn(move || {
        let mut seen_new = false;
        loop {
            let finished = reader_done.load(std::sync::atomic::Ordering::Acquire);
            let view = range(&reader_store, "", "\0");
            if view == new_view {
                seen_new = true;
            } else {
                assert!(!seen_new, "went back to the old keyspace");
                assert_eq!(view, old_view, "a read mixed the two keyspaces");
            }
            if finished {
                return seen_new;
            }
        }
    });
    target
        .store
        .install_snapshot(&mut stream.as_slice())
        .expect("install");
    done.store(true, std::sync::atomic::Ordering::Release);
    assert!(
        reader.join().expect("reader"),
        "the reader ends on the new keyspace"
    );
}

/// Puts, deletes, a compaction, leases with keys and a checkpoint, then the
/// app meta `last_applied`: what both stores of the cut test get before it.
fn write_history_before_the_cut(store: &MvccStore) {
    for round in 0..3 {
        let mut batch = store.begin_apply();
        for i in 0..20 {
            batch
                .put(&put_request(&format!("key/{i:02}"), &format!("{round}-{i}")))
                .expect("put");
        }
        batch.commit().expect("commit");
    }
    delete(store, "key/00", "");
    compact(store, 30).expect("compact");
    let mut batch = store.begin_apply();
    batch.lease_grant(7, 60).expect("grant 7");
    batch.lease_grant(8, 60).expect("grant 8");
    for (key, lease) in [("leased/a", 7), ("leased/b", 7), ("leased/c", 8)] {
        batch
            .put(&keel_api::etcdserverpb::PutRequest {
                lease,
                ..put_request(key, "held")
            })
            .expect("put with lease");
    }
    batch.lease_checkpoint(&[(7, 40)]).expect("checkpoint");
    batch.set_app_meta("raft/last_applied", b"at the cut".to_vec());
    batch.commit().expect("commit");
}

/// Changes to every part of the keyspace a cut holds: new and overwritten
/// keys, a delete, a revoke (its keys deleted), a grant, a checkpoint, a
/// lease key moved, and the app meta.
fn write_history_after_the_cut(store: &MvccStore) {
    let mut batch = store.begin_apply();
    for i in 0..20 {
        batch
            .put(&put_request(&format!("key/{i:02}"), &format!("after-{i}")))
            .expect("put");
    }
    batch.put(&put_request("new/key", "after")).expect("put");
    batch.lease_revoke(7).expect("revoke 7");
    batch.lease_grant(9, 30).expect("grant 9");
    batch
        .put(&keel_api::etcdserverpb::PutRequest {
            lease: 9,
            ..put_request("leased/c", "moved")
        })
        .expect("move leased/c to lease 9");
    batch.lease_checkpoint(&[(8, 5)]).expect("checkpoint");
    batch.set_app_meta("raft/last_applied", b"after the cut".to_vec());
    batch.commit().expect("commit");
    delete(store, "key/05", "key/09");
}

#[test]
fn a_snapshot_cut_streams_the_keyspace_as_it_was_at_the_cut_while_writes_commit() {
    let source = temp_store();
    let twin = temp_store();
    write_history_before_the_cut(&source.store);
    write_history_before_the_cut(&twin.store);
    let cut = source.store.snapshot_cut().expect("cut");
    assert_eq!(cut.app_meta("raft/last_applied"), Some(&b"at the cut"[..]));
    // Commits on this very thread while the cut is held: a writer that
    // waited for the cut would hang here.
    write_history_after_the_cut(&source.store);
    let mut stream = Vec::new();
    cut.write(&mut stream).expect("write the cut");
    drop(cut);

    let target = temp_store();
    target
        .store
        .install_snapshot(&mut stream.as_slice())
        .expect("install");
    assert_ne!(
        fingerprint(&source.store),
        fingerprint(&twin.store),
        "the source moved on"
    );
    assert_eq!(fingerprint(&target.store), fingerprint(&twin.store));
    assert_eq!(
        target.store.leases().expect("leases"),
        twin.store.leases().expect("leases")
    );
    for lease in [7, 8, 9] {
        assert_eq!(
            target.store.lease_keys(lease).expect("lease keys"),
            twin.store.lease_keys(lease).expect("lease keys"),
            "keys of lease {lease}"
        );
    }
}

#[test]
fn a_compaction_waits_until_a_snapshot_cut_is_dropped() {
    let source = with_history();
    let at_cut = fingerprint(&source.store);
    let cut = source.store.snapshot_cut().expect("cut");
    let current = source.store.current_revision();
    std::thread::scope(|scope| {
        let compaction = scope.spawn(|| compact(&source.store, current));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            !compaction.is_finished(),
            "a compaction removed records under a cut"
        );
        let mut stream = Vec::new();
        cut.write(&mut stream).expect("write the cut");
        drop(cut);
        compaction.join().expect("compaction thread").expect("compact");
        let target = temp_store();
        target
            .store
            .install_snapshot(&mut stream.as_slice())
            .expect("install");
        assert_eq!(fingerprint(&target.store), at_cut);
    });
    assert_eq!(source.store.compact_revision(), current);
}
