//! The `json` format, as etcdctl 3.4 prints it: Go's `encoding/json` of the
//! gogoproto structs, so field names are the proto names (`cluster_id`,
//! `dbSize`, `ID`), zero values are omitted (`omitempty`), integers are
//! numbers, bytes are standard base64, strings are HTML-escaped
//! (`<` → `\u003c`), a txn's ops appear as `{"Response":{"ResponsePut":...}}`,
//! `endpoint status`/`health` print etcdctl's own wrapper structs, and
//! `watch` prints clientv3's `WatchResponse` (Go field names, no omitempty),
//! and the lease commands print clientv3's lease structs, which embed the
//! header (its fields promoted to the top level) and name their own fields
//! `ID`/`TTL`/`Error` (grant, keep-alive) or `id`/`ttl`/`granted-ttl`/`keys`
//! (time-to-live, list), without omitempty.

use base64::Engine as _;
use keel_api::etcdserverpb::response_op::Response;
use keel_api::etcdserverpb::{
    AlarmResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseTimeToLiveResponse, Member, MemberAddResponse, MemberListResponse,
    MoveLeaderResponse, PutResponse, RangeResponse, ResponseHeader, StatusResponse, TxnResponse,
    WatchResponse,
};
use keel_api::mvccpb::{Event, KeyValue};

use super::{EndpointHashKv, EndpointHealth, EndpointStatus};

