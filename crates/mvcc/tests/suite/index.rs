//! The in-memory index: rebuilt on reopen and on snapshot install into the
//! same state, and its memory-only read paths (`keys_only`, `count_only`)
//! agree with full reads.

use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::{DeleteRangeRequest, RangeRequest, RangeResponse};
use keel_mvcc::MvccStore;
use proptest::strategy::Strategy;

use crate::common::*;

/// A history with several generations per key, keys deleted and re-created,
/// keys compacted away, compaction inside a batch, and keys with 0x00/0xff.
fn busy_history(store: &MvccStore) {
    let keys: Vec<String> = (0..40).map(|i| format!("k/{:02}", (i * 7) % 40)).collect();
    for round in 0..6 {
        let mut batch = store.begin_apply();
        for (i, key) in keys.iter().enumerate() {
            if (i + round) % 3 != 0 {
                batch
                    .put(&put_request(key, &format!("{round}-{i}")))
                    .expect("put");
            }
        }
        batch
            .put(&keel_api::etcdserverpb::PutRequest {
                key: vec![b'z', 0x00, 0xff, round as u8],
                value: vec![round as u8; 3],
                ..Default::default()
            })
            .expect("put");
        batch
            .delete_range(&DeleteRangeRequest {
                key: format!("k/{:02}", round * 5).into_bytes(),
                range_end: format!("k/{:02}", round * 5 + 3).into_bytes(),
                prev_kv: round % 2 == 0,
            })
            .expect("delete");
        if round == 3 {
            let revision = batch.current_revision() - 2;
            batch.compact(revision).expect("compact in a batch");
        }
        batch.commit().expect("commit");
    }
    delete(store, "k/3", "k/4");
    let revision = store.current_revision() - 3;
    compact(store, revision).expect("compact");
    put(store, "k/31", "recreated");
}

fn read(store: &MvccStore, request: RangeRequest) -> RangeResponse {
    store.range(&request).expect("range")
}

/// Everything a client can observe of a store, at every readable revision.
fn observe(store: &MvccStore) -> Vec<String> {
    let mut seen = vec![
        format!("revision {}", store.current_revision()),
        format!("compacted {}", store.compact_revision()),
        format!("hash {:?}", store.hash_kv(0).expect("hash")),
    ];
    let floor = store.compact_revision().max(1);
    for revision in floor..=store.current_revision() {
        let all = RangeRequest {
            revision,
            ..range_request("", "\0")
        };
        seen.push(format!("{revision} all: {:?}", read(store, all.clone())));
        seen.push(format!(
            "{revision} keys: {:?}",
            read(
                store,
                RangeRequest {
                    keys_only: true,
                    ..all.clone()
                }
            )
        ));
        seen.push(format!(
            "{revision} k/3 prefix desc limit 2: {:?}",
            read(
                store,
                RangeRequest {
                    sort_order: SortOrder::Descend as i32,
                    limit: 2,
                    ..RangeRequest {
                        revision,
                        ..range_request("k/3", "k/4")
                    }
                }
            )
        ));
        seen.push(format!(
            "{revision} hash {:?}",
            store.hash_kv(revision).expect("hash")
        ));
    }
    seen
}

#[test]
fn a_reopened_store_rebuilds_the_same_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let before = {
        let db = open_db(&path);
        let store = MvccStore::open(&db).expect("open");
        busy_history(&store);
        store.flush().expect("flush");
        observe(&store)
    };
    let db = open_db(&path);
    let store = MvccStore::open(&db).expect("reopen");
    assert_eq!(observe(&store), before);
    // Writes continue from the rebuilt versions and create revisions.
    let kept = get(&store, "k/10").expect("k/10 is alive");
    let response = try_put(
        &store,
        &keel_api::etcdserverpb::PutRequest {
            prev_kv: true,
            ..put_request("k/10", "after")
        },
    )
    .expect("put");
    assert_eq!(response.prev_kv.as_ref(), Some(&kept));
    let now = get(&store, "k/10").expect("k/10");
    assert_eq!(now.version, kept.version + 1);
    assert_eq!(now.create_revision, kept.create_revision);
    assert_eq!(now.mod_revision, store.current_revision());
}

#[test]
fn a_compaction_that_drops_the_newest_records_keeps_the_revision_across_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    {
        let db = open_db(&path);
        let store = MvccStore::open(&db).expect("open");
        put(&store, "a", "1");
        put(&store, "b", "1");
        delete(&store, "b", "");
        // Compacting at the current revision drops b's put and tombstone,
        // the newest records in the store.
        compact(&store, 4).expect("compact");
        assert_eq!(store.current_revision(), 4);
        store.flush().expect("flush");
    }
    let db = open_db(&path);
    let store = MvccStore::open(&db).expect("reopen");
    assert_eq!(store.current_revision(), 4);
    assert_eq!(store.compact_revision(), 4);
    assert_eq!(keys_of(&range(&store, "", "\0").kvs), vec!["a"]);
    assert_eq!(header_revision(&put(&store, "c", "1").header), 5);
    // The same through a snapshot.
    let mut stream = Vec::new();
    let source = temp_store();
    put(&source.store, "x", "1");
    delete(&source.store, "x", "");
    compact(&source.store, 3).expect("compact");
    source.store.write_snapshot(&mut stream).expect("dump");
    store.install_snapshot(&mut stream.as_slice()).expect("install");
    assert_eq!(store.current_revision(), 3);
    assert_eq!(range(&store, "", "\0").count, 0);
    assert_eq!(header_revision(&put(&store, "y", "1").header), 4);
}

