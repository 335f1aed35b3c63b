//! Leases for the load generator, on the raw tonic `Lease` stub (the same
//! calls for etcd and keel, none of the client crate's failover or
//! keeper machinery, which etcd's clients would not pay for either):
//! connections that carry both a KV and a Lease stub, and granting or
//! revoking many leases at a bounded concurrency.

use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
use keel_client::{Client, ClientChannel};

use crate::load::targets::{Access, KvStub};

/// One HTTP/2 connection with a KV and a Lease stub on it.
#[derive(Clone)]
pub struct LeaseConnection {
    pub kv: KvStub,
    pub lease: LeaseClient<ClientChannel>,
}

/// `count` connections, each its own HTTP/2 connection, spread
/// round-robin over `targets`, each checked to connect (and, with a user,
/// authenticated).
pub async fn open_lease_connections(
    targets: &[String],
    count: usize,
    access: &Access,
) -> anyhow::Result<Vec<LeaseConnection>> {
    if targets.is_empty() {
        anyhow::bail!("no endpoint to connect to");
    }
    let opens = (0..count).map(|index| {
        let endpoint = targets[index % targets.len()].clone();
        async move {
            let client = Client::connect(access.client_config([endpoint.as_str()]))
                .await
                .with_context(|| format!("connecting to {endpoint}"))?;
            Ok::<_, anyhow::Error>(LeaseConnection {
                kv: client.kv_stub_with_token(),
                lease: LeaseClient::new(client.channel()),
            })
        }
    });
    futures::future::try_join_all(opens).await
}

/// Grants `count` leases of `ttl` seconds (IDs chosen by the server),
/// `concurrency` at a time over `connections`; each grant may take up to
/// `timeout`. Returns the IDs in no particular order; fails on the first
/// grant that fails.
pub async fn grant_leases(
    connections: &[LeaseConnection],
    count: u64,
    ttl: i64,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<i64>> {
    if connections.is_empty() {
        anyhow::bail!("no connection to grant leases on");
    }
    futures::stream::iter(0..count)
        .map(|index| {
            let mut stub = connections[index as usize % connections.len()].lease.clone();
            async move {
                let granted =
                    tokio::time::timeout(timeout, stub.lease_grant(LeaseGrantRequest { ttl, id: 0 }))
                        .await
                        .with_context(|| format!("lease grant {index}: no answer within {timeout:?}"))?
                        .with_context(|| format!("lease grant {index}"))?
                        .into_inner();
                if granted.id == 0 {
                    anyhow::bail!("lease grant {index} answered ID 0 ({})", granted.error);
                }
                Ok(granted.id)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

/// Revokes every lease of `ids` (deleting the keys attached to them),
/// `concurrency` at a time; fails on the first revoke that fails.
pub async fn revoke_leases(
    connections: &[LeaseConnection],
    ids: &[i64],
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    if connections.is_empty() {
        anyhow::bail!("no connection to revoke leases on");
    }
    futures::stream::iter(ids.iter().copied().enumerate())
        .map(|(index, id)| {
            let mut stub = connections[index % connections.len()].lease.clone();
            async move {
                tokio::time::timeout(timeout, stub.lease_revoke(LeaseRevokeRequest { id }))
                    .await
                    .with_context(|| format!("revoking lease {id:x}: no answer within {timeout:?}"))?
                    .with_context(|| format!("revoking lease {id:x}"))?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}
