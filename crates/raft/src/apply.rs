//! Applying one committed log entry payload (a group-committed
//! `WriteBatch`) to the mvcc keyspace: each request in order, each with its
//! own revision, each with its own outcome. Deterministic: the same batch on
//! the same state gives the same bytes on every member.
//!
//! Invariant (etcd's capped applier): while the NOSPACE alarm is raised,
//! every write with a space cost (`keel_api::space_cost`: puts, txns with
//! puts, lease grants) is refused with `NO_SPACE` and changes nothing; the
//! alarm table is replicated state, so every member refuses the same writes.
//!
//! Invariant (etcd's auth revision check): a request proposed under a
//! permission check carries the auth revision the check used; if the auth
//! store changed since, the request is refused with `AUTH_OLD_REVISION`
//! and changes nothing, so no write passes a check made against
//! permissions that were already revoked when it applied.

use std::collections::{BTreeMap, BTreeSet};

use keel_api::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
};
use keel_api::keelpb::{
    write_outcome, write_request, write_response, ApplyErrorKind, AuthTokenAssigned, LeaseCheckpointApplied,
    MemberAttributes, MemberAttributesApplied, WriteBatch, WriteBatchOutcome, WriteOutcome, WriteRequest,
    WriteResponse,
};
use keel_api::space_cost::space_cost;
use keel_auth::{AuthError, AuthStore, TokenTable};
use keel_mvcc::{ApplyBatch, MvccError};

/// Client URLs and names that members published, by member id.
pub type MemberAttributeTable = BTreeMap<u64, MemberAttributes>;

/// One raised alarm: its type (etcd's `AlarmType`) and the member it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RaisedAlarm {
    pub alarm: i32,
    pub member_id: u64,
}

impl RaisedAlarm {
    pub fn to_member(self) -> AlarmMember {
        AlarmMember {
            member_id: self.member_id,
            alarm: self.alarm,
        }
    }
}

/// The raised alarms (etcd's alarm store), by type, then member.
pub type AlarmTable = BTreeSet<RaisedAlarm>;

/// The ids of members removed from the cluster (etcd's removed-member
/// store): an id once removed never serves in the cluster again.
pub type RemovedMembers = BTreeSet<u64>;

/// Adds to `removed` every member of `previous` (voter or learner) that
/// `next` no longer has.
pub fn note_removed_members(
    removed: &mut RemovedMembers,
    previous: &openraft::Membership<u64, crate::MemberNode>,
    next: &openraft::Membership<u64, crate::MemberNode>,
) -> bool {
    let mut changed = false;
    for (id, _) in previous.nodes() {
        if next.get_node(id).is_none() {
            changed |= removed.insert(*id);
        }
    }
    changed
}

/// True while NOSPACE is raised for any member.
pub fn space_exhausted(alarms: &AlarmTable) -> bool {
    alarms
        .iter()
        .any(|raised| raised.alarm == AlarmType::Nospace as i32)
}

/// An error that stops the state machine (the disk failed or data is corrupt);
/// request-level failures are outcomes, not errors.
#[derive(Debug, thiserror::Error)]
#[error("applying a committed entry failed: {0}")]
pub struct FatalApplyError(#[from] pub MvccError);

fn request_outcome(error: MvccError) -> Result<WriteOutcome, FatalApplyError> {
    let kind = match error {
        MvccError::Compacted { .. } => ApplyErrorKind::Compacted,
        MvccError::FutureRevision { .. } => ApplyErrorKind::FutureRevision,
        MvccError::KeyNotFound => ApplyErrorKind::KeyNotFound,
        MvccError::LeaseNotFound => ApplyErrorKind::LeaseNotFound,
        MvccError::LeaseExists => ApplyErrorKind::LeaseExists,
        fatal => return Err(FatalApplyError(fatal)),
    };
    Ok(refusal(kind))
}

fn refusal(kind: ApplyErrorKind) -> WriteOutcome {
    WriteOutcome {
        outcome: Some(write_outcome::Outcome::Error(kind as i32)),
    }
}

fn response_outcome(response: write_response::Response) -> WriteOutcome {
    WriteOutcome {
        outcome: Some(write_outcome::Outcome::Response(WriteResponse {
            response: Some(response),
        })),
    }
}

/// The replicated tables kept beside the keyspace that writes change.
pub struct AppliedTables<'a> {
    pub members: &'a mut MemberAttributeTable,
    pub alarms: &'a mut AlarmTable,
    pub auth: &'a mut AuthStore,
    /// The member's simple tokens (in memory, not replicated state: a
    /// token assignment is applied to it, and user changes revoke tokens).
    pub tokens: &'a TokenTable,
}

