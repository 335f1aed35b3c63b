//! [`SharedWriteBatch`]: a log entry's payload, one group-committed batch of
//! etcd writes, behind a reference count.
//!
//! openraft clones an entry wherever it hands one on: the log store keeps a
//! copy of each appended entry in memory (`recent_entries.rs`), and every
//! read of it (the leader's replication to each follower, every member's
//! apply) returns a clone. With the batch inline, each of those clones
//! copied every key and value of up to a thousand writes; shared, a clone
//! is a count increment. The batch is never changed once built, so sharing
//! it cannot be observed.
//!
//! On the wire (bincode, `keel-node`'s peer codec) and on disk
//! (`storage_codec.rs`) it is exactly the batch it holds: members of builds
//! that carried the batch inline read and write the same bytes.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use keel_api::keelpb::WriteBatch;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A write batch that clones by reference; derefs to the [`WriteBatch`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedWriteBatch(Arc<WriteBatch>);

impl SharedWriteBatch {
    /// The batch itself: moved out when this is its only holder, copied
    /// otherwise.
    pub fn into_write_batch(self) -> WriteBatch {
        Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone())
    }
}

impl From<WriteBatch> for SharedWriteBatch {
    fn from(write_batch: WriteBatch) -> Self {
        SharedWriteBatch(Arc::new(write_batch))
    }
}

impl Deref for SharedWriteBatch {
    type Target = WriteBatch;

    fn deref(&self) -> &WriteBatch {
        &self.0
    }
}

/// How openraft logs a log entry's payload: its size, not its contents.
impl fmt::Display for SharedWriteBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Serialize for SharedWriteBatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedWriteBatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        WriteBatch::deserialize(deserializer).map(SharedWriteBatch::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::etcdserverpb::PutRequest;
    use keel_api::keelpb::{write_request, WriteRequest};

    fn one_put() -> WriteBatch {
        WriteBatch {
            requests: vec![WriteRequest {
                request: Some(write_request::Request::Put(PutRequest {
                    key: b"foo".to_vec(),
                    value: b"bar".to_vec(),
                    ..Default::default()
                })),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn serializes_to_the_bytes_of_the_batch_it_holds() {
        let inline = bincode::serialize(&one_put()).expect("encode the batch");
        let shared = bincode::serialize(&SharedWriteBatch::from(one_put())).expect("encode the shared batch");
        assert_eq!(shared, inline);
        let read_back: SharedWriteBatch = bincode::deserialize(&inline).expect("decode");
        assert_eq!(*read_back, one_put());
    }

    #[test]
    fn a_clone_shares_the_batch_instead_of_copying_it() {
        let shared = SharedWriteBatch::from(one_put());
        let cloned = shared.clone();
        assert!(std::ptr::eq(&*shared, &*cloned));
        drop(shared);
        assert_eq!(cloned.into_write_batch(), one_put());
    }
}
