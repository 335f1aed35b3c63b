//! Revisions, versions, generations, prev_kv, ignore_value/ignore_lease,
//! leases, batches and app meta.

use keel_api::etcdserverpb::{DeleteRangeRequest, PutRequest};
use keel_mvcc::MvccError;

use crate::common::*;

#[test]
fn an_empty_store_is_at_revision_one_and_never_compacted() {
    let t = temp_store();
    assert_eq!(t.store.current_revision(), 1);
    assert_eq!(t.store.compact_revision(), -1);
    let response = range(&t.store, "\0", "\0");
    assert_eq!(header_revision(&response.header), 1);
    assert_eq!(response.count, 0);
    assert!(response.kvs.is_empty());
}

#[test]
fn each_put_takes_the_next_revision() {
    let t = temp_store();
    let first = put(&t.store, "a", "1");
    assert_eq!(header_revision(&first.header), 2);
    let second = put(&t.store, "b", "2");
    assert_eq!(header_revision(&second.header), 3);
    assert_eq!(t.store.current_revision(), 3);
    let a = get(&t.store, "a").expect("a");
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version, a.lease),
        (2, 2, 1, 0)
    );
    assert_eq!(value_of(&a), "1");
    let header = first.header.expect("header");
    assert_eq!((header.cluster_id, header.member_id, header.raft_term), (0, 0, 0));
}

#[test]
fn versions_count_puts_and_a_delete_starts_a_new_generation() {
    let t = temp_store();
    put(&t.store, "k", "v1"); // 2
    put(&t.store, "k", "v2"); // 3
    let kv = get(&t.store, "k").expect("k");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    let deleted = delete(&t.store, "k", ""); // 4
    assert_eq!(deleted.deleted, 1);
    assert_eq!(header_revision(&deleted.header), 4);
    assert_eq!(get(&t.store, "k"), None);
    put(&t.store, "k", "v3"); // 5
    let kv = get(&t.store, "k").expect("k");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
}

#[test]
fn deleting_nothing_does_not_change_the_revision() {
    let t = temp_store();
    put(&t.store, "a", "1");
    let response = delete(&t.store, "zzz", "");
    assert_eq!(response.deleted, 0);
    assert_eq!(header_revision(&response.header), 2);
    assert_eq!(t.store.current_revision(), 2);
}

#[test]
fn delete_range_reports_count_and_prev_kvs_and_shares_one_revision() {
    let t = temp_store();
    for key in ["a", "b", "c", "d"] {
        put(&t.store, key, key);
    }
    let response = delete(&t.store, "b", "d");
    assert_eq!(response.deleted, 2);
    assert_eq!(keys_of(&response.prev_kvs), vec!["b", "c"]);
    assert_eq!(value_of(&response.prev_kvs[1]), "c");
    assert_eq!(header_revision(&response.header), 6);
    assert_eq!(t.store.current_revision(), 6);
    assert_eq!(keys_of(&range(&t.store, "a", "\0").kvs), vec!["a", "d"]);

    let mut batch = t.store.begin_apply();
    let quiet = batch
        .delete_range(&DeleteRangeRequest {
            key: "a".into(),
            range_end: "\0".into(),
            prev_kv: false,
        })
        .expect("delete");
    batch.commit().expect("commit");
    assert_eq!(quiet.deleted, 2);
    assert!(quiet.prev_kvs.is_empty());
    assert_eq!(t.store.current_revision(), 7);
}

#[test]
fn put_returns_the_previous_kv_when_asked() {
    let t = temp_store();
    let request = PutRequest {
        prev_kv: true,
        ..put_request("k", "one")
    };
    let first = try_put(&t.store, &request).expect("put");
    assert_eq!(first.prev_kv, None);
    let second = try_put(
        &t.store,
        &PutRequest {
            value: "two".into(),
            ..request.clone()
        },
    )
    .expect("put");
    let previous = second.prev_kv.expect("prev kv");
    assert_eq!(value_of(&previous), "one");
    assert_eq!(previous.mod_revision, 2);
    let silent = put(&t.store, "k", "three");
    assert_eq!(silent.prev_kv, None);
}

#[test]
fn ignore_value_and_ignore_lease_need_an_existing_key() {
    let t = temp_store();
    for request in [
        PutRequest {
            ignore_value: true,
            ..put_request("k", "")
        },
        PutRequest {
            ignore_lease: true,
            ..put_request("k", "x")
        },
    ] {
        assert!(matches!(try_put(&t.store, &request), Err(MvccError::KeyNotFound)));
        assert_eq!(t.store.current_revision(), 1);
        assert_eq!(get(&t.store, "k"), None);
    }
    put(&t.store, "k", "kept");
    let response = try_put(
        &t.store,
        &PutRequest {
            ignore_value: true,
            ..put_request("k", "ignored")
        },
    )
    .expect("put");
    assert_eq!(header_revision(&response.header), 3);
    let kv = get(&t.store, "k").expect("k");
    assert_eq!(
        (value_of(&kv), kv.version, kv.mod_revision),
        ("kept".to_string(), 2, 3)
    );
    try_put(
        &t.store,
        &PutRequest {
            ignore_lease: true,
            ..put_request("k", "new")
        },
    )
    .expect("put");
    assert_eq!(value_of(&get(&t.store, "k").expect("k")), "new");
}

#[test]
fn a_lease_is_not_found_and_nothing_changes() {
    let t = temp_store();
    put(&t.store, "k", "v");
    let result = try_put(
        &t.store,
        &PutRequest {
            lease: 7,
            ..put_request("k", "leased")
        },
    );
    assert!(matches!(result, Err(MvccError::LeaseNotFound)));
    assert_eq!(t.store.current_revision(), 2);
    assert_eq!(value_of(&get(&t.store, "k").expect("k")), "v");
}

