//! Range options: key selection conventions, keys_only, count_only, limit
//! and more, historical revisions, sorting and revision filters.

use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::RangeRequest;
use keel_mvcc::{MvccError, MvccStore};

use crate::common::*;

/// a..e at revisions 2..6, then b and d rewritten (7, 8), c deleted (9).
fn sample() -> TestStore {
    let t = temp_store();
    for (key, value) in [("a", "5"), ("b", "4"), ("c", "3"), ("d", "2"), ("e", "1")] {
        put(&t.store, key, value);
    }
    put(&t.store, "b", "40");
    put(&t.store, "d", "20");
    delete(&t.store, "c", "");
    t
}

fn read(store: &MvccStore, request: RangeRequest) -> keel_api::etcdserverpb::RangeResponse {
    store.range(&request).expect("range")
}

#[test]
fn range_end_conventions_select_single_prefix_from_key_and_all() {
    let t = sample();
    assert_eq!(keys_of(&range(&t.store, "b", "").kvs), vec!["b"]);
    assert_eq!(keys_of(&range(&t.store, "bb", "").kvs), Vec::<String>::new());
    assert_eq!(keys_of(&range(&t.store, "b", "e").kvs), vec!["b", "d"]);
    assert_eq!(keys_of(&range(&t.store, "b", "\0").kvs), vec!["b", "d", "e"]);
    assert_eq!(keys_of(&range(&t.store, "", "\0").kvs), vec!["a", "b", "d", "e"]);
    assert_eq!(
        keys_of(&range(&t.store, "\0", "\0").kvs),
        vec!["a", "b", "d", "e"]
    );
    put(&t.store, "pre/1", "x");
    put(&t.store, "pre/2", "x");
    put(&t.store, "pre0", "x");
    let prefix_end = keel_api::key_range::prefix_range_end(b"pre/");
    let request = RangeRequest {
        key: b"pre/".to_vec(),
        range_end: prefix_end,
        ..Default::default()
    };
    assert_eq!(keys_of(&read(&t.store, request).kvs), vec!["pre/1", "pre/2"]);
}

#[test]
fn an_inverted_range_returns_nothing() {
    let t = sample();
    let response = range(&t.store, "d", "b");
    assert!(response.kvs.is_empty());
    assert_eq!(response.count, 0);
    let same = range(&t.store, "b", "b");
    assert!(same.kvs.is_empty());
}

