//! The etcd `Cluster` service: `MemberList` from Raft membership plus the
//! names and client URLs members published; membership changes are not
//! served yet and answer UNIMPLEMENTED.

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::Arc;

use keel_api::etcdserverpb::cluster_server::Cluster;
use keel_api::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::context::MemberContext;

pub struct ClusterService {
    context: Arc<MemberContext>,
}

impl ClusterService {
    pub fn new(context: Arc<MemberContext>) -> Self {
        ClusterService { context }
    }
}

/// Every member of the cluster as etcd lists them: a member that has not yet
/// published its attributes shows an empty name and no client URLs.
pub fn list_members(context: &MemberContext) -> Vec<Member> {
    let membership = context
        .node
        .raft()
        .metrics()
        .borrow_watched()
        .membership_config
        .clone();
    let attributes = context.node.state().member_attributes();
    let membership = membership.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| {
            let published = attributes.get(id);
            Member {
                id: *id,
                name: published.map(|a| a.name.clone()).unwrap_or_default(),
                peer_ur_ls: vec![node.peer_url.clone()],
                client_ur_ls: published.map(|a| a.client_urls.clone()).unwrap_or_default(),
                is_learner: !voters.contains(id),
            }
        })
        .collect()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, _: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Err(Status::unimplemented("keel: MemberAdd is not supported yet"))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(Status::unimplemented("keel: MemberRemove is not supported yet"))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(Status::unimplemented("keel: MemberUpdate is not supported yet"))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.context.node.linearize().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.context.header_now(),
            members: list_members(&self.context),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(Status::unimplemented("keel: MemberPromote is not supported yet"))
    }
}