#[test]
fn a_batch_numbers_its_requests_and_publishes_them_only_on_commit() {
    let t = temp_store();
    let mut batch = t.store.begin_apply();
    assert_eq!(batch.current_revision(), 1);
    let a = batch.put(&put_request("a", "1")).expect("put");
    let b = batch.put(&put_request("b", "1")).expect("put");
    let a2 = batch
        .put(&PutRequest {
            prev_kv: true,
            ..put_request("a", "2")
        })
        .expect("put");
    assert_eq!(
        (
            header_revision(&a.header),
            header_revision(&b.header),
            header_revision(&a2.header)
        ),
        (2, 3, 4)
    );
    assert_eq!(value_of(&a2.prev_kv.expect("prev kv sees the batch")), "1");
    assert_eq!(batch.current_revision(), 4);
    assert_eq!(t.store.current_revision(), 1);
    assert_eq!(get(&t.store, "a"), None);
    batch.commit().expect("commit");
    assert_eq!(t.store.current_revision(), 4);
    let a = get(&t.store, "a").expect("a");
    assert_eq!((a.version, a.create_revision, a.mod_revision), (2, 2, 4));
}

#[test]
fn a_failed_request_leaves_no_trace_while_its_neighbours_commit() {
    let t = temp_store();
    let mut batch = t.store.begin_apply();
    batch.put(&put_request("a", "1")).expect("put");
    let failed = batch.put(&PutRequest {
        ignore_value: true,
        ..put_request("missing", "")
    });
    assert!(matches!(failed, Err(MvccError::KeyNotFound)));
    let leased = batch.put(&PutRequest {
        lease: 1,
        ..put_request("a", "leased")
    });
    assert!(matches!(leased, Err(MvccError::LeaseNotFound)));
    assert_eq!(batch.current_revision(), 2);
    batch.put(&put_request("b", "1")).expect("put");
    batch.commit().expect("commit");
    assert_eq!(t.store.current_revision(), 3);
    assert_eq!(keys_of(&range(&t.store, "\0", "\0").kvs), vec!["a", "b"]);
    assert_eq!(value_of(&get(&t.store, "a").expect("a")), "1");
}

#[test]
fn a_dropped_batch_changes_nothing() {
    let t = temp_store();
    put(&t.store, "a", "1");
    {
        let mut batch = t.store.begin_apply();
        batch.put(&put_request("a", "2")).expect("put");
        batch.set_app_meta("raft/last_applied", b"x".to_vec());
    }
    assert_eq!(t.store.current_revision(), 2);
    assert_eq!(value_of(&get(&t.store, "a").expect("a")), "1");
    assert_eq!(t.store.app_meta("raft/last_applied").expect("meta"), None);
    // The writer slot was released: another batch can start.
    put(&t.store, "b", "1");
}

#[test]
fn app_meta_round_trips_and_stays_out_of_ranges_and_hashes() {
    let t = temp_store();
    put(&t.store, "a", "1");
    let hash_before = t.store.hash_kv(0).expect("hash");
    let mut batch = t.store.begin_apply();
    batch.set_app_meta("raft/last_applied", vec![1, 2, 3]);
    batch.set_app_meta("raft/membership", vec![]);
    batch.commit().expect("commit");
    assert_eq!(
        t.store.app_meta("raft/last_applied").expect("meta"),
        Some(vec![1, 2, 3])
    );
    assert_eq!(t.store.app_meta("raft/membership").expect("meta"), Some(vec![]));
    assert_eq!(t.store.app_meta("nothing").expect("meta"), None);
    assert_eq!(t.store.current_revision(), 2, "app meta is not a write request");
    let everything = t.store.range(&range_request("", "\0")).expect("range");
    assert_eq!(keys_of(&everything.kvs), vec!["a"]);
    assert_eq!(everything.count, 1);
    assert_eq!(t.store.hash_kv(0).expect("hash"), hash_before);
}

#[test]
fn keys_with_zero_and_ff_bytes_keep_separate_histories() {
    let t = temp_store();
    let keys: [&[u8]; 4] = [b"a", b"a\x00", b"a\x00\x00", b"a\xff"];
    for key in keys {
        let mut batch = t.store.begin_apply();
        batch
            .put(&PutRequest {
                key: key.to_vec(),
                value: key.to_vec(),
                ..Default::default()
            })
            .expect("put");
        batch.commit().expect("commit");
    }
    for (index, key) in keys.iter().enumerate() {
        let request = keel_api::etcdserverpb::RangeRequest {
            key: key.to_vec(),
            revision: 2 + index as i64,
            ..Default::default()
        };
        let response = t.store.range(&request).expect("range");
        assert_eq!(response.kvs.len(), 1, "key {key:?}");
        assert_eq!(response.kvs[0].value, key.to_vec());
    }
    let all = keel_api::etcdserverpb::RangeRequest {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        revision: 4,
        ..Default::default()
    };
    let response = t.store.range(&all).expect("range");
    let got: Vec<Vec<u8>> = response.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(got, vec![b"a".to_vec(), b"a\x00".to_vec(), b"a\x00\x00".to_vec()]);
}

#[test]
fn stores_and_batches_can_cross_threads() {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<keel_mvcc::MvccStore>();
    send_and_sync::<keel_mvcc::ApplyBatch<'static>>();
    let t = temp_store();
    let store = t.store.clone();
    let mut batch = t.store.begin_apply();
    batch.put(&put_request("a", "1")).expect("put");
    std::thread::scope(|scope| {
        scope.spawn(move || batch.commit().expect("commit on another thread"));
    });
    assert_eq!(store.current_revision(), 2);
}