#[test]
fn keys_only_empties_values_and_count_only_returns_just_the_count() {
    let t = sample();
    let keys_only = read(
        &t.store,
        RangeRequest {
            keys_only: true,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(keys_of(&keys_only.kvs), vec!["a", "b", "d", "e"]);
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(keys_only.kvs[1].version, 2);
    let count_only = read(
        &t.store,
        RangeRequest {
            count_only: true,
            limit: 1,
            ..range_request("a", "\0")
        },
    );
    assert!(count_only.kvs.is_empty());
    assert_eq!(count_only.count, 4);
    assert!(!count_only.more);
}

#[test]
fn limit_truncates_sets_more_and_count_stays_the_total() {
    let t = sample();
    let limited = read(
        &t.store,
        RangeRequest {
            limit: 2,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(keys_of(&limited.kvs), vec!["a", "b"]);
    assert!(limited.more);
    assert_eq!(limited.count, 4);
    let exact = read(
        &t.store,
        RangeRequest {
            limit: 4,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(exact.kvs.len(), 4);
    assert!(!exact.more);
    let negative = read(
        &t.store,
        RangeRequest {
            limit: -3,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(negative.kvs.len(), 4);
}

#[test]
fn historical_reads_see_the_versions_of_their_revision() {
    let t = sample();
    let at_6 = read(
        &t.store,
        RangeRequest {
            revision: 6,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(keys_of(&at_6.kvs), vec!["a", "b", "c", "d", "e"]);
    assert_eq!(
        at_6.kvs.iter().map(value_of).collect::<Vec<_>>(),
        vec!["5", "4", "3", "2", "1"]
    );
    assert_eq!(
        header_revision(&at_6.header),
        9,
        "historical reads carry the current revision"
    );
    let at_3 = read(
        &t.store,
        RangeRequest {
            revision: 3,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(keys_of(&at_3.kvs), vec!["a", "b"]);
    let b_at_7 = get_at(&t.store, "b", 7).expect("read").expect("b");
    assert_eq!(
        (
            value_of(&b_at_7),
            b_at_7.version,
            b_at_7.mod_revision,
            b_at_7.create_revision
        ),
        ("40".into(), 2, 7, 3)
    );
    assert_eq!(
        get_at(&t.store, "c", 8).expect("read").map(|kv| value_of(&kv)),
        Some("3".to_string())
    );
    assert_eq!(get_at(&t.store, "c", 9).expect("read"), None);
    assert_eq!(get_at(&t.store, "a", 1).expect("read"), None);
    let limited = read(
        &t.store,
        RangeRequest {
            revision: 8,
            limit: 2,
            ..range_request("b", "\0")
        },
    );
    assert_eq!(
        (keys_of(&limited.kvs), limited.count, limited.more),
        (vec!["b".into(), "c".into()], 4, true)
    );
    let count = read(
        &t.store,
        RangeRequest {
            revision: 8,
            count_only: true,
            ..range_request("", "\0")
        },
    );
    assert_eq!(count.count, 5);
}

#[test]
fn future_revisions_fail_and_the_current_one_is_fine() {
    let t = sample();
    let future = t.store.range(&RangeRequest {
        revision: 10,
        ..range_request("a", "")
    });
    assert!(matches!(
        future,
        Err(MvccError::FutureRevision {
            requested: 10,
            current: 9
        })
    ));
    let current = read(
        &t.store,
        RangeRequest {
            revision: 9,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(current.kvs.len(), 4);
}

#[test]
fn sorting_by_each_target_in_both_orders() {
    let t = sample();
    let sorted = |target: SortTarget, order: SortOrder| {
        let request = RangeRequest {
            sort_target: target as i32,
            sort_order: order as i32,
            ..range_request("a", "\0")
        };
        keys_of(&read(&t.store, request).kvs)
    };
    assert_eq!(
        sorted(SortTarget::Key, SortOrder::Descend),
        vec!["e", "d", "b", "a"]
    );
    assert_eq!(
        sorted(SortTarget::Key, SortOrder::Ascend),
        vec!["a", "b", "d", "e"]
    );
    // Values "5", "40", "20", "1".
    assert_eq!(
        sorted(SortTarget::Value, SortOrder::Ascend),
        vec!["e", "d", "b", "a"]
    );
    assert_eq!(
        sorted(SortTarget::Value, SortOrder::Descend),
        vec!["a", "b", "d", "e"]
    );
    // Mod revisions 2, 7, 8, 6.
    assert_eq!(
        sorted(SortTarget::Mod, SortOrder::Ascend),
        vec!["a", "e", "b", "d"]
    );
    assert_eq!(
        sorted(SortTarget::Mod, SortOrder::Descend),
        vec!["d", "b", "e", "a"]
    );
    // Create revisions 2, 3, 5, 6.
    assert_eq!(
        sorted(SortTarget::Create, SortOrder::Descend),
        vec!["e", "d", "b", "a"]
    );
    // Versions 1, 2, 2, 1: ties keep key order in both directions.
    assert_eq!(
        sorted(SortTarget::Version, SortOrder::Ascend),
        vec!["a", "e", "b", "d"]
    );
    assert_eq!(
        sorted(SortTarget::Version, SortOrder::Descend),
        vec!["b", "d", "a", "e"]
    );
    // A non-key target with no order sorts ascending, as etcd.
    assert_eq!(sorted(SortTarget::Mod, SortOrder::None), vec!["a", "e", "b", "d"]);
}

#[test]
fn sorting_happens_before_the_limit() {
    let t = sample();
    let request = RangeRequest {
        sort_target: SortTarget::Mod as i32,
        sort_order: SortOrder::Descend as i32,
        limit: 2,
        ..range_request("a", "\0")
    };
    let response = read(&t.store, request);
    assert_eq!(keys_of(&response.kvs), vec!["d", "b"]);
    assert!(response.more);
    assert_eq!(response.count, 4);
    let descending_keys = RangeRequest {
        sort_order: SortOrder::Descend as i32,
        limit: 1,
        ..range_request("a", "\0")
    };
    let response = read(&t.store, descending_keys);
    assert_eq!(
        (keys_of(&response.kvs), response.more, response.count),
        (vec!["e".to_string()], true, 4)
    );
    let historical = RangeRequest {
        sort_order: SortOrder::Descend as i32,
        limit: 2,
        revision: 6,
        ..range_request("a", "\0")
    };
    assert_eq!(keys_of(&read(&t.store, historical).kvs), vec!["e", "d"]);
}

#[test]
fn revision_filters_apply_after_counting_and_before_the_limit() {
    let t = sample();
    let min_mod = read(
        &t.store,
        RangeRequest {
            min_mod_revision: 6,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(keys_of(&min_mod.kvs), vec!["b", "d", "e"]);
    assert_eq!(min_mod.count, 4, "count is taken before the filters");
    let max_mod = read(
        &t.store,
        RangeRequest {
            max_mod_revision: 6,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(keys_of(&max_mod.kvs), vec!["a", "e"]);
    let min_create = read(
        &t.store,
        RangeRequest {
            min_create_revision: 5,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(keys_of(&min_create.kvs), vec!["d", "e"]);
    let max_create = read(
        &t.store,
        RangeRequest {
            max_create_revision: 3,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(keys_of(&max_create.kvs), vec!["a", "b"]);
    let filtered_limit = read(
        &t.store,
        RangeRequest {
            min_mod_revision: 6,
            limit: 2,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(keys_of(&filtered_limit.kvs), vec!["b", "d"]);
    assert!(filtered_limit.more);
    assert_eq!(filtered_limit.count, 4);
    let filtered_fits = read(
        &t.store,
        RangeRequest {
            min_mod_revision: 7,
            limit: 2,
            ..range_request("a", "\0")
        },
    );
    assert_eq!(keys_of(&filtered_fits.kvs), vec!["b", "d"]);
    assert!(!filtered_fits.more, "more only when the limit cut something");
}

#[test]
fn reads_run_while_a_batch_is_open_and_see_only_committed_state() {
    let t = sample();
    let mut batch = t.store.begin_apply();
    batch.put(&put_request("z", "pending")).expect("put");
    let reader = t.store.clone();
    let seen = std::thread::spawn(move || keys_of(&range(&reader, "a", "\0").kvs))
        .join()
        .expect("reader");
    assert_eq!(seen, vec!["a", "b", "d", "e"]);
    batch.commit().expect("commit");
    assert_eq!(
        keys_of(&range(&t.store, "a", "\0").kvs),
        vec!["a", "b", "d", "e", "z"]
    );
}

#[test]
fn concurrent_readers_never_see_half_a_batch() {
    let t = temp_store();
    let keys: Vec<String> = (0..50).map(|i| format!("k{i:02}")).collect();
    let writer_store = t.store.clone();
    let writer_keys = keys.clone();
    let writer = std::thread::spawn(move || {
        for round in 0..40 {
            let mut batch = writer_store.begin_apply();
            for key in &writer_keys {
                batch.put(&put_request(key, &round.to_string())).expect("put");
            }
            batch.commit().expect("commit");
        }
    });
    let mut observations = 0;
    while !writer.is_finished() || observations == 0 {
        let response = range(&t.store, "k", "l");
        let values: std::collections::BTreeSet<String> = response.kvs.iter().map(value_of).collect();
        assert!(values.len() <= 1, "a read saw two batches at once: {values:?}");
        assert!(response.kvs.is_empty() || response.kvs.len() == keys.len());
        let revision = header_revision(&response.header);
        assert_eq!(
            (revision - 1) % keys.len() as i64,
            0,
            "revision {revision} is mid-batch"
        );
        observations += 1;
    }
    writer.join().expect("writer");
}
