//! Range reads over any keyspace view, with etcd 3.4's `applierV3backend.Range`
//! semantics: `count` is the number of keys in the range at the read revision
//! before filters and limit; with a sort or a revision filter everything is
//! fetched, then filtered, sorted and truncated; `more` says the limit cut
//! the result.
//!
//! Reads at the view's current revision scan only the live keyspace (`0x01`);
//! older revisions walk the history index (`0x02`) and load the records
//! (`0x03`) of the versions alive at that revision.

use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use keel_api::key_range::KeySelection;
use keel_api::mvccpb::KeyValue;

use crate::error::{corrupt, MvccError, Result};
use crate::keys::{self, ChangeKind, Revision};
use crate::view::KeyspaceView;

/// The revisions a view can serve: `current` is what it holds in the live
/// keyspace (and what response headers carry), `compacted` the floor below
/// which history is gone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ViewRevisions {
    pub current: i64,
    pub compacted: i64,
}

impl ViewRevisions {
    /// The revision a read of `requested` (0 or less = current) is served at.
    pub fn resolve(self, requested: i64) -> Result<i64> {
        if requested > self.current {
            return Err(MvccError::FutureRevision {
                requested,
                current: self.current,
            });
        }
        let at = if requested <= 0 { self.current } else { requested };
        if at < self.compacted {
            return Err(MvccError::Compacted {
                requested: at,
                compacted: self.compacted,
            });
        }
        Ok(at)
    }
}

pub(crate) fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// What a range request asks for beyond the key selection.
struct Plan {
    /// Fetch, filter, sort and truncate everything (etcd does so whenever a
    /// sort or a revision filter is requested).
    fetch_all: bool,
    sort: Option<(SortTarget, bool)>,
    /// Key order descending without anything else: scan backwards.
    reverse_scan: bool,
    limit: Option<usize>,
}

impl Plan {
    fn of(request: &RangeRequest) -> Self {
        let order = SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None);
        let target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
        let filtered = request.min_mod_revision != 0
            || request.max_mod_revision != 0
            || request.min_create_revision != 0
            || request.max_create_revision != 0;
        // As etcd: a non-key target without an order sorts ascending.
        let order = if target != SortTarget::Key && order == SortOrder::None {
            SortOrder::Ascend
        } else {
            order
        };
        let sort = match order {
            SortOrder::None => None,
            SortOrder::Ascend => Some((target, false)),
            SortOrder::Descend => Some((target, true)),
        };
        let limit = usize::try_from(request.limit).ok().filter(|&limit| limit > 0);
        // Key order is the scan order, so sorting by key needs no fetch-all
        // unless a filter does; descending key order is a backward scan.
        let key_sort = matches!(sort, None | Some((SortTarget::Key, _)));
        let reverse_scan = matches!(sort, Some((SortTarget::Key, true)));
        Plan {
            fetch_all: filtered || !key_sort,
            sort,
            reverse_scan,
            limit,
        }
    }
}

/// Serves `request` from `view` (revision checks included).
pub(crate) fn range(
    view: &dyn KeyspaceView,
    revisions: ViewRevisions,
    request: &RangeRequest,
) -> Result<RangeResponse> {
    let selected = select(view, revisions, request)?;
    Ok(selected.into_response(request, revisions.current))
}

/// The keys a range selected, before the finishing (filters, sort, limit).
pub(crate) struct Selected {
    kvs: Vec<KeyValue>,
    count: usize,
    plan: Plan,
}

/// Reads what `request` selects; the caller may release its read lock before
/// [`Selected::into_response`].
pub(crate) fn select(
    view: &dyn KeyspaceView,
    revisions: ViewRevisions,
    request: &RangeRequest,
) -> Result<Selected> {
    let at = revisions.resolve(request.revision)?;
    let plan = Plan::of(request);
    let selection = KeySelection::from_request(&request.key, &request.range_end);
    let (kvs, count) = if at == revisions.current {
        let candidates = live_candidates(view, &selection, plan.reverse_scan);
        gather(candidates, &plan, request.count_only, |(raw_key, value)| {
            keys::decode_live(&raw_key, &value)
        })?
    } else {
        let mut candidates = historical_candidates(view, &selection, at)?;
        if plan.reverse_scan {
            candidates.reverse();
        }
        gather(
            candidates.into_iter().map(Ok),
            &plan,
            request.count_only,
            |(key, revision)| load_put(view, &key, revision),
        )?
    };
    Ok(Selected { kvs, count, plan })
}

impl Selected {
    pub fn into_response(self, request: &RangeRequest, header_revision: i64) -> RangeResponse {
        let Selected { mut kvs, count, plan } = self;
        if plan.fetch_all {
            kvs.retain(|kv| passes_filters(kv, request));
            if let Some((target, descending)) = plan.sort {
                sort_kvs(&mut kvs, target, descending);
            }
        }
        let mut more = false;
        match plan.limit {
            Some(limit) if plan.fetch_all && kvs.len() > limit => {
                kvs.truncate(limit);
                more = true;
            }
            Some(limit) if !plan.fetch_all && !request.count_only => more = count > limit,
            _ => {}
        }
        if request.keys_only {
            for kv in &mut kvs {
                kv.value = Vec::new();
            }
        }
        RangeResponse {
            header: header(header_revision),
            kvs,
            more,
            count: i64::try_from(count).unwrap_or(i64::MAX),
        }
    }
}

