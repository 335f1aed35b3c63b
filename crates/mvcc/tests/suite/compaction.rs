//! Compaction edge cases and hash_kv.

use keel_api::etcdserverpb::RangeRequest;
use keel_mvcc::{MvccError, MvccStore};

use crate::common::*;

/// a@2, b@3, a@4, del b@5, c@6, a@7.
fn history(store: &MvccStore) {
    put(store, "a", "1");
    put(store, "b", "1");
    put(store, "a", "2");
    delete(store, "b", "");
    put(store, "c", "1");
    put(store, "a", "3");
}

#[test]
fn compaction_rejects_old_and_future_revisions() {
    let t = temp_store();
    history(&t.store);
    assert!(matches!(
        compact(&t.store, 8),
        Err(MvccError::FutureRevision {
            requested: 8,
            current: 7
        })
    ));
    compact(&t.store, 4).expect("compact");
    assert_eq!(t.store.compact_revision(), 4);
    assert!(matches!(
        compact(&t.store, 4),
        Err(MvccError::Compacted {
            requested: 4,
            compacted: 4
        })
    ));
    assert!(matches!(compact(&t.store, 3), Err(MvccError::Compacted { .. })));
    compact(&t.store, 7).expect("compacting at the current revision");
    assert_eq!(
        t.store.current_revision(),
        7,
        "compaction does not change the revision"
    );
}

#[test]
fn reads_below_the_compaction_fail_and_at_or_above_it_are_unchanged() {
    let t = temp_store();
    history(&t.store);
    let before: Vec<_> = (4..=7)
        .map(|revision| {
            t.store
                .range(&RangeRequest {
                    revision,
                    ..range_request("", "\0")
                })
                .expect("range")
        })
        .collect();
    compact(&t.store, 4).expect("compact");
    for revision in [1, 2, 3] {
        let result = t.store.range(&RangeRequest {
            revision,
            ..range_request("a", "")
        });
        assert!(
            matches!(result, Err(MvccError::Compacted { compacted: 4, .. })),
            "revision {revision}"
        );
    }
    for (index, revision) in (4..=7).enumerate() {
        let after = t
            .store
            .range(&RangeRequest {
                revision,
                ..range_request("", "\0")
            })
            .expect("range");
        assert_eq!(after, before[index], "revision {revision}");
    }
    let at_4 = &before[0];
    assert_eq!(keys_of(&at_4.kvs), vec!["a", "b"]);
    assert_eq!(value_of(&at_4.kvs[0]), "2");
}

#[test]
fn a_tombstone_at_or_below_the_compaction_takes_the_key_with_it() {
    let t = temp_store();
    history(&t.store);
    compact(&t.store, 5).expect("compact");
    let at_5 = t
        .store
        .range(&RangeRequest {
            revision: 5,
            ..range_request("", "\0")
        })
        .expect("range");
    assert_eq!(keys_of(&at_5.kvs), vec!["a"]);
    assert_eq!(at_5.count, 1);
    assert_eq!(get_at(&t.store, "b", 5).expect("read"), None);
    assert_eq!(get_at(&t.store, "b", 7).expect("read"), None);
    let hash_at_5 = t.store.hash_kv(5).expect("hash");
    assert_ne!(hash_at_5.hash, t.store.hash_kv(7).expect("hash").hash);
    assert_eq!(hash_at_5.compact_revision, 5);
}

#[test]
fn compaction_in_the_same_batch_as_the_writes_it_covers() {
    let t = temp_store();
    let mut batch = t.store.begin_apply();
    batch.put(&put_request("k", "1")).expect("put");
    batch.put(&put_request("k", "2")).expect("put");
    batch.put(&put_request("gone", "1")).expect("put");
    batch
        .delete_range(&keel_api::etcdserverpb::DeleteRangeRequest {
            key: "gone".into(),
            ..Default::default()
        })
        .expect("delete");
    batch.compact(5).expect("compact");
    assert!(matches!(batch.compact(5), Err(MvccError::Compacted { .. })));
    batch.put(&put_request("k", "3")).expect("put");
    batch.commit().expect("commit");
    assert_eq!(t.store.compact_revision(), 5);
    assert_eq!(t.store.current_revision(), 6);
    assert!(matches!(
        get_at(&t.store, "k", 4),
        Err(MvccError::Compacted { .. })
    ));
    assert_eq!(
        value_of(&get_at(&t.store, "k", 5).expect("read").expect("k")),
        "2"
    );
    assert_eq!(value_of(&get(&t.store, "k").expect("k")), "3");
    assert_eq!(get_at(&t.store, "gone", 5).expect("read"), None);
}

#[test]
fn repeated_compactions_keep_what_is_still_visible() {
    let t = temp_store();
    history(&t.store);
    compact(&t.store, 3).expect("compact");
    compact(&t.store, 6).expect("compact");
    let at_6 = t
        .store
        .range(&RangeRequest {
            revision: 6,
            ..range_request("", "\0")
        })
        .expect("range");
    assert_eq!(keys_of(&at_6.kvs), vec!["a", "c"]);
    assert_eq!(value_of(&at_6.kvs[0]), "2");
    assert_eq!(at_6.kvs[0].version, 2);
    compact(&t.store, 7).expect("compact");
    let now = range(&t.store, "", "\0");
    assert_eq!(keys_of(&now.kvs), vec!["a", "c"]);
    assert_eq!(now.kvs[0].version, 3, "versions survive compaction");
}

