//! The `simple` format (etcdctl's default): keys and values on their own
//! lines, "OK", "SUCCESS"/"FAILURE", comma-separated member and status rows,
//! and the lease sentences ("lease 694d... granted with TTL(10s)").

use std::io::Write;

use keel_api::etcdserverpb::response_op::Response;
use keel_api::etcdserverpb::{
    AlarmResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseTimeToLiveResponse, MemberAddResponse, MemberListResponse, PutResponse, RangeResponse, TxnResponse,
    WatchResponse,
};
use keel_api::mvccpb::KeyValue;

use super::{
    hashkv_rows, lease_hex, member_rows, status_rows, EndpointHashKv, EndpointHealth, EndpointStatus,
};
use crate::go_value_format::{alarm_member_text, hex_escaped, quote};

// Writes go to an in-memory buffer (`Output`), which cannot fail.

fn line(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// etcdctl's `printKV`: the key line (unless value-only), then the value.
pub fn kv(out: &mut Vec<u8>, kv: &KeyValue, hex: bool, value_only: bool) {
    if hex {
        if !value_only {
            line(out, hex_escaped(&kv.key).as_bytes());
        }
        line(out, hex_escaped(&kv.value).as_bytes());
    } else {
        if !value_only {
            line(out, &kv.key);
        }
        line(out, &kv.value);
    }
}

pub fn get(out: &mut Vec<u8>, response: &RangeResponse, hex: bool, value_only: bool) {
    for entry in &response.kvs {
        kv(out, entry, hex, value_only);
    }
}

pub fn put(out: &mut Vec<u8>, response: &PutResponse, hex: bool, value_only: bool) {
    line(out, b"OK");
    if let Some(prev) = &response.prev_kv {
        kv(out, prev, hex, value_only);
    }
}

pub fn del(out: &mut Vec<u8>, response: &DeleteRangeResponse, hex: bool, value_only: bool) {
    line(out, response.deleted.to_string().as_bytes());
    for prev in &response.prev_kvs {
        kv(out, prev, hex, value_only);
    }
}

pub fn txn(out: &mut Vec<u8>, response: &TxnResponse, hex: bool, value_only: bool) {
    line(
        out,
        if response.succeeded {
            b"SUCCESS"
        } else {
            b"FAILURE"
        },
    );
    for op in &response.responses {
        line(out, b"");
        match &op.response {
            Some(Response::ResponseDeleteRange(r)) => del(out, r, hex, value_only),
            Some(Response::ResponsePut(r)) => put(out, r, hex, value_only),
            Some(Response::ResponseRange(r)) => get(out, r, hex, value_only),
            Some(Response::ResponseTxn(r)) => {
                let _ = writeln!(out, "unexpected response {r:?}");
            }
            None => line(out, b"unexpected response <nil>"),
        }
    }
}

/// Each event: its type, the previous key-value (with `--prev-kv`), the key-value.
pub fn watch(out: &mut Vec<u8>, response: &WatchResponse, hex: bool) {
    for event in &response.events {
        line(out, super::event_type_name(event.r#type).as_bytes());
        if let Some(prev) = &event.prev_kv {
            kv(out, prev, hex, false);
        }
        if let Some(current) = &event.kv {
            kv(out, current, hex, false);
        }
    }
}

pub fn member_list(out: &mut Vec<u8>, response: &MemberListResponse) {
    for row in member_rows(response) {
        line(out, row.join(", ").as_bytes());
    }
}

pub fn endpoint_status(out: &mut Vec<u8>, statuses: &[EndpointStatus]) {
    for row in status_rows(statuses) {
        line(out, row.join(", ").as_bytes());
    }
}

/// One line per alarm: Go's `%+v` of the `*AlarmMember`, its compact text.
pub fn alarm(out: &mut Vec<u8>, response: &AlarmResponse) {
    for alarm in &response.alarms {
        line(out, alarm_member_text(alarm).as_bytes());
    }
}

pub fn endpoint_hashkv(out: &mut Vec<u8>, hashes: &[EndpointHashKv]) {
    for row in hashkv_rows(hashes) {
        line(out, row.join(", ").as_bytes());
    }
}

/// Member IDs as etcd's `types.ID` prints them: hex without padding.
/// etcdctl's `member add`: the new member, then the settings that start it.
pub fn member_add(out: &mut Vec<u8>, response: &MemberAddResponse, name: &str) {
    let cluster_id = response.header.as_ref().map_or(0, |header| header.cluster_id);
    let Some(added) = &response.member else {
        return;
    };
    line(
        out,
        format!("Member {:16x} added to cluster {cluster_id:16x}", added.id).as_bytes(),
    );
    let initial_cluster = keel_client::launch::initial_cluster_after_add(response, name);
    line(out, b"");
    line(out, format!("ETCD_NAME={}", quote(name.as_bytes())).as_bytes());
    line(
        out,
        format!("ETCD_INITIAL_CLUSTER={}", quote(initial_cluster.as_bytes())).as_bytes(),
    );
    line(
        out,
        format!(
            "ETCD_INITIAL_ADVERTISE_PEER_URLS={}",
            quote(added.peer_ur_ls.join(",").as_bytes())
        )
        .as_bytes(),
    );
    line(out, b"ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
}

/// etcdctl's line for a removed, updated or promoted member.
pub fn member_change(out: &mut Vec<u8>, verb: &str, id: u64, cluster_id: u64) {
    line(
        out,
        format!("Member {id:16x} {verb} cluster {cluster_id:16x}").as_bytes(),
    );
}

pub fn move_leader(out: &mut Vec<u8>, leader: u64, target: u64) {
    line(
        out,
        format!("Leadership transferred from {leader:x} to {target:x}").as_bytes(),
    );
}

pub fn endpoint_health(err: &mut Vec<u8>, health: &[EndpointHealth]) {
    for entry in health {
        if entry.error.is_empty() {
            let _ = writeln!(
                err,
                "{} is healthy: successfully committed proposal: took = {}",
                entry.endpoint, entry.took
            );
        } else {
            let _ = writeln!(
                err,
                "{} is unhealthy: failed to commit proposal: {}",
                entry.endpoint, entry.error
            );
        }
    }
}

pub fn lease_grant(out: &mut Vec<u8>, response: &LeaseGrantResponse) {
    let _ = writeln!(
        out,
        "lease {} granted with TTL({}s)",
        lease_hex(response.id),
        response.ttl
    );
}

pub fn lease_revoke(out: &mut Vec<u8>, id: i64) {
    let _ = writeln!(out, "lease {} revoked", lease_hex(id));
}

pub fn lease_keep_alive(out: &mut Vec<u8>, response: &LeaseKeepAliveResponse) {
    let _ = writeln!(
        out,
        "lease {} keepalived with TTL({})",
        lease_hex(response.id),
        response.ttl
    );
}

/// etcd answers a lease it does not know with granted TTL 0 and TTL -1.
pub fn lease_time_to_live(out: &mut Vec<u8>, response: &LeaseTimeToLiveResponse, keys: bool) {
    let id = lease_hex(response.id);
    if response.granted_ttl == 0 && response.ttl == -1 {
        let _ = writeln!(out, "lease {id} already expired");
        return;
    }
    let _ = write!(
        out,
        "lease {id} granted with TTL({}s), remaining({}s)",
        response.granted_ttl, response.ttl
    );
    if keys {
        // Go's %v of a []string: the strings as they are, space-separated.
        out.extend_from_slice(b", attached keys([");
        out.extend_from_slice(&response.keys.join(&b' '));
        out.extend_from_slice(b"])");
    }
    out.push(b'\n');
}

pub fn lease_leases(out: &mut Vec<u8>, response: &LeaseLeasesResponse) {
    let _ = writeln!(out, "found {} leases", response.leases.len());
    for lease in &response.leases {
        line(out, lease_hex(lease.id).as_bytes());
    }
}

/// What `lease keep-alive` prints once its lease is gone (simple only).
pub fn lease_keep_alive_ended(out: &mut Vec<u8>, id: i64) {
    let _ = writeln!(out, "lease {} expired or revoked.", lease_hex(id));
}
