//! Output formats (`-w/--write-out`): which format prints which response,
//! and the rules etcdctl 3.4 applies when a format does not support one
//! ("table not supported as output format", exit 4). The formats
//! themselves live in `simple`, `json`, `table` and `fields`; `protobuf` is
//! the raw marshalled response.

mod auth;
pub mod defrag;
pub mod fields;
pub mod json;
pub mod simple;
mod snapshot_status;
pub mod table;

use keel_api::etcdserverpb::{
    AlarmResponse, DeleteRangeResponse, HashKvResponse, LeaseGrantResponse, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse, MemberAddResponse, MemberListResponse,
    MemberPromoteResponse, MemberRemoveResponse, MemberUpdateResponse, MoveLeaderResponse, PutResponse,
    RangeResponse, ResponseHeader, StatusResponse, TxnResponse, WatchResponse,
};
use keel_api::mvccpb::event::EventType;
use prost::Message;

use crate::error::CtlError;
pub use auth::perm_range_text;
pub use snapshot_status::SnapshotStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Simple,
    Json,
    Table,
    Fields,
    Protobuf,
}

impl Format {
    pub fn parse(name: &str) -> Result<Format, CtlError> {
        match name {
            "simple" => Ok(Format::Simple),
            "json" => Ok(Format::Json),
            "table" => Ok(Format::Table),
            "fields" => Ok(Format::Fields),
            "protobuf" => Ok(Format::Protobuf),
            _ => Err(CtlError::bad_feature("unsupported output format")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Simple => "simple",
            Format::Json => "json",
            Format::Table => "table",
            Format::Fields => "fields",
            Format::Protobuf => "protobuf",
        }
    }

    fn unsupported(self) -> CtlError {
        CtlError::bad_feature(format!("{} not supported as output format", self.name()))
    }
}

/// A member removed, updated or promoted, and the cluster's answer.
pub struct MemberChange<'a> {
    pub id: u64,
    pub response: MemberChangeResponse<'a>,
}

