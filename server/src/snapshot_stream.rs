//! etcd's `Maintenance.Snapshot`: the whole keyspace at one revision,
//! streamed as etcd streams its backend, so `etcdctl snapshot save` works
//! against keel unchanged. The content is keel's keyspace dump (the MVCC
//! store's snapshot stream, the format Raft snapshots use), followed, as in
//! etcd, by the SHA-256 of that content as the last 32 bytes of the stream:
//! a saved file is `content || sha256(content)`. The content is padded with
//! zeros to a multiple of 512 bytes, as etcd's page-sized backend always
//! is: etcdctl 3.4 finds the checksum by that alignment (and refuses a
//! stream without it); the dump's own trailer ends it, so the padding is
//! never read as data.
//!
//! The dump is one consistent cut (writes wait while it is taken); it is
//! taken into an anonymous temporary file first, so a slow client never
//! holds writes back, and streamed from there.

use std::io::{Read, Seek, SeekFrom, Write};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keel_api::etcdserverpb::SnapshotResponse;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::context::{mvcc_status, MemberContext};

/// etcd's chunk size for snapshot blobs.
const CHUNK_BYTES: usize = 32 * 1024;
/// etcdctl 3.4 expects `content length % 512 == 0` before the checksum.
const CONTENT_ALIGNMENT: u64 = 512;

pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

/// Takes the keyspace dump and returns the stream that sends it.
pub async fn snapshot_stream(context: Arc<MemberContext>) -> Result<SnapshotStream, Status> {
    let store = context.node.state().store().clone();
    let (dump, total) = tokio::task::spawn_blocking(move || -> Result<(std::fs::File, u64), Status> {
        let mut file =
            tempfile::tempfile().map_err(|e| Status::internal(format!("snapshot: a temporary file: {e}")))?;
        {
            let mut writer = std::io::BufWriter::new(&mut file);
            let written = store.write_snapshot(&mut writer).map_err(mvcc_status)?;
            let padding = written.bytes.next_multiple_of(CONTENT_ALIGNMENT) - written.bytes;
            writer
                .write_all(&vec![0u8; padding as usize])
                .map_err(|e| Status::internal(format!("snapshot: writing the dump: {e}")))?;
            writer
                .flush()
                .map_err(|e| Status::internal(format!("snapshot: writing the dump: {e}")))?;
        }
        let total = file
            .seek(SeekFrom::End(0))
            .and_then(|end| file.seek(SeekFrom::Start(0)).map(|_| end))
            .map_err(|e| Status::internal(format!("snapshot: {e}")))?;
        Ok((file, total))
    })
    .await
    .map_err(|e| Status::internal(format!("snapshot: the dump task failed: {e}")))??;
    tracing::info!(bytes = total, "sending a snapshot to a client");
    let header = context.header_now();
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || send_chunks(dump, total, header, sender));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver)))
}

/// Sends the dump in chunks, then its SHA-256; stops when the client leaves.
fn send_chunks(
    mut dump: std::fs::File,
    total: u64,
    header: Option<keel_api::etcdserverpb::ResponseHeader>,
    sender: tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let read = match dump.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) => {
                let _ = sender.blocking_send(Err(Status::internal(format!(
                    "snapshot: reading the dump: {error}"
                ))));
                return;
            }
        };
        hasher.update(&buffer[..read]);
        sent += read as u64;
        let chunk = SnapshotResponse {
            header,
            remaining_bytes: total.saturating_sub(sent),
            blob: buffer[..read].to_vec(),
            version: String::new(),
        };
        if sender.blocking_send(Ok(chunk)).is_err() {
            return;
        }
    }
    let digest = SnapshotResponse {
        header,
        remaining_bytes: 0,
        blob: hasher.finalize().to_vec(),
        version: String::new(),
    };
    let _ = sender.blocking_send(Ok(digest));
}
