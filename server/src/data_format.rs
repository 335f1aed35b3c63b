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
//! Within version 3, records only ever gain fields, which older and newer
//! builds both read, so adding a field needs no new version.
//!
//! Rule: a member starts only on a data dir of exactly [`FORMAT_VERSION`],
//! or on a fresh one (nothing of keel's in it yet), to which it writes the
//! file before anything else. Any other dir is refused with a message that
//! names the version found and the version this build needs; nothing in it
//! is changed.

use std::path::Path;

use anyhow::{bail, Context};

/// The data format this build reads and writes.
pub const FORMAT_VERSION: u32 = 3;

const FORMAT_FILE: &str = "format-version";

/// What keel keeps in a data dir; any of them means the dir holds data.
const KEEL_ENTRIES: [&str; 4] = ["member.json", "raft", "mvcc", "snap"];

/// Checks that `data_dir` holds data of this build's format, or records the
/// format in a fresh data dir (creating it).
pub fn check_or_record(data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: u32 = text.trim().parse().with_context(|| {
                format!(
                    "{} does not hold a format version (found {:?}); refusing to start",
                    path.display(),
                    text.trim()
                )
            })?;
            if found != FORMAT_VERSION {
                bail!(
                    "data dir {} has data format version {found}, but this keel reads and writes \
                     format version {FORMAT_VERSION} only{}; refusing to start (use a keel release \
                     of format version {found}, or start this member on a new data dir)",
                    data_dir.display(),
                    what_changed_since(found)
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(entry) = KEEL_ENTRIES.iter().find(|entry| data_dir.join(entry).exists()) {
                bail!(
                    "data dir {} has data format version 1 (keel on openraft 0.9: it holds {entry} \
                     but no {FORMAT_FILE} file), but this keel reads and writes format version \
                     {FORMAT_VERSION} only (it stores the Raft log differently); \
                     refusing to start (use a keel release of format version 1, or start this \
                     member on a new data dir)",
                    data_dir.display()
                );
            }
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
            let tmp = data_dir.join(format!("{FORMAT_FILE}.tmp"));
            std::fs::write(&tmp, format!("{FORMAT_VERSION}\n"))
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
            std::fs::File::open(data_dir)?.sync_all()?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Why a data dir of version `found` cannot be read, where that is known.
fn what_changed_since(found: u32) -> &'static str {
    if found == 2 {
        " (version 2 keeps the Raft log and the state machine's metadata as bincode of \
         openraft's types; version 3 keeps them as keel's protobuf records)"
    } else {
        ""
    }
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
        assert!(message.contains("format version 3"), "{message}");
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
        let message = check_or_record(dir.path()).expect_err("refused").to_string();
        assert!(
            message.contains("data format version 2") && message.contains("format version 3 only"),
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
    fn another_version_is_refused_naming_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FORMAT_FILE), "7\n").expect("write");
        let message = check_or_record(dir.path()).expect_err("refused").to_string();
        assert!(
            message.contains("format version 7") && message.contains("format version 3"),
            "{message}"
        );
        std::fs::write(dir.path().join(FORMAT_FILE), "two\n").expect("write");
        let message = check_or_record(dir.path()).expect_err("refused").to_string();
        assert!(message.contains("does not hold a format version"), "{message}");
    }
}
