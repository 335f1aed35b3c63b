//! Runs openraft's own storage conformance suite (`openraft::testing::Suite`)
//! against keel's sled log store and mvcc-backed state machine.

// openraft's StorageError is the suite's own error type.
#![allow(clippy::result_large_err)]

use keel_mvcc::MvccStore;
use keel_raft::{KeelStateMachine, SledLogStore, TypeConfig};
use keel_storage::Database;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, SledLogStore, KeelStateMachine, tempfile::TempDir> for SledStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, SledLogStore, KeelStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| {
            StorageError::from_io_error(openraft::ErrorSubject::Store, openraft::ErrorVerb::Write, e)
        })?;
        let log = SledLogStore::open(&dir.path().join("raft")).expect("open log store");
        let db = Database::open(&dir.path().join("mvcc"), 64 * 1024 * 1024).expect("open mvcc db");
        let store = MvccStore::open(&db).expect("open mvcc store");
        let sm = KeelStateMachine::open(store, &dir.path().join("snap"), keel_raft::FailPoints::default())
            .expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_log_store_and_mvcc_state_machine_pass_openraft_storage_suite(
) -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(SledStoreBuilder).await
}
