//! The on-disk format version of a member's data dir (`<data-dir>/format-version`,
//! one decimal number and a newline).
//!
//! Version 1 is every data dir written by keel on openraft 0.9; it has no
//! file. Version 2 is keel on openraft 0.10, whose serde layouts of log ids,
//! votes and entries (standard Raft leader ids) differ from 0.9's, so a
//! version 2 member cannot read a version 1 Raft log or snapshot meta.
//! Version 3 keeps the Raft log, vote, committed and purged ids, the state
//! machine's metadata and the snapshot meta as keel's own protobuf records
//! (`proto/keel/raft_storage.proto`) instead of bincode and JSON of
//! openraft's serde types; a version 3 member cannot read version 2 records.
//! Version 4 is version 3 where the current snapshot may have no data file
//! (the member's durable keyspace stands for a snapshot it took, and is
//! dumped only to send it; `keel_raft::snapshot_files`); a version 3 build
//! cannot read that snapshot meta. Within a version, records only ever gain
//! fields, which older and newer builds both read, so adding a field needs
//! no new version.
//!
//! Rule: a member starts only on a data dir of exactly [`FORMAT_VERSION`],
//! or on a fresh one (nothing of keel's in it yet), to which it writes the
//! file before anything else, or on one of version 3, which it upgrades in
//! place by rewriting the file (everything a version 3 build wrote reads
//! the same in version 4). Any other dir is refused with a message that
//! names the version found and the version this build needs; nothing in it
//! is changed.

use std::path::{Path, PathBuf};

/// The data format this build reads and writes.
pub const FORMAT_VERSION: u32 = 4;

/// The one older format this build upgrades in place.
const UPGRADED_IN_PLACE: u32 = 3;

const FORMAT_FILE: &str = "format-version";

/// What keel keeps in a data dir; any of them means the dir holds data.
const KEEL_ENTRIES: [&str; 5] = ["member.json", "raft", "mvcc", "mvcc.current", "snap"];

