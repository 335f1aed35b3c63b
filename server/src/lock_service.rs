//! etcd's v3lock `Lock` service, as etcd serves it: the member runs
//! `keel_client`'s mutex recipe against itself (through its loopback
//! client, `loopback.rs`) with the caller's lease, which the caller keeps
//! alive. Lock waits as long as the caller does; a caller who leaves while
//! it waits has its key deleted. Unlock deletes the key Lock answered.

use keel_api::etcdserverpb::DeleteRangeRequest;
use keel_api::v3lockpb::lock_server::Lock;
use keel_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use keel_client::lock::lock_until;
use keel_client::Client;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use crate::context::MemberContext;
use crate::loopback::{caller_session, client_acting_for, concurrency_status, run_for_caller};

pub struct LockService {
    context: Arc<MemberContext>,
    /// This member's client to itself.
    client: Client,
}

impl LockService {
    pub fn new(context: Arc<MemberContext>, client: Client) -> Self {
        LockService { context, client }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let client = client_acting_for(&self.context, &self.client, &request)?;
        let LockRequest { name, lease } = request.into_inner();
        let held = run_for_caller(move |caller_gone| async move {
            let session = caller_session(&client, lease).await?;
            lock_until(&session, &name, caller_gone.wait())
                .await
                .map_err(concurrency_status)
        })
        .await?;
        Ok(Response::new(LockResponse {
            header: Some(*held.header()),
            key: held.key().to_vec(),
        }))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let client = client_acting_for(&self.context, &self.client, &request)?;
        let deleted = client
            .delete_range(DeleteRangeRequest {
                key: request.into_inner().key,
                ..Default::default()
            })
            .await
            .map_err(|error| concurrency_status(error.into()))?;
        Ok(Response::new(UnlockResponse {
            header: deleted.header,
        }))
    }
}
