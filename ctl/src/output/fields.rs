//! The `fields` format: one `"Name" : value` line per field, as etcdctl
//! prints them (strings in Go's `%q`, lists as Go prints a `[]string`).

use std::io::Write;

use keel_api::etcdserverpb::response_op::Response;
use keel_api::etcdserverpb::{
    AlarmResponse, AlarmType, DeleteRangeResponse, LeaseGrantResponse, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse, MemberListResponse, PutResponse,
    RangeResponse, ResponseHeader, TxnResponse, WatchResponse,
};
use keel_api::mvccpb::KeyValue;

use super::{EndpointHashKv, EndpointHealth, EndpointStatus};
use crate::go_value_format::quote;

// Writes go to an in-memory buffer (`Output`), which cannot fail.

fn kv(out: &mut Vec<u8>, prefix: &str, kv: &KeyValue) {
    let _ = writeln!(out, "\"{prefix}Key\" : {}", quote(&kv.key));
    let _ = writeln!(out, "\"{prefix}CreateRevision\" : {}", kv.create_revision);
    let _ = writeln!(out, "\"{prefix}ModRevision\" : {}", kv.mod_revision);
    let _ = writeln!(out, "\"{prefix}Version\" : {}", kv.version);
    let _ = writeln!(out, "\"{prefix}Value\" : {}", quote(&kv.value));
    let _ = writeln!(out, "\"{prefix}Lease\" : {}", kv.lease);
}

pub(super) fn header(out: &mut Vec<u8>, header: &Option<ResponseHeader>) {
    let h = (*header).unwrap_or_default();
    let _ = writeln!(out, "\"ClusterID\" : {}", h.cluster_id);
    let _ = writeln!(out, "\"MemberID\" : {}", h.member_id);
    let _ = writeln!(out, "\"Revision\" : {}", h.revision);
    let _ = writeln!(out, "\"RaftTerm\" : {}", h.raft_term);
}

pub fn get(out: &mut Vec<u8>, response: &RangeResponse) {
    header(out, &response.header);
    for entry in &response.kvs {
        kv(out, "", entry);
    }
    let _ = writeln!(out, "\"More\" : {}", response.more);
    let _ = writeln!(out, "\"Count\" : {}", response.count);
}

pub fn put(out: &mut Vec<u8>, response: &PutResponse) {
    header(out, &response.header);
    if let Some(prev) = &response.prev_kv {
        kv(out, "Prev", prev);
    }
}

pub fn del(out: &mut Vec<u8>, response: &DeleteRangeResponse) {
    header(out, &response.header);
    let _ = writeln!(out, "\"Deleted\" : {}", response.deleted);
    for prev in &response.prev_kvs {
        kv(out, "Prev", prev);
    }
}

pub fn txn(out: &mut Vec<u8>, response: &TxnResponse) {
    header(out, &response.header);
    let _ = writeln!(out, "\"Succeeded\" : {}", response.succeeded);
    for op in &response.responses {
        match &op.response {
            Some(Response::ResponseDeleteRange(r)) => del(out, r),
            Some(Response::ResponsePut(r)) => put(out, r),
            Some(Response::ResponseRange(r)) => get(out, r),
            other => {
                let _ = writeln!(out, "\"Unknown\" : {}", quote(format!("{other:?}").as_bytes()));
            }
        }
    }
}