/// A JSON value whose object keys keep their order (Go's struct order).
pub enum Json {
    Object(Vec<(&'static str, Json)>),
    Array(Vec<Json>),
    Str(String),
    Int(i128),
    Bool(bool),
    Null,
}

/// An object built field by field with Go's `omitempty` rules.
#[derive(Default)]
pub(super) struct Obj(Vec<(&'static str, Json)>);

impl Obj {
    pub(super) fn int(mut self, name: &'static str, value: impl Into<i128>) -> Self {
        let value = value.into();
        if value != 0 {
            self.0.push((name, Json::Int(value)));
        }
        self
    }

    pub(super) fn boolean(mut self, name: &'static str, value: bool) -> Self {
        if value {
            self.0.push((name, Json::Bool(true)));
        }
        self
    }

    pub(super) fn bytes(mut self, name: &'static str, value: &[u8]) -> Self {
        if !value.is_empty() {
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            self.0.push((name, Json::Str(encoded)));
        }
        self
    }

    pub(super) fn string(mut self, name: &'static str, value: &str) -> Self {
        if !value.is_empty() {
            self.0.push((name, Json::Str(value.to_string())));
        }
        self
    }

    pub(super) fn strings(mut self, name: &'static str, values: &[String]) -> Self {
        if !values.is_empty() {
            let items = values.iter().map(|v| Json::Str(v.clone())).collect();
            self.0.push((name, Json::Array(items)));
        }
        self
    }

    pub(super) fn list(mut self, name: &'static str, items: Vec<Json>) -> Self {
        if !items.is_empty() {
            self.0.push((name, Json::Array(items)));
        }
        self
    }

    pub(super) fn opt(mut self, name: &'static str, value: Option<Json>) -> Self {
        if let Some(value) = value {
            self.0.push((name, value));
        }
        self
    }

    /// A field without `omitempty`.
    pub(super) fn always(mut self, name: &'static str, value: Json) -> Self {
        self.0.push((name, value));
        self
    }

    pub(super) fn done(self) -> Json {
        Json::Object(self.0)
    }
}

pub(super) fn header(header: &Option<ResponseHeader>) -> Option<Json> {
    header.as_ref().map(|h| {
        Obj::default()
            .int("cluster_id", h.cluster_id)
            .int("member_id", h.member_id)
            .int("revision", h.revision)
            .int("raft_term", h.raft_term)
            .done()
    })
}

/// An object that embeds clientv3's `*pb.ResponseHeader`: the header's
/// fields at the top level (none when it is absent).
fn with_promoted_header(header: &Option<ResponseHeader>) -> Obj {
    let h = header.unwrap_or_default();
    Obj::default()
        .int("cluster_id", h.cluster_id)
        .int("member_id", h.member_id)
        .int("revision", h.revision)
        .int("raft_term", h.raft_term)
}

pub fn lease_grant(response: &LeaseGrantResponse) -> Json {
    with_promoted_header(&response.header)
        .always("ID", Json::Int(response.id.into()))
        .always("TTL", Json::Int(response.ttl.into()))
        .always("Error", Json::Str(response.error.clone()))
        .done()
}

pub fn lease_revoke(response: &LeaseRevokeResponse) -> Json {
    Obj::default().opt("header", header(&response.header)).done()
}

pub fn lease_keep_alive(response: &LeaseKeepAliveResponse) -> Json {
    with_promoted_header(&response.header)
        .always("ID", Json::Int(response.id.into()))
        .always("TTL", Json::Int(response.ttl.into()))
        .done()
}

/// `keys` is Go's `[][]byte`: `null` when empty, else base64 strings.
pub fn lease_time_to_live(response: &LeaseTimeToLiveResponse) -> Json {
    let keys = if response.keys.is_empty() {
        Json::Null
    } else {
        let encode = |key: &Vec<u8>| Json::Str(base64::engine::general_purpose::STANDARD.encode(key));
        Json::Array(response.keys.iter().map(encode).collect())
    };
    with_promoted_header(&response.header)
        .always("id", Json::Int(response.id.into()))
        .always("ttl", Json::Int(response.ttl.into()))
        .always("granted-ttl", Json::Int(response.granted_ttl.into()))
        .always("keys", keys)
        .done()
}

/// clientv3 makes the list itself, so it is `[]` when empty.
pub fn lease_leases(response: &LeaseLeasesResponse) -> Json {
    let leases = response
        .leases
        .iter()
        .map(|lease| Obj::default().always("id", Json::Int(lease.id.into())).done())
        .collect();
    with_promoted_header(&response.header)
        .always("leases", Json::Array(leases))
        .done()
}

pub fn key_value(kv: &KeyValue) -> Json {
    Obj::default()
        .bytes("key", &kv.key)
        .int("create_revision", kv.create_revision)
        .int("mod_revision", kv.mod_revision)
        .int("version", kv.version)
        .bytes("value", &kv.value)
        .int("lease", kv.lease)
        .done()
}

pub fn range(response: &RangeResponse) -> Json {
    Obj::default()
        .opt("header", header(&response.header))
        .list("kvs", response.kvs.iter().map(key_value).collect())
        .boolean("more", response.more)
        .int("count", response.count)
        .done()
}

pub fn put(response: &PutResponse) -> Json {
    Obj::default()
        .opt("header", header(&response.header))
        .opt("prev_kv", response.prev_kv.as_ref().map(key_value))
        .done()
}

pub fn delete(response: &DeleteRangeResponse) -> Json {
    Obj::default()
        .opt("header", header(&response.header))
        .int("deleted", response.deleted)
        .list("prev_kvs", response.prev_kvs.iter().map(key_value).collect())
        .done()
}

pub fn txn(response: &TxnResponse) -> Json {
    let responses = response
        .responses
        .iter()
        .map(|op| {
            let inner = op.response.as_ref().map(|r| {
                let (name, value) = match r {
                    Response::ResponseRange(r) => ("ResponseRange", range(r)),
                    Response::ResponsePut(r) => ("ResponsePut", put(r)),
                    Response::ResponseDeleteRange(r) => ("ResponseDeleteRange", delete(r)),
                    Response::ResponseTxn(r) => ("ResponseTxn", txn(r)),
                };
                Obj::default().always(name, value).done()
            });
            Obj::default()
                .always("Response", inner.unwrap_or(Json::Null))
                .done()
        })
        .collect();
    Obj::default()
        .opt("header", header(&response.header))
        .boolean("succeeded", response.succeeded)
        .list("responses", responses)
        .done()
}

fn event(event: &Event) -> Json {
    Obj::default()
        .int("type", event.r#type)
        .opt("kv", event.kv.as_ref().map(key_value))
        .opt("prev_kv", event.prev_kv.as_ref().map(key_value))
        .done()
}

/// clientv3's `WatchResponse`: the header always (an object, `{}` when
/// empty), the events (`null` for a response the client made up itself
/// when the stream or the create failed: `events_nil`), then the
/// compact revision and the canceled and created flags, zero or not.
pub fn watch(response: &WatchResponse, events_nil: bool) -> Json {
    let header = header(&response.header).unwrap_or(Json::Object(Vec::new()));
    let events = if events_nil {
        Json::Null
    } else {
        Json::Array(response.events.iter().map(event).collect())
    };
    Obj::default()
        .always("Header", header)
        .always("Events", events)
        .always("CompactRevision", Json::Int(response.compact_revision.into()))
        .always("Canceled", Json::Bool(response.canceled))
        .always("Created", Json::Bool(response.created))
        .done()
}

fn member(member: &Member) -> Json {
    Obj::default()
        .int("ID", member.id)
        .string("name", &member.name)
        .strings("peerURLs", &member.peer_ur_ls)
        .strings("clientURLs", &member.client_ur_ls)
        .boolean("isLearner", member.is_learner)
        .done()
}

pub fn member_list(response: &MemberListResponse) -> Json {
    member_change(&response.header, &response.members)
}

/// The answer to a MemberRemove, MemberUpdate or MemberPromote (and a
/// MemberList): the header and the members.
pub fn member_change(response_header: &Option<ResponseHeader>, members: &[Member]) -> Json {
    Obj::default()
        .opt("header", header(response_header))
        .list("members", members.iter().map(member).collect())
        .done()
}

pub fn member_add(response: &MemberAddResponse) -> Json {
    Obj::default()
        .opt("header", header(&response.header))
        .opt("member", response.member.as_ref().map(member))
        .list("members", response.members.iter().map(member).collect())
        .done()
}

fn status(status: &StatusResponse) -> Json {
    Obj::default()
        .opt("header", header(&status.header))
        .string("version", &status.version)
        .int("dbSize", status.db_size)
        .int("leader", status.leader)
        .int("raftIndex", status.raft_index)
        .int("raftTerm", status.raft_term)
        .int("raftAppliedIndex", status.raft_applied_index)
        .strings("errors", &status.errors)
        .int("dbSizeInUse", status.db_size_in_use)
        .boolean("isLearner", status.is_learner)
        .done()
}

pub fn endpoint_status(statuses: &[EndpointStatus]) -> Json {
    Json::Array(
        statuses
            .iter()
            .map(|entry| {
                Obj::default()
                    .always("Endpoint", Json::Str(entry.endpoint.clone()))
                    .always("Status", status(&entry.status))
                    .done()
            })
            .collect(),
    )
}

/// etcdctl's `epHashKV` list: clientv3 3.4 decodes etcd 3.4's
/// `HashKVResponse`, which has no `hash_revision`, so none is printed.
pub fn endpoint_hashkv(hashes: &[EndpointHashKv]) -> Json {
    Json::Array(
        hashes
            .iter()
            .map(|entry| {
                let response = &entry.response;
                Obj::default()
                    .always("Endpoint", Json::Str(entry.endpoint.clone()))
                    .always(
                        "HashKV",
                        Obj::default()
                            .opt("header", header(&response.header))
                            .int("hash", response.hash)
                            .int("compact_revision", response.compact_revision)
                            .done(),
                    )
                    .done()
            })
            .collect(),
    )
}

pub fn alarm(response: &AlarmResponse) -> Json {
    let alarms = response
        .alarms
        .iter()
        .map(|alarm| {
            Obj::default()
                .int("memberID", alarm.member_id)
                .int("alarm", alarm.alarm)
                .done()
        })
        .collect();
    Obj::default()
        .opt("header", header(&response.header))
        .list("alarms", alarms)
        .done()
}

pub fn move_leader(response: &MoveLeaderResponse) -> Json {
    Obj::default().opt("header", header(&response.header)).done()
}

pub fn endpoint_health(health: &[EndpointHealth]) -> Json {
    Json::Array(
        health
            .iter()
            .map(|entry| {
                Obj::default()
                    .always("endpoint", Json::Str(entry.endpoint.clone()))
                    .always("health", Json::Bool(entry.health))
                    .always("took", Json::Str(entry.took.clone()))
                    .string("error", &entry.error)
                    .done()
            })
            .collect(),
    )
}

/// Writes `value` as Go's `json.Marshal` would, then a newline.
pub fn print(out: &mut Vec<u8>, value: Json) {
    let mut text = String::new();
    write_value(&mut text, &value);
    text.push('\n');
    out.extend_from_slice(text.as_bytes());
}

fn write_value(out: &mut String, value: &Json) {
    match value {
        Json::Object(fields) => {
            out.push('{');
            for (index, (name, field)) in fields.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(out, name);
                out.push(':');
                write_value(out, field);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Json::Str(text) => write_string(out, text),
        Json::Int(value) => out.push_str(&value.to_string()),
        Json::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
        Json::Null => out.push_str("null"),
    }
}

/// Go's string encoding with `HTMLEscape` on (json.Marshal's default).
fn write_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(value: Json) -> String {
        let mut out = Vec::new();
        print(&mut out, value);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn zero_fields_are_omitted_and_bytes_are_base64() {
        let response = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: u64::MAX,
                revision: 6,
                raft_term: 0,
            }),
            kvs: vec![KeyValue {
                key: b"a/2".to_vec(),
                create_revision: 6,
                mod_revision: 6,
                version: 1,
                value: b"y<&>".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            render(range(&response)),
            "{\"header\":{\"cluster_id\":1,\"member_id\":18446744073709551615,\"revision\":6},\
             \"kvs\":[{\"key\":\"YS8y\",\"create_revision\":6,\"mod_revision\":6,\"version\":1,\
             \"value\":\"eTwmPg==\"}],\"count\":1}\n"
        );
    }

    #[test]
    fn strings_are_escaped_as_go_does() {
        let mut out = String::new();
        write_string(&mut out, "a<b>&\"\\\n\u{1}é");
        assert_eq!(out, "\"a\\u003cb\\u003e\\u0026\\\"\\\\\\n\\u0001é\"");
    }
}