#[test]
fn an_installed_snapshot_replaces_the_index() {
    let source = temp_store();
    busy_history(&source.store);
    let mut stream = Vec::new();
    source.store.write_snapshot(&mut stream).expect("dump");
    let target = temp_store();
    for i in 0..50 {
        put(&target.store, &format!("k/{:02}", i % 45), "target");
    }
    target
        .store
        .install_snapshot(&mut stream.as_slice())
        .expect("install");
    assert_eq!(observe(&target.store), observe(&source.store));
    // Both continue identically from the installed index.
    for store in [&source.store, &target.store] {
        put(store, "k/10", "next");
        delete(store, "k/2", "k/3");
        put(store, "k/20", "again");
    }
    assert_eq!(observe(&target.store), observe(&source.store));
}

#[test]
fn keys_only_and_count_only_match_full_reads() {
    let t = temp_store();
    busy_history(&t.store);
    let spans = [
        ("", "\0"),
        ("k/1", "k/3"),
        ("k/10", ""),
        ("k/3", "k/4"),
        ("z", "\0"),
        ("q", ""),
    ];
    let floor = t.store.compact_revision().max(1);
    for revision in [0, floor, floor + 1, t.store.current_revision() - 1] {
        for (key, range_end) in spans {
            for (sort_order, sort_target) in [
                (SortOrder::None, SortTarget::Key),
                (SortOrder::Descend, SortTarget::Key),
                (SortOrder::Ascend, SortTarget::Mod),
                (SortOrder::Descend, SortTarget::Value),
            ] {
                for limit in [0, 1, 3] {
                    let full = RangeRequest {
                        revision,
                        limit,
                        sort_order: sort_order as i32,
                        sort_target: sort_target as i32,
                        ..range_request(key, range_end)
                    };
                    let full_response = read(&t.store, full.clone());
                    let mut expected = full_response.clone();
                    for kv in &mut expected.kvs {
                        kv.value.clear();
                    }
                    let keys_only = read(
                        &t.store,
                        RangeRequest {
                            keys_only: true,
                            ..full.clone()
                        },
                    );
                    assert_eq!(keys_only, expected, "keys_only {full:?}");
                    let count_only = read(
                        &t.store,
                        RangeRequest {
                            count_only: true,
                            ..full.clone()
                        },
                    );
                    assert_eq!(count_only.count, full_response.count, "count_only {full:?}");
                    assert!(count_only.kvs.is_empty());
                }
            }
        }
    }
}

/// One random write: `kind` 0-2 put, 3 delete of a key range, 4 compact.
#[derive(Debug, Clone)]
struct Write {
    kind: u8,
    key: u8,
    span: u8,
    commit_after: bool,
}

fn apply_write(batch: &mut keel_mvcc::ApplyBatch<'_>, write: &Write) {
    let key = format!("k{}", write.key);
    match write.kind {
        0..=2 => {
            batch.put(&put_request(&key, &format!("{write:?}"))).expect("put");
        }
        3 => {
            batch
                .delete_range(&DeleteRangeRequest {
                    key: key.into_bytes(),
                    range_end: format!("k{}", write.key + write.span).into_bytes(),
                    prev_kv: write.span.is_multiple_of(2),
                })
                .expect("delete");
        }
        _ => {
            // Somewhere between the oldest and the newest revision; an
            // outdated one is refused and leaves no trace.
            let revision = batch.current_revision() - i64::from(write.span);
            let _ = batch.compact(revision);
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    #[test]
    fn any_history_reopens_and_installs_into_the_same_store(
        writes in proptest::collection::vec(
            (0u8..5, 0u8..6, 0u8..4, proptest::bool::weighted(0.3))
                .prop_map(|(kind, key, span, commit_after)| Write { kind, key, span, commit_after }),
            1..60,
        ),
    ) {
        use proptest::prelude::*;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let (before, stream) = {
            let db = open_db(&path);
            let store = MvccStore::open(&db).expect("open");
            let mut batch = store.begin_apply();
            for write in &writes {
                apply_write(&mut batch, write);
                if write.commit_after {
                    batch.commit().expect("commit");
                    batch = store.begin_apply();
                }
            }
            batch.commit().expect("commit");
            store.flush().expect("flush");
            let mut stream = Vec::new();
            store.write_snapshot(&mut stream).expect("dump");
            (observe(&store), stream)
        };
        let db = open_db(&path);
        let reopened = MvccStore::open(&db).expect("reopen");
        prop_assert_eq!(&observe(&reopened), &before);
        let target = temp_store();
        put(&target.store, "k1", "target");
        target.store.install_snapshot(&mut stream.as_slice()).expect("install");
        prop_assert_eq!(&observe(&target.store), &before);
    }
}
