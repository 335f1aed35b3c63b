//! Regression test for issue 9's third defect: a snapshot build that runs
//! while a newer snapshot is installed must not make its older snapshot
//! current again (the log is already purged up to the newer one, so a
//! lagging follower sent the older one could never catch up). And a
//! snapshot a member took (its keyspace, dumped when it leaves) is sent
//! labelled with the point of its dump, never installed under an older
//! label.

use std::time::Duration;

use keel_api::etcdserverpb::PutRequest;
use keel_api::keelpb::{write_request, WriteBatch, WriteRequest};
use keel_mvcc::MvccStore;
use keel_raft::fail_points::BEFORE_SNAPSHOT_BUILD_COMMIT;
use keel_raft::type_config::{CommittedLeaderId, Entry, LogId, Snapshot};
use keel_raft::{FailPoints, KeelStateMachine};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use tokio::io::AsyncReadExt;

fn put_entry(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1), index),
        payload: EntryPayload::Normal(
            WriteBatch {
                requests: vec![WriteRequest {
                    checked_auth_revision: 0,
                    request: Some(write_request::Request::Put(PutRequest {
                        key: format!("key-{index}").into_bytes(),
                        value: b"value".to_vec(),
                        ..Default::default()
                    })),
                }],
            }
            .into(),
        ),
    }
}

/// Entries as openraft hands them to `apply`, with nobody waiting on them.
fn entries(
    indexes: std::ops::RangeInclusive<u64>,
) -> impl futures::Stream<Item = Result<EntryResponder<keel_raft::TypeConfig>, std::io::Error>> + Unpin {
    futures::stream::iter(indexes.map(|index| Ok((put_entry(index), None))))
}

fn open_state_machine(dir: &std::path::Path, fail_points: FailPoints) -> KeelStateMachine {
    let db = keel_storage::Database::open(&dir.join("mvcc"), 64 * 1024 * 1024).expect("open the keyspace db");
    let store = MvccStore::open(&db).expect("open the keyspace");
    KeelStateMachine::open(store, &dir.join("snap"), fail_points).expect("open")
}

/// A state machine in `dir` that applied `indexes` and then took a
/// snapshot, which is at the last of them.
async fn state_machine_with_snapshot(
    dir: &std::path::Path,
    indexes: std::ops::RangeInclusive<u64>,
) -> (KeelStateMachine, Snapshot) {
    let last = *indexes.end();
    let mut state_machine = open_state_machine(dir, FailPoints::default());
    state_machine.apply(entries(indexes)).await.expect("apply");
    let taken = state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("take a snapshot");
    assert_eq!(taken.meta.last_log_id.map(|id| id.index), Some(last));
    (state_machine, taken)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_build_racing_a_newer_install_never_replaces_the_installed_snapshot() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let (_leader, newer) = state_machine_with_snapshot(leader_dir.path(), 1..=10).await;

    let follower_dir = tempfile::tempdir().expect("tempdir");
    let fail_points = FailPoints::default();
    let mut follower = open_state_machine(follower_dir.path(), fail_points.clone());
    follower
        .apply(entries(1..=5))
        .await
        .expect("apply on the follower");

    // The follower's own build dumps its state at 5 and stops before it
    // makes that snapshot current ...
    let build_commit = fail_points.arm(BEFORE_SNAPSHOT_BUILD_COMMIT);
    let mut builder = follower.get_snapshot_builder().await;
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    let build_commit = tokio::task::spawn_blocking(move || {
        assert!(
            build_commit.wait_reached(Duration::from_secs(10)),
            "the build never dumped"
        );
        build_commit
    })
    .await
    .expect("join");

    // ... while the leader's snapshot at 10 is received and installed ...
    let mut received = follower.view().incoming_snapshot().await.expect("receive");
    let mut data = newer
        .snapshot
        .into_dump(&newer.meta)
        .await
        .expect("the leader's dump")
        .file;
    tokio::io::copy(&mut data, &mut received.file)
        .await
        .expect("transfer");
    follower
        .install_snapshot(&newer.meta, received.into())
        .await
        .expect("install the newer snapshot");

    // ... and then the build finishes.
    build_commit.release();
    let built = build.await.expect("join").expect("the build finishes");
    assert_eq!(
        built.meta.last_log_id.map(|id| id.index),
        Some(10),
        "the build answers with the snapshot that is current"
    );
    let current = follower
        .get_current_snapshot()
        .await
        .expect("read the current snapshot")
        .expect("a current snapshot");
    assert_eq!(
        current.meta.last_log_id.map(|id| id.index),
        Some(10),
        "the installed snapshot at 10 stays current"
    );
    let mut bytes = Vec::new();
    let current_meta = current.meta.clone();
    current
        .snapshot
        .into_dump(&current_meta)
        .await
        .expect("the installed snapshot's dump")
        .file
        .read_to_end(&mut bytes)
        .await
        .expect("its data file is readable");
    assert!(!bytes.is_empty());
}

/// A member's own snapshot is its keyspace: taken at 5, then 5 more entries
/// applied, its dump holds 10. Installed elsewhere under the label 5 it
/// would have entries 6..=10 applied twice, so that install is refused; the
/// dump's own label installs, and the receiver then holds entries 1..=10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyspace_snapshot_that_moved_past_its_label_installs_only_under_the_dumps_own_label() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let (mut source, _taken) = state_machine_with_snapshot(source_dir.path(), 1..=5).await;
    source.apply(entries(6..=10)).await.expect("apply 6..=10");

    let receiver_dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = open_state_machine(receiver_dir.path(), FailPoints::default());
    let stale = source
        .get_current_snapshot()
        .await
        .expect("read the current snapshot")
        .expect("a current snapshot");
    assert_eq!(stale.meta.last_log_id.map(|id| id.index), Some(5));
    let refused = receiver.install_snapshot(&stale.meta, stale.snapshot).await;
    assert!(refused.is_err(), "a dump at 10 installed under the label 5");

    let current = source
        .get_current_snapshot()
        .await
        .expect("read the current snapshot")
        .expect("a current snapshot");
    let dump = current.snapshot.into_dump(&current.meta).await.expect("dump");
    assert_eq!(
        dump.meta.last_log_id.map(|id| id.index),
        Some(10),
        "the dump is labelled with the point it holds"
    );
    let label = dump.meta.clone();
    let data = keel_raft::state_machine::SnapshotData::Dump {
        file: dump.file,
        incoming: None,
    };
    receiver
        .install_snapshot(&label, data)
        .await
        .expect("install under the dump's label");
    let (applied, _) = receiver.applied_state().await.expect("applied state");
    assert_eq!(applied.map(|id| id.index), Some(10));
    let store = receiver.view().store().clone();
    for index in 1..=10 {
        let key = format!("key-{index}").into_bytes();
        let found = store
            .range(&keel_api::etcdserverpb::RangeRequest {
                key,
                ..Default::default()
            })
            .expect("range");
        assert_eq!(found.count, 1, "key-{index} after the install");
    }
}
