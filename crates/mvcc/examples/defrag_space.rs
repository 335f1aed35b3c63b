//! What a defragmentation gives back on sled 0.34: puts N values of 2 kB
//! (N from `KEEL_DEFRAG_VALUES`, default 4,000), deletes all but 10,
//! compacts, then prints the keyspace database's size on disk and the
//! store's live bytes after the compaction, after `MvccStore::defragment`,
//! (a copy into a fresh database, the old one's files deleted) and after
//! closing and reopening the database.
//!
//! `cargo run -p keel-mvcc --example defrag_space`

use keel_api::etcdserverpb::{DeleteRangeRequest, PutRequest};
use keel_mvcc::MvccStore;
use keel_storage::Database;

fn report(stage: &str, store: &MvccStore) {
    println!(
        "{stage:<34} size_on_disk {:>10}  live_bytes {:>10}",
        store.size_on_disk(),
        store.live_bytes()
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let values: usize = std::env::var("KEEL_DEFRAG_VALUES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4_000);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db");
    {
        let db = Database::open(&path, 64 * 1024 * 1024)?;
        let store = MvccStore::open(&db)?;
        let value = vec![b'v'; 2000];
        for chunk in 0..values.div_ceil(100) {
            let mut batch = store.begin_apply();
            for i in 0..100 {
                batch.put(&PutRequest {
                    key: format!("bulk/{:06}", chunk * 100 + i).into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                })?;
            }
            batch.commit()?;
        }
        report("after the puts", &store);
        let mut batch = store.begin_apply();
        batch.delete_range(&DeleteRangeRequest {
            key: b"bulk/000010".to_vec(),
            range_end: b"bulk0".to_vec(),
            prev_kv: false,
        })?;
        let revision = batch.current_revision();
        batch.compact(revision)?;
        batch.commit()?;
        store.flush()?;
        report("after delete + compaction", &store);
        let stats = store.defragment()?;
        report("after defragment", &store);
        println!("  ({} records, {} bytes copied)", stats.records, stats.bytes);
        println!(
            "  the keyspace is now in {}; the replaced database's files are {}",
            store
                .database_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            if path.exists() {
                "still there (another handle holds them)"
            } else {
                "deleted"
            }
        );
        drop(db);
    }
    // sled's flusher thread lets go of the file lock shortly after the drop.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let db = Database::open(&path, 64 * 1024 * 1024)?;
    let store = MvccStore::open(&db)?;
    report("after a reopen", &store);
    store.defragment()?;
    report("after a reopen and a defragment", &store);
    Ok(())
}