fn auth_refusal(error: AuthError) -> ApplyErrorKind {
    match error {
        AuthError::RootUserNotExist => ApplyErrorKind::RootUserNotExist,
        AuthError::RootRoleNotExist => ApplyErrorKind::RootRoleNotExist,
        AuthError::UserAlreadyExist => ApplyErrorKind::UserAlreadyExist,
        AuthError::UserEmpty => ApplyErrorKind::UserEmpty,
        AuthError::UserNotFound => ApplyErrorKind::UserNotFound,
        AuthError::RoleAlreadyExist => ApplyErrorKind::RoleAlreadyExist,
        AuthError::RoleNotFound => ApplyErrorKind::RoleNotFound,
        AuthError::RoleEmpty => ApplyErrorKind::RoleEmpty,
        AuthError::AuthFailed | AuthError::BadPasswordHash => ApplyErrorKind::AuthFailed,
        AuthError::PermissionDenied => ApplyErrorKind::PermissionDenied,
        AuthError::RoleNotGranted => ApplyErrorKind::RoleNotGranted,
        AuthError::PermissionNotGranted => ApplyErrorKind::PermissionNotGranted,
        AuthError::AuthNotEnabled => ApplyErrorKind::AuthNotEnabled,
        AuthError::InvalidAuthToken => ApplyErrorKind::InvalidAuthToken,
        AuthError::InvalidAuthMgmt => ApplyErrorKind::InvalidAuthMgmt,
        AuthError::OldRevision => ApplyErrorKind::AuthOldRevision,
    }
}

/// Whether `request` changes the auth store (see keel_api's
/// `Request::changes_auth`).
pub fn changes_auth(request: &WriteRequest) -> bool {
    request
        .request
        .as_ref()
        .is_some_and(|request| request.changes_auth())
}

/// Applies one auth change (or token assignment) to the auth store.
fn apply_auth(
    tables: &mut AppliedTables<'_>,
    request: &write_request::Request,
) -> Option<Result<write_response::Response, AuthError>> {
    use write_request::Request;
    use write_response::Response;
    let auth = &mut *tables.auth;
    let tokens = tables.tokens;
    let stored_hash = |hash: &str| (!hash.is_empty()).then(|| hash.to_string());
    let result = match request {
        Request::AuthEnable(_) => auth.enable().map(|()| Response::AuthEnable(Default::default())),
        Request::AuthDisable(_) => {
            auth.disable();
            tokens.revoke_all();
            Ok(Response::AuthDisable(Default::default()))
        }
        Request::AuthUserAdd(add) => auth
            .user_add(&add.name, stored_hash(&add.hashed_password))
            .map(|()| Response::AuthUserAdd(Default::default())),
        Request::AuthUserDelete(delete) => auth.user_delete(&delete.name).map(|()| {
            tokens.revoke_user(&delete.name);
            Response::AuthUserDelete(Default::default())
        }),
        Request::AuthUserChangePassword(change) => auth
            .user_change_password(&change.name, change.hashed_password.clone())
            .map(|()| {
                tokens.revoke_user(&change.name);
                Response::AuthUserChangePassword(Default::default())
            }),
        Request::AuthUserGrantRole(grant) => auth
            .user_grant_role(&grant.user, &grant.role)
            .map(|()| Response::AuthUserGrantRole(Default::default())),
        Request::AuthUserRevokeRole(revoke) => auth
            .user_revoke_role(&revoke.name, &revoke.role)
            .map(|()| Response::AuthUserRevokeRole(Default::default())),
        Request::AuthRoleAdd(add) => auth
            .role_add(&add.name)
            .map(|()| Response::AuthRoleAdd(Default::default())),
        Request::AuthRoleDelete(delete) => auth
            .role_delete(&delete.role)
            .map(|()| Response::AuthRoleDelete(Default::default())),
        Request::AuthRoleGrantPermission(grant) => auth
            .role_grant_permission(&grant.name, grant.perm.clone().unwrap_or_default())
            .map(|()| Response::AuthRoleGrantPermission(Default::default())),
        Request::AuthRoleRevokePermission(revoke) => auth
            .role_revoke_permission(&revoke.role, &revoke.key, &revoke.range_end)
            .map(|()| Response::AuthRoleRevokePermission(Default::default())),
        Request::AuthTokenAssign(assign) => {
            if !auth.is_enabled() {
                Err(AuthError::AuthNotEnabled)
            } else if auth.user(&assign.user).is_none() {
                Err(AuthError::AuthFailed)
            } else {
                tokens.assign(&assign.token, &assign.user);
                Ok(Response::AuthTokenAssign(AuthTokenAssigned {}))
            }
        }
        _ => return None,
    };
    Some(result)
}