/// Why a data dir was refused (nothing in it was changed) or could not be
/// recorded.
#[derive(Debug, thiserror::Error)]
pub enum DataFormatError {
    #[error("{} does not hold a format version (found {found:?}); refusing to start", path.display())]
    Unreadable { path: PathBuf, found: String },
    #[error(
        "data dir {} has data format version {found}, but this keel reads and writes \
         format version {FORMAT_VERSION} only; refusing to start (use a keel release \
         of format version {found}, or start this member on a new data dir)",
        data_dir.display()
    )]
    OtherVersion { data_dir: PathBuf, found: u32 },
    #[error(
        "data dir {} has data format version 2, but this keel reads and writes format \
         version {FORMAT_VERSION} only (version 2 keeps the Raft log and the state \
         machine's metadata as bincode of openraft's types; versions 3 and later keep them as \
         keel's protobuf records); refusing to start (use a keel release of format \
         version 2, or start this member on a new data dir)",
        data_dir.display()
    )]
    VersionTwo { data_dir: PathBuf },
    #[error(
        "data dir {} has data format version 1 (keel on openraft 0.9: it holds {entry} \
         but no {FORMAT_FILE} file), but this keel reads and writes format version \
         {FORMAT_VERSION} only (it stores the Raft log differently); \
         refusing to start (use a keel release of format version 1, or start this \
         member on a new data dir)",
        data_dir.display()
    )]
    VersionOne { data_dir: PathBuf, entry: &'static str },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Checks that `data_dir` holds data of this build's format, or records the
/// format in a fresh data dir (creating it).
pub fn check_or_record(data_dir: &Path) -> Result<(), DataFormatError> {
    let path = data_dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: u32 = text.trim().parse().map_err(|_| DataFormatError::Unreadable {
                path: path.clone(),
                found: text.trim().to_string(),
            })?;
            match found {
                FORMAT_VERSION => Ok(()),
                UPGRADED_IN_PLACE => {
                    tracing::info!(
                        data_dir = %data_dir.display(),
                        from = UPGRADED_IN_PLACE,
                        to = FORMAT_VERSION,
                        "upgrading the data dir's format version (nothing else in it changes)"
                    );
                    record(data_dir, &path)
                }
                2 => Err(DataFormatError::VersionTwo {
                    data_dir: data_dir.to_path_buf(),
                }),
                found => Err(DataFormatError::OtherVersion {
                    data_dir: data_dir.to_path_buf(),
                    found,
                }),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(entry) = KEEL_ENTRIES.iter().find(|entry| data_dir.join(entry).exists()) {
                return Err(DataFormatError::VersionOne {
                    data_dir: data_dir.to_path_buf(),
                    entry,
                });
            }
            record(data_dir, &path)
        }
        Err(source) => Err(DataFormatError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

/// Writes this build's format file into a data dir, durably (file, then
/// dir), creating the dir if needed.
fn record(data_dir: &Path, path: &Path) -> Result<(), DataFormatError> {
    let io = |action: &'static str, at: &Path| {
        let path = at.to_path_buf();
        move |source| DataFormatError::Io { action, path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(io("create data dir", data_dir))?;
    let tmp = data_dir.join(format!("{FORMAT_FILE}.tmp"));
    std::fs::write(&tmp, format!("{FORMAT_VERSION}\n")).map_err(io("write", &tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|file| file.sync_all())
        .map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("write", path))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io("sync", data_dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_data_dir_gets_the_current_version_and_opens_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("m1.keel");
        check_or_record(&data_dir).expect("a fresh dir is accepted");
        let text = std::fs::read_to_string(data_dir.join(FORMAT_FILE)).expect("the file");
        assert_eq!(text, format!("{FORMAT_VERSION}\n"));
        check_or_record(&data_dir).expect("its own format is accepted");
    }

    #[test]
    fn a_data_dir_written_on_openraft_0_9_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("raft")).expect("raft dir");
        std::fs::write(dir.path().join("member.json"), "{}").expect("identity");
        let error = check_or_record(dir.path()).expect_err("version 1 refused");
        let message = error.to_string();
        assert!(message.contains("format version 1"), "{message}");
        assert!(
            message.contains(&format!("format version {FORMAT_VERSION}")),
            "{message}"
        );
        assert!(
            !dir.path().join(FORMAT_FILE).exists(),
            "a refused dir is left as it was"
        );
    }

    #[test]
    fn a_data_dir_of_version_2_bincode_records_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("raft")).expect("raft dir");
        std::fs::write(dir.path().join(FORMAT_FILE), "2\n").expect("write");
        let error = check_or_record(dir.path()).expect_err("refused");
        assert!(matches!(error, DataFormatError::VersionTwo { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("data format version 2")
                && message.contains(&format!("format version {FORMAT_VERSION} only")),
            "{message}"
        );
        assert!(message.contains("protobuf"), "{message}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FORMAT_FILE)).expect("the file"),
            "2\n",
            "a refused dir is left as it was"
        );
    }

    #[test]
    fn a_data_dir_of_version_3_is_upgraded_to_the_current_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("raft")).expect("raft dir");
        std::fs::write(dir.path().join(FORMAT_FILE), "3\n").expect("write");
        check_or_record(dir.path()).expect("version 3 opens");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FORMAT_FILE)).expect("the file"),
            format!("{FORMAT_VERSION}\n"),
            "a version 3 dir is recorded as the current version once opened"
        );
        check_or_record(dir.path()).expect("and opens again");
    }

    #[test]
    fn another_version_is_refused_naming_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FORMAT_FILE), "7\n").expect("write");
        let message = check_or_record(dir.path()).expect_err("refused").to_string();
        assert!(
            message.contains("format version 7")
                && message.contains(&format!("format version {FORMAT_VERSION}")),
            "{message}"
        );
        std::fs::write(dir.path().join(FORMAT_FILE), "two\n").expect("write");
        let message = check_or_record(dir.path()).expect_err("refused").to_string();
        assert!(message.contains("does not hold a format version"), "{message}");
    }
}
