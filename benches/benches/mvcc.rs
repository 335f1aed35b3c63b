//! Criterion microbenchmarks of the mvcc keyspace alone (no Raft, no gRPC),
//! through its public API (`MvccStore::open`, `begin_apply` → `ApplyBatch`
//! `put`/`txn`/`commit`, `range`), on sled opened as the server opens it:
//! - `put`: one put per apply batch, and 16 puts per batch (group commit);
//! - `txn`: compare mod_revision then put, one per apply batch;
//! - on a store of 1,000,000 keys (8..16-byte keys, 256-byte values, built
//!   once per run in a temp dir; `KEEL_BENCH_MVCC_KEYS` makes it smaller):
//!   point get, and prefix ranges over 1,000 of the keys (full and keys-only)
//!   and with limit 100 over all of them.
//!
//! Measurement times are short so the whole file runs in a couple of minutes:
//! `cargo bench -p keel-bench --bench mvcc`.

use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use keel_api::key_range::prefix_range_end;
use keel_mvcc::MvccStore;

const VALUE_BYTES: usize = 256;
const KEYS_PER_DIR: u64 = 1_000;

struct Store {
    _dir: tempfile::TempDir,
    store: MvccStore,
}

/// The server's default keyspace page cache (`--keyspace-cache-mb 256`).
const KEYSPACE_CACHE_BYTES: u64 = 256 * 1024 * 1024;

fn open_store() -> Store {
    let dir = match tempfile::Builder::new().prefix("keel-bench-mvcc-").tempdir() {
        Ok(dir) => dir,
        Err(error) => panic!("creating a temp dir: {error}"),
    };
    // As a member opens its keyspace with the default --keyspace-cache-mb (256).
    let db = match keel_storage::Database::open(dir.path(), KEYSPACE_CACHE_BYTES) {
        Ok(db) => db,
        Err(error) => panic!("opening sled in {}: {error}", dir.path().display()),
    };
    let store = match MvccStore::open(&db) {
        Ok(store) => store,
        Err(error) => panic!("opening the mvcc store: {error}"),
    };
    Store { _dir: dir, store }
}

fn value() -> Vec<u8> {
    (0..VALUE_BYTES).map(|i| b'a' + (i % 26) as u8).collect()
}

fn put_request(key: Vec<u8>) -> PutRequest {
    PutRequest {
        key,
        value: value(),
        ..Default::default()
    }
}

/// `/dNNNN/kNNNNNN`: 1,000 keys per directory.
fn tree_key(index: u64) -> Vec<u8> {
    format!("/d{:04}/k{:06}", index / KEYS_PER_DIR, index % KEYS_PER_DIR).into_bytes()
}

/// A cheap deterministic sequence of indexes (no RNG in the timed loop).
fn scrambled(i: u64, space: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % space
}

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what}: {error}"),
    }
}

fn bench_put(c: &mut Criterion) {
    let fixture = open_store();
    let store = &fixture.store;
    let mut group = c.benchmark_group("mvcc/put");
    let mut next = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("1 put per apply batch", |b| {
        b.iter_batched(
            || {
                next += 1;
                put_request(tree_key(scrambled(next, 100_000)))
            },
            |request| {
                let mut batch = store.begin_apply();
                must(batch.put(&request), "put");
                must(batch.commit(), "commit");
            },
            BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Elements(16));
    group.bench_function("16 puts per apply batch", |b| {
        b.iter_batched(
            || {
                (0..16)
                    .map(|_| {
                        next += 1;
                        put_request(tree_key(scrambled(next, 100_000)))
                    })
                    .collect::<Vec<_>>()
            },
            |requests| {
                let mut batch = store.begin_apply();
                for request in &requests {
                    must(batch.put(request), "put");
                }
                must(batch.commit(), "commit");
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn cas_request(key: Vec<u8>, mod_revision: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.clone(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::ModRevision(mod_revision)),
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(put_request(key.clone()))),
        }],
        failure: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    }
}

fn bench_txn(c: &mut Criterion) {
    let fixture = open_store();
    let store = &fixture.store;
    let keys = 1_000u64;
    let mut known = vec![0i64; keys as usize];
    let mut next = 0u64;
    let mut group = c.benchmark_group("mvcc/txn");
    group.throughput(Throughput::Elements(1));
    group.bench_function("compare mod_revision then put", |b| {
        b.iter(|| {
            next += 1;
            let index = scrambled(next, keys) as usize;
            let request = cas_request(tree_key(index as u64), known[index]);
            let mut batch = store.begin_apply();
            let response = must(batch.txn(&request), "txn");
            must(batch.commit(), "commit");
            known[index] = response.header.map(|h| h.revision).unwrap_or(0);
            response.succeeded
        })
    });
    group.finish();
}

fn build_big_store(keys: u64) -> Store {
    let fixture = open_store();
    let started = Instant::now();
    let mut index = 0;
    while index < keys {
        let mut batch = fixture.store.begin_apply();
        for _ in 0..1_000.min(keys - index) {
            must(batch.put(&put_request(tree_key(index))), "put");
            index += 1;
        }
        must(batch.commit(), "commit");
    }
    must(fixture.store.flush(), "flush");
    eprintln!(
        "built a store of {keys} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    fixture
}

fn bench_reads(c: &mut Criterion, keys: u64) {
    let fixture = build_big_store(keys);
    let store = &fixture.store;
    let mut group = c.benchmark_group(format!("mvcc/read ({keys} keys)"));
    let gets: Vec<RangeRequest> = (0..10_000)
        .map(|i| RangeRequest {
            key: tree_key(scrambled(i, keys)),
            ..Default::default()
        })
        .collect();
    let mut next = 0usize;
    group.throughput(Throughput::Elements(1));
    group.bench_function("point get", |b| {
        b.iter(|| {
            next += 1;
            must(store.range(&gets[next % gets.len()]), "range").kvs.len()
        })
    });
    let dirs = keys.div_ceil(KEYS_PER_DIR).max(1);
    let prefix = format!("/d{:04}/", dirs / 2).into_bytes();
    let listed = KEYS_PER_DIR.min(keys);
    for keys_only in [false, true] {
        let request = RangeRequest {
            key: prefix.clone(),
            range_end: prefix_range_end(&prefix),
            keys_only,
            ..Default::default()
        };
        group.throughput(Throughput::Elements(listed));
        let name = format!(
            "prefix range of {listed} keys{}",
            if keys_only { ", keys only" } else { "" }
        );
        group.bench_function(name, |b| {
            b.iter(|| must(store.range(&request), "range").kvs.len())
        });
    }
    let limited = RangeRequest {
        key: b"/".to_vec(),
        range_end: prefix_range_end(b"/"),
        limit: 100,
        ..Default::default()
    };
    group.throughput(Throughput::Elements(100));
    group.bench_function("prefix range over all keys, limit 100", |b| {
        b.iter(|| must(store.range(&limited), "range").kvs.len())
    });
    group.finish();
}

fn main() {
    let keys = std::env::var("KEEL_BENCH_MVCC_KEYS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000u64);
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    bench_put(&mut criterion);
    bench_txn(&mut criterion);
    bench_reads(&mut criterion, keys);
    criterion.final_summary();
}
