//! Transactions: compares, branches, read-your-writes, nested txns, headers,
//! and requests that fail before writing anything.

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::response_op::Response;
use keel_api::etcdserverpb::{PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest};
use keel_mvcc::MvccError;

use crate::common::*;

/// "k" = "v2" with create 2, mod 3, version 2; "other" = "x" at 4.
fn sample() -> TestStore {
    let t = temp_store();
    put(&t.store, "k", "v1");
    put(&t.store, "k", "v2");
    put(&t.store, "other", "x");
    t
}

fn holds(t: &TestStore, compare: keel_api::etcdserverpb::Compare) -> bool {
    let request = TxnRequest {
        compare: vec![compare],
        ..Default::default()
    };
    txn(&t.store, &request).expect("txn").succeeded
}

#[test]
fn compares_on_every_target_and_result() {
    use CompareResult::*;
    use CompareTarget::*;
    let t = sample();
    let cases = [
        (Version, Equal, TargetUnion::Version(2), true),
        (Version, Greater, TargetUnion::Version(1), true),
        (Version, Less, TargetUnion::Version(2), false),
        (Version, NotEqual, TargetUnion::Version(2), false),
        (Create, Equal, TargetUnion::CreateRevision(2), true),
        (Create, Less, TargetUnion::CreateRevision(3), true),
        (Mod, Equal, TargetUnion::ModRevision(3), true),
        (Mod, Greater, TargetUnion::ModRevision(3), false),
        (Mod, NotEqual, TargetUnion::ModRevision(9), true),
        (Value, Equal, TargetUnion::Value(b"v2".to_vec()), true),
        (Value, Greater, TargetUnion::Value(b"v1".to_vec()), true),
        (Value, Less, TargetUnion::Value(b"v1".to_vec()), false),
        (Value, NotEqual, TargetUnion::Value(b"v1".to_vec()), true),
        (Lease, Equal, TargetUnion::Lease(0), true),
        (Lease, Greater, TargetUnion::Lease(0), false),
    ];
    for (target, result, union, expected) in cases {
        let description = format!("{target:?} {result:?} {union:?}");
        assert_eq!(
            holds(&t, compare("k", target, result, union)),
            expected,
            "{description}"
        );
    }
}

#[test]
fn a_missing_key_compares_as_zero_but_never_by_value() {
    use CompareResult::*;
    use CompareTarget::*;
    let t = sample();
    assert!(holds(
        &t,
        compare("missing", Version, Equal, TargetUnion::Version(0))
    ));
    assert!(holds(
        &t,
        compare("missing", Create, Equal, TargetUnion::CreateRevision(0))
    ));
    assert!(holds(
        &t,
        compare("missing", Mod, Less, TargetUnion::ModRevision(1))
    ));
    assert!(holds(&t, compare("missing", Lease, Equal, TargetUnion::Lease(0))));
    assert!(!holds(
        &t,
        compare("missing", Value, Equal, TargetUnion::Value(Vec::new()))
    ));
    assert!(!holds(
        &t,
        compare("missing", Value, NotEqual, TargetUnion::Value(b"x".to_vec()))
    ));
}

#[test]
fn range_compares_need_every_key_in_the_range() {
    use CompareResult::*;
    use CompareTarget::*;
    let t = sample();
    let ranged = |key: &str, end: &str, result, union| {
        let mut c = compare(key, Version, result, union);
        c.range_end = end.into();
        c
    };
    assert!(holds(&t, ranged("a", "z", Greater, TargetUnion::Version(0))));
    assert!(!holds(&t, ranged("a", "z", Equal, TargetUnion::Version(2)))); // "other" has version 1
    assert!(holds(&t, ranged("k", "l", Equal, TargetUnion::Version(2))));
    assert!(holds(&t, ranged("k", "\0", Greater, TargetUnion::Version(0))));
    // No key in the range: judged on an empty KeyValue.
    assert!(holds(&t, ranged("x", "z", Equal, TargetUnion::Version(0))));
    let mut by_value = compare("a", Value, NotEqual, TargetUnion::Value(b"nope".to_vec()));
    by_value.range_end = b"z".to_vec();
    assert!(holds(&t, by_value.clone()));
    by_value.key = b"x".to_vec();
    assert!(!holds(&t, by_value), "a value compare over no key is false");
}

