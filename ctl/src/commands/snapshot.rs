//! `snapshot save|status|restore`, as etcdctl 3.4's. `save` streams one
//! member's `Maintenance.Snapshot` into `<file>.part`, checks the SHA-256
//! the stream ends with, syncs and renames it into place; a stream that
//! ends early or does not check leaves no file. `status` and `restore`
//! check a file's SHA-256 first and refuse a corrupt or truncated file
//! before reading anything else; `restore` builds a new member's data dir
//! from it (`keel_node::restore`).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use keel_api::etcdserverpb::RangeRequest;
use sha2::{Digest, Sha256};

use super::Ctx;
use crate::error::CtlError;
use crate::go_bool::GoBoolFlag;
use crate::output::{Output, SnapshotStatus};

const SHA256_BYTES: usize = 32;

#[derive(Subcommand, Debug, Clone)]
pub enum SnapshotCommand {
    /// Stores a member's keyspace snapshot to a given file.
    ///
    /// Example: keelctl --endpoints=127.0.0.1:2379 snapshot save backup.db
    Save { filename: PathBuf },
    /// Gets the status of a snapshot file: hash, revision, total keys, total size.
    ///
    /// Example: keelctl snapshot status backup.db -w table
    Status { filename: PathBuf },
    /// Restores a snapshot file into a new member's data directory.
    ///
    /// Run it once per member of the new cluster, each with its own --name,
    /// --initial-advertise-peer-urls and --data-dir and the same
    /// --initial-cluster; then start each member with those flags and
    /// --initial-cluster-state new.
    ///
    /// Example: keelctl snapshot restore backup.db --name m1 --initial-cluster m1=http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 --data-dir m1.keel
    Restore(RestoreArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    pub filename: PathBuf,
    /// Path to the data directory (default: <name>.keel).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Initial cluster configuration for restore bootstrap.
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// Initial cluster token for the cluster during restore bootstrap.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Ignore the snapshot's SHA-256 (a file without one is still refused).
    #[arg(long, go_bool_default = false)]
    pub skip_hash_check: bool,
}

pub async fn snapshot(ctx: &Ctx, command: &SnapshotCommand) -> Result<Output, CtlError> {
    match command {
        SnapshotCommand::Save { filename } => save(ctx, filename).await,
        SnapshotCommand::Status { filename } => status(ctx, filename),
        SnapshotCommand::Restore(args) => restore(args),
    }
}

async fn save(ctx: &Ctx, filename: &Path) -> Result<Output, CtlError> {
    let [endpoint] = ctx.endpoints.as_slice() else {
        return Err(CtlError::bad_args(format!(
            "snapshot must be requested to one selected node, not multiple {:?}",
            ctx.endpoints
        )));
    };
    let client = ctx.connect().await?;
    let mut blobs = client.snapshot(endpoint).await?;
    let partial = PathBuf::from(format!("{}.part", filename.display()));
    let saved = receive(&mut blobs, &partial).await;
    if let Err(error) = saved {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, filename).map_err(|e| {
        CtlError::failed(format!(
            "could not rename {} to {}: {e}",
            partial.display(),
            filename.display()
        ))
    })?;
    let mut out = Output::default();
    out.stdout
        .extend_from_slice(format!("Snapshot saved at {}\n", filename.display()).as_bytes());
    Ok(out)
}

/// Writes every blob to `partial`, then checks the stream's last 32 bytes
/// against the SHA-256 of the rest, and syncs the file.
async fn receive(
    blobs: &mut tonic::Streaming<keel_api::etcdserverpb::SnapshotResponse>,
    partial: &Path,
) -> Result<(), CtlError> {
    let io_error =
        |e: std::io::Error| CtlError::failed(format!("could not write {}: {e}", partial.display()));
    let mut file = std::fs::File::create(partial).map_err(io_error)?;
    let mut hasher = Sha256::new();
    // The last 32 bytes seen, held back until more arrive: they may be the checksum.
    let mut tail: Vec<u8> = Vec::new();
    while let Some(response) = blobs
        .message()
        .await
        .map_err(|status| CtlError::failed(status.message().to_string()))?
    {
        tail.extend_from_slice(&response.blob);
        if tail.len() > SHA256_BYTES {
            let content = tail.len() - SHA256_BYTES;
            hasher.update(&tail[..content]);
            file.write_all(&tail[..content]).map_err(io_error)?;
            tail.drain(..content);
        }
    }
    if tail.len() != SHA256_BYTES || hasher.finalize().as_slice() != tail.as_slice() {
        return Err(CtlError::failed(
            "the snapshot stream ended without a matching sha256 checksum; nothing was saved",
        ));
    }
    file.write_all(&tail).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    Ok(())
}

/// A snapshot file's content, its SHA-256 checked (unless `skip_hash_check`).
fn checked_content(filename: &Path, skip_hash_check: bool) -> Result<Vec<u8>, CtlError> {
    let mut content = std::fs::read(filename)
        .map_err(|e| CtlError::failed(format!("could not read {}: {e}", filename.display())))?;
    if content.len() < SHA256_BYTES || !(content.len() - SHA256_BYTES).is_multiple_of(512) {
        return Err(CtlError::failed(format!(
            "snapshot file {} has no sha256 checksum (truncated?) [bytes: {}]",
            filename.display(),
            content.len()
        )));
    }
    let digest = content.split_off(content.len() - SHA256_BYTES);
    if !skip_hash_check && Sha256::digest(&content).as_slice() != digest.as_slice() {
        return Err(CtlError::failed(format!(
            "snapshot file {} does not match its sha256 checksum (corrupt); refusing it",
            filename.display()
        )));
    }
    Ok(content)
}

fn status(ctx: &Ctx, filename: &Path) -> Result<Output, CtlError> {
    let content = checked_content(filename, false)?;
    let unreadable =
        |e: &dyn std::fmt::Display| CtlError::failed(format!("snapshot file {}: {e}", filename.display()));
    let database = keel_storage::Database::open_temporary().map_err(|e| unreadable(&e))?;
    let store = keel_mvcc::MvccStore::open(&database).map_err(|e| unreadable(&e))?;
    store
        .install_snapshot(&mut content.as_slice())
        .map_err(|e| unreadable(&e))?;
    let revision = store.current_revision();
    let hash = store.hash_kv(revision).map_err(|e| unreadable(&e))?;
    let live_keys = store
        .range(&RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        })
        .map_err(|e| unreadable(&e))?;
    let status = SnapshotStatus {
        hash: hash.hash,
        revision,
        total_keys: live_keys.count.max(0) as u64,
        total_size: content.len() as u64,
    };
    let mut out = Output::default();
    ctx.printer.snapshot_status(&mut out, &status)?;
    Ok(out)
}

fn restore(args: &RestoreArgs) -> Result<Output, CtlError> {
    let member_in_cluster = args.initial_cluster.split(',').any(|entry| {
        entry.split_once('=').is_some_and(|(name, url)| {
            name == args.name && args.initial_advertise_peer_urls.split(',').any(|own| own == url)
        })
    });
    if !member_in_cluster {
        return Err(CtlError::failed(format!(
            "--initial-cluster {} must include {}={}",
            args.initial_cluster, args.name, args.initial_advertise_peer_urls
        )));
    }
    let content = checked_content(&args.filename, args.skip_hash_check)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.keel", args.name)));
    keel_node::restore::restore_data_dir(&mut content.as_slice(), &data_dir)
        .map_err(|e| CtlError::failed(e.to_string()))?;
    Ok(Output::default())
}