/// Loads what the plan needs from candidates in scan order and counts them
/// all: everything when fetching all, the first `limit` otherwise, nothing
/// for `count_only`.
fn gather<T>(
    candidates: impl Iterator<Item = Result<T>>,
    plan: &Plan,
    count_only: bool,
    load: impl Fn(T) -> Result<KeyValue>,
) -> Result<(Vec<KeyValue>, usize)> {
    let keep = if count_only {
        0
    } else if plan.fetch_all {
        usize::MAX
    } else {
        plan.limit.unwrap_or(usize::MAX)
    };
    let mut kvs = Vec::new();
    let mut count = 0usize;
    for candidate in candidates {
        let candidate = candidate?;
        if count < keep {
            kvs.push(load(candidate)?);
        }
        count += 1;
    }
    Ok((kvs, count))
}

fn passes_filters(kv: &KeyValue, request: &RangeRequest) -> bool {
    !(request.max_mod_revision != 0 && kv.mod_revision > request.max_mod_revision
        || request.min_mod_revision != 0 && kv.mod_revision < request.min_mod_revision
        || request.max_create_revision != 0 && kv.create_revision > request.max_create_revision
        || request.min_create_revision != 0 && kv.create_revision < request.min_create_revision)
}

/// A stable sort, so ties keep key order in both directions (what etcd's
/// insertion sort yields for small results).
fn sort_kvs(kvs: &mut [KeyValue], target: SortTarget, descending: bool) {
    kvs.sort_by(|a, b| {
        let order = match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if descending {
            order.reverse()
        } else {
            order
        }
    });
}

/// Raw live entries selected by `selection`, in key order (or reverse).
pub(crate) fn live_candidates<'v>(
    view: &'v dyn KeyspaceView,
    selection: &KeySelection<'_>,
    reverse: bool,
) -> Box<dyn Iterator<Item = Result<(sled::IVec, sled::IVec)>> + 'v> {
    match *selection {
        KeySelection::Single(key) => {
            let raw_key = keys::live_key(key);
            let found = match view.get(&raw_key) {
                Ok(Some(value)) => Some(Ok((sled::IVec::from(raw_key), value))),
                Ok(None) => None,
                Err(error) => Some(Err(error)),
            };
            Box::new(found.into_iter())
        }
        KeySelection::Range { start, end } => {
            let (low, high) = keys::live_bounds(start, end);
            view.scan(&low, &high, reverse)
        }
    }
}

/// The current `KeyValue`s selected by `selection` in key order.
pub(crate) fn live_kvs(view: &dyn KeyspaceView, selection: &KeySelection<'_>) -> Result<Vec<KeyValue>> {
    live_candidates(view, selection, false)
        .map(|entry| entry.and_then(|(raw_key, value)| keys::decode_live(&raw_key, &value)))
        .collect()
}

/// The keys alive at revision `at` in `selection`, with the revision of
/// their version at `at`, in key order.
fn historical_candidates(
    view: &dyn KeyspaceView,
    selection: &KeySelection<'_>,
    at: i64,
) -> Result<Vec<(Vec<u8>, Revision)>> {
    let upper_revision = Revision::new(at.saturating_add(1), 0);
    match *selection {
        KeySelection::Single(key) => {
            let low = keys::history_prefix(key);
            let high = keys::history_key(key, upper_revision);
            match view.scan(&low, &high, true).next() {
                None => Ok(Vec::new()),
                Some(entry) => {
                    let (raw_key, value) = entry?;
                    let (_, revision) = keys::split_history_key(&raw_key)?;
                    match keys::decode_history_value(&value)? {
                        ChangeKind::Put => Ok(vec![(key.to_vec(), revision)]),
                        ChangeKind::Tombstone => Ok(Vec::new()),
                    }
                }
            }
        }
        KeySelection::Range { start, end } => {
            let (low, high) = keys::history_bounds(start, end);
            let mut alive = Vec::new();
            // The newest entry at or below `at` of the key being walked.
            let mut newest: Option<(sled::IVec, Revision, ChangeKind)> = None;
            let flush =
                |newest: Option<(sled::IVec, Revision, ChangeKind)>, alive: &mut Vec<_>| -> Result<()> {
                    if let Some((raw_key, revision, ChangeKind::Put)) = newest {
                        let (escaped, _) = keys::split_history_key(&raw_key)?;
                        alive.push((keys::unescape_history_key(escaped)?, revision));
                    }
                    Ok(())
                };
            for entry in view.scan(&low, &high, false) {
                let (raw_key, value) = entry?;
                let (escaped, revision) = keys::split_history_key(&raw_key)?;
                let same_key = match &newest {
                    Some((newest_key, _, _)) => {
                        newest_key.len() == raw_key.len() && newest_key.starts_with(escaped)
                    }
                    None => false,
                };
                if !same_key {
                    let done = newest.take();
                    flush(done, &mut alive)?;
                }
                if revision.main <= at {
                    let kind = keys::decode_history_value(&value)?;
                    newest = Some((raw_key, revision, kind));
                } else if !same_key {
                    // A key whose history starts after `at`: remember the key
                    // only, so its later entries are recognised as the same key.
                    newest = Some((raw_key, revision, ChangeKind::Tombstone));
                }
            }
            flush(newest, &mut alive)?;
            Ok(alive)
        }
    }
}

/// The `KeyValue` a put wrote at `revision`.
pub(crate) fn load_put(view: &dyn KeyspaceView, key: &[u8], revision: Revision) -> Result<KeyValue> {
    let value = view.get(&keys::revision_key(revision))?.ok_or_else(|| {
        corrupt(format!(
            "history of {key:?} names revision {revision:?} with no record"
        ))
    })?;
    match keys::decode_change(&value)? {
        (ChangeKind::Put, kv) if kv.key == key => Ok(kv),
        _ => Err(corrupt(format!("revision {revision:?} is not a put of {key:?}"))),
    }
}