/// The header (zeros when absent), then each event's type and key-values.
pub fn watch(out: &mut Vec<u8>, response: &WatchResponse) {
    header(out, &response.header);
    for event in &response.events {
        let _ = writeln!(out, "\"Type\" : {}", super::event_type_name(event.r#type));
        if let Some(prev) = &event.prev_kv {
            kv(out, "Prev", prev);
        }
        if let Some(current) = &event.kv {
            kv(out, "", current);
        }
    }
}

pub fn member_list(out: &mut Vec<u8>, response: &MemberListResponse) {
    header(out, &response.header);
    for member in &response.members {
        let _ = writeln!(out, "\"ID\" : {}", member.id);
        let _ = writeln!(out, "\"Name\" : {}", quote(member.name.as_bytes()));
        for url in &member.peer_ur_ls {
            let _ = writeln!(out, "\"PeerURL\" : {}", quote(url.as_bytes()));
        }
        for url in &member.client_ur_ls {
            let _ = writeln!(out, "\"ClientURL\" : {}", quote(url.as_bytes()));
        }
        let _ = writeln!(out, "\"IsLearner\" : {}", member.is_learner);
        let _ = writeln!(out);
    }
}

/// The header, then each alarm's member and type (Go's `Println` of the
/// enum: its name).
pub fn alarm(out: &mut Vec<u8>, response: &AlarmResponse) {
    header(out, &response.header);
    for alarm in &response.alarms {
        let name = AlarmType::try_from(alarm.alarm).map_or_else(
            |_| alarm.alarm.to_string(),
            |known| known.as_str_name().to_string(),
        );
        let _ = writeln!(out, "\"MemberID\" : {}", alarm.member_id);
        let _ = writeln!(out, "\"AlarmType\" : {name}");
        let _ = writeln!(out);
    }
}

pub fn endpoint_hashkv(out: &mut Vec<u8>, hashes: &[EndpointHashKv]) {
    for entry in hashes {
        header(out, &entry.response.header);
        let _ = writeln!(out, "\"Endpoint\" : {}", quote(entry.endpoint.as_bytes()));
        let _ = writeln!(out, "\"Hash\" : {}", entry.response.hash);
        let _ = writeln!(out);
    }
}

pub fn endpoint_status(out: &mut Vec<u8>, statuses: &[EndpointStatus]) {
    for entry in statuses {
        let status = &entry.status;
        header(out, &status.header);
        let _ = writeln!(out, "\"Version\" : {}", quote(status.version.as_bytes()));
        let _ = writeln!(out, "\"DBSize\" : {}", status.db_size);
        let _ = writeln!(out, "\"Leader\" : {}", status.leader);
        let _ = writeln!(out, "\"IsLearner\" : {}", status.is_learner);
        let _ = writeln!(out, "\"RaftIndex\" : {}", status.raft_index);
        let _ = writeln!(out, "\"RaftTerm\" : {}", status.raft_term);
        let _ = writeln!(out, "\"RaftAppliedIndex\" : {}", status.raft_applied_index);
        let _ = writeln!(out, "\"Errors\" : [{}]", status.errors.join(" "));
        let _ = writeln!(out, "\"Endpoint\" : {}", quote(entry.endpoint.as_bytes()));
        let _ = writeln!(out);
    }
}

pub fn endpoint_health(out: &mut Vec<u8>, health: &[EndpointHealth]) {
    for entry in health {
        let _ = writeln!(out, "\"Endpoint\" : {}", quote(entry.endpoint.as_bytes()));
        let _ = writeln!(out, "\"Health\" : {}", entry.health);
        let _ = writeln!(out, "\"Took\" : {}", entry.took);
        let _ = writeln!(out, "\"Error\" : {}", entry.error);
        let _ = writeln!(out);
    }
}

pub fn lease_grant(out: &mut Vec<u8>, response: &LeaseGrantResponse) {
    header(out, &response.header);
    let _ = writeln!(out, "\"ID\" : {}", response.id);
    let _ = writeln!(out, "\"TTL\" : {}", response.ttl);
}

pub fn lease_revoke(out: &mut Vec<u8>, response: &LeaseRevokeResponse) {
    header(out, &response.header);
}

pub fn lease_keep_alive(out: &mut Vec<u8>, response: &LeaseKeepAliveResponse) {
    header(out, &response.header);
    let _ = writeln!(out, "\"ID\" : {}", response.id);
    let _ = writeln!(out, "\"TTL\" : {}", response.ttl);
}

pub fn lease_time_to_live(out: &mut Vec<u8>, response: &LeaseTimeToLiveResponse) {
    header(out, &response.header);
    let _ = writeln!(out, "\"ID\" : {}", response.id);
    let _ = writeln!(out, "\"TTL\" : {}", response.ttl);
    let _ = writeln!(out, "\"GrantedTTL\" : {}", response.granted_ttl);
    for key in &response.keys {
        let _ = writeln!(out, "\"Key\" : {}", quote(key));
    }
}

pub fn lease_leases(out: &mut Vec<u8>, response: &LeaseLeasesResponse) {
    header(out, &response.header);
    for lease in &response.leases {
        let _ = writeln!(out, "\"ID\" : {}", lease.id);
    }
}