pub fn apply_write_batch(
    mvcc: &mut ApplyBatch<'_>,
    tables: &mut AppliedTables<'_>,
    batch: &WriteBatch,
) -> Result<WriteBatchOutcome, FatalApplyError> {
    let mut outcomes = Vec::with_capacity(batch.requests.len());
    for request in &batch.requests {
        outcomes.push(apply_write_request(mvcc, tables, request)?);
    }
    Ok(WriteBatchOutcome { outcomes })
}

/// Raises or clears an alarm; answers the alarms it changed (etcd's answer:
/// none when the alarm was already raised, or not raised).
fn apply_alarm(alarms: &mut AlarmTable, request: &AlarmRequest) -> AlarmResponse {
    let raised = RaisedAlarm {
        alarm: request.alarm,
        member_id: request.member_id,
    };
    let changed = match request.action() {
        AlarmAction::Activate => alarms.insert(raised),
        AlarmAction::Deactivate => alarms.remove(&raised),
        AlarmAction::Get => false,
    };
    AlarmResponse {
        header: None,
        alarms: if changed {
            vec![raised.to_member()]
        } else {
            Vec::new()
        },
    }
}

fn apply_write_request(
    mvcc: &mut ApplyBatch<'_>,
    tables: &mut AppliedTables<'_>,
    request: &WriteRequest,
) -> Result<WriteOutcome, FatalApplyError> {
    use write_response::Response;
    if request.checked_auth_revision != 0 && request.checked_auth_revision != tables.auth.revision() {
        return Ok(refusal(ApplyErrorKind::AuthOldRevision));
    }
    if let Some(inner) = &request.request {
        if space_exhausted(tables.alarms) && space_cost(inner) > 0 {
            return Ok(refusal(ApplyErrorKind::NoSpace));
        }
        if let Some(result) = apply_auth(tables, inner) {
            return Ok(match result {
                Ok(response) => response_outcome(response),
                Err(error) => refusal(auth_refusal(error)),
            });
        }
    }
    let result = match &request.request {
        Some(write_request::Request::Put(put)) => mvcc.put(put).map(Response::Put),
        Some(write_request::Request::DeleteRange(delete)) => {
            mvcc.delete_range(delete).map(Response::DeleteRange)
        }
        Some(write_request::Request::Txn(txn)) => mvcc.txn(txn).map(Response::Txn),
        Some(write_request::Request::Compaction(compaction)) => mvcc
            .compact(compaction.revision)
            .map(|()| Response::Compaction(Default::default())),
        Some(write_request::Request::LeaseGrant(grant)) => {
            mvcc.lease_grant(grant.id, grant.ttl).map(Response::LeaseGrant)
        }
        Some(write_request::Request::LeaseRevoke(revoke)) => {
            mvcc.lease_revoke(revoke.id).map(Response::LeaseRevoke)
        }
        Some(write_request::Request::LeaseCheckpoint(checkpoint)) => {
            let checkpoints: Vec<(i64, i64)> = checkpoint
                .checkpoints
                .iter()
                .map(|c| (c.id, c.remaining_ttl))
                .collect();
            mvcc.lease_checkpoint(&checkpoints)
                .map(|()| Response::LeaseCheckpoint(LeaseCheckpointApplied {}))
        }
        Some(write_request::Request::MemberAttributes(attributes)) => {
            tables.members.insert(attributes.member_id, attributes.clone());
            Ok(Response::MemberAttributes(MemberAttributesApplied {}))
        }
        Some(write_request::Request::Alarm(alarm)) => Ok(Response::Alarm(apply_alarm(tables.alarms, alarm))),
        // Answered by apply_auth above.
        Some(
            write_request::Request::AuthEnable(_)
            | write_request::Request::AuthDisable(_)
            | write_request::Request::AuthUserAdd(_)
            | write_request::Request::AuthUserDelete(_)
            | write_request::Request::AuthUserChangePassword(_)
            | write_request::Request::AuthUserGrantRole(_)
            | write_request::Request::AuthUserRevokeRole(_)
            | write_request::Request::AuthRoleAdd(_)
            | write_request::Request::AuthRoleDelete(_)
            | write_request::Request::AuthRoleGrantPermission(_)
            | write_request::Request::AuthRoleRevokePermission(_)
            | write_request::Request::AuthTokenAssign(_),
        ) => Ok(Response::MemberAttributes(MemberAttributesApplied {})),
        // An empty request (from a newer member, say) changes nothing.
        None => Ok(Response::MemberAttributes(MemberAttributesApplied {})),
    };
    match result {
        Ok(response) => Ok(response_outcome(response)),
        Err(error) => request_outcome(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::etcdserverpb::{
        request_op, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RequestOp, TxnRequest,
    };
    use keel_mvcc::MvccStore;
    use keel_storage::Database;

    fn request(request: write_request::Request) -> WriteRequest {
        WriteRequest {
            checked_auth_revision: 0,
            request: Some(request),
        }
    }

    fn put(key: &str) -> write_request::Request {
        write_request::Request::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    fn alarm(action: AlarmAction) -> write_request::Request {
        write_request::Request::Alarm(AlarmRequest {
            action: action as i32,
            member_id: 7,
            alarm: AlarmType::Nospace as i32,
        })
    }

    fn refused_for_space(outcome: &WriteOutcome) -> bool {
        outcome.outcome == Some(write_outcome::Outcome::Error(ApplyErrorKind::NoSpace as i32))
    }

    /// Applies `requests` as one batch; their outcomes.
    fn apply(
        store: &MvccStore,
        tables: &mut AppliedTables<'_>,
        requests: Vec<write_request::Request>,
    ) -> Vec<WriteOutcome> {
        let mut batch = store.begin_apply();
        let batch_request = WriteBatch {
            requests: requests.into_iter().map(request).collect(),
        };
        let outcome = apply_write_batch(&mut batch, tables, &batch_request).expect("apply");
        batch.commit().expect("commit");
        outcome.outcomes
    }

    #[test]
    fn while_nospace_is_raised_writes_with_a_space_cost_are_refused_and_change_nothing() {
        let database = Database::open_temporary().expect("database");
        let store = MvccStore::open(&database).expect("store");
        let (mut members, mut alarms) = (MemberAttributeTable::new(), AlarmTable::new());
        let (mut auth, tokens) = (AuthStore::default(), TokenTable::default());
        let mut tables = AppliedTables {
            members: &mut members,
            alarms: &mut alarms,
            auth: &mut auth,
            tokens: &tokens,
        };
        let outcomes = apply(
            &store,
            &mut tables,
            vec![put("a"), alarm(AlarmAction::Activate), put("b")],
        );
        assert!(!refused_for_space(&outcomes[0]), "before the alarm");
        assert!(
            refused_for_space(&outcomes[2]),
            "after the alarm, in the same batch"
        );
        assert_eq!(store.current_revision(), 2, "only the first put wrote");

        let txn_with_put = write_request::Request::Txn(TxnRequest {
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"c".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        });
        let grant = write_request::Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 5 });
        let delete = write_request::Request::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        });
        let outcomes = apply(&store, &mut tables, vec![txn_with_put, grant, delete]);
        assert!(refused_for_space(&outcomes[0]) && refused_for_space(&outcomes[1]));
        assert!(!refused_for_space(&outcomes[2]), "a delete needs no space");
        assert_eq!(store.current_revision(), 3, "only the delete wrote");

        // A second activation changes nothing and answers no alarm; the
        // deactivation answers the alarm it cleared, and writes pass again.
        let outcomes = apply(
            &store,
            &mut tables,
            vec![
                alarm(AlarmAction::Activate),
                alarm(AlarmAction::Deactivate),
                put("b"),
            ],
        );
        let changed = |outcome: &WriteOutcome| match &outcome.outcome {
            Some(write_outcome::Outcome::Response(WriteResponse {
                response: Some(write_response::Response::Alarm(answer)),
            })) => answer.alarms.len(),
            other => panic!("not an alarm answer: {other:?}"),
        };
        assert_eq!((changed(&outcomes[0]), changed(&outcomes[1])), (0, 1));
        assert!(!refused_for_space(&outcomes[2]));
        assert!(tables.alarms.is_empty());
    }

    #[test]
    fn a_write_checked_against_an_old_auth_revision_is_refused_and_auth_changes_apply() {
        use keel_api::etcdserverpb::{AuthRoleAddRequest, AuthUserAddRequest, AuthUserDeleteRequest};
        let database = Database::open_temporary().expect("database");
        let store = MvccStore::open(&database).expect("store");
        let (mut members, mut alarms) = (MemberAttributeTable::new(), AlarmTable::new());
        let (mut auth, tokens) = (AuthStore::default(), TokenTable::default());
        let mut tables = AppliedTables {
            members: &mut members,
            alarms: &mut alarms,
            auth: &mut auth,
            tokens: &tokens,
        };
        let user_add = write_request::Request::AuthUserAdd(AuthUserAddRequest {
            name: "alice".into(),
            hashed_password: "hash".into(),
            ..Default::default()
        });
        let role_add = write_request::Request::AuthRoleAdd(AuthRoleAddRequest { name: "r".into() });
        let outcomes = apply(&store, &mut tables, vec![user_add.clone(), role_add, user_add]);
        assert!(matches!(
            outcomes[0].outcome,
            Some(write_outcome::Outcome::Response(_))
        ));
        assert_eq!(
            outcomes[2].outcome,
            Some(write_outcome::Outcome::Error(
                ApplyErrorKind::UserAlreadyExist as i32
            ))
        );
        assert_eq!(tables.auth.revision(), 2);

        tables.tokens.assign("tok", "alice");
        let checked = |revision: u64| WriteRequest {
            checked_auth_revision: revision,
            request: Some(put("k")),
        };
        let mut batch = store.begin_apply();
        let outcome = apply_write_batch(
            &mut batch,
            &mut tables,
            &WriteBatch {
                requests: vec![
                    checked(2),
                    request(write_request::Request::AuthUserDelete(AuthUserDeleteRequest {
                        name: "alice".into(),
                    })),
                    checked(2),
                ],
            },
        )
        .expect("apply");
        batch.commit().expect("commit");
        assert!(matches!(
            outcome.outcomes[0].outcome,
            Some(write_outcome::Outcome::Response(_))
        ));
        assert_eq!(
            outcome.outcomes[2].outcome,
            Some(write_outcome::Outcome::Error(
                ApplyErrorKind::AuthOldRevision as i32
            )),
            "the auth store changed between the check and the apply"
        );
        assert_eq!(store.current_revision(), 2, "only the first put wrote");
        assert_eq!(
            tables.tokens.user_of("tok"),
            None,
            "deleting alice revoked her token"
        );
    }
}
