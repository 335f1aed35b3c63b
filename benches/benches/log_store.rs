//! Criterion microbenchmarks of the Raft log store: append + flush of
//! batches of 1, 16 and 256 entries (each entry one group-committed batch
//! holding one 256-byte put), and `save_vote` (a write + flush) through
//! `keel_raft::SledLogStore`'s `RaftLogStorage` API.
//!
//! Why append is mirrored: openraft 0.9's `RaftLogStorage::append` takes a
//! `LogFlushed` callback that only openraft itself can construct
//! (`LogFlushed::new` is `pub(crate)`), so no code outside openraft can call
//! `SledLogStore::append`. This bench therefore does exactly what
//! `SledLogStore::append` does (crates/raft/src/log_store.rs: bincode each
//! entry into one `sled::Batch` keyed by the big-endian index in tree `log`,
//! `apply_batch`, then `Db::flush_async`) on a sled database opened the same
//! way, and afterwards opens the written directory with the real
//! `SledLogStore` and checks that it reads the entries back (so the mirror
//! cannot silently drift from the real layout).
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

/// Tree `log` of a sled database opened as `SledLogStore::open` opens it.
struct MirroredLog {
    db: sled::Db,
    log: sled::Tree,
}

impl MirroredLog {
    fn open(path: &std::path::Path) -> Self {
        let db = must(
            sled::Config::new()
                .path(path)
                .mode(sled::Mode::HighThroughput)
                .open(),
            "opening sled",
        );
        let log = must(db.open_tree("log"), "opening tree log");
        MirroredLog { db, log }
    }

    /// What `SledLogStore::append` does before it reports the entries flushed.
    async fn append_and_flush(&self, entries: Vec<Entry>) {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = must(bincode::serialize(&entry), "encoding an entry");
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
        }
        must(self.log.apply_batch(batch), "apply_batch");
        must(self.db.flush_async().await, "flush");
    }
}

fn entry(index: u64) -> Entry {
    let put = PutRequest {
        key: format!("{:08}", index % 100_000).into_bytes(),
        value: vec![b'v'; 256],
        ..Default::default()
    };
    Entry {
        log_id: openraft::testing::log_id(1, 1, index),
        payload: EntryPayload::Normal(WriteBatch {
            requests: vec![WriteRequest {
                request: Some(write_request::Request::Put(put)),
            }],
        }),
    }
}

fn bench_append(c: &mut Criterion, runtime: &tokio::runtime::Runtime) -> (tempfile::TempDir, u64) {
    let dir = must(
        tempfile::Builder::new().prefix("keel-bench-log-").tempdir(),
        "temp dir",
    );
    let log = MirroredLog::open(&dir.path().join("raft"));
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
                |entries| runtime.block_on(log.append_and_flush(entries)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    drop(log);
    (dir, next_index - 1)
}

/// Opens what the mirror wrote with the real `SledLogStore` and checks it
/// sees the last entry.
fn check_mirror_matches(runtime: &tokio::runtime::Runtime, dir: &tempfile::TempDir, last_index: u64) {
    runtime.block_on(async {
        let mut store = must(
            SledLogStore::open(&dir.path().join("raft")),
            "opening SledLogStore",
        );
        let state = must(
            RaftLogStorage::<TypeConfig>::get_log_state(&mut store).await,
            "get_log_state",
        );
        let last = state.last_log_id.map(|id| id.index);
        assert_eq!(
            last,
            Some(last_index),
            "SledLogStore does not see the mirrored appends"
        );
        let entries = must(
            store.try_get_log_entries(last_index..=last_index).await,
            "reading the last entry",
        );
        assert_eq!(
            entries.len(),
            1,
            "SledLogStore cannot read the mirrored entry back"
        );
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
    let (dir, last_index) = bench_append(&mut criterion, &runtime);
    if last_index > 0 {
        check_mirror_matches(&runtime, &dir, last_index);
    }
    bench_save_vote(&mut criterion, &runtime);
    criterion.final_summary();
}
