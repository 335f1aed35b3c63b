//! What a member started with `--initial-cluster-state existing` learns
//! from the running cluster before it starts: the cluster's id and the id
//! `member add` gave it (ids of added members are not derived from flags).

use std::sync::Arc;
use std::time::Duration;

use keel_api::keelpb::peer_client::PeerClient;
use keel_api::keelpb::{ClusterMembersRequest, ClusterMembersResponse};

use crate::network::peer_channel;
use crate::peer_tls::PeerTlsConfig;

/// Why the running cluster could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("no member of the running cluster answered at {peer_urls:?} within {limit:?} (last error: {last_error})")]
    NoAnswer {
        peer_urls: Vec<String>,
        limit: Duration,
        last_error: String,
    },
}

/// Asks the members at `peer_urls`, in turn, for the cluster's id and
/// members until one answers or `limit` passes; `https://` ones are dialled
/// with `tls`.
pub async fn ask_cluster_members(
    peer_urls: &[String],
    tls: Option<PeerTlsConfig>,
    limit: Duration,
) -> Result<ClusterMembersResponse, JoinError> {
    let tls = tls.map(Arc::new);
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_error = "no peer URL to ask".to_string();
    loop {
        for url in peer_urls {
            match ask_one(url, tls.as_ref()).await {
                Ok(answer) => return Ok(answer),
                Err(error) => last_error = format!("{url}: {error}"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(JoinError::NoAnswer {
                peer_urls: peer_urls.to_vec(),
                limit,
                last_error,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ask_one(
    url: &str,
    tls: Option<&Arc<PeerTlsConfig>>,
) -> Result<ClusterMembersResponse, Box<dyn std::error::Error + Send + Sync>> {
    let channel = peer_channel(url, tls)?;
    let mut request = tonic::Request::new(ClusterMembersRequest {});
    request.set_timeout(Duration::from_secs(2));
    Ok(PeerClient::new(channel)
        .cluster_members(request)
        .await?
        .into_inner())
}
