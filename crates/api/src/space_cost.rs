//! etcd's space cost of a write (`etcdserver/quota.go`), the one model both
//! of keel's space rules use: a member refuses a write whose cost would take
//! its keyspace over `--quota-backend-bytes` (and raises the NOSPACE alarm),
//! and while NOSPACE is raised every member refuses, at apply, each write
//! whose cost is not zero. A put costs its key and value plus 256 bytes of
//! metadata, a lease grant 64 bytes, a txn the larger of its two branches'
//! top-level puts (a txn that only reads or deletes costs nothing); deletes,
//! compactions, revokes and checkpoints cost nothing.

use crate::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};
use crate::keelpb::write_request::Request;

/// etcd's estimate of a key's metadata on disk.
const KV_OVERHEAD: u64 = 256;
/// etcd's estimate of a lease record on disk.
const LEASE_OVERHEAD: u64 = 64;

/// The bytes `request` may add to the keyspace (0: it cannot grow it).
pub fn space_cost(request: &Request) -> u64 {
    match request {
        Request::Put(put) => put_cost(put),
        Request::Txn(txn) => txn_cost(txn),
        Request::LeaseGrant(_) => LEASE_OVERHEAD,
        Request::DeleteRange(_)
        | Request::Compaction(_)
        | Request::MemberAttributes(_)
        | Request::LeaseRevoke(_)
        | Request::LeaseCheckpoint(_)
        | Request::Alarm(_) => 0,
        // Auth changes live in the state machine's metadata, not the
        // keyspace, and etcd's capped applier lets them through.
        Request::AuthEnable(_)
        | Request::AuthDisable(_)
        | Request::AuthUserAdd(_)
        | Request::AuthUserDelete(_)
        | Request::AuthUserChangePassword(_)
        | Request::AuthUserGrantRole(_)
        | Request::AuthUserRevokeRole(_)
        | Request::AuthRoleAdd(_)
        | Request::AuthRoleDelete(_)
        | Request::AuthRoleGrantPermission(_)
        | Request::AuthRoleRevokePermission(_)
        | Request::AuthTokenAssign(_) => 0,
    }
}

fn put_cost(put: &PutRequest) -> u64 {
    KV_OVERHEAD + put.key.len() as u64 + put.value.len() as u64
}

fn txn_cost(txn: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(put)) => put_cost(put),
                _ => 0,
            })
            .sum()
    };
    branch(&txn.success).max(branch(&txn.failure))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest};

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    fn op(request: request_op::Request) -> RequestOp {
        RequestOp {
            request: Some(request),
        }
    }

    #[test]
    fn costs_follow_etcds_model() {
        assert_eq!(space_cost(&Request::Put(put("k", "vv"))), 259);
        assert_eq!(space_cost(&Request::LeaseGrant(LeaseGrantRequest::default())), 64);
        assert_eq!(
            space_cost(&Request::DeleteRange(DeleteRangeRequest::default())),
            0
        );
        let txn = TxnRequest {
            success: vec![
                op(request_op::Request::RequestPut(put("a", "1"))),
                op(request_op::Request::RequestPut(put("b", "1"))),
            ],
            failure: vec![op(request_op::Request::RequestPut(put("c", "123456")))],
            ..Default::default()
        };
        assert_eq!(space_cost(&Request::Txn(txn)), 2 * 258);
        let deletes_only = TxnRequest {
            success: vec![op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest::default(),
            ))],
            ..Default::default()
        };
        assert_eq!(space_cost(&Request::Txn(deletes_only)), 0);
    }
}
