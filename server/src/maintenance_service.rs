//! The etcd `Maintenance` service: `Status`, `Hash`, `HashKV`, `MoveLeader`
//! (a leadership transfer) and alarm listing (keel raises no alarms yet);
//! the rest answers UNIMPLEMENTED.

use openraft::async_runtime::watch::WatchReceiver;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use keel_api::etcdserverpb::maintenance_server::Maintenance;
use keel_api::etcdserverpb::{
    alarm_request, AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, ResponseHeader,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

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

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        if request.get_ref().action() != alarm_request::AlarmAction::Get {
            return Err(Status::unimplemented(
                "keel: raising or clearing alarms is not supported yet",
            ));
        }
        Ok(Response::new(AlarmResponse {
            header: self.context.header_now(),
            alarms: Vec::new(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let context = &self.context;
        let metrics = context.node.raft().metrics().borrow_watched().clone();
        let leader = context.node.leadership().known_leader().map_or(0, |(id, _)| id);
        let db_size = context.node.state().store().size_on_disk() + context.node.raft_log_size_on_disk();
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
            errors: Vec::new(),
            db_size_in_use: db_size as i64,
            is_learner,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(Status::unimplemented("keel: Defragment is not supported yet"))
    }

    /// A crc32 of the member's whole keyspace (store meta, every change
    /// record, leases and their attachments; not the Raft position kept
    /// beside them), at the current revision, which the header carries:
    /// members that applied the same log answer the same hash
    /// (`MvccStore::hash`).
    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
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

    async fn snapshot(&self, _: Request<SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        Err(Status::unimplemented("keel: Snapshot is not supported yet"))
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
