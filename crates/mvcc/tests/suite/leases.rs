//! Leases in the keyspace: grant, attach on put and txn, detach on delete
//! and re-put, revoke at one revision, checkpoints, and lease state that
//! survives a reopen and a snapshot install.

use keel_api::etcdserverpb::{PutRequest, TxnRequest};
use keel_api::key_range::KeySelection;
use keel_api::mvccpb::event::EventType;
use keel_mvcc::{LeaseRecord, MvccError, MvccStore, PullBudget};

use crate::common::*;

fn grant(store: &MvccStore, id: i64, ttl: i64) -> Result<(), MvccError> {
    let mut batch = store.begin_apply();
    batch.lease_grant(id, ttl)?;
    batch.commit().expect("commit");
    Ok(())
}

fn revoke(store: &MvccStore, id: i64) -> Result<i64, MvccError> {
    let mut batch = store.begin_apply();
    let response = batch.lease_revoke(id)?;
    batch.commit().expect("commit");
    Ok(header_revision(&response.header))
}

fn put_with_lease(store: &MvccStore, key: &str, lease: i64) -> Result<(), MvccError> {
    try_put(
        store,
        &PutRequest {
            lease,
            ..put_request(key, "v")
        },
    )
    .map(|_| ())
}

fn lease_keys(store: &MvccStore, id: i64) -> Vec<String> {
    store
        .lease_keys(id)
        .expect("lease keys")
        .into_iter()
        .map(|key| String::from_utf8(key).expect("utf8"))
        .collect()
}

#[test]
fn a_grant_keeps_the_revision_and_a_second_grant_of_the_id_fails_lease_exists() {
    let t = temp_store();
    let before = t.store.current_revision();
    grant(&t.store, 7, 30).expect("grant");
    assert_eq!(t.store.current_revision(), before);
    assert!(matches!(grant(&t.store, 7, 60), Err(MvccError::LeaseExists)));
    assert_eq!(
        t.store.lease(7).expect("lease"),
        Some(LeaseRecord {
            id: 7,
            ttl: 30,
            remaining_ttl: 0
        })
    );
}

#[test]
fn a_put_or_txn_with_an_unknown_lease_fails_and_changes_nothing() {
    let t = temp_store();
    assert!(matches!(
        put_with_lease(&t.store, "a", 5),
        Err(MvccError::LeaseNotFound)
    ));
    let request = TxnRequest {
        success: vec![op_put("b", "1"), {
            let mut op = op_put("c", "1");
            if let Some(keel_api::etcdserverpb::request_op::Request::RequestPut(put)) = &mut op.request {
                put.lease = 5;
            }
            op
        }],
        ..Default::default()
    };
    assert!(matches!(txn(&t.store, &request), Err(MvccError::LeaseNotFound)));
    assert_eq!(t.store.current_revision(), 1);
    assert!(get(&t.store, "b").is_none());
}

#[test]
fn puts_attach_keys_and_a_re_put_or_delete_detaches_them() {
    let t = temp_store();
    grant(&t.store, 1, 30).expect("grant");
    grant(&t.store, 2, 30).expect("grant");
    for key in ["a", "b", "c", "d"] {
        put_with_lease(&t.store, key, 1).expect("put");
    }
    assert_eq!(get(&t.store, "a").expect("a").lease, 1);
    put_with_lease(&t.store, "b", 2).expect("move b");
    put(&t.store, "c", "no lease");
    delete(&t.store, "d", "");
    // ignore_lease keeps the attachment.
    try_put(
        &t.store,
        &PutRequest {
            ignore_lease: true,
            ..put_request("a", "again")
        },
    )
    .expect("put ignore_lease");
    assert_eq!(lease_keys(&t.store, 1), vec!["a"]);
    assert_eq!(lease_keys(&t.store, 2), vec!["b"]);
}

