//! etcd's HTTP/JSON gateway: the same `curl` requests against keel and the
//! real etcd 3.4 get the same JSON (member and cluster ids and Raft terms
//! aside), the same HTTP status and, for errors, the same gRPC code; and
//! what only keel does on the port: JSON over HTTP/2 without TLS beside
//! gRPC, and `--max-concurrent-streams`.

use std::time::Duration;

use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
use keel_tests::{curl, Cluster, ClusterOptions, CurlAnswer};
use serde_json::Value;

/// POSTs `body` to `path` at `endpoint`, with curl's `extra` flags.
async fn post(endpoint: &str, path: &str, body: &str, extra: &[&str]) -> CurlAnswer {
    let mut args = vec!["-N", "-X", "POST", "-d", body];
    args.extend_from_slice(extra);
    curl(&format!("http://{endpoint}{path}"), &args).await
}

/// Hides what differs between any two clusters: ids and Raft terms.
fn masked(mut json: Value) -> Value {
    fn walk(value: &mut Value) {
        match value {
            Value::Object(fields) => {
                for (name, field) in fields.iter_mut() {
                    if ["cluster_id", "member_id", "raft_term"].contains(&name.as_str()) {
                        *field = Value::String("masked".into());
                    } else {
                        walk(field);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut json);
    json
}

/// The JSON values of a body: one for a unary answer, one per line of a
/// stream.
fn json_values(body: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(body)
        .into_iter::<Value>()
        .map(|value| masked(value.unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))))
        .collect()
}

/// How much of two answers must agree.
#[derive(Clone, Copy, PartialEq)]
enum Agreement {
    /// The whole JSON (masked).
    Whole,
    /// The HTTP status and the gRPC code: the message is a JSON parser's
    /// (Go's in etcd, serde's in keel).
    StatusAndCode,
    /// The HTTP status only (a body that is not JSON).
    Status,
}

struct Exchange {
    path: &'static str,
    body: &'static str,
    /// A stream is read for this long, then cut.
    stream_for: Option<Duration>,
    agreement: Agreement,
}

const fn unary(path: &'static str, body: &'static str) -> Exchange {
    Exchange {
        path,
        body,
        stream_for: None,
        agreement: Agreement::Whole,
    }
}

const fn parse_error(path: &'static str, body: &'static str) -> Exchange {
    Exchange {
        agreement: Agreement::StatusAndCode,
        ..unary(path, body)
    }
}

const fn stream(path: &'static str, body: &'static str) -> Exchange {
    Exchange {
        stream_for: Some(Duration::from_millis(1500)),
        ..unary(path, body)
    }
}

/// Base64: foo Zm9v, bar YmFy, baz YmF6, foo/ Zm9vLw==, foo0 Zm9vMA==,
/// foo/a Zm9vL2E=, foo/b Zm9vL2I=, leased bGVhc2Vk, mylock bXlsb2Nr,
/// mylock/64 bXlsb2NrLzY0, el ZWw=, el/64 ZWwvNjQ=, none bm9uZQ==.
const SESSION: &[Exchange] = &[
    unary("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
    unary("/v3/kv/put", r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#),
    unary("/v3/kv/put", r#"{"key":"Zm9vL2E=","value":"MQ=="}"#),
    unary("/v3/kv/put", r#"{"key":"Zm9vL2I=","value":"Mg==","prevKv":true}"#),
    unary("/v3/kv/range", r#"{"key":"Zm9vLw==","range_end":"Zm9vMA=="}"#),
    unary(
        "/v3/kv/range",
        r#"{"key":"Zm9vLw==","range_end":"Zm9vMA==","sort_order":"DESCEND","sort_target":"KEY","limit":"1","keys_only":true}"#,
    ),
    unary(
        "/v3/kv/range",
        r#"{"key":"Zm9vLw==","range_end":"Zm9vMA==","count_only":true}"#,
    ),
    unary("/v3/kv/range", r#"{"key":"Zm9v","revision":100}"#),
    unary("/v3/kv/range", ""),
    parse_error("/v3/kv/range", r#"{"key":"#),
    parse_error("/v3/kv/range", r#"{"key":123}"#),
    unary(
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmF6"}],"success":[{"request_put":{"key":"Zm9v","value":"YmFy"}},{"request_range":{"key":"Zm9v"}}],"failure":[{"request_delete_range":{"key":"Zm9v"}}]}"#,
    ),
    unary(
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9vL2I=","result":"GREATER","target":"VERSION","version":"100"}],"success":[{"request_put":{"key":"Zm9v","value":"YmFy"}}],"failure":[{"request_delete_range":{"key":"Zm9vL2I=","prev_kv":true}}]}"#,
    ),
    unary(
        "/v3/kv/txn",
        r#"{"success":[{"request_put":{"key":"Zm9v","value":"YQ=="}},{"request_put":{"key":"Zm9v","value":"Yg=="}}]}"#,
    ),
    parse_error("/v3/kv/txn", r#"{"compare":[{"key":"Zm9v","result":"BOGUS"}]}"#),
    unary(
        "/v3/kv/deleterange",
        r#"{"key":"Zm9vLw==","range_end":"Zm9vMA==","prev_kv":true}"#,
    ),
    unary("/v3/kv/deleterange", r#"{"key":"bm9uZQ=="}"#),
    unary("/v3/kv/deleterange", r#"{"range_end":"bm9uZQ=="}"#),
    stream(
        "/v3/watch",
        r#"{"create_request":{"key":"Zm9v","start_revision":"2","prev_kv":true}}"#,
    ),
    stream(
        "/v3/watch",
        r#"{"create_request":{"key":"Zm9vLw==","range_end":"Zm9vMA==","start_revision":"3","filters":["NODELETE"]}}"#,
    ),
    stream(
        "/v3/watch",
        r#"{"create_request":{"key":"Zm9v"}}{"progress_request":{}}"#,
    ),
    Exchange {
        agreement: Agreement::StatusAndCode,
        ..stream("/v3/watch", "bad")
    },
    unary("/v3/kv/compaction", r#"{"revision":"4"}"#),
    unary("/v3/kv/compaction", r#"{"revision":"3"}"#),
    stream(
        "/v3/watch",
        r#"{"create_request":{"key":"Zm9v","start_revision":"2"}}"#,
    ),
    unary("/v3/kv/range", r#"{"key":"Zm9v","revision":"3"}"#),
    unary("/v3/lease/grant", r#"{"TTL":60,"ID":7}"#),
    unary("/v3/lease/grant", r#"{"TTL":"60","ID":"7"}"#),
    parse_error("/v3/lease/grant", r#"{"TTL":"sixty"}"#),
    unary("/v3/kv/put", r#"{"key":"bGVhc2Vk","value":"eA==","lease":"7"}"#),
    unary("/v3/kv/put", r#"{"key":"bGVhc2Vk","value":"eA==","lease":"8"}"#),
    stream("/v3/lease/keepalive", r#"{"ID":"7"}{"ID":7}"#),
    stream("/v3/lease/keepalive", r#"{"ID":"9"}"#),
    unary("/v3/lease/leases", "{}"),
    unary("/v3/kv/lease/leases", "{}"),
    unary("/v3/lease/revoke", r#"{"ID":"7"}"#),
    unary("/v3/kv/lease/revoke", r#"{"ID":"7"}"#),
    unary("/v3/kv/range", r#"{"key":"bGVhc2Vk"}"#),
    unary("/v3/lease/grant", r#"{"TTL":60,"ID":100}"#),
    unary("/v3/lock/lock", r#"{"name":"bXlsb2Nr","lease":"100"}"#),
    unary("/v3/lock/unlock", r#"{"key":"bXlsb2NrLzY0"}"#),
    unary(
        "/v3/election/campaign",
        r#"{"name":"ZWw=","lease":"100","value":"djE="}"#,
    ),
    unary("/v3/election/leader", r#"{"name":"ZWw="}"#),
    unary(
        "/v3/election/proclaim",
        r#"{"leader":{"name":"ZWw=","key":"ZWwvNjQ=","rev":"20","lease":"100"},"value":"djI="}"#,
    ),
    stream("/v3/election/observe", r#"{"name":"ZWw="}"#),
    unary(
        "/v3/election/resign",
        r#"{"leader":{"name":"ZWw=","key":"ZWwvNjQ=","rev":"20","lease":"100"}}"#,
    ),
    unary("/v3/election/leader", r#"{"name":"ZWw="}"#),
    unary("/v3beta/kv/put", r#"{"key":"YmV0YQ==","value":"eQ=="}"#),
    unary("/v3beta/kv/range", r#"{"key":"YmV0YQ=="}"#),
    Exchange {
        agreement: Agreement::Status,
        ..unary("/v3/kv/nothing", "{}")
    },
];

async fn answer(endpoint: &str, exchange: &Exchange) -> CurlAnswer {
    let seconds = exchange.stream_for.map(|d| format!("{:.1}", d.as_secs_f64()));
    let extra: Vec<&str> = match &seconds {
        Some(seconds) => vec!["--max-time", seconds],
        None => Vec::new(),
    };
    post(endpoint, exchange.path, exchange.body, &extra).await
}

#[tokio::test]
async fn the_same_curl_requests_get_the_same_json_from_keel_and_from_etcd() {
    if keel_tests::which("curl").is_none() {
        panic!("curl is required (.ci/run installs it)");
    }
    let etcd = Cluster::start_led(ClusterOptions::etcd(1))
        .await
        .expect("etcd starts");
    let keel = Cluster::start_led(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    let mut differences = Vec::new();
    for (step, exchange) in SESSION.iter().enumerate() {
        let from_etcd = answer(&etcd.endpoint(0), exchange).await;
        let from_keel = answer(&keel.endpoint(0), exchange).await;
        let what = format!("step {step}: POST {} {}", exchange.path, exchange.body);
        if from_etcd.http_status != from_keel.http_status {
            differences.push(format!(
                "{what}\n  HTTP status: etcd {} keel {}\n  etcd: {}\n  keel: {}",
                from_etcd.http_status, from_keel.http_status, from_etcd.body, from_keel.body
            ));
            continue;
        }
        let agree = match exchange.agreement {
            Agreement::Status => true,
            Agreement::StatusAndCode => {
                let code = |body: &str| json_values(body).first().map(|error| error["code"].clone());
                let etcd_code = code(&from_etcd.body);
                etcd_code.is_some() && etcd_code == code(&from_keel.body)
            }
            Agreement::Whole => json_values(&from_etcd.body) == json_values(&from_keel.body),
        };
        if !agree {
            differences.push(format!(
                "{what}\n  etcd: {}\n  keel: {}",
                from_etcd.body, from_keel.body
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} exchanges differ:\n{}",
        differences.len(),
        SESSION.len(),
        differences.join("\n")
    );
}

#[tokio::test]
async fn json_over_http2_without_tls_answers_as_over_http1_and_grpc_shares_the_port() {
    let keel = Cluster::start_led(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    let endpoint = keel.endpoint(0);
    let put = post(
        &endpoint,
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmFy"}"#,
        &["--http2-prior-knowledge"],
    )
    .await;
    assert_eq!(put.http_status, 200, "{put:?}");
    let range = r#"{"key":"Zm9v"}"#;
    let over_http2 = post(&endpoint, "/v3/kv/range", range, &["--http2-prior-knowledge"]).await;
    let over_http1 = post(&endpoint, "/v3/kv/range", range, &["--http1.1"]).await;
    assert_eq!(over_http2.http_status, 200);
    assert_eq!(over_http2.body, over_http1.body);
    assert_eq!(json_values(&over_http1.body)[0]["kvs"][0]["value"], "YmFy");
    // gRPC on the same port sees the gateway's write.
    let client = keel.client().expect("client");
    let got = client
        .range(keel_api::etcdserverpb::RangeRequest {
            key: b"foo".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range over gRPC");
    assert_eq!(got.kvs[0].value, b"bar");
}

async fn open_watch(
    client: &mut WatchClient<tonic::transport::Channel>,
    key: &[u8],
) -> tonic::Streaming<keel_api::etcdserverpb::WatchResponse> {
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    };
    // The request side ends after the create (the watch goes on, as in
    // etcd), so dropping the response ends the stream.
    client
        .watch(futures::stream::iter(vec![create]))
        .await
        .expect("watch opens")
        .into_inner()
}

#[tokio::test]
async fn max_concurrent_streams_holds_back_a_connections_stream_past_the_limit_until_one_ends() {
    let mut options = ClusterOptions::keel(1);
    options.extra_args = vec!["--max-concurrent-streams".into(), "2".into()];
    let keel = Cluster::start_led(options).await.expect("keel starts");
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", keel.endpoint(0)))
        .expect("url")
        .connect()
        .await
        .expect("one connection");
    let mut client = WatchClient::new(channel);
    let mut first = open_watch(&mut client, b"a").await;
    let mut second = open_watch(&mut client, b"b").await;
    for watch in [&mut first, &mut second] {
        let created = watch.message().await.expect("answer").expect("created");
        assert!(created.created);
    }
    let mut third_client = client.clone();
    let third = tokio::spawn(async move {
        let mut third = open_watch(&mut third_client, b"c").await;
        third.message().await.expect("answer").expect("created")
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !third.is_finished(),
        "a third stream on the connection was served past the limit of 2"
    );
    drop(first);
    let created = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the third stream is served once one ends")
        .expect("task");
    assert!(created.created);
}

/// etcd's gateway closes its side of a watch after the request body; etcd
/// (and now keel) keeps delivering events until the client goes away.
#[tokio::test]
async fn a_watch_whose_client_closed_its_sending_side_still_gets_new_events() {
    let keel = Cluster::start_led(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", keel.endpoint(0)))
        .expect("url")
        .connect()
        .await
        .expect("connects");
    let mut watch = open_watch(&mut WatchClient::new(channel), b"later").await;
    assert!(watch.message().await.expect("answer").expect("created").created);
    keel.client()
        .expect("client")
        .put(keel_api::etcdserverpb::PutRequest {
            key: b"later".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put");
    let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("an event arrives")
        .expect("answer")
        .expect("the stream is still open");
    assert_eq!(event.events.len(), 1);
    assert_eq!(
        event.events[0].kv.as_ref().map(|kv| kv.value.clone()),
        Some(b"v".to_vec())
    );
}