#[test]
fn equal_histories_hash_equal_whatever_the_batching() {
    let one = temp_store();
    history(&one.store);
    let two = temp_store();
    let mut batch = two.store.begin_apply();
    batch.put(&put_request("a", "1")).expect("put");
    batch.put(&put_request("b", "1")).expect("put");
    batch.put(&put_request("a", "2")).expect("put");
    batch.commit().expect("commit");
    let mut batch = two.store.begin_apply();
    batch
        .delete_range(&keel_api::etcdserverpb::DeleteRangeRequest {
            key: "b".into(),
            ..Default::default()
        })
        .expect("delete");
    batch.put(&put_request("c", "1")).expect("put");
    batch.put(&put_request("a", "3")).expect("put");
    batch.commit().expect("commit");
    for revision in [0, 1, 3, 5, 7] {
        assert_eq!(
            one.store.hash_kv(revision).expect("hash"),
            two.store.hash_kv(revision).expect("hash")
        );
    }
    compact(&one.store, 4).expect("compact");
    compact(&two.store, 4).expect("compact");
    assert_eq!(
        one.store.hash_kv(0).expect("hash"),
        two.store.hash_kv(0).expect("hash")
    );
    assert_eq!(
        one.store.hash_kv(4).expect("hash"),
        two.store.hash_kv(4).expect("hash")
    );
}

#[test]
fn any_difference_changes_the_hash() {
    let base = temp_store();
    history(&base.store);
    let reference = base.store.hash_kv(0).expect("hash");
    assert_eq!(reference.revision, 7);
    assert_eq!(reference.compact_revision, -1);
    assert_ne!(base.store.hash_kv(6).expect("hash").hash, reference.hash);

    let other_value = temp_store();
    put(&other_value.store, "a", "1");
    put(&other_value.store, "b", "1");
    put(&other_value.store, "a", "2");
    delete(&other_value.store, "b", "");
    put(&other_value.store, "c", "1");
    put(&other_value.store, "a", "3!");
    assert_ne!(other_value.store.hash_kv(0).expect("hash").hash, reference.hash);
    assert_eq!(
        other_value.store.hash_kv(6).expect("hash"),
        base.store.hash_kv(6).expect("hash")
    );

    let other_key = temp_store();
    put(&other_key.store, "a", "1");
    put(&other_key.store, "b", "1");
    put(&other_key.store, "a", "2");
    delete(&other_key.store, "b", "");
    put(&other_key.store, "d", "1");
    put(&other_key.store, "a", "3");
    assert_ne!(other_key.store.hash_kv(0).expect("hash").hash, reference.hash);
}

#[test]
fn hash_kv_checks_revisions_like_a_range() {
    let t = temp_store();
    history(&t.store);
    compact(&t.store, 4).expect("compact");
    assert!(matches!(
        t.store.hash_kv(8),
        Err(MvccError::FutureRevision { .. })
    ));
    assert!(matches!(t.store.hash_kv(3), Err(MvccError::Compacted { .. })));
    let at_compaction = t.store.hash_kv(4).expect("hash at the compact revision");
    assert_eq!((at_compaction.revision, at_compaction.compact_revision), (4, 4));
    assert_eq!(t.store.hash_kv(0).expect("hash").revision, 7);
}

#[test]
fn the_keyspace_hash_is_equal_for_equal_stores_and_changes_with_any_state_but_app_meta() {
    let one = temp_store();
    history(&one.store);
    let two = temp_store();
    history(&two.store);
    let (reference, revision) = one.store.hash().expect("hash");
    assert_eq!(revision, 7);
    assert_eq!(two.store.hash().expect("hash"), (reference, 7));

    // A member's Raft position (app meta) is not part of it.
    let mut batch = two.store.begin_apply();
    batch.set_app_meta("raft/last_applied", vec![9, 9]);
    batch.commit().expect("commit");
    assert_eq!(two.store.hash().expect("hash"), (reference, 7));

    // A lease record is.
    let mut batch = two.store.begin_apply();
    batch.lease_grant(5, 30).expect("grant");
    batch.commit().expect("commit");
    let (with_lease, revision) = two.store.hash().expect("hash");
    assert_eq!(revision, 7, "a grant keeps the revision");
    assert_ne!(with_lease, reference);

    // So is a compaction (the compact revision and the records it drops).
    compact(&one.store, 4).expect("compact");
    assert_ne!(one.store.hash().expect("hash").0, reference);

    // And every value.
    let other_value = temp_store();
    put(&other_value.store, "a", "1");
    put(&other_value.store, "b", "1");
    put(&other_value.store, "a", "2");
    delete(&other_value.store, "b", "");
    put(&other_value.store, "c", "1");
    put(&other_value.store, "a", "3!");
    assert_ne!(other_value.store.hash().expect("hash").0, reference);
}