#[test]
fn a_revoke_deletes_every_attached_key_at_one_revision_in_key_order() {
    let t = temp_store();
    grant(&t.store, 9, 30).expect("grant");
    put(&t.store, "other", "stays");
    for key in ["k3", "k1", "k2"] {
        put_with_lease(&t.store, key, 9).expect("put");
    }
    let before = t.store.current_revision();
    let revision = revoke(&t.store, 9).expect("revoke");
    assert_eq!(revision, before + 1);
    assert_eq!(t.store.current_revision(), before + 1);
    assert!(t.store.lease(9).expect("lease").is_none());
    assert!(lease_keys(&t.store, 9).is_empty());
    assert_eq!(keys_of(&range(&t.store, "", "\0").kvs), vec!["other"]);
    let changes = t
        .store
        .changes_after(
            before,
            &KeySelection::from_request(b"", b"\0"),
            PullBudget {
                scanned_events: 100,
                matched_bytes: usize::MAX,
            },
        )
        .expect("changes");
    let seen: Vec<(EventType, String, i64)> = changes
        .decoded_events()
        .expect("events decode")
        .into_iter()
        .map(|event| {
            let kv = event.kv.clone().expect("kv");
            (
                event.r#type(),
                String::from_utf8(kv.key).expect("utf8"),
                kv.mod_revision,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (EventType::Delete, "k1".to_string(), before + 1),
            (EventType::Delete, "k2".to_string(), before + 1),
            (EventType::Delete, "k3".to_string(), before + 1),
        ]
    );
}

#[test]
fn a_revoke_of_a_gone_lease_is_lease_not_found_and_one_without_keys_keeps_the_revision() {
    let t = temp_store();
    assert!(matches!(revoke(&t.store, 4), Err(MvccError::LeaseNotFound)));
    grant(&t.store, 4, 30).expect("grant");
    assert_eq!(revoke(&t.store, 4).expect("revoke"), 1);
    assert_eq!(t.store.current_revision(), 1);
    assert!(matches!(revoke(&t.store, 4), Err(MvccError::LeaseNotFound)));
}

#[test]
fn a_key_detached_before_the_revoke_survives_it() {
    let t = temp_store();
    grant(&t.store, 3, 30).expect("grant");
    put_with_lease(&t.store, "moved", 3).expect("put");
    put_with_lease(&t.store, "kept", 3).expect("put");
    put(&t.store, "moved", "free now");
    revoke(&t.store, 3).expect("revoke");
    assert_eq!(keys_of(&range(&t.store, "", "\0").kvs), vec!["moved"]);
}

#[test]
fn checkpoints_record_remaining_ttls_skip_gone_leases_and_zero_clears() {
    let t = temp_store();
    grant(&t.store, 1, 100).expect("grant");
    let mut batch = t.store.begin_apply();
    batch.lease_checkpoint(&[(1, 40), (2, 10)]).expect("checkpoint");
    batch.commit().expect("commit");
    assert_eq!(
        t.store.lease(1).expect("lease").map(|l| l.remaining_ttl),
        Some(40)
    );
    assert!(t.store.lease(2).expect("lease").is_none());
    let mut batch = t.store.begin_apply();
    batch.lease_checkpoint(&[(1, 0)]).expect("checkpoint");
    batch.commit().expect("commit");
    assert_eq!(t.store.lease(1).expect("lease").map(|l| l.remaining_ttl), Some(0));
}

#[test]
fn a_failed_request_in_a_batch_leaves_no_lease_change_behind() {
    let t = temp_store();
    grant(&t.store, 1, 30).expect("grant");
    let mut batch = t.store.begin_apply();
    batch.lease_grant(2, 30).expect("grant 2");
    put_in_batch_with_lease(&mut batch, "a", 2);
    assert!(matches!(batch.lease_grant(1, 10), Err(MvccError::LeaseExists)));
    assert!(matches!(batch.lease_revoke(77), Err(MvccError::LeaseNotFound)));
    batch.lease_revoke(2).expect("revoke 2 in the same batch");
    batch.commit().expect("commit");
    assert!(get(&t.store, "a").is_none());
    assert_eq!(
        t.store
            .leases()
            .expect("leases")
            .iter()
            .map(|l| l.id)
            .collect::<Vec<_>>(),
        vec![1]
    );
}

fn put_in_batch_with_lease(batch: &mut keel_mvcc::ApplyBatch<'_>, key: &str, lease: i64) {
    batch
        .put(&PutRequest {
            lease,
            ..put_request(key, "v")
        })
        .expect("put");
}

#[test]
fn leases_survive_a_reopen_and_a_snapshot_install_and_are_folded_into_hash_kv() {
    let t = temp_store();
    grant(&t.store, -5, 10).expect("grant");
    grant(&t.store, 6, 20).expect("grant");
    put_with_lease(&t.store, "x", -5).expect("put");
    put_with_lease(&t.store, "y", 6).expect("put");
    let hash = t.store.hash_kv(0).expect("hash").hash;
    let mut dump = Vec::new();
    t.store.write_snapshot(&mut dump).expect("dump");

    let (reopened, _db, dir) = reopen(t);
    assert_eq!(reopened.hash_kv(0).expect("hash").hash, hash);
    assert_eq!(lease_keys(&reopened, -5), vec!["x"]);

    let other = temp_store();
    let empty_hash = other.store.hash_kv(0).expect("hash").hash;
    grant(&other.store, 99, 5).expect("grant");
    assert_ne!(
        other.store.hash_kv(0).expect("hash").hash,
        empty_hash,
        "a grant changes the hash"
    );
    assert_ne!(other.store.hash_kv(0).expect("hash").hash, hash);
    other
        .store
        .install_snapshot(&mut dump.as_slice())
        .expect("install");
    assert_eq!(other.store.hash_kv(0).expect("hash").hash, hash);
    assert!(other.store.lease(99).expect("lease").is_none());
    revoke(&other.store, 6).expect("revoke after install");
    assert!(get(&other.store, "y").is_none());
    drop(dir);
}

#[test]
fn a_hash_of_an_older_revision_ignores_lease_changes_made_after_it() {
    let t = temp_store();
    put_with_lease(&t.store, "a", 0).expect("put");
    put_with_lease(&t.store, "b", 0).expect("put");
    let older = t.store.current_revision() - 1;
    let older_hash = t.store.hash_kv(older).expect("hash");
    let current_hash = t.store.hash_kv(0).expect("hash");
    grant(&t.store, 7, 30).expect("grant");
    assert_eq!(
        t.store.hash_kv(older).expect("hash"),
        older_hash,
        "history up to {older} is unchanged"
    );
    assert_ne!(
        t.store.hash_kv(0).expect("hash").hash,
        current_hash.hash,
        "the current revision's hash covers the leases"
    );
}

/// A put checks its lease against the committed lease ids held in memory
/// (`leases.rs`), not sled: they must follow every commit, a reopen and a
/// snapshot install.
#[test]
fn a_put_sees_the_committed_leases_after_a_grant_a_revoke_a_reopen_and_an_install() {
    let t = temp_store();
    grant(&t.store, 1, 30).expect("grant");
    put_with_lease(&t.store, "a", 1).expect("a lease granted in an earlier batch");
    revoke(&t.store, 1).expect("revoke");
    assert!(matches!(
        put_with_lease(&t.store, "a", 1),
        Err(MvccError::LeaseNotFound)
    ));
    grant(&t.store, 3, 30).expect("grant");
    let mut batch = t.store.begin_apply();
    batch
        .lease_checkpoint(&[(3, 12)])
        .expect("a checkpoint rewrites the record");
    batch.commit().expect("commit");
    put_with_lease(&t.store, "b", 3).expect("a checkpointed lease");
    let mut dump = Vec::new();
    t.store.write_snapshot(&mut dump).expect("dump");

    let (reopened, _db, dir) = reopen(t);
    put_with_lease(&reopened, "c", 3).expect("a lease from before the reopen");
    assert!(matches!(
        put_with_lease(&reopened, "c", 1),
        Err(MvccError::LeaseNotFound)
    ));

    let other = temp_store();
    grant(&other.store, 99, 5).expect("grant");
    other
        .store
        .install_snapshot(&mut dump.as_slice())
        .expect("install");
    assert!(matches!(
        put_with_lease(&other.store, "d", 99),
        Err(MvccError::LeaseNotFound)
    ));
    put_with_lease(&other.store, "d", 3).expect("a lease from the snapshot");
    drop(dir);
}
