//! The run's history file: one JSON object per line for every client
//! invocation and completion, with the nemesis's events interleaved, in the
//! order they happened. The checkers read the history back from this file
//! only, so a saved run can be re-checked (`keel-jepsen check DIR`).
//!
//! A line looks like
//! `{"index":7,"process":3,"type":"ok","f":"cas","key":"r/2/0","value":[41,57],"start":1200,"end":3400,"node":"n2"}`:
//! `type` is `invoke`, `ok`, `fail` (definitely did not happen, or a CAS
//! whose comparison failed when there is no `error`) or `info`
//! (indeterminate); times are ns since the run started. Nemesis lines have
//! `"process":"nemesis"` and type `info`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Operation names (`f`) used by the workloads.
pub mod f {
    pub const READ: &str = "read";
    pub const WRITE: &str = "write";
    pub const CAS: &str = "cas";
    pub const ADD: &str = "add";
    pub const READ_ALL: &str = "read-all";
    pub const TXN: &str = "txn";
    pub const DELETE: &str = "delete";
    pub const READ_PREFIX: &str = "read-prefix";
    pub const LEASE_GRANT: &str = "lease-grant";
    pub const LEASE_PUT: &str = "lease-put";
    pub const KEEP_ALIVE: &str = "keep-alive";
    pub const LEASE_REVOKE: &str = "lease-revoke";
    pub const TIME_TO_LIVE: &str = "time-to-live";
    pub const LEASE_READ: &str = "lease-read";
    pub const LOCK: &str = "lock";
    pub const INCREMENT: &str = "incr";
    pub const UNLOCK: &str = "unlock";
    pub const DROP_LOCK: &str = "drop-lock";
    pub const READ_LOCK_DATA: &str = "read-lock-data";
}

/// Process ids from here on belong to the final reads taken after healing,
/// not to the workers (whose ids stay far below).
pub const FINAL_PROCESS_BASE: u64 = 1_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("history file {path}, line {line}: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("history writer lock poisoned")]
    Poisoned,
}

/// Who produced an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    Worker(u64),
    Nemesis(NemesisTag),
}

/// Serialises as the string `"nemesis"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NemesisTag {
    Nemesis,
}

impl Process {
    pub const NEMESIS: Process = Process::Nemesis(NemesisTag::Nemesis);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default)]
    pub index: u64,
    pub process: Process,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub value: serde_json::Value,
    /// When the operation (or nemesis action) was invoked, ns since start.
    pub start: u64,
    /// When it completed; absent on invocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
    /// The member the client talked to (or the nemesis acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The revision of the member's response header, on completions that
    /// have one (the watch workload's writes and reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

impl Event {
    pub fn invoke(process: u64, f: &str, key: Option<&str>, value: serde_json::Value, start: u64) -> Event {
        Event {
            index: 0,
            process: Process::Worker(process),
            kind: EventType::Invoke,
            f: f.to_string(),
            key: key.map(str::to_string),
            value,
            start,
            end: None,
            node: None,
            error: None,
            revision: None,
        }
    }

    /// The completion of `invocation` with outcome `kind` at `end`.
    pub fn complete(invocation: &Event, kind: EventType, value: serde_json::Value, end: u64) -> Event {
        Event {
            index: 0,
            kind,
            value,
            end: Some(end),
            ..invocation.clone()
        }
    }

    pub fn nemesis(f: &str, value: serde_json::Value, start: u64, end: u64) -> Event {
        Event {
            index: 0,
            process: Process::NEMESIS,
            kind: EventType::Info,
            f: f.to_string(),
            key: None,
            value,
            start,
            end: Some(end),
            node: None,
            error: None,
            revision: None,
        }
    }

    pub fn with_node(mut self, node: &str) -> Event {
        self.node = Some(node.to_string());
        self
    }

    pub fn with_error(mut self, error: impl Into<String>) -> Event {
        self.error = Some(error.into());
        self
    }

    pub fn is_nemesis(&self) -> bool {
        self.process == Process::NEMESIS
    }
}

struct Inner {
    out: BufWriter<File>,
    next_index: u64,
}

/// Appends events to the history file; shared by all workers and the nemesis.
pub struct HistoryWriter {
    path: PathBuf,
    started: Instant,
    inner: Mutex<Inner>,
}

impl HistoryWriter {
    pub fn create(path: &Path) -> Result<HistoryWriter, HistoryError> {
        let file = File::create(path).map_err(|source| HistoryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(HistoryWriter {
            path: path.to_path_buf(),
            started: Instant::now(),
            inner: Mutex::new(Inner {
                out: BufWriter::new(file),
                next_index: 0,
            }),
        })
    }

    /// Nanoseconds since the history started (a monotonic clock).
    pub fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Writes `event` as the next line, returning its index.
    pub fn record(&self, mut event: Event) -> Result<u64, HistoryError> {
        let mut inner = self.inner.lock().map_err(|_| HistoryError::Poisoned)?;
        event.index = inner.next_index;
        inner.next_index += 1;
        let line = serde_json::to_string(&event).map_err(|source| HistoryError::Parse {
            path: self.path.clone(),
            line: 0,
            source,
        })?;
        writeln!(inner.out, "{line}").map_err(|source| HistoryError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(event.index)
    }

    pub fn flush(&self) -> Result<(), HistoryError> {
        let mut inner = self.inner.lock().map_err(|_| HistoryError::Poisoned)?;
        inner.out.flush().map_err(|source| HistoryError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads a history file back. A last line without its newline that does
/// not parse is a write torn by a run that died, and is left out; any other
/// bad line is an error.
pub fn read_history(path: &Path) -> Result<Vec<Event>, HistoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let complete = if text.is_empty() || text.ends_with('\n') {
        text.as_str()
    } else {
        let torn_start = text.rfind('\n').map_or(0, |i| i + 1);
        let torn = &text[torn_start..];
        if serde_json::from_str::<Event>(torn).is_ok() {
            text.as_str()
        } else {
            &text[..torn_start]
        }
    };
    parse_lines(complete, path)
}

fn parse_lines(text: &str, path: &Path) -> Result<Vec<Event>, HistoryError> {
    let mut events = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(line).map_err(|source| HistoryError::Parse {
            path: path.to_path_buf(),
            line: number + 1,
            source,
        })?;
        events.push(event);
    }
    Ok(events)
}

/// Parses history lines held in memory (tests, tools).
pub fn parse_history(text: &str) -> Result<Vec<Event>, HistoryError> {
    parse_lines(text, Path::new("<memory>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_left_out_but_a_bad_line_inside_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.jsonl");
        let good = r#"{"index":0,"process":0,"type":"invoke","f":"read","key":"k","start":1}"#;
        std::fs::write(&path, format!("{good}\n{{\"index\":1,\"proc")).expect("write");
        assert_eq!(read_history(&path).expect("torn tail tolerated").len(), 1);
        std::fs::write(&path, format!("{{\"index\":1,\"proc\n{good}\n")).expect("write");
        assert!(matches!(
            read_history(&path),
            Err(HistoryError::Parse { line: 1, .. })
        ));
    }
}
