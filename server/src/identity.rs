//! Member and cluster identity, and the data directory's claim to them.
//!
//! Ids follow etcd's scheme in spirit: a member id is a hash of its sorted
//! peer URLs and the cluster token, the cluster id a hash of the sorted
//! member ids, so every member computes the same ids from the same flags.
//! A data directory records the ids it was created for; a member refuses to
//! start on a data directory that belongs to another cluster or member.

use std::path::Path;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::config::InitialMember;

fn first_u64(digest: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut sorted = peer_urls.to_vec();
    sorted.sort();
    let mut hasher = Sha256::new();
    hasher.update(sorted.concat().as_bytes());
    hasher.update(cluster_token.as_bytes());
    // 0 means "no member" on the wire (e.g. StatusResponse.leader).
    first_u64(&hasher.finalize()).max(1)
}

pub fn cluster_id(member_ids: &[u64], cluster_token: &str) -> u64 {
    let mut sorted = member_ids.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha256::new();
    for id in sorted {
        hasher.update(id.to_be_bytes());
    }
    hasher.update(cluster_token.as_bytes());
    first_u64(&hasher.finalize())
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataDirIdentity {
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
}

const IDENTITY_FILE: &str = "member.json";

/// Records the identity in a fresh data dir, or checks the one it holds.
pub fn claim_data_dir(data_dir: &Path, identity: &DataDirIdentity) -> anyhow::Result<()> {
    let path = data_dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let recorded: DataDirIdentity = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a keel member identity file", path.display()))?;
            if recorded.cluster_id != identity.cluster_id {
                bail!(
                    "data dir {} belongs to cluster {:x}, but the flags (--initial-cluster, \
                     --initial-cluster-token) describe cluster {:x}; refusing to start",
                    data_dir.display(),
                    recorded.cluster_id,
                    identity.cluster_id
                );
            }
            if recorded.member_id != identity.member_id {
                bail!(
                    "data dir {} belongs to member {:x} ({}), not to member {:x} ({}); refusing to start",
                    data_dir.display(),
                    recorded.member_id,
                    recorded.name,
                    identity.member_id,
                    identity.name
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
            let tmp = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
            std::fs::write(&tmp, serde_json::to_vec_pretty(identity)?)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The identity a data dir recorded when it was first claimed, if any.
pub fn recorded_identity(data_dir: &Path) -> anyhow::Result<Option<DataDirIdentity>> {
    let path = data_dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is not a keel member identity file", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The ids of the initial cluster's members, in flag order.
pub fn initial_member_ids(members: &[InitialMember], cluster_token: &str) -> Vec<u64> {
    members
        .iter()
        .map(|m| member_id(&m.peer_urls, cluster_token))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_urls_and_token_not_url_order() {
        let a = member_id(&["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()], "t");
        let b = member_id(&["http://127.0.0.1:2".into(), "http://127.0.0.1:1".into()], "t");
        let c = member_id(
            &["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            "other",
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(cluster_id(&[1, 2, 3], "t"), cluster_id(&[3, 1, 2], "t"));
        assert_ne!(cluster_id(&[1, 2, 3], "t"), cluster_id(&[1, 2], "t"));
    }

    #[test]
    fn data_dir_of_another_cluster_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = DataDirIdentity {
            cluster_id: 1,
            member_id: 7,
            name: "a".into(),
        };
        claim_data_dir(dir.path(), &ours).expect("fresh dir is claimed");
        claim_data_dir(dir.path(), &ours).expect("same identity is accepted");
        let theirs = DataDirIdentity {
            cluster_id: 2,
            ..ours.clone()
        };
        let error = claim_data_dir(dir.path(), &theirs).expect_err("other cluster refused");
        assert!(error.to_string().contains("belongs to cluster 1"), "{error}");
    }
}
