//! Helpers shared by the mvcc test modules: temporary stores and one-request
//! batches.

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, TxnRequest, TxnResponse,
};
use keel_api::mvccpb::KeyValue;
use keel_mvcc::{MvccError, MvccStore};
use keel_storage::{Database, StorageError};

pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub db: Database,
    pub store: MvccStore,
}

/// Opens (or reopens) the database at `path` as a member does. A database
/// just dropped in this process is released only when sled's background
/// flusher thread lets go of it, which on a loaded machine can take a
/// moment: retry the file lock for a few seconds before failing.
pub fn open_db(path: &std::path::Path) -> Database {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Database::open(path, 64 * 1024 * 1024) {
            Ok(db) => return db,
            Err(StorageError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(error) => panic!("open sled: {error:?}"),
        }
    }
}

pub fn temp_store() -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(&dir.path().join("db"));
    let store = MvccStore::open(&db).expect("open store");
    TestStore { dir, db, store }
}

/// Closes the store and opens it again from disk: the store, its database
/// and the temp dir that holds them (drop the dir last). Everything in
/// memory (index, lease ids, the change feed) is rebuilt from the records.
pub fn reopen(t: TestStore) -> (MvccStore, Database, tempfile::TempDir) {
    let path = t.dir.path().join("db");
    let dir = t.dir;
    drop(t.store);
    drop(t.db);
    let db = open_db(&path);
    let reopened = MvccStore::open(&db).expect("reopen");
    (reopened, db, dir)
}

pub fn put_request(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

pub fn try_put(store: &MvccStore, request: &PutRequest) -> Result<PutResponse, MvccError> {
    let mut batch = store.begin_apply();
    let response = batch.put(request)?;
    batch.commit().expect("commit");
    Ok(response)
}

pub fn put(store: &MvccStore, key: &str, value: &str) -> PutResponse {
    try_put(store, &put_request(key, value)).expect("put")
}

pub fn delete(store: &MvccStore, key: &str, range_end: &str) -> DeleteRangeResponse {
    let mut batch = store.begin_apply();
    let response = batch
        .delete_range(&DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: true,
        })
        .expect("delete");
    batch.commit().expect("commit");
    response
}

pub fn txn(store: &MvccStore, request: &TxnRequest) -> Result<TxnResponse, MvccError> {
    let mut batch = store.begin_apply();
    let response = batch.txn(request)?;
    batch.commit().expect("commit");
    Ok(response)
}

pub fn compact(store: &MvccStore, revision: i64) -> Result<(), MvccError> {
    let mut batch = store.begin_apply();
    batch.compact(revision)?;
    batch.commit().expect("commit");
    Ok(())
}

pub fn range_request(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    }
}

pub fn range(store: &MvccStore, key: &str, range_end: &str) -> RangeResponse {
    store.range(&range_request(key, range_end)).expect("range")
}

pub fn get(store: &MvccStore, key: &str) -> Option<KeyValue> {
    range(store, key, "").kvs.into_iter().next()
}

pub fn get_at(store: &MvccStore, key: &str, revision: i64) -> Result<Option<KeyValue>, MvccError> {
    let request = RangeRequest {
        revision,
        ..range_request(key, "")
    };
    Ok(store.range(&request)?.kvs.into_iter().next())
}

pub fn keys_of(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

pub fn value_of(kv: &KeyValue) -> String {
    String::from_utf8_lossy(&kv.value).into_owned()
}

pub fn header_revision(header: &Option<keel_api::etcdserverpb::ResponseHeader>) -> i64 {
    header.as_ref().expect("header").revision
}

pub fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(put_request(key, value))),
    }
}

pub fn op_range(key: &str, range_end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(range_request(key, range_end))),
    }
}

pub fn op_delete(key: &str, range_end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: false,
        })),
    }
}

pub fn op_txn(request: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(request)),
    }
}

pub fn compare(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
    Compare {
        key: key.into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(union),
        range_end: Vec::new(),
    }
}

/// Everything a reader can see of a store: revisions, hash, app meta and
/// the whole keyspace at every revision not compacted away.
pub fn fingerprint(store: &MvccStore) -> Vec<String> {
    let mut seen = vec![
        format!("revision {}", store.current_revision()),
        format!("compacted {}", store.compact_revision()),
        format!("hash {:?}", store.hash_kv(0).expect("hash")),
        format!("meta {:?}", store.app_meta("raft/last_applied").expect("meta")),
    ];
    let floor = store.compact_revision().max(1);
    for revision in floor..=store.current_revision() {
        let response = store
            .range(&RangeRequest {
                revision,
                ..range_request("", "\0")
            })
            .expect("range");
        seen.push(format!("{revision}: {:?}", response.kvs));
    }
    seen
}
