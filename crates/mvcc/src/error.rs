//! The crate's one error type. Request-level variants (`Compacted`,
//! `FutureRevision`, `KeyNotFound`, `LeaseNotFound`, `LeaseExists`) are answers to a bad
//! request and leave the store unchanged; the others (`Storage`, `Corrupt`,
//! `SnapshotIo`, `InvalidSnapshot`) mean the disk or a stream failed.

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
    #[error("lease already exists")]
    LeaseExists,
    #[error("storage error: {0}")]
    Storage(#[from] keel_storage::StorageError),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("snapshot i/o error: {0}")]
    SnapshotIo(#[from] std::io::Error),
    /// A snapshot stream that is truncated, damaged or of an unknown format.
    #[error("invalid snapshot stream: {0}")]
    InvalidSnapshot(String),
}

/// sled's errors, met inside the crate, are storage errors (sled is this
/// crate's implementation, not part of its API).
impl From<keel_storage::sled::Error> for MvccError {
    fn from(error: keel_storage::sled::Error) -> Self {
        MvccError::Storage(keel_storage::StorageError::Sled(error))
    }
}

pub(crate) type Result<T, E = MvccError> = std::result::Result<T, E>;

pub(crate) fn corrupt(what: impl Into<String>) -> MvccError {
    MvccError::Corrupt(what.into())
}
