//! openraft's `RaftStateMachine` over the mvcc keyspace.
//!
//! Durability rules kept here:
//! - Every `apply` call commits the data changes of all its entries, the new
//!   `last_applied` log id, the membership, the member attribute table and
//!   the alarm table, the auth store and the removed-member list in ONE atomic mvcc batch. A restarted member therefore resumes from a state
//!   that is exactly "all entries up to last_applied", never half of one.
//! - The mvcc database may flush lazily (the Raft log replays what was lost),
//!   except before a snapshot is reported built or installed: the log is
//!   purged behind a snapshot, so the state it covers must be on disk first.
//!   "On disk" is `MvccStore::flush`: sled's flush plus keel-storage's
//!   fsyncs and fdatasync, returned only once the data survives a machine
//!   crash.
//! - The metadata (`last_applied`, the membership, the member attribute
//!   table, the alarm table, the auth store) is kept as the protobuf records of
//!   `storage_codec.rs`.
//! - A snapshot this member takes (`build_snapshot`, every
//!   `--snapshot-count` writes, so that the log can be purged) is no copy:
//!   it makes the keyspace durable and records the `last_applied` and
//!   membership it held (read under the apply gate, so one point) as the
//!   current snapshot, without a data file. The keyspace only moves forward
//!   from there, so it holds that point or a later one.
//! - A dump (`dump_keyspace`) is taken only when a snapshot without one must
//!   leave the member (`SnapshotData::into_dump`: sent to a follower), from
//!   one keyspace cut (`MvccStore::snapshot_cut`) whose app meta gives the
//!   `last_applied` and membership it is labelled with: the point of the
//!   dump, at or after the snapshot's own, is what the receiver installs.
//!   Applies go on while it is written; only the instant of the cut waits.
//! - Every time the keyspace is made durable, the `last_applied` it holds is
//!   published to [`DurableApplied`]; the log store purges only behind it.
//! - A snapshot never replaces a newer current one (`snapshot_files.rs`).

use std::io::{self, BufReader, BufWriter, Seek};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use keel_mvcc::MvccStore;
use keel_storage::SteadyWritebackFile;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};

use crate::applied_writes::{writes_in_entry, AppliedWrites};
use crate::apply::{
    apply_write_batch, changes_auth, note_removed_members, AlarmTable, AppliedTables, MemberAttributeTable,
    RemovedMembers,
};
use crate::durable_applied::DurableApplied;
use crate::fail_points::{
    FailPoints, BEFORE_SNAPSHOT_BUILD_COMMIT, BEFORE_SNAPSHOT_INSTALL_META_COMMIT,
    BEFORE_SNAPSHOT_INSTALL_SWITCH,
};
use crate::snapshot_files::SnapshotFiles;
use crate::storage_codec::StorageRecord;
use crate::type_config::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::RaftStorageError;
use keel_api::keelpb::WriteBatchOutcome;
use keel_auth::{AuthStore, TokenTable};

const LAST_APPLIED_KEY: &str = "raft/last_applied";
const MEMBERSHIP_KEY: &str = "raft/membership";

const MEMBER_ATTRIBUTES_KEY: &str = "keel/member_attributes";
const ALARMS_KEY: &str = "keel/alarms";
const AUTH_KEY: &str = "keel/auth";
const REMOVED_MEMBERS_KEY: &str = "keel/removed_members";

fn sm_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("state machine: {error}"))
}

fn snapshot_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("snapshot: {error}"))
}

/// A snapshot's data as openraft passes it around.
pub enum SnapshotData {
    /// A dump in a file, and, for a snapshot received from a leader, the
    /// partial file it was written to (which `install_snapshot` makes
    /// current; any other file is copied first).
    Dump {
        file: tokio::fs::File,
        incoming: Option<PathBuf>,
    },
    /// A snapshot this member took: its keyspace, durable at the snapshot's
    /// log id and at or past it since. Dumped when it leaves the member.
    Keyspace(KeyspaceSnapshot),
}

