//! The `simple` format (etcdctl's default): keys and values on their own
//! lines, "OK", "SUCCESS"/"FAILURE", comma-separated member and status rows.

use std::io::Write;

use keel_api::etcdserverpb::response_op::Response;
use keel_api::etcdserverpb::{
    DeleteRangeResponse, MemberListResponse, PutResponse, RangeResponse, TxnResponse, WatchResponse,
};
use keel_api::mvccpb::KeyValue;

use super::{member_rows, status_rows, EndpointHealth, EndpointStatus};
use crate::go_value_format::hex_escaped;

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
