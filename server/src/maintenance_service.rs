//! The etcd `Maintenance` service: `Status` (with the raised alarms in its
//! errors), `Hash`, `HashKV`, `Snapshot` (`snapshot_stream.rs`),
//! `MoveLeader` (a leadership transfer) and `Alarm` (raise and clear
//! through Raft, list from the applied state) and `Defragment` (this
//! member's keyspace only, never through Raft, as etcd's).
//!
//! Status' sizes: `db_size` is what the member's two sled databases take on
//! disk (keyspace and Raft log); `db_size_in_use` counts the keyspace's
//! live bytes (`MvccStore::live_bytes`: the keys and values of its entries,
//! kept current by every commit, no scan) plus the Raft log's size on disk
//! (counted whole: the log is purged behind each snapshot and is not
//! defragmented). After a compaction `db_size_in_use` drops at once while
//! `db_size` keeps the space sled still holds.

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use keel_api::etcdserverpb::maintenance_server::Maintenance;
use keel_api::etcdserverpb::{
    alarm_request, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    ResponseHeader, SnapshotRequest, StatusRequest, StatusResponse,
};
use keel_api::keelpb::{write_request, write_response, WriteRequest};
use tonic::{Request, Response, Status};

use crate::auth_check::Caller;
use crate::context::{leader_transfer_status, mvcc_status, MemberContext};

/// How long a MoveLeader waits for the transferee to take over when the
/// caller set no deadline (etcd waits as long as the caller does; a caller
/// with a deadline is cut off by it, as in etcd).
const MOVE_LEADER_LIMIT: Duration = Duration::from_secs(30);

pub struct MaintenanceService {
    context: Arc<MemberContext>,
}

impl MaintenanceService {
    pub fn new(context: Arc<MemberContext>) -> Self {
        MaintenanceService { context }
    }
}

use crate::snapshot_stream::SnapshotStream;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// GET lists the raised alarms of the type asked (every type for
    /// NONE) from this member's applied state; ACTIVATE and DEACTIVATE go
    /// through Raft and answer the alarms they changed, as etcd's do. As
    /// etcd 3.4's (its applier builds them), the responses carry no header.
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let caller = Caller::of(&self.context, &request)?;
        let request = request.into_inner();
        if request.action() == alarm_request::AlarmAction::Get {
            let alarms = self
                .context
                .node
                .state()
                .alarms()
                .into_iter()
                .filter(|raised| request.alarm == AlarmType::None as i32 || raised.alarm == request.alarm)
                .map(|raised| raised.to_member())
                .collect();
            return Ok(Response::new(AlarmResponse { header: None, alarms }));
        }
        // Raising or clearing an alarm is root's, as in etcd.
        caller.check_admin(&self.context)?;
        let written = self
            .context
            .node
            .write(WriteRequest {
                checked_auth_revision: caller.checked_revision(),
                request: Some(write_request::Request::Alarm(request)),
            })
            .await?;
        let Some(write_response::Response::Alarm(changed)) = written.response else {
            return Err(Status::internal(
                "etcdserver: unexpected response kind for the request",
            ));
        };
        Ok(Response::new(changed))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let context = &self.context;
        // Every field from one snapshot: a term paired with another term's
        // leader reads as two leaders in one term.
        let metrics = context.node.raft().metrics().borrow_watched().clone();
        let leader = context
            .node
            .leadership()
            .known_leader_in(&metrics)
            .map_or(0, |(id, _)| id);
        let store = context.node.state().store();
        let raft_log_size = context.node.raft_log_size_on_disk();
        // sled writes some buffers to its file only at its next flush, so
        // the file can briefly be smaller than what the keyspace holds: the
        // size is never reported below what is in use.
        let db_size = store.size_on_disk().max(store.live_bytes()) + raft_log_size;
        let db_size_in_use = store.live_bytes() + raft_log_size;
        let alarms = context.node.state().alarms();
        let is_learner = !metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == context.member_id);
        Ok(Response::new(StatusResponse {
            header: context.header_now(),
            version: keel_api::REPORTED_ETCD_VERSION.to_string(),
            db_size: db_size as i64,
            leader,
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |id| id.index),
            errors: alarms
                .into_iter()
                .map(|raised| keel_api::go_format::alarm_member_text(&raised.to_member()))
                .collect(),
            db_size_in_use: db_size_in_use as i64,
            is_learner,
        }))
    }

    /// Rewrites this member's keyspace into a fresh tree
    /// (`MvccStore::defragment`) on the blocking pool: reads go on
    /// meanwhile, writes (the apply) wait for it, as etcd's do. Like etcd
    /// 3.4's the response carries no header.
    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Caller::of(&self.context, &request)?.check_maintenance(&self.context)?;
        let store = self.context.node.state().store().clone();
        // The store logs what the defragmentation moved.
        tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|join_error| Status::internal(format!("etcdserver: defragment: {join_error}")))?
            .map_err(mvcc_status)?;
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    /// A crc32 of the member's whole keyspace (store meta, every change
    /// record, leases and their attachments; not the Raft position kept
    /// beside them), at the current revision, which the header carries:
    /// members that applied the same log answer the same hash
    /// (`MvccStore::hash`).
    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Caller::of(&self.context, &request)?.check_maintenance(&self.context)?;
        let (hash, revision) = self.context.node.state().store().hash().map_err(mvcc_status)?;
        Ok(Response::new(HashResponse {
            header: self.context.stamp(Some(ResponseHeader {
                revision,
                ..Default::default()
            })),
            hash,
        }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Caller::of(&self.context, &request)?.check_maintenance(&self.context)?;
        let hash = self
            .context
            .node
            .state()
            .store()
            .hash_kv(request.get_ref().revision)
            .map_err(mvcc_status)?;
        Ok(Response::new(HashKvResponse {
            header: self.context.header_now(),
            hash: hash.hash,
            compact_revision: hash.compact_revision,
            hash_revision: hash.revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        Caller::of(&self.context, &request)?.check_maintenance(&self.context)?;
        crate::snapshot_stream::snapshot_stream(self.context.clone())
            .await
            .map(Response::new)
    }

    /// etcd's MoveLeader: only the leader moves its leadership ("not
    /// leader" elsewhere); the target must be a voter ("bad leader
    /// transferee"); answers once the target leads. Like etcd 3.4 the
    /// response carries no header.
    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.get_ref().target_id;
        self.context
            .node
            .transfer_leadership(target, MOVE_LEADER_LIMIT)
            .await
            .map_err(leader_transfer_status)?;
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }
}
