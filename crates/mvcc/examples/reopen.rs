//! What a restart costs: builds a store of N keys shaped like the mvcc
//! bench's (`/dNNNN/kNNNNNN` keys, 256-byte values, 1,000 puts per apply
//! batch; N from `KEEL_REOPEN_KEYS`, default 1,000,000), flushes and closes
//! it, then times opening sled and `MvccStore::open` on the same directory
//! (which rebuilds the in-memory index) in a fresh process, twice, with
//! that process's resident memory. sled is configured as the server
//! configures it by default (256 MiB page cache, high-throughput mode).
//!
//! `cargo run --release -p keel-mvcc --example reopen`

use std::time::Instant;

use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_mvcc::MvccStore;

fn open_db(path: &std::path::Path) -> Result<keel_storage::Database, keel_storage::StorageError> {
    keel_storage::Database::open(path, 256 * 1024 * 1024)
}

/// Resident set size in MiB, from /proc (0 where unavailable).
fn rss_mib() -> f64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    (pages * 4096) as f64 / (1024.0 * 1024.0)
}

/// Opens the store at `path` in this fresh process and reports.
fn reopen(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let rss_before = rss_mib();
    let started = Instant::now();
    let db = open_db(path)?;
    let sled_open = started.elapsed();
    let store = MvccStore::open(&db)?;
    let store_open = started.elapsed() - sled_open;
    let rss_after = rss_mib();
    let count = store
        .range(&RangeRequest {
            key: b"/".to_vec(),
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        })?
        .count;
    println!(
        "reopen: sled open {:.2} s, MvccStore::open {:.2} s; resident memory {rss_before:.0} -> \
         {rss_after:.0} MiB; {count} keys at revision {}; {:.0} MiB on disk",
        sled_open.as_secs_f64(),
        store_open.as_secs_f64(),
        store.current_revision(),
        store.size_on_disk() as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// Builds a store of `keys` keys at `path`.
fn build(path: &std::path::Path, keys: u64) -> Result<(), Box<dyn std::error::Error>> {
    let value: Vec<u8> = (0..256).map(|i| b'a' + (i % 26) as u8).collect();
    let started = Instant::now();
    let db = open_db(path)?;
    let store = MvccStore::open(&db)?;
    let mut index = 0;
    while index < keys {
        let mut batch = store.begin_apply();
        for _ in 0..1_000.min(keys - index) {
            batch.put(&PutRequest {
                key: format!("/d{:04}/k{:06}", index / 1000, index % 1000).into_bytes(),
                value: value.clone(),
                ..Default::default()
            })?;
            index += 1;
        }
        batch.commit()?;
    }
    store.flush()?;
    println!("built {keys} keys in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// With no arguments: build in a temp dir, then reopen twice. `--build DIR`
/// and `--open DIR` do one step on a kept directory (e.g. to profile).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys: u64 = std::env::var("KEEL_REOPEN_KEYS")
        .ok()
        .and_then(|keys| keys.parse().ok())
        .unwrap_or(1_000_000);
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, flag, path] if flag == "--open" => return reopen(std::path::Path::new(path)),
        [_, flag, path] if flag == "--build" => return build(std::path::Path::new(path), keys),
        [_] => {}
        _ => return Err("usage: reopen [--build DIR | --open DIR]".into()),
    }
    let dir = tempfile::Builder::new().prefix("keel-reopen-").tempdir()?;
    let path = dir.path().join("db");
    build(&path, keys)?;
    // A fresh process, so its resident memory is the open's alone.
    for _ in 0..2 {
        let status = std::process::Command::new(std::env::current_exe()?)
            .arg("--open")
            .arg(&path)
            .status()?;
        if !status.success() {
            return Err(format!("the reopen run failed: {status}").into());
        }
    }
    Ok(())
}
