//! etcd's v3election `Election` service, as etcd serves it: the member runs
//! `keel_client`'s election recipe against itself (through its loopback
//! client, `loopback.rs`) with the caller's lease, which the caller keeps
//! alive. Campaign waits as long as the caller does; a caller who leaves
//! while it waits has its candidacy withdrawn (its key deleted). Proclaim
//! and Resign resume the candidacy the request's `LeaderKey` names; Leader
//! and Observe read the election.

use std::pin::Pin;

use futures::Stream;
use keel_api::etcdserverpb::RangeResponse;
use keel_api::v3electionpb::election_server::Election as ElectionRpc;
use keel_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use keel_api::WireError;
use keel_client::election::Election;
use keel_client::Client;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use crate::context::MemberContext;
use crate::loopback::{caller_session, client_acting_for, concurrency_status, run_for_caller};

pub struct ElectionService {
    context: Arc<MemberContext>,
    /// This member's client to itself.
    client: Client,
}

impl ElectionService {
    pub fn new(context: Arc<MemberContext>, client: Client) -> Self {
        ElectionService { context, client }
    }

    /// The member's client acting as `request`'s caller.
    fn client_for<T>(&self, request: &Request<T>) -> Result<Client, Status> {
        client_acting_for(&self.context, &self.client, request)
    }
}

type LeaderUpdates = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

/// etcd's answer for a leader read: the header and the one key-value.
fn leader_response(read: RangeResponse) -> LeaderResponse {
    LeaderResponse {
        header: read.header,
        kv: read.kvs.into_iter().next(),
    }
}

#[tonic::async_trait]
impl ElectionRpc for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let client = self.client_for(&request)?;
        let CampaignRequest { name, lease, value } = request.into_inner();
        let answer = run_for_caller(move |caller_gone| async move {
            let session = caller_session(&client, lease).await?;
            let mut election = Election::new(&name);
            election
                .campaign_until(&session, &value, caller_gone.wait())
                .await
                .map_err(concurrency_status)?;
            Ok(CampaignResponse {
                header: election.header().cloned(),
                leader: Some(LeaderKey {
                    key: election.key().to_vec(),
                    rev: election.revision(),
                    lease: session.lease(),
                    name,
                }),
            })
        })
        .await?;
        Ok(Response::new(answer))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let client = self.client_for(&request)?;
        let ProclaimRequest { leader, value } = request.into_inner();
        let leader = leader.ok_or(WireError::MissingLeaderKey)?;
        let session = caller_session(&client, leader.lease).await?;
        let mut election = Election::resume(&leader.name, &leader.key, leader.rev);
        election
            .proclaim(&session, &value)
            .await
            .map_err(concurrency_status)?;
        Ok(Response::new(ProclaimResponse {
            header: election.header().cloned(),
        }))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let client = self.client_for(&request)?;
        let read = Election::new(&request.into_inner().name)
            .leader(&client)
            .await
            .map_err(concurrency_status)?;
        Ok(Response::new(leader_response(read)))
    }

    type ObserveStream = LeaderUpdates;

    async fn observe(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderUpdates>, Status> {
        // The observer stops when the stream is dropped (the caller left),
        // and the stream ends when the observer stops (as etcd's does).
        let client = self.client_for(&request)?;
        let updates = Election::new(&request.into_inner().name).observe(&client);
        let answers = ReceiverStream::new(updates).map(|read| Ok(leader_response(read)));
        Ok(Response::new(Box::pin(answers)))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let client = self.client_for(&request)?;
        let leader = request.into_inner().leader.ok_or(WireError::MissingLeaderKey)?;
        let session = caller_session(&client, leader.lease).await?;
        let mut election = Election::resume(&leader.name, &leader.key, leader.rev);
        election.resign(&session).await.map_err(concurrency_status)?;
        Ok(Response::new(ResignResponse {
            header: election.header().cloned(),
        }))
    }
}
