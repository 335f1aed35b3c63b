//! Bad input gets etcd's gRPC code and text, and never stops a member from
//! serving. Each case runs against keel and against the real etcd in the
//! same test, so the expected answers are etcd's own, not ours.

use keel_api::etcdserverpb::{
    request_op, CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_client::{Client, ClientError};
use keel_tests::{Cluster, ClusterOptions};
use tonic::Code;

fn put(key: &str, value: Vec<u8>) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value,
        ..Default::default()
    }
}

fn expect_error(result: Result<impl std::fmt::Debug, ClientError>, code: Code, message: &str, what: &str) {
    match result {
        Ok(response) => panic!("{what}: expected {code:?} {message:?}, got success {response:?}"),
        Err(error) => {
            assert_eq!(error.code(), code, "{what}: code ({error})");
            assert_eq!(error.to_string(), message, "{what}: message");
        }
    }
}

async fn still_serving(client: &Client, what: &str) {
    client
        .put(put("alive", b"yes".to_vec()))
        .await
        .unwrap_or_else(|e| panic!("after {what}: put fails: {e}"));
    let response = client
        .range(RangeRequest {
            key: b"alive".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("after {what}: range fails: {e}"));
    assert_eq!(response.kvs.len(), 1, "after {what}");
}

/// The cases whose answers etcd and keel must share.
async fn check_shared_cases(client: &Client, flavor: &str) {
    let empty_key = client.put(put("", b"v".to_vec())).await;
    expect_error(
        empty_key,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
        flavor,
    );
    let empty_range = client.range(RangeRequest::default()).await;
    expect_error(
        empty_range,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
        flavor,
    );
    let empty_delete = client.delete_range(DeleteRangeRequest::default()).await;
    expect_error(
        empty_delete,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
        flavor,
    );
    still_serving(client, "empty keys").await;

    let too_large = client.put(put("big", vec![b'x'; 1_600_000])).await;
    expect_error(
        too_large,
        Code::InvalidArgument,
        "etcdserver: request is too large",
        flavor,
    );
    still_serving(client, "a request over --max-request-bytes").await;

    let op = |i: usize| RequestOp {
        request: Some(request_op::Request::RequestPut(put(
            &format!("t{i}"),
            b"v".to_vec(),
        ))),
    };
    let too_many = TxnRequest {
        success: (0..129).map(op).collect(),
        ..Default::default()
    };
    expect_error(
        client.txn(too_many).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
        flavor,
    );
    still_serving(client, "a txn over --max-txn-ops").await;

    for i in 0..5 {
        client
            .put(put("history", i.to_string().into_bytes()))
            .await
            .expect("put");
    }
    let current = client
        .range(RangeRequest {
            key: b"history".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .header
        .expect("header")
        .revision;
    client
        .compact(CompactionRequest {
            revision: current - 2,
            physical: false,
        })
        .await
        .expect("compact");
    let below_compaction = client
        .range(RangeRequest {
            key: b"history".to_vec(),
            revision: current - 3,
            ..Default::default()
        })
        .await;
    expect_error(
        below_compaction,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
        flavor,
    );
    let compact_again = client
        .compact(CompactionRequest {
            revision: current - 3,
            physical: false,
        })
        .await;
    expect_error(
        compact_again,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
        flavor,
    );
    let future = client
        .range(RangeRequest {
            key: b"history".to_vec(),
            revision: current + 100,
            ..Default::default()
        })
        .await;
    expect_error(
        future,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
        flavor,
    );
    still_serving(client, "compacted and future revisions").await;

    let nothing = client
        .range(RangeRequest {
            key: b"no-such-key".to_vec(),
            ..Default::default()
        })
        .await
        .expect("an empty range is not an error");
    assert!(
        nothing.kvs.is_empty() && nothing.count == 0,
        "{flavor}: empty range"
    );
    let inverted = client
        .range(RangeRequest {
            key: b"z".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .expect("an inverted range is not an error");
    assert!(
        inverted.kvs.is_empty() && inverted.count == 0,
        "{flavor}: inverted range"
    );
    still_serving(client, "empty and inverted ranges").await;
}

#[tokio::test]
async fn bad_input_gets_etcds_codes_and_texts_on_keel_and_on_etcd() {
    let etcd = Cluster::start(ClusterOptions::etcd(1))
        .await
        .expect("etcd starts");
    check_shared_cases(&etcd.client().expect("client"), "etcd").await;

    let keel = Cluster::start(ClusterOptions::keel(3))
        .await
        .expect("keel starts");
    // Through every member: followers forward writes and ask for read indexes.
    for member in 0..3 {
        let client = keel.member_client(member).expect("client");
        check_shared_cases(&client, &format!("keel member {member}")).await;
    }
}

#[tokio::test]
async fn a_2_mib_value_is_refused_as_too_large_and_the_member_keeps_serving() {
    // etcd's gRPC layer refuses a 2 MiB message with RESOURCE_EXHAUSTED before
    // its own check runs; keel answers etcd's documented InvalidArgument
    // "request is too large" for every request over --max-request-bytes.
    let keel = Cluster::start(ClusterOptions::keel(3))
        .await
        .expect("keel starts");
    for member in 0..3 {
        let client = keel.member_client(member).expect("client");
        let result = client.put(put("two-mib", vec![b'x'; 2 * 1024 * 1024])).await;
        expect_error(
            result,
            Code::InvalidArgument,
            "etcdserver: request is too large",
            "keel 2 MiB",
        );
        still_serving(&client, "a 2 MiB value").await;
    }
    let absent = keel
        .client()
        .expect("client")
        .range(RangeRequest {
            key: b"two-mib".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range");
    assert!(absent.kvs.is_empty(), "a refused write must not be applied");
}

#[tokio::test]
async fn a_malformed_grpc_timeout_refuses_the_call_at_once_with_internal() {
    // grpc-go's server refuses such a call with Internal "malformed
    // grpc-timeout: ..." (etcd 3.4's older grpc-go resets the stream); keel
    // once ran it with no deadline at all.
    use keel_tests::bare_http2::unary_call_head;
    use prost::Message;
    use std::time::Duration;

    let keel = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    let range = RangeRequest {
        key: b"any".to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    for malformed in ["12x", "123456789m", "S1", "m"] {
        let answer = unary_call_head(
            &keel.endpoint(0),
            "/etcdserverpb.KV/Range",
            &range,
            malformed,
            Duration::from_secs(10),
        )
        .await
        .expect("an answer");
        let header = |name: &str| {
            answer
                .headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/grpc"),
            "{malformed}"
        );
        assert_eq!(
            header("grpc-status").as_deref(),
            Some("13"),
            "{malformed}: {answer:?}"
        );
        let message = header("grpc-message").unwrap_or_default();
        assert!(
            message.starts_with("malformed%20grpc-timeout"),
            "{malformed}: {message}"
        );
    }
    still_serving(&keel.client().expect("client"), "malformed grpc-timeouts").await;
}
