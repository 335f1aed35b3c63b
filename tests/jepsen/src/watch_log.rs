//! The watch workload's second record, `watches.jsonl`: one JSON line per
//! thing a watcher saw — a (re)connection and the revision it asked to
//! start from, each batch of events as received, a broken stream, a
//! cancellation for compaction, and its end. The watch check reads this
//! file back (with `history.jsonl` for the writes and the final reads), so
//! a saved run can be re-checked.
//!
//! Invariant: a watcher's lines are written in the order it received them,
//! and each `events` line holds one response's events in the order the
//! member sent them; the check derives every event's position within its
//! revision from that order alone.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::history::HistoryError;

/// What kind of change an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Put,
    Delete,
}

/// One event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WatchedEvent {
    /// The event's `kv.mod_revision`.
    pub revision: i64,
    pub kind: ChangeKind,
    pub key: String,
    /// The value put (empty for a delete).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// One line of `watches.jsonl`. `time` is ns since the history started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WatchRecord {
    /// A stream was opened (the first time or again) asking for events from
    /// `start_revision` on.
    Connect {
        watcher: String,
        node: String,
        time: u64,
        start_revision: i64,
    },
    /// One response's events.
    Events {
        watcher: String,
        time: u64,
        events: Vec<WatchedEvent>,
    },
    /// The stream failed or ended; the watcher reconnects from the revision
    /// after the last one it saw.
    Broken {
        watcher: String,
        time: u64,
        error: String,
    },
    /// The member canceled the watch because `compact_revision` and what
    /// came before it are compacted away: the watcher's history resumes at
    /// `compact_revision`, and the revisions it skips are no gap.
    Compacted {
        watcher: String,
        time: u64,
        compact_revision: i64,
    },
    /// The watcher was stopped at the end of the run.
    End {
        watcher: String,
        time: u64,
        last_revision: i64,
    },
}

impl WatchRecord {
    pub fn watcher(&self) -> &str {
        match self {
            WatchRecord::Connect { watcher, .. }
            | WatchRecord::Events { watcher, .. }
            | WatchRecord::Broken { watcher, .. }
            | WatchRecord::Compacted { watcher, .. }
            | WatchRecord::End { watcher, .. } => watcher,
        }
    }
}

/// Appends watch records to `watches.jsonl`; shared by all watchers.
pub struct WatchLog {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

impl WatchLog {
    pub fn create(path: &Path) -> Result<WatchLog, HistoryError> {
        let file = File::create(path).map_err(|source| HistoryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(WatchLog {
            path: path.to_path_buf(),
            out: Mutex::new(BufWriter::new(file)),
        })
    }

    pub fn record(&self, record: &WatchRecord) -> Result<(), HistoryError> {
        let line = serde_json::to_string(record).map_err(|source| HistoryError::Parse {
            path: self.path.clone(),
            line: 0,
            source,
        })?;
        let mut out = self.out.lock().map_err(|_| HistoryError::Poisoned)?;
        writeln!(out, "{line}").map_err(|source| HistoryError::Io {
            path: self.path.clone(),
            source,
        })
    }

    pub fn flush(&self) -> Result<(), HistoryError> {
        let mut out = self.out.lock().map_err(|_| HistoryError::Poisoned)?;
        out.flush().map_err(|source| HistoryError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads `watches.jsonl` back; a missing file is an empty log (runs of the
/// other workloads have none). A torn last line (the run died mid-write) is
/// left out; any other bad line is an error.
pub fn read_watch_log(path: &Path) -> Result<Vec<WatchRecord>, HistoryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(HistoryError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let torn_tail = !text.is_empty() && !text.ends_with('\n');
    let mut records = Vec::with_capacity(lines.len());
    for (number, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(_) if torn_tail && number + 1 == lines.len() => {}
            Err(source) => {
                return Err(HistoryError::Parse {
                    path: path.to_path_buf(),
                    line: number + 1,
                    source,
                })
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("watches.jsonl");
        let log = WatchLog::create(&path).expect("create");
        let records = vec![
            WatchRecord::Connect {
                watcher: "m1-w0".into(),
                node: "m1".into(),
                time: 1,
                start_revision: 1,
            },
            WatchRecord::Events {
                watcher: "m1-w0".into(),
                time: 2,
                events: vec![
                    WatchedEvent {
                        revision: 2,
                        kind: ChangeKind::Put,
                        key: "jepsen/w/0".into(),
                        value: "7".into(),
                    },
                    WatchedEvent {
                        revision: 3,
                        kind: ChangeKind::Delete,
                        key: "jepsen/w/0".into(),
                        value: String::new(),
                    },
                ],
            },
            WatchRecord::Compacted {
                watcher: "m1-w0".into(),
                time: 3,
                compact_revision: 5,
            },
        ];
        for record in &records {
            log.record(record).expect("record");
        }
        log.flush().expect("flush");
        assert_eq!(read_watch_log(&path).expect("read"), records);
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("{\"kind\":\"ev");
        std::fs::write(&path, &text).expect("write");
        assert_eq!(read_watch_log(&path).expect("torn tail tolerated"), records);
        std::fs::write(&path, format!("{{\"kind\":\"ev\n{text}")).expect("write");
        assert!(read_watch_log(&path).is_err(), "a bad line inside is an error");
        assert!(read_watch_log(&dir.path().join("none.jsonl"))
            .expect("missing")
            .is_empty());
    }
}
