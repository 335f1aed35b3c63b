//! PLACEHOLDER API: the helper session replaces the bodies.
use keel_api::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted (requested {requested}, compacted {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("mvcc: required revision is a future revision (requested {requested}, current {current})")]
    FutureRevision { requested: i64, current: i64 },
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("snapshot i/o error: {0}")]
    SnapshotIo(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    pub revision: i64,
    pub compact_revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotStats {
    pub records: u64,
    pub bytes: u64,
}

#[derive(Clone)]
pub struct MvccStore {}

impl MvccStore {
    pub fn open(_db: &sled::Db) -> Result<Self, MvccError> {
        unimplemented!()
    }
    pub fn current_revision(&self) -> i64 {
        unimplemented!()
    }
    pub fn compact_revision(&self) -> i64 {
        unimplemented!()
    }
    pub fn range(&self, _request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        unimplemented!()
    }
    pub fn begin_apply(&self) -> ApplyBatch<'_> {
        unimplemented!()
    }
    pub fn hash_kv(&self, _revision: i64) -> Result<KvHash, MvccError> {
        unimplemented!()
    }
    pub fn app_meta(&self, _key: &str) -> Result<Option<Vec<u8>>, MvccError> {
        unimplemented!()
    }
    pub fn write_snapshot(&self, _out: &mut dyn std::io::Write) -> Result<SnapshotStats, MvccError> {
        unimplemented!()
    }
    pub fn install_snapshot(&self, _input: &mut dyn std::io::Read) -> Result<SnapshotStats, MvccError> {
        unimplemented!()
    }
    pub fn flush(&self) -> Result<(), MvccError> {
        unimplemented!()
    }
    pub fn size_on_disk(&self) -> u64 {
        unimplemented!()
    }
}

pub struct ApplyBatch<'a> {
    _store: &'a MvccStore,
}

impl ApplyBatch<'_> {
    pub fn current_revision(&self) -> i64 {
        unimplemented!()
    }
    pub fn put(&mut self, _request: &PutRequest) -> Result<PutResponse, MvccError> {
        unimplemented!()
    }
    pub fn delete_range(&mut self, _request: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        unimplemented!()
    }
    pub fn txn(&mut self, _request: &TxnRequest) -> Result<TxnResponse, MvccError> {
        unimplemented!()
    }
    pub fn compact(&mut self, _revision: i64) -> Result<(), MvccError> {
        unimplemented!()
    }
    pub fn set_app_meta(&mut self, _key: &str, _value: Vec<u8>) {
        unimplemented!()
    }
    pub fn commit(self) -> Result<(), MvccError> {
        unimplemented!()
    }
}