/// The keyspace of a member standing for its snapshot (`SnapshotData::Keyspace`).
pub struct KeyspaceSnapshot {
    shared: Arc<Shared>,
}

/// A dump being received from a leader, into a partial file of the
/// snapshot directory.
pub struct IncomingSnapshot {
    pub file: tokio::fs::File,
    pub path: PathBuf,
}

impl From<IncomingSnapshot> for SnapshotData {
    fn from(incoming: IncomingSnapshot) -> Self {
        SnapshotData::Dump {
            file: incoming.file,
            incoming: Some(incoming.path),
        }
    }
}

/// A snapshot's dump, ready to send or install.
pub struct SnapshotDump {
    /// The point the dump holds: the snapshot's own for a dump in a file,
    /// the point of the cut for a keyspace dumped now.
    pub meta: SnapshotMeta,
    pub file: tokio::fs::File,
    /// The partial file a received dump was written to (`SnapshotData::Dump`).
    pub incoming: Option<PathBuf>,
}

impl SnapshotData {
    /// The dump of the snapshot labelled `meta`: its file, or for a
    /// keyspace snapshot a dump taken now (its meta then names the point of
    /// the dump, at or after `meta`'s; the file is unlinked already and
    /// goes when it is closed).
    pub async fn into_dump(self, meta: &SnapshotMeta) -> io::Result<SnapshotDump> {
        match self {
            SnapshotData::Dump { file, incoming } => Ok(SnapshotDump {
                meta: meta.clone(),
                file,
                incoming,
            }),
            SnapshotData::Keyspace(keyspace) => {
                let shared = keyspace.shared;
                let (meta, file) = tokio::task::spawn_blocking(move || -> Result<_, io::Error> {
                    let dump_error =
                        |e: &dyn std::fmt::Display| snapshot_error(format!("dumping the keyspace: {e}"));
                    let (meta, partial, stats) =
                        dump_keyspace(&shared.store, &shared.snapshots).map_err(|e| dump_error(&e))?;
                    let file = std::fs::File::open(&partial).map_err(|e| dump_error(&e))?;
                    std::fs::remove_file(&partial).map_err(|e| dump_error(&e))?;
                    tracing::info!(
                        last_log_id = ?meta.last_log_id,
                        records = stats.records,
                        bytes = stats.bytes,
                        "dumped the keyspace for a snapshot transfer"
                    );
                    Ok((meta, file))
                })
                .await
                .map_err(snapshot_error)??;
                Ok(SnapshotDump {
                    meta,
                    file: tokio::fs::File::from_std(file),
                    incoming: None,
                })
            }
        }
    }
}

struct Shared {
    store: MvccStore,
    /// Held for writing while a batch is applied or a snapshot installed.
    apply_gate: RwLock<()>,
    members: RwLock<MemberAttributeTable>,
    alarms: RwLock<AlarmTable>,
    auth: RwLock<AuthStore>,
    /// This member's simple tokens (in memory only, as etcd's).
    tokens: Arc<TokenTable>,
    removed: RwLock<RemovedMembers>,
    snapshots: SnapshotFiles,
    durable_applied: DurableApplied,
    fail_points: FailPoints,
    /// Client writes applied, and how many the last snapshot covers.
    applied_writes: AppliedWrites,
}

impl Shared {
    /// `last_applied` and the membership as the keyspace holds them now
    /// (one point only if no apply runs meanwhile: hold the apply gate, or
    /// call it before openraft starts).
    fn applied_meta(&self) -> Result<SnapshotMeta, RaftStorageError> {
        Ok(SnapshotMeta {
            last_log_id: read_meta::<Option<LogId>>(&self.store, LAST_APPLIED_KEY)?.flatten(),
            last_membership: read_meta(&self.store, MEMBERSHIP_KEY)?.unwrap_or_default(),
        })
    }

