//! The etcd `Lease` service over the member's lessor (`keel_node::lessor`):
//! grants and revokes go through the write path from any member,
//! keep-alives and TimeToLive are answered by the leader (forwarded there
//! by a follower), the lease list is this member's applied state.
//!
//! A keep-alive stream gets one task that answers its requests in order,
//! renewing up to 64 of them at once (etcd renews one at a time, without
//! the quorum confirmation keel's leader makes before each renewal; many
//! at once share those rounds); when the client ends or breaks the stream,
//! the task ends with it.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keel_api::etcdserverpb::lease_server::Lease;
use keel_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::auth_check::Caller;
use crate::context::{mvcc_status, MemberContext};

/// Keep-alive answers queued for a client that does not read.
const KEEP_ALIVE_ANSWERS_QUEUED: usize = 16;
/// Renewals of one stream answered at once (answers keep request order);
/// concurrent renewals share the leader's quorum confirmation rounds.
const RENEWALS_IN_FLIGHT_PER_STREAM: usize = 64;

pub struct LeaseService {
    context: Arc<MemberContext>,
}

impl LeaseService {
    pub fn new(context: Arc<MemberContext>) -> Self {
        LeaseService { context }
    }
}

type KeepAliveAnswers = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        let grant = keel_api::keelpb::write_request::Request::LeaseGrant(request);
        crate::space_quota::admit(&self.context, &grant).await?;
        let mut granted = self.context.node.lessor().grant(request).await?;
        granted.header = self.context.stamp(granted.header);
        Ok(Response::new(granted))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // As etcd: while auth is on, revoking deletes the lease's keys, so
        // the caller needs write permission on every one of them.
        let caller = Caller::of(&self.context, &request)?;
        if caller.auth_enabled() {
            let keys = self
                .context
                .node
                .state()
                .store()
                .lease_keys(request.get_ref().id)
                .map_err(mvcc_status)?;
            for key in &keys {
                caller.check(&self.context, keel_auth::Access::Write, key, &[])?;
            }
        }
        let mut revoked = self.context.node.lessor().revoke(request.get_ref().id).await?;
        revoked.header = self.context.stamp(revoked.header);
        Ok(Response::new(revoked))
    }

    type LeaseKeepAliveStream = KeepAliveAnswers;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveAnswers>, Status> {
        let requests = request.into_inner();
        let (answers, queue) = tokio::sync::mpsc::channel(KEEP_ALIVE_ANSWERS_QUEUED);
        let context = self.context.clone();
        tokio::spawn(async move {
            let renewals = futures::StreamExt::buffered(
                requests.map_while(Result::ok).map(move |keep_alive| {
                    let context = context.clone();
                    async move {
                        match context.node.lessor().renew(keep_alive.id).await {
                            Ok(mut renewed) => {
                                renewed.header = context.header_now();
                                Ok(renewed)
                            }
                            Err(error) => Err(Status::from(error)),
                        }
                    }
                }),
                RENEWALS_IN_FLIGHT_PER_STREAM,
            );
            let mut renewals = std::pin::pin!(renewals);
            while let Some(answer) = futures::StreamExt::next(&mut renewals).await {
                let failed = answer.is_err();
                if answers.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(queue))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let caller = Caller::of(&self.context, &request)?;
        let request = request.into_inner();
        let keys_asked = request.keys;
        let mut answer = self.context.node.lessor().time_to_live(request).await?;
        if keys_asked {
            // The attached keys' names are readable only by who may read
            // every one of them (etcd's fix for CVE-2023-32082; 3.4.23,
            // the Debian etcd, still answers them to anyone).
            for key in &answer.keys {
                caller.check(&self.context, keel_auth::Access::Read, key, &[])?;
            }
        }
        answer.header = self.context.header_now();
        Ok(Response::new(answer))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self.context.node.lessor().leases().map_err(mvcc_status)?;
        Ok(Response::new(LeaseLeasesResponse {
            header: self.context.header_now(),
            leases: leases.iter().map(|lease| LeaseStatus { id: lease.id }).collect(),
        }))
    }
}
