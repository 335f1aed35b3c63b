//! The stacked topology: an application that runs keel members inside its
//! own process. [`StackedCluster::start`] starts three `keel_node::Node`s on
//! 127.0.0.1 (ports chosen by the kernel), each with its own data dir, and
//! the application reads and writes through their handles; no etcd client
//! service is involved. `src/main.rs` is a runnable demo of it and
//! `tests/stacked_cluster.rs` drives it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_api::keelpb::{write_request, write_response, WriteRequest};
use keel_node::{
    Bootstrap, Node, NodeConfig, NodeError, NodeHandle, NodeTestHooks, RaftTiming, RequestError,
};
use keel_raft::{MemberNode, NodeId};
use tokio::net::TcpListener;

/// Why the example cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum StackedClusterError {
    #[error("binding a peer listener: {0}")]
    Bind(#[from] std::io::Error),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("reading the keyspace: {0}")]
    Keyspace(#[from] keel_mvcc::MvccError),
    #[error("no member led within {0:?}")]
    NoLeader(Duration),
    #[error("member {0} is not running")]
    NotRunning(NodeId),
    #[error("the write was answered with another kind of response")]
    UnexpectedResponse,
}

/// Three members in this process; slot `i` holds member id `i + 1`.
pub struct StackedCluster {
    members: Vec<Option<Node>>,
}

impl StackedCluster {
    /// Starts a new three-member cluster with its data under `data_root`.
    pub async fn start(data_root: &Path, timing: RaftTiming) -> Result<StackedCluster, StackedClusterError> {
        let mut listeners = Vec::new();
        let mut initial_members = BTreeMap::new();
        for id in 1..=3u64 {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let peer_url = format!("http://{}", listener.local_addr()?);
            initial_members.insert(
                id,
                MemberNode {
                    name: format!("m{id}"),
                    peer_url,
                },
            );
            listeners.push((id, listener));
        }
        let mut members = Vec::new();
        for (id, listener) in listeners {
            let config = NodeConfig {
                // The example's cluster has a fixed id: nothing outside it asks.
                cluster_id: 1,
                member_id: id,
                name: format!("m{id}"),
                cluster_name: "stacked-example".to_string(),
                data_dir: data_root.join(format!("m{id}")),
                initial_members: initial_members.clone(),
                bootstrap: Bootstrap::NewCluster,
                peer_listeners: vec![listener],
                peer_tls: None,
                timing,
                keyspace_cache_bytes: 16 * 1024 * 1024,
                peer_dial_overrides: HashMap::new(),
                lease_checkpoint_interval: keel_node::DEFAULT_LEASE_CHECKPOINT_INTERVAL,
                test_hooks: NodeTestHooks::default(),
            };
            members.push(Some(Node::start(config).await?));
        }
        Ok(StackedCluster { members })
    }

    /// The handle of member `id` (1, 2 or 3) while it runs.
    pub fn member(&self, id: NodeId) -> Result<&NodeHandle, StackedClusterError> {
        let slot = usize::try_from(id).ok().and_then(|id| id.checked_sub(1));
        slot.and_then(|slot| self.members.get(slot))
            .and_then(Option::as_ref)
            .map(Node::handle)
            .ok_or(StackedClusterError::NotRunning(id))
    }

    /// Waits until a running member leads, and returns its id.
    pub async fn wait_for_leader(&self, within: Duration) -> Result<NodeId, StackedClusterError> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            for node in self.members.iter().flatten() {
                if node.handle().leadership().is_leader() {
                    return Ok(node.handle().member_id());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(StackedClusterError::NoLeader(within))
    }

    /// Stops member `id` (as a clean shutdown: its peers see it go).
    pub async fn stop(&mut self, id: NodeId) -> Result<(), StackedClusterError> {
        let slot = usize::try_from(id).ok().and_then(|id| id.checked_sub(1));
        let node = slot
            .and_then(|slot| self.members.get_mut(slot))
            .and_then(Option::take)
            .ok_or(StackedClusterError::NotRunning(id))?;
        node.shutdown().await?;
        Ok(())
    }

    /// Stops every member still running.
    pub async fn shutdown(mut self) -> Result<(), StackedClusterError> {
        for node in self.members.iter_mut().filter_map(Option::take) {
            node.shutdown().await?;
        }
        Ok(())
    }
}

/// Puts `key = value` through member `node`; returns the write's revision.
pub async fn put(node: &NodeHandle, key: &str, value: &str) -> Result<i64, StackedClusterError> {
    let request = WriteRequest {
        checked_auth_revision: 0,
        request: Some(write_request::Request::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })),
    };
    match node.write(request).await?.response {
        Some(write_response::Response::Put(put)) => Ok(put.header.map_or(0, |header| header.revision)),
        _ => Err(StackedClusterError::UnexpectedResponse),
    }
}

/// A linearizable read of `key` on member `node`.
pub async fn get(node: &NodeHandle, key: &str) -> Result<Option<String>, StackedClusterError> {
    node.linearize().await?;
    let response = node.state().store().range(&RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    })?;
    Ok(response
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}
