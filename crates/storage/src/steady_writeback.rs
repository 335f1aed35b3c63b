//! [`SteadyWritebackFile`]: a file written in one long stream (a Raft
//! snapshot of the whole keyspace) whose bytes go to the disk while it is
//! written, not all at once at its final sync.
//!
//! Why: a snapshot of a keyspace of 4 KiB values is hundreds of MiB. Written
//! through the page cache and synced at the end, all of it reaches the disk
//! queue at once, and every Raft log fdatasync of the member waits behind it
//! (puts stalled up to 2 s in a 4 KiB put load at the snapshot). Here, each
//! time another [`WRITEBACK_CHUNK_BYTES`] are written, their writeback is
//! started (`sync_file_range` WRITE) and the chunk before is waited for, so
//! at most two chunks are ever dirty and the final sync finds little left.
//!
//! Durability is unchanged: only the caller's final `sync_all` makes the
//! file durable; the writeback here is a pacing hint, and an error from it
//! is logged once and the hints stop (a disk error shows again at the sync).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// How many bytes are written between two writeback starts.
pub const WRITEBACK_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// A new file whose bytes are written back as they are written; see the
/// module's doc.
pub struct SteadyWritebackFile {
    file: File,
    written: u64,
    /// Bytes below this offset have had their writeback started.
    started_up_to: u64,
    /// Bytes below this offset are written back.
    waited_up_to: u64,
    /// False once a `sync_file_range` failed: no more hints.
    pacing: bool,
}

impl SteadyWritebackFile {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> io::Result<SteadyWritebackFile> {
        Ok(SteadyWritebackFile {
            file: File::create(path)?,
            written: 0,
            started_up_to: 0,
            waited_up_to: 0,
            pacing: true,
        })
    }

    /// The file, to sync and keep; what is buffered by the OS is still to be
    /// made durable by the caller.
    pub fn into_file(self) -> File {
        self.file
    }

    fn pace(&mut self) {
        let waited = sync_file_range(
            &self.file,
            self.waited_up_to,
            self.started_up_to - self.waited_up_to,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        );
        let started = waited.and_then(|()| {
            sync_file_range(
                &self.file,
                self.started_up_to,
                self.written - self.started_up_to,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        });
        match started {
            Ok(()) => {
                self.waited_up_to = self.started_up_to;
                self.started_up_to = self.written;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot write a file back as it is written; its final sync writes it all");
                self.pacing = false;
            }
        }
    }
}

impl Write for SteadyWritebackFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.written += written as u64;
        if self.pacing && self.written - self.started_up_to >= WRITEBACK_CHUNK_BYTES {
            self.pace();
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn sync_file_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let offset = i64::try_from(offset).map_err(io::Error::other)?;
    let len = i64::try_from(len).map_err(io::Error::other)?;
    // SAFETY: a plain system call on an open descriptor, no memory passed.
    let result = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_in_chunks_holds_every_byte_and_was_written_back_as_it_went() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dump");
        let mut file = SteadyWritebackFile::create(&path).expect("create");
        let chunk: Vec<u8> = (0..=255u8).cycle().take(1024 * 1024).collect();
        for _ in 0..10 {
            file.write_all(&chunk).expect("write");
        }
        assert!(file.pacing, "sync_file_range failed on this file system");
        // 10 MiB in 4 MiB chunks: two chunks started, the first waited for.
        assert_eq!(file.started_up_to, 2 * WRITEBACK_CHUNK_BYTES);
        assert_eq!(file.waited_up_to, WRITEBACK_CHUNK_BYTES);
        let file = file.into_file();
        file.sync_all().expect("sync");
        drop(file);
        let stored = std::fs::read(&path).expect("read");
        assert_eq!(stored.len(), 10 * chunk.len());
        assert!(stored
            .chunks(chunk.len())
            .all(|stored_chunk| stored_chunk == &chunk[..]));
    }
}