#[test]
fn the_branch_follows_the_compares_and_writes_share_one_revision() {
    let t = sample();
    let request = TxnRequest {
        compare: vec![compare(
            "k",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(b"v2".to_vec()),
        )],
        success: vec![op_put("s1", "1"), op_put("s2", "2"), op_delete("other", "")],
        failure: vec![op_put("f", "1")],
    };
    let response = txn(&t.store, &request).expect("txn");
    assert!(response.succeeded);
    assert_eq!(header_revision(&response.header), 5);
    assert_eq!(t.store.current_revision(), 5);
    assert_eq!(get(&t.store, "s1").expect("s1").mod_revision, 5);
    assert_eq!(get(&t.store, "s2").expect("s2").mod_revision, 5);
    assert_eq!(get(&t.store, "other"), None);
    assert_eq!(get(&t.store, "f"), None);
    let responses: Vec<i64> = response
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(Response::ResponsePut(put)) => header_revision(&put.header),
            Some(Response::ResponseDeleteRange(delete)) => {
                assert_eq!(delete.deleted, 1);
                header_revision(&delete.header)
            }
            other => panic!("unexpected response {other:?}"),
        })
        .collect();
    assert_eq!(responses, vec![5, 5, 5]);

    let failing = TxnRequest {
        compare: vec![compare(
            "k",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(9),
        )],
        ..request
    };
    let response = txn(&t.store, &failing).expect("txn");
    assert!(!response.succeeded);
    assert_eq!(header_revision(&response.header), 6);
    assert!(get(&t.store, "f").is_some());
}

#[test]
fn a_txn_that_writes_nothing_keeps_the_revision() {
    let t = sample();
    let read_only = TxnRequest {
        success: vec![op_range("k", "")],
        ..Default::default()
    };
    let response = txn(&t.store, &read_only).expect("txn");
    assert_eq!(header_revision(&response.header), 4);
    let Some(Response::ResponseRange(range)) = &response.responses[0].response else {
        panic!("range response")
    };
    assert_eq!(header_revision(&range.header), 4);
    assert_eq!(value_of(&range.kvs[0]), "v2");
    let empty_delete = TxnRequest {
        success: vec![op_delete("missing", "")],
        ..Default::default()
    };
    let response = txn(&t.store, &empty_delete).expect("txn");
    assert_eq!(header_revision(&response.header), 4);
    let Some(Response::ResponseDeleteRange(delete)) = &response.responses[0].response else {
        panic!("delete")
    };
    assert_eq!((delete.deleted, header_revision(&delete.header)), (0, 4));
    let empty = txn(&t.store, &TxnRequest::default()).expect("txn");
    assert!(empty.succeeded);
    assert_eq!(t.store.current_revision(), 4);
}

