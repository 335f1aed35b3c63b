//! The etcd `Cluster` service: `MemberList` from Raft membership plus the
//! names and client URLs members published; MemberAdd, MemberRemove,
//! MemberUpdate and MemberPromote as membership changes made by the leader
//! (`keel-node`'s `membership.rs`), answered once this member sees the
//! new membership, so its member list shows the change.

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::Arc;

use keel_api::etcdserverpb::cluster_server::Cluster;
use keel_api::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse,
};
use keel_api::keelpb::membership_change::Change;
use keel_api::keelpb::MembershipChange;
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

/// How long a member that made a change waits to see it applied locally.
const SEE_CHANGE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

impl ClusterService {
    /// Makes `change` through the leader, then waits until this member's
    /// membership satisfies `seen` (the leader committed it; a follower
    /// applies it a moment later).
    async fn change(
        &self,
        change: Change,
        seen: impl Fn(&openraft::Membership<u64, keel_raft::MemberNode>, u64) -> bool,
    ) -> Result<u64, Status> {
        let id = self
            .context
            .node
            .change_membership(MembershipChange { change: Some(change) })
            .await?;
        let mut metrics = self.context.node.raft().metrics();
        let _ = tokio::time::timeout(SEE_CHANGE_LIMIT, async {
            loop {
                if seen(metrics.borrow_watched().membership_config.membership(), id) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        Ok(id)
    }
}

fn is_voter(membership: &openraft::Membership<u64, keel_raft::MemberNode>, id: u64) -> bool {
    membership.voter_ids().any(|voter| voter == id)
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let request = request.into_inner();
        let (peer_urls, is_learner) = (request.peer_ur_ls.clone(), request.is_learner);
        let id = self
            .change(Change::Add(request), |membership, id| {
                membership.get_node(&id).is_some() && membership.get_joint_config().len() == 1
            })
            .await?;
        Ok(Response::new(MemberAddResponse {
            header: self.context.header_now(),
            member: Some(Member {
                id,
                name: String::new(),
                peer_ur_ls: peer_urls,
                client_ur_ls: Vec::new(),
                is_learner,
            }),
            members: list_members(&self.context),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.change(Change::Remove(request.into_inner()), |membership, id| {
            membership.get_node(&id).is_none()
        })
        .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.context.header_now(),
            members: list_members(&self.context),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        let peer_url = request.peer_ur_ls.first().cloned().unwrap_or_default();
        self.change(Change::Update(request), move |membership, id| {
            membership
                .get_node(&id)
                .is_some_and(|node| node.peer_url == peer_url)
        })
        .await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.context.header_now(),
            members: list_members(&self.context),
        }))
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
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.change(Change::Promote(request.into_inner()), is_voter)
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.context.header_now(),
            members: list_members(&self.context),
        }))
    }
}
