//! How `snapshot status` prints a snapshot file's status, as etcdctl 3.4:
//! simple `hash, revision, total keys, total size` (the hash in hex, the
//! size humanized), a table with those columns, or JSON
//! `{"hash":..,"revision":..,"totalKey":..,"totalSize":..}`.

use super::json::{self, Json};
use super::table::Table;
use super::{Format, Output, Printer};
use crate::error::CtlError;
use crate::go_value_format::humanize_bytes;

/// What `snapshot status` reports of a file. keel's hash is the keyspace's
/// HashKV at the snapshot's revision (what `endpoint hashkv` of the member
/// reported then), and its total keys are the live keys at that revision.
pub struct SnapshotStatus {
    pub hash: u32,
    pub revision: i64,
    pub total_keys: u64,
    pub total_size: u64,
}

const SNAPSHOT_STATUS_HEADER: [&str; 4] = ["hash", "revision", "total keys", "total size"];

impl SnapshotStatus {
    fn row(&self) -> Vec<String> {
        vec![
            format!("{:x}", self.hash),
            self.revision.to_string(),
            self.total_keys.to_string(),
            humanize_bytes(self.total_size),
        ]
    }
}

impl Printer {
    pub fn snapshot_status(&self, out: &mut Output, status: &SnapshotStatus) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => {
                out.stdout.extend_from_slice(status.row().join(", ").as_bytes());
                out.stdout.push(b'\n');
            }
            Format::Table => {
                let mut table = Table::new(&SNAPSHOT_STATUS_HEADER);
                table.append(status.row());
                table.render(&mut out.stdout);
            }
            Format::Json => json::print(
                &mut out.stdout,
                Json::Object(vec![
                    ("hash", Json::Int(i128::from(status.hash))),
                    ("revision", Json::Int(i128::from(status.revision))),
                    ("totalKey", Json::Int(i128::from(status.total_keys))),
                    ("totalSize", Json::Int(i128::from(status.total_size))),
                ]),
            ),
            Format::Fields | Format::Protobuf => return Err(self.format.unsupported()),
        }
        Ok(())
    }
}
