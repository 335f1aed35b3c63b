//! State survives dropping and reopening the sled database.

use keel_api::etcdserverpb::RangeRequest;
use keel_mvcc::MvccStore;

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