    /// Makes every committed keyspace change durable (`MvccStore::flush`:
    /// sled's flush, then fdatasync), and publishes `last_applied` as
    /// durable; the caller read it before this call (under the apply gate,
    /// or from the snapshot cut it dumped), so the flush covers it.
    fn flush_keyspace(&self, last_applied: Option<LogId>) -> Result<(), RaftStorageError> {
        self.store.flush()?;
        self.durable_applied.advance_to(last_applied.map(|id| id.index));
        Ok(())
    }
}

/// What the server reads from the state machine outside openraft.
#[derive(Clone)]
pub struct StateView {
    shared: Arc<Shared>,
}

impl StateView {
    pub fn store(&self) -> &MvccStore {
        &self.shared.store
    }

    /// Names and client URLs the members published, by member id.
    pub fn member_attributes(&self) -> MemberAttributeTable {
        self.shared
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The raised alarms (applied state: every member has the same).
    pub fn alarms(&self) -> AlarmTable {
        self.shared
            .alarms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the auth store (applied state: every member has the same).
    pub fn with_auth<R>(&self, read: impl FnOnce(&AuthStore) -> R) -> R {
        read(&self.shared.auth.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// This member's simple tokens.
    pub fn tokens(&self) -> &Arc<TokenTable> {
        &self.shared.tokens
    }

    /// True when the cluster removed member `id` (applied state).
    pub fn is_removed(&self, id: u64) -> bool {
        self.shared
            .removed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// The members removed from the cluster (applied state).
    pub fn removed_members(&self) -> RemovedMembers {
        self.shared
            .removed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A fresh file to receive a leader's snapshot into, for
    /// `Raft::install_full_snapshot`; it becomes current when installed.
    pub async fn incoming_snapshot(&self) -> io::Result<IncomingSnapshot> {
        let path = self.shared.snapshots.partial_path("incoming");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await?;
        Ok(IncomingSnapshot { file, path })
    }
}

/// Dumps the keyspace into a new partial snapshot file, with the meta of
/// the state it holds. Not synced: the dump is only sent (a copy of
/// state this member keeps durably in its keyspace), and the receiver syncs
/// what it installs.
fn dump_keyspace(
    store: &MvccStore,
    snapshots: &SnapshotFiles,
) -> Result<(SnapshotMeta, PathBuf, keel_mvcc::SnapshotStats), RaftStorageError> {
    let cut = store.snapshot_cut()?;
    let last_applied = decode_meta::<Option<LogId>>(cut.app_meta(LAST_APPLIED_KEY))?.flatten();
    let last_membership: StoredMembership = decode_meta(cut.app_meta(MEMBERSHIP_KEY))?.unwrap_or_default();
    let partial = snapshots.partial_path("send");
    let mut writer = BufWriter::with_capacity(1024 * 1024, SteadyWritebackFile::create(&partial)?);
    let stats = cut.write(&mut writer)?;
    drop(cut);
    writer.into_inner().map_err(|error| error.into_error())?;
    let meta = SnapshotMeta {
        last_log_id: last_applied,
        last_membership,
    };
    Ok((meta, partial, stats))
}

/// Makes a keyspace restored from a client snapshot the start of a new
/// cluster: forgets the old cluster's Raft metadata (last applied log id,
/// membership, member attributes), which describe another cluster's log,
/// and makes that durable. The keyspace itself, its revisions and leases,
/// is kept. A member opened on it then bootstraps as on a fresh data dir,
/// and applies the new cluster's log on top of the restored revision.
pub fn forget_raft_metadata(store: &MvccStore) -> Result<(), RaftStorageError> {
    let mut batch = store.begin_apply();
    batch.set_app_meta(LAST_APPLIED_KEY, None::<LogId>.encode_record());
    batch.set_app_meta(MEMBERSHIP_KEY, StoredMembership::default().encode_record());
    batch.set_app_meta(
        MEMBER_ATTRIBUTES_KEY,
        MemberAttributeTable::default().encode_record(),
    );
    batch.set_app_meta(REMOVED_MEMBERS_KEY, RemovedMembers::default().encode_record());
    batch.commit()?;
    store.flush()?;
    Ok(())
}

pub struct KeelStateMachine {
    shared: Arc<Shared>,
}

fn read_meta<T: StorageRecord>(store: &MvccStore, key: &str) -> Result<Option<T>, RaftStorageError> {
    decode_meta(store.app_meta(key)?.as_deref())
}

fn decode_meta<T: StorageRecord>(bytes: Option<&[u8]>) -> Result<Option<T>, RaftStorageError> {
    match bytes {
        None => Ok(None),
        Some(bytes) => Ok(Some(T::decode_record(bytes)?)),
    }
}

impl KeelStateMachine {
    /// Opens the state machine over `store`, keeping snapshots in
    /// `snapshot_dir`; it stops at the steps a test arms in `fail_points`.
    pub fn open(
        store: MvccStore,
        snapshot_dir: &std::path::Path,
        fail_points: FailPoints,
    ) -> Result<Self, RaftStorageError> {
        let members = read_meta(&store, MEMBER_ATTRIBUTES_KEY)?.unwrap_or_default();
        let alarms = read_meta(&store, ALARMS_KEY)?.unwrap_or_default();
        let auth = read_meta(&store, AUTH_KEY)?.unwrap_or_default();
        let removed = read_meta(&store, REMOVED_MEMBERS_KEY)?.unwrap_or_default();
        // What a freshly opened database holds is what is on disk.
        let last_applied = read_meta::<Option<LogId>>(&store, LAST_APPLIED_KEY)?.flatten();
        let durable_applied = DurableApplied::starting_at(last_applied.map(|id| id.index));
        let snapshots = SnapshotFiles::open(snapshot_dir)?;
        let shared = Arc::new(Shared {
            store,
            apply_gate: RwLock::new(()),
            members: RwLock::new(members),
            alarms: RwLock::new(alarms),
            auth: RwLock::new(auth),
            tokens: Arc::new(TokenTable::default()),
            removed: RwLock::new(removed),
            snapshots,
            durable_applied,
            fail_points,
            applied_writes: AppliedWrites::default(),
        });
        Ok(KeelStateMachine { shared })
    }

    /// Finishes a snapshot install that a crash cut off after the keyspace
    /// was replaced and before the snapshot became current; call it at
    /// start-up with the Raft log's last entry, before openraft starts.
    ///
    /// Only an install puts the keyspace ahead of the log. openraft, seeing
    /// the state machine ahead of its log, purges the log up to the applied
    /// index, and then refuses a current snapshot older than that purge
    /// (the member could never start again). So when the keyspace is ahead
    /// of both the log and the current snapshot, the keyspace (nothing is
    /// applied after an install before its snapshot is current) is made the
    /// current snapshot.
    pub fn finish_interrupted_install(&self, log_last: Option<LogId>) -> Result<(), RaftStorageError> {
        let shared = &self.shared;
        let applied = read_meta::<Option<LogId>>(&shared.store, LAST_APPLIED_KEY)?.flatten();
        let applied_index = applied.map(|id| id.index);
        let current_index = shared
            .snapshots
            .open_current()?
            .and_then(|(meta, _)| meta.last_log_id)
            .map(|id| id.index);
        if applied_index <= log_last.map(|id| id.index) || applied_index <= current_index {
            return Ok(());
        }
        tracing::warn!(
            applied = ?applied,
            log_last = ?log_last,
            current_snapshot_index = ?current_index,
            "a snapshot install was cut off before its snapshot became current; making the installed keyspace the current snapshot"
        );
        shared.store.flush()?;
        shared.snapshots.commit(&shared.applied_meta()?, None)?;
        shared.durable_applied.advance_to(applied_index);
        Ok(())
    }

    /// How far the applied state is on disk: what the log store purges behind.
    pub fn durable_applied(&self) -> DurableApplied {
        self.shared.durable_applied.clone()
    }

    /// The applied-write count that snapshots are triggered by.
    pub fn applied_writes(&self) -> AppliedWrites {
        self.shared.applied_writes.clone()
    }

    pub fn view(&self) -> StateView {
        StateView {
            shared: self.shared.clone(),
        }
    }
}

impl RaftStateMachine<TypeConfig> for KeelStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = KeelSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let meta = self.shared.applied_meta().map_err(sm_error)?;
        Ok((meta.last_log_id, meta.last_membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let shared = self.shared.clone();
        // Every entry of this call goes into one atomic batch; the writers
        // are answered only once it is committed.
        let mut received = Vec::new();
        while let Some(item) = entries.next().await {
            received.push(item?);
        }
        let mut responders = Vec::with_capacity(received.len());
        {
            let _gate = shared.apply_gate.write().unwrap_or_else(|p| p.into_inner());
            let mut members = shared.members.read().unwrap_or_else(|p| p.into_inner()).clone();
            let mut members_changed = false;
            let mut alarms = shared.alarms.read().unwrap_or_else(|p| p.into_inner()).clone();
            let mut alarms_changed = false;
            let mut auth = shared.auth.read().unwrap_or_else(|p| p.into_inner()).clone();
            let mut auth_changed = false;
            let mut removed = shared.removed.read().unwrap_or_else(|p| p.into_inner()).clone();
            let mut removed_changed = false;
            let mut batch = shared.store.begin_apply();
            let mut last_applied = None;
            let mut membership: Option<StoredMembership> = None;
            let mut writes = 0;
            for (entry, responder) in received {
                last_applied = Some(entry.log_id);
                writes += writes_in_entry(match &entry.payload {
                    EntryPayload::Normal(write_batch) => write_batch.requests.len(),
                    _ => 0,
                });
                let outcome = match entry.payload {
                    EntryPayload::Blank => WriteBatchOutcome::default(),
                    EntryPayload::Normal(write_batch) => {
                        use keel_api::keelpb::write_request::Request;
                        for request in &write_batch.requests {
                            members_changed |= matches!(request.request, Some(Request::MemberAttributes(_)));
                            alarms_changed |= matches!(request.request, Some(Request::Alarm(_)));
                            auth_changed |= changes_auth(request);
                        }
                        let mut tables = AppliedTables {
                            members: &mut members,
                            alarms: &mut alarms,
                            auth: &mut auth,
                            tokens: &shared.tokens,
                        };
                        apply_write_batch(&mut batch, &mut tables, &write_batch).map_err(sm_error)?
                    }
                    EntryPayload::Membership(new_membership) => {
                        let previous = match membership.take() {
                            Some(previous) => previous,
                            None => read_meta(&shared.store, MEMBERSHIP_KEY)
                                .map_err(sm_error)?
                                .unwrap_or_default(),
                        };
                        removed_changed |=
                            note_removed_members(&mut removed, previous.membership(), &new_membership);
                        membership = Some(StoredMembership::new(Some(entry.log_id), new_membership));
                        WriteBatchOutcome::default()
                    }
                };
                responders.push((responder, outcome));
            }
            if last_applied.is_none() {
                return Ok(());
            }
            batch.set_app_meta(LAST_APPLIED_KEY, last_applied.encode_record());
            if let Some(membership) = &membership {
                batch.set_app_meta(MEMBERSHIP_KEY, membership.encode_record());
            }
            if members_changed {
                batch.set_app_meta(MEMBER_ATTRIBUTES_KEY, members.encode_record());
            }
            if alarms_changed {
                batch.set_app_meta(ALARMS_KEY, alarms.encode_record());
            }
            if auth_changed {
                batch.set_app_meta(AUTH_KEY, auth.encode_record());
            }
            if removed_changed {
                batch.set_app_meta(REMOVED_MEMBERS_KEY, removed.encode_record());
            }
            batch.commit().map_err(sm_error)?;
            shared.applied_writes.add(writes);
            if members_changed {
                *shared.members.write().unwrap_or_else(|p| p.into_inner()) = members;
            }
            if alarms_changed {
                *shared.alarms.write().unwrap_or_else(|p| p.into_inner()) = alarms;
            }
            if auth_changed {
                *shared.auth.write().unwrap_or_else(|p| p.into_inner()) = auth;
            }
            if removed_changed {
                *shared.removed.write().unwrap_or_else(|p| p.into_inner()) = removed;
            }
        }
        for (responder, outcome) in responders {
            if let Some(responder) = responder {
                responder.send(outcome);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> KeelSnapshotBuilder {
        KeelSnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let dump = snapshot.into_dump(meta).await?;
        if dump.meta.last_log_id != meta.last_log_id {
            // A keyspace snapshot handed over (not received from a leader)
            // that moved on: installing it as `meta` would apply the
            // entries in between twice.
            return Err(snapshot_error(format!(
                "installing snapshot: its keyspace is at {:?}, not at {:?}",
                dump.meta.last_log_id, meta.last_log_id
            )));
        }
        let partial = dump.incoming;
        let shared = self.shared.clone();
        let meta_owned = meta.clone();
        let mut file = dump.file.into_std().await;
        let installed = tokio::task::spawn_blocking(move || -> Result<(), io::Error> {
            let read_error = |e: &dyn std::fmt::Display| snapshot_error(format!("installing snapshot: {e}"));
            // A snapshot that is not in a file of this member's own (one
            // another state machine handed over) is copied into one first,
            // so that it can become current.
            let partial = match partial {
                // Received here: the file itself becomes current, so it
                // must be durable first.
                Some(partial) => {
                    file.sync_all().map_err(|e| read_error(&e))?;
                    partial
                }
                None => {
                    let partial = shared.snapshots.partial_path("install");
                    let mut copy = std::fs::File::create(&partial).map_err(|e| read_error(&e))?;
                    file.rewind().map_err(|e| read_error(&e))?;
                    io::copy(&mut file, &mut copy).map_err(|e| read_error(&e))?;
                    copy.sync_all().map_err(|e| read_error(&e))?;
                    partial
                }
            };
            file.rewind().map_err(|e| read_error(&e))?;
            shared
                .fail_points
                .pass(BEFORE_SNAPSHOT_INSTALL_SWITCH)
                .map_err(|e| read_error(&e))?;
            let _gate = shared.apply_gate.write().unwrap_or_else(|p| p.into_inner());
            let stats = shared
                .store
                .install_snapshot(&mut BufReader::new(&mut file))
                .map_err(|e| read_error(&e))?;
            // The dump carries the meta of the point it was taken at; label it
            // with what the leader says it is, which must agree.
            let mut batch = shared.store.begin_apply();
            batch.set_app_meta(LAST_APPLIED_KEY, meta_owned.last_log_id.encode_record());
            batch.set_app_meta(MEMBERSHIP_KEY, meta_owned.last_membership.encode_record());
            batch.commit().map_err(sm_error)?;
            shared.applied_writes.mark_snapshot();
            // Durable keyspace, then durable snapshot meta, and only then
            // may the log be purged behind it (`durable_applied.rs`). A
            // crash between the two is finished at the next start
            // (`finish_interrupted_install`).
            shared
                .store
                .flush()
                .map_err(RaftStorageError::from)
                .map_err(sm_error)?;
            shared
                .fail_points
                .pass(BEFORE_SNAPSHOT_INSTALL_META_COMMIT)
                .map_err(|e| read_error(&e))?;
            let members: MemberAttributeTable = read_meta(&shared.store, MEMBER_ATTRIBUTES_KEY)
                .map_err(|e| read_error(&e))?
                .unwrap_or_default();
            *shared.members.write().unwrap_or_else(|p| p.into_inner()) = members;
            let alarms: AlarmTable = read_meta(&shared.store, ALARMS_KEY)
                .map_err(|e| read_error(&e))?
                .unwrap_or_default();
            *shared.alarms.write().unwrap_or_else(|p| p.into_inner()) = alarms;
            let auth: AuthStore = read_meta(&shared.store, AUTH_KEY)
                .map_err(|e| read_error(&e))?
                .unwrap_or_default();
            *shared.auth.write().unwrap_or_else(|p| p.into_inner()) = auth;
            // Tokens name users of the store the snapshot replaced.
            shared.tokens.revoke_all();
            let removed: RemovedMembers = read_meta(&shared.store, REMOVED_MEMBERS_KEY)
                .map_err(|e| read_error(&e))?
                .unwrap_or_default();
            *shared.removed.write().unwrap_or_else(|p| p.into_inner()) = removed;
            shared
                .snapshots
                .commit(&meta_owned, Some(&partial))
                .map_err(|e| read_error(&e))?;
            shared
                .durable_applied
                .advance_to(meta_owned.last_log_id.map(|id| id.index));
            tracing::info!(
                last_log_id = ?meta_owned.last_log_id,
                records = stats.records,
                bytes = stats.bytes,
                "installed snapshot received from the leader"
            );
            Ok(())
        })
        .await
        .map_err(snapshot_error)
        .and_then(|installed| installed);
        if installed.is_err() {
            // The keyspace may be half replaced: it will not become durable
            // at the snapshot's index, so a purge waiting for that must fail.
            self.shared.durable_applied.fail();
        }
        installed
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let Some((meta, file)) = self.shared.snapshots.open_current().map_err(snapshot_error)? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: snapshot_data(&self.shared, file),
        }))
    }
}

/// The data of the current snapshot: its dump file, or this keyspace.
fn snapshot_data(shared: &Arc<Shared>, dump_file: Option<std::fs::File>) -> SnapshotData {
    match dump_file {
        Some(file) => SnapshotData::Dump {
            file: tokio::fs::File::from_std(file),
            incoming: None,
        },
        None => SnapshotData::Keyspace(KeyspaceSnapshot {
            shared: shared.clone(),
        }),
    }
}

pub struct KeelSnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for KeelSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let shared = self.shared.clone();
        let (meta, data_file) = tokio::task::spawn_blocking(move || -> Result<_, io::Error> {
            let build_error = |e: &dyn std::fmt::Display| snapshot_error(format!("taking snapshot: {e}"));
            shared.applied_writes.mark_snapshot();
            // One point: nothing is applied while the gate is held.
            let meta = {
                let _gate = shared.apply_gate.read().unwrap_or_else(|p| p.into_inner());
                shared.applied_meta().map_err(|e| build_error(&e))?
            };
            // The log is purged behind this snapshot: what it covers must be
            // durable (the flush covers everything applied before it starts).
            shared
                .flush_keyspace(meta.last_log_id)
                .map_err(|e| build_error(&e))?;
            shared
                .fail_points
                .pass(BEFORE_SNAPSHOT_BUILD_COMMIT)
                .map_err(|e| build_error(&e))?;
            // An install of a newer snapshot may have finished meanwhile:
            // then that one stays current and is what this returns.
            let (current, file) = shared
                .snapshots
                .commit(&meta, None)
                .map_err(|e| build_error(&e))?;
            if current.last_log_id == meta.last_log_id {
                tracing::info!(
                    last_log_id = ?meta.last_log_id,
                    "took snapshot (the keyspace made durable; dumped only if a follower needs it)"
                );
            }
            Ok((current, file))
        })
        .await
        .map_err(snapshot_error)??;
        Ok(Snapshot {
            meta,
            snapshot: snapshot_data(&self.shared, data_file),
        })
    }
}