pub enum MemberChangeResponse<'a> {
    Removed(&'a MemberRemoveResponse),
    Updated(&'a MemberUpdateResponse),
    Promoted(&'a MemberPromoteResponse),
}

/// The result of one endpoint's `Maintenance.Status` (`endpoint status`).
pub struct EndpointStatus {
    pub endpoint: String,
    pub status: StatusResponse,
}

/// The result of one endpoint's `Maintenance.HashKV` (`endpoint hashkv`).
pub struct EndpointHashKv {
    pub endpoint: String,
    pub response: HashKvResponse,
}

/// The result of one endpoint's health probe (`endpoint health`).
pub struct EndpointHealth {
    pub endpoint: String,
    pub health: bool,
    /// Go's `time.Duration` text, empty when the endpoint was never asked.
    pub took: String,
    pub error: String,
}

/// What a command prints, collected so that nothing is written before the
/// command knows it succeeded.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// How responses are printed (`-w`, `--hex`, `--print-value-only`).
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: Format,
    pub hex: bool,
    pub value_only: bool,
}

impl Printer {
    pub fn get(&self, out: &mut Output, response: &RangeResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::get(&mut out.stdout, response, self.hex, self.value_only),
            Format::Json => json::print(&mut out.stdout, json::range(response)),
            Format::Table => table::get(&mut out.stdout, response, self.hex),
            Format::Fields => fields::get(&mut out.stdout, response),
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
        }
        Ok(())
    }

    pub fn put(&self, out: &mut Output, response: &PutResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::put(&mut out.stdout, response, self.hex, self.value_only),
            Format::Json => json::print(&mut out.stdout, json::put(response)),
            Format::Fields => fields::put(&mut out.stdout, response),
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn del(&self, out: &mut Output, response: &DeleteRangeResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::del(&mut out.stdout, response, self.hex, self.value_only),
            Format::Json => json::print(&mut out.stdout, json::delete(response)),
            Format::Fields => fields::del(&mut out.stdout, response),
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn txn(&self, out: &mut Output, response: &TxnResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::txn(&mut out.stdout, response, self.hex, self.value_only),
            Format::Json => json::print(&mut out.stdout, json::txn(response)),
            Format::Fields => fields::txn(&mut out.stdout, response),
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// One watch response as etcdctl's `display.Watch` prints it;
    /// `events_nil` marks a response keelctl made up for a failed create
    /// (see `json::watch`). `protobuf` is etcd's `WatchResponse` with the
    /// fields clientv3 keeps (no watch id, cancel reason or fragment).
    pub fn watch(
        &self,
        out: &mut Output,
        response: &WatchResponse,
        events_nil: bool,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::watch(&mut out.stdout, response, self.hex),
            Format::Json => json::print(&mut out.stdout, json::watch(response, events_nil)),
            Format::Fields => fields::watch(&mut out.stdout, response),
            Format::Protobuf => {
                let kept = WatchResponse {
                    header: Some(response.header.unwrap_or_default()),
                    events: response.events.clone(),
                    compact_revision: response.compact_revision,
                    canceled: response.canceled,
                    created: response.created,
                    ..Default::default()
                };
                out.stdout.extend(kept.encode_to_vec());
            }
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn member_list(&self, out: &mut Output, response: &MemberListResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::member_list(&mut out.stdout, response),
            Format::Json => json::print(&mut out.stdout, json::member_list(response)),
            Format::Table => table::member_list(&mut out.stdout, response),
            Format::Fields => fields::member_list(&mut out.stdout, response),
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
        }
        Ok(())
    }

    pub fn endpoint_status(&self, out: &mut Output, statuses: &[EndpointStatus]) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::endpoint_status(&mut out.stdout, statuses),
            Format::Json => json::print(&mut out.stdout, json::endpoint_status(statuses)),
            Format::Table => table::endpoint_status(&mut out.stdout, statuses),
            Format::Fields => fields::endpoint_status(&mut out.stdout, statuses),
            Format::Protobuf => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn endpoint_hashkv(&self, out: &mut Output, hashes: &[EndpointHashKv]) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::endpoint_hashkv(&mut out.stdout, hashes),
            Format::Json => json::print(&mut out.stdout, json::endpoint_hashkv(hashes)),
            Format::Table => table::endpoint_hashkv(&mut out.stdout, hashes),
            Format::Fields => fields::endpoint_hashkv(&mut out.stdout, hashes),
            Format::Protobuf => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// etcdctl prints `member add` after the add: table and fields fail then
    /// (exit 4), with the member already added.
    pub fn member_add(
        &self,
        out: &mut Output,
        response: &MemberAddResponse,
        name: &str,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::member_add(&mut out.stdout, response, name),
            Format::Json => json::print(&mut out.stdout, json::member_add(response)),
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
            Format::Table | Format::Fields => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// `member remove|update|promote`, printed after the change.
    pub fn member_change(&self, out: &mut Output, change: &MemberChange) -> Result<(), CtlError> {
        let (header, members, protobuf) = match change.response {
            MemberChangeResponse::Removed(response) => {
                (&response.header, &response.members, response.encode_to_vec())
            }
            MemberChangeResponse::Updated(response) => {
                (&response.header, &response.members, response.encode_to_vec())
            }
            MemberChangeResponse::Promoted(response) => {
                (&response.header, &response.members, response.encode_to_vec())
            }
        };
        match self.format {
            Format::Simple => {
                let verb = match change.response {
                    MemberChangeResponse::Removed(_) => "removed from",
                    MemberChangeResponse::Updated(_) => "updated in",
                    MemberChangeResponse::Promoted(_) => "promoted in",
                };
                let cluster_id = header.as_ref().map_or(0, |header| header.cluster_id);
                simple::member_change(&mut out.stdout, verb, change.id, cluster_id)
            }
            Format::Json => json::print(&mut out.stdout, json::member_change(header, members)),
            Format::Protobuf => out.stdout.extend(protobuf),
            Format::Table | Format::Fields => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// etcdctl prints `move-leader` after the move: table and fields fail
    /// then (exit 4), with leadership already moved.
    pub fn move_leader(
        &self,
        out: &mut Output,
        leader: u64,
        target: u64,
        response: &MoveLeaderResponse,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::move_leader(&mut out.stdout, leader, target),
            Format::Json => json::print(&mut out.stdout, json::move_leader(response)),
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
            Format::Table | Format::Fields => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn alarm(&self, out: &mut Output, response: &AlarmResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::alarm(&mut out.stdout, response),
            Format::Json => json::print(&mut out.stdout, json::alarm(response)),
            Format::Fields => fields::alarm(&mut out.stdout, response),
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn endpoint_health(&self, out: &mut Output, health: &[EndpointHealth]) -> Result<(), CtlError> {
        match self.format {
            // etcdctl prints the simple health lines on stderr.
            Format::Simple => simple::endpoint_health(&mut out.stderr, health),
            Format::Json => json::print(&mut out.stdout, json::endpoint_health(health)),
            Format::Table => table::endpoint_health(&mut out.stdout, health),
            Format::Fields => fields::endpoint_health(&mut out.stdout, health),
            Format::Protobuf => return Err(self.format.unsupported()),
        }
        Ok(())
    }
}

impl Printer {
    pub fn lease_grant(&self, out: &mut Output, response: &LeaseGrantResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::lease_grant(&mut out.stdout, response),
            Format::Json => json::print(&mut out.stdout, json::lease_grant(response)),
            Format::Fields => fields::lease_grant(&mut out.stdout, response),
            Format::Protobuf => out.stdout.extend(embedded_header_protobuf(&response.header)),
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// `protobuf` fails here, after the revoke: clientv3's revoke response
    /// is a Go type of its own without a marshaller, and etcdctl says so
    /// with Go's `%v` of it.
    pub fn lease_revoke(
        &self,
        out: &mut Output,
        id: i64,
        response: &LeaseRevokeResponse,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::lease_revoke(&mut out.stdout, id),
            Format::Json => json::print(&mut out.stdout, json::lease_revoke(response)),
            Format::Fields => fields::lease_revoke(&mut out.stdout, response),
            Format::Protobuf => {
                let header = response
                    .header
                    .as_ref()
                    .map_or("<nil>".to_string(), header_compact_text);
                return Err(CtlError::bad_feature(format!(
                    "marshal unsupported for type clientv3.LeaseRevokeResponse ({{{header}}})"
                )));
            }
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn lease_keep_alive(
        &self,
        out: &mut Output,
        response: &LeaseKeepAliveResponse,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::lease_keep_alive(&mut out.stdout, response),
            Format::Json => json::print(&mut out.stdout, json::lease_keep_alive(response)),
            Format::Fields => fields::lease_keep_alive(&mut out.stdout, response),
            Format::Protobuf => out.stdout.extend(embedded_header_protobuf(&response.header)),
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn lease_time_to_live(
        &self,
        out: &mut Output,
        response: &LeaseTimeToLiveResponse,
        keys: bool,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::lease_time_to_live(&mut out.stdout, response, keys),
            Format::Json => json::print(&mut out.stdout, json::lease_time_to_live(response)),
            Format::Fields => fields::lease_time_to_live(&mut out.stdout, response),
            Format::Protobuf => out.stdout.extend(embedded_header_protobuf(&response.header)),
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn lease_leases(&self, out: &mut Output, response: &LeaseLeasesResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::lease_leases(&mut out.stdout, response),
            Format::Json => json::print(&mut out.stdout, json::lease_leases(response)),
            Format::Fields => fields::lease_leases(&mut out.stdout, response),
            Format::Protobuf => out.stdout.extend(embedded_header_protobuf(&response.header)),
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// What `lease keep-alive` prints when its lease is gone: a line in
    /// the simple format, nothing in the others.
    pub fn lease_keep_alive_ended(&self, out: &mut Output, id: i64) {
        if self.format == Format::Simple {
            simple::lease_keep_alive_ended(&mut out.stdout, id);
        }
    }
}

/// `protobuf` of a clientv3 lease response: those structs embed
/// `*pb.ResponseHeader`, whose promoted `Marshal` is all etcdctl finds, so
/// only the header is written.
fn embedded_header_protobuf(header: &Option<ResponseHeader>) -> Vec<u8> {
    header.unwrap_or_default().encode_to_vec()
}

/// gogoproto's compact text of a header (`cluster_id:1 revision:3 `): the
/// set fields, each followed by a space.
fn header_compact_text(header: &ResponseHeader) -> String {
    let fields = [
        (
            "cluster_id",
            header.cluster_id.to_string(),
            header.cluster_id != 0,
        ),
        ("member_id", header.member_id.to_string(), header.member_id != 0),
        ("revision", header.revision.to_string(), header.revision != 0),
        ("raft_term", header.raft_term.to_string(), header.raft_term != 0),
    ];
    fields
        .iter()
        .filter(|(_, _, set)| *set)
        .map(|(name, value, _)| format!("{name}:{value} "))
        .collect()
}

/// A lease ID as etcdctl prints it (Go's `%016x` of an int64: zero-padded
/// hex, a negative one with its sign inside the width).
pub fn lease_hex(id: i64) -> String {
    if id < 0 {
        format!("-{:015x}", id.unsigned_abs())
    } else {
        format!("{id:016x}")
    }
}

/// An event type as Go prints it (`PUT`, `DELETE`, else the number).
pub fn event_type_name(value: i32) -> String {
    match EventType::try_from(value) {
        Ok(known) => known.as_str_name().to_string(),
        Err(_) => value.to_string(),
    }
}

/// The columns etcdctl prints for `member list` (simple and table).
pub fn member_rows(response: &MemberListResponse) -> Vec<Vec<String>> {
    response
        .members
        .iter()
        .map(|member| {
            vec![
                format!("{:x}", member.id),
                if member.name.is_empty() {
                    "unstarted"
                } else {
                    "started"
                }
                .to_string(),
                member.name.clone(),
                member.peer_ur_ls.join(","),
                member.client_ur_ls.join(","),
                member.is_learner.to_string(),
            ]
        })
        .collect()
}

pub const MEMBER_HEADER: [&str; 6] = ["ID", "Status", "Name", "Peer Addrs", "Client Addrs", "Is Learner"];

/// The columns etcdctl prints for `endpoint status` (simple and table).
pub fn status_rows(statuses: &[EndpointStatus]) -> Vec<Vec<String>> {
    statuses
        .iter()
        .map(|entry| {
            let status = &entry.status;
            let member_id = status.header.as_ref().map_or(0, |h| h.member_id);
            vec![
                entry.endpoint.clone(),
                format!("{member_id:x}"),
                status.version.clone(),
                crate::go_value_format::humanize_bytes(status.db_size.max(0) as u64),
                (status.leader == member_id).to_string(),
                status.is_learner.to_string(),
                status.raft_term.to_string(),
                status.raft_index.to_string(),
                status.raft_applied_index.to_string(),
                status.errors.join(", "),
            ]
        })
        .collect()
}

pub const STATUS_HEADER: [&str; 10] = [
    "endpoint",
    "ID",
    "version",
    "db size",
    "is leader",
    "is learner",
    "raft term",
    "raft index",
    "raft applied index",
    "errors",
];

pub const HEALTH_HEADER: [&str; 4] = ["endpoint", "health", "took", "error"];

/// The columns etcdctl prints for `endpoint hashkv` (simple and table).
pub fn hashkv_rows(hashes: &[EndpointHashKv]) -> Vec<Vec<String>> {
    hashes
        .iter()
        .map(|entry| vec![entry.endpoint.clone(), entry.response.hash.to_string()])
        .collect()
}

pub const HASHKV_HEADER: [&str; 2] = ["endpoint", "hash"];
