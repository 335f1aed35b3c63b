//! Criterion microbenchmarks of the Raft log store: append + flush of
//! batches of 1, 16 and 256 entries (each entry one group-committed batch
//! holding one 256-byte put), and `save_vote` (a write + flush) through
//! `keel_raft::SledLogStore`'s `RaftLogStorage` API.
//!
//! Appends go through `SledLogStore::append_durably`, which shares its
//! write and its group flush (sled flush + fdatasync) with the
//! `RaftLogStorage::append` openraft calls; that one takes a `LogFlushed`
//! callback only openraft can construct. The bench then reads the last
//! entry back through the real reader API.
//!
//! `cargo bench -p keel-bench --bench log_store`.

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use keel_api::etcdserverpb::PutRequest;
use keel_api::keelpb::{write_request, WriteBatch, WriteRequest};
use keel_raft::type_config::{Entry, TypeConfig};
use keel_raft::SledLogStore;
use openraft::storage::RaftLogStorage;
use openraft::{EntryPayload, RaftLogReader, Vote};

const BATCH_SIZES: [usize; 3] = [1, 16, 256];

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what}: {error}"),
    }
}

fn entry(index: u64) -> Entry {
    let put = PutRequest {
        key: format!("{:08}", index % 100_000).into_bytes(),
        value: vec![b'v'; 256],
        ..Default::default()
    };
    Entry {
        log_id: openraft::testing::log_id::<keel_raft::TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(
            WriteBatch {
                requests: vec![WriteRequest {
                    checked_auth_revision: 0,
                    request: Some(write_request::Request::Put(put)),
                }],
            }
            .into(),
        ),
    }
}

fn bench_append(c: &mut Criterion, runtime: &tokio::runtime::Runtime) -> tempfile::TempDir {
    let dir = must(
        tempfile::Builder::new().prefix("keel-bench-log-").tempdir(),
        "temp dir",
    );
    let mut store = must(
        SledLogStore::open(&dir.path().join("raft")),
        "opening SledLogStore",
    );
    let mut next_index = 1u64;
    let mut group = c.benchmark_group("log_store/append+flush");
    for size in BATCH_SIZES {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(format!("{size} entries"), |b| {
            b.iter_batched(
                || {
                    let entries: Vec<Entry> = (next_index..next_index + size as u64).map(entry).collect();
                    next_index += size as u64;
                    entries
                },
                |entries| runtime.block_on(async { must(store.append_durably(entries).await, "append") }),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    let last_index = next_index - 1;
    if last_index > 0 {
        check_appends_read_back(runtime, &mut store, last_index);
    }
    dir
}

/// Checks the store sees the last appended entry (the bench wrote real entries).
fn check_appends_read_back(runtime: &tokio::runtime::Runtime, store: &mut SledLogStore, last_index: u64) {
    runtime.block_on(async {
        let state = must(
            RaftLogStorage::<TypeConfig>::get_log_state(store).await,
            "get_log_state",
        );
        let last = state.last_log_id.map(|id| id.index);
        assert_eq!(last, Some(last_index), "SledLogStore does not see its appends");
        let entries = must(
            store.try_get_log_entries(last_index..=last_index).await,
            "reading the last entry",
        );
        assert_eq!(entries.len(), 1, "SledLogStore cannot read the last entry back");
    });
}

fn bench_save_vote(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let dir = must(
        tempfile::Builder::new().prefix("keel-bench-vote-").tempdir(),
        "temp dir",
    );
    let mut store = must(
        SledLogStore::open(&dir.path().join("raft")),
        "opening SledLogStore",
    );
    let mut term = 0u64;
    let mut group = c.benchmark_group("log_store/save_vote (real API: write + flush)");
    group.throughput(Throughput::Elements(1));
    group.bench_function("save_vote", |b| {
        b.iter(|| {
            term += 1;
            let vote = Vote::new(term, 1);
            runtime.block_on(async { must(store.save_vote(&vote).await, "save_vote") })
        })
    });
    group.finish();
}

fn main() {
    let runtime = must(
        tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        "building a runtime",
    );
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    let _appended = bench_append(&mut criterion, &runtime);
    bench_save_vote(&mut criterion, &runtime);
    criterion.final_summary();
}