#[test]
fn ranges_inside_a_txn_see_its_earlier_writes() {
    let t = sample();
    let request = TxnRequest {
        success: vec![
            op_range("k", ""),
            op_put("k", "v3"),
            op_put("new", "n"),
            op_range("a", "z"),
            op_delete("other", ""),
            op_range("a", "z"),
            RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    revision: 3,
                    ..range_request("k", "")
                })),
            },
        ],
        ..Default::default()
    };
    let response = txn(&t.store, &request).expect("txn");
    let ranges: Vec<_> = response
        .responses
        .iter()
        .filter_map(|op| match &op.response {
            Some(Response::ResponseRange(range)) => Some(range.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        header_revision(&ranges[0].header),
        4,
        "before any write: the old revision"
    );
    assert_eq!(value_of(&ranges[0].kvs[0]), "v2");
    assert_eq!(
        header_revision(&ranges[1].header),
        5,
        "after a write: the txn's revision"
    );
    assert_eq!(keys_of(&ranges[1].kvs), vec!["k", "new", "other"]);
    assert_eq!(value_of(&ranges[1].kvs[0]), "v3");
    assert_eq!(ranges[1].kvs[0].version, 3);
    assert_eq!(keys_of(&ranges[2].kvs), vec!["k", "new"]);
    assert_eq!(
        value_of(&ranges[3].kvs[0]),
        "v2",
        "a historical read inside the txn"
    );
}

#[test]
fn one_key_written_twice_in_a_txn_counts_two_versions_at_one_revision() {
    let t = temp_store();
    let request = TxnRequest {
        success: vec![
            op_put("k", "1"),
            op_put("k", "2"),
            op_delete("k", ""),
            op_put("k", "3"),
        ],
        ..Default::default()
    };
    txn(&t.store, &request).expect("txn");
    let kv = get(&t.store, "k").expect("k");
    assert_eq!(
        (value_of(&kv), kv.create_revision, kv.mod_revision, kv.version),
        ("3".into(), 2, 2, 1)
    );
    assert_eq!(t.store.current_revision(), 2);
}

#[test]
fn nested_txns_decide_on_the_state_before_the_outer_txn() {
    let t = sample();
    let nested = TxnRequest {
        // "fresh" does not exist before the outer txn, so this is false even
        // though the outer txn creates it first (etcd's compareToPath).
        compare: vec![compare(
            "fresh",
            CompareTarget::Version,
            CompareResult::Greater,
            TargetUnion::Version(0),
        )],
        success: vec![op_put("nested-success", "1")],
        failure: vec![op_put("nested-failure", "1"), op_range("fresh", "")],
    };
    let request = TxnRequest {
        success: vec![op_put("fresh", "1"), op_txn(nested)],
        ..Default::default()
    };
    let response = txn(&t.store, &request).expect("txn");
    assert_eq!(header_revision(&response.header), 5);
    assert!(get(&t.store, "nested-failure").is_some());
    assert!(get(&t.store, "nested-success").is_none());
    let Some(Response::ResponseTxn(inner)) = &response.responses[1].response else {
        panic!("nested txn")
    };
    assert!(!inner.succeeded);
    assert_eq!(
        inner.header,
        Some(ResponseHeader::default()),
        "nested txn headers stay empty, as etcd"
    );
    let Some(Response::ResponsePut(inner_put)) = &inner.responses[0].response else {
        panic!("put")
    };
    assert_eq!(header_revision(&inner_put.header), 5);
    let Some(Response::ResponseRange(inner_range)) = &inner.responses[1].response else {
        panic!("range")
    };
    assert_eq!(keys_of(&inner_range.kvs), vec!["fresh"]);
    assert_eq!(header_revision(&inner_range.header), 5);
}

#[test]
fn a_bad_operation_fails_the_whole_txn_before_anything_is_written() {
    let t = sample();
    compact(&t.store, 3).expect("compact");
    let with = |op: RequestOp| TxnRequest {
        success: vec![op_put("written", "1"), op],
        ..Default::default()
    };
    let at = |revision| RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            revision,
            ..range_request("k", "")
        })),
    };
    let leased = RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            lease: 5,
            ..put_request("k", "x")
        })),
    };
    let ignoring = RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            ignore_value: true,
            ..put_request("nope", "")
        })),
    };
    type Expectation = fn(&MvccError) -> bool;
    let cases: Vec<(TxnRequest, Expectation)> = vec![
        (with(at(5)), |e| matches!(e, MvccError::FutureRevision { .. })),
        (with(at(2)), |e| matches!(e, MvccError::Compacted { .. })),
        (with(leased), |e| matches!(e, MvccError::LeaseNotFound)),
        (with(ignoring), |e| matches!(e, MvccError::KeyNotFound)),
        (with(op_txn(with(at(99)))), |e| {
            matches!(e, MvccError::FutureRevision { .. })
        }),
    ];
    for (request, expected) in cases {
        let mut batch = t.store.begin_apply();
        let error = batch.txn(&request).expect_err("the txn must fail");
        assert!(expected(&error), "unexpected error {error:?}");
        assert_eq!(batch.current_revision(), 4);
        batch.commit().expect("commit");
        assert_eq!(get(&t.store, "written"), None);
        assert_eq!(t.store.current_revision(), 4);
    }
    // The compacted revision itself is still readable.
    let ok = txn(&t.store, &with(at(3))).expect("txn");
    assert_eq!(header_revision(&ok.header), 5);
}

#[test]
fn ignore_value_on_a_key_deleted_earlier_in_the_txn_undoes_the_txn() {
    // etcd's pre-checks pass here and its apply would panic; keel fails the
    // request and leaves no partial effect.
    let t = sample();
    let request = TxnRequest {
        success: vec![
            op_delete("k", ""),
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    ignore_value: true,
                    ..put_request("k", "")
                })),
            },
        ],
        ..Default::default()
    };
    let mut batch = t.store.begin_apply();
    batch.put(&put_request("before", "1")).expect("put");
    assert!(matches!(batch.txn(&request), Err(MvccError::KeyNotFound)));
    batch.put(&put_request("after", "1")).expect("put");
    batch.commit().expect("commit");
    assert_eq!(value_of(&get(&t.store, "k").expect("k survives")), "v2");
    assert_eq!(t.store.current_revision(), 6);
    assert_eq!(get(&t.store, "after").expect("after").mod_revision, 6);
}
