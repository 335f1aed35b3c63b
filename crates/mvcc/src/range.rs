//! Range reads over any keyspace view, with etcd 3.4's `applierV3backend.Range`
//! semantics: `count` is the number of keys in the range at the read revision
//! before filters and limit; with a sort or a revision filter everything is
//! fetched, then filtered, sorted and truncated; `more` says the limit cut
//! the result.
//!
//! Keys, revisions and current-version metadata come from the in-memory
//! index; at the view's current revision `count_only` and `keys_only` (unless
//! sorting by value) read no record at all, and full reads fetch each value
//! with one point `get` of its revision record, only for the keys the limit
//! keeps. Older revisions find each key's version at that revision in its
//! history and load its record (which holds that version's metadata).

use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use keel_api::key_range::KeySelection;
use keel_api::mvccpb::KeyValue;

use crate::error::{corrupt, MvccError, Result};
use crate::index::LiveVersion;
use crate::keys::{self, ChangeKind, Revision};
use crate::view::{KeyStates, View};

/// The revisions a view can serve: `current` is the revision its index's
/// live versions are at (and what response headers carry), `compacted` the
/// floor below which history is gone.
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
    view: &dyn View,
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
pub(crate) fn select(view: &dyn View, revisions: ViewRevisions, request: &RangeRequest) -> Result<Selected> {
    let at = revisions.resolve(request.revision)?;
    let plan = Plan::of(request);
    let selection = KeySelection::from_request(&request.key, &request.range_end);
    let candidates = key_candidates(view, &selection, plan.reverse_scan);
    let (kvs, count) = if at == revisions.current {
        // keys_only drops the values after sorting, so only a value sort needs them.
        let with_values = !request.keys_only || matches!(plan.sort, Some((SortTarget::Value, _)));
        let live = candidates.filter_map(|(key, state)| state.live().map(|live| (key, live)));
        gather(live, &plan, request.count_only, |(key, live)| {
            current_kv(view, key, live, with_values)
        })?
    } else {
        let alive = candidates.filter_map(|(key, state)| state.put_at(at).map(|revision| (key, revision)));
        gather(alive, &plan, request.count_only, |(key, revision)| {
            load_put(view, key, revision)
        })?
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
    candidates: impl Iterator<Item = T>,
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

/// The index entries `selection` covers, in key order (or reverse).
pub(crate) fn key_candidates<'v>(
    view: &'v dyn View,
    selection: &KeySelection<'v>,
    reverse: bool,
) -> KeyStates<'v> {
    match *selection {
        KeySelection::Single(key) => Box::new(view.key_state(key).map(|state| (key, state)).into_iter()),
        KeySelection::Range { start, end } => view.key_states(start, end, reverse),
    }
}

/// The live versions `selection` covers, in key order.
pub(crate) fn live_versions(view: &dyn View, selection: &KeySelection<'_>) -> Vec<(Vec<u8>, LiveVersion)> {
    key_candidates(view, selection, false)
        .filter_map(|(key, state)| state.live().map(|live| (key.to_vec(), live)))
        .collect()
}

/// The current `KeyValue` of a live key; with an empty value unless
/// `with_value`, in which case its record is read.
pub(crate) fn current_kv(
    view: &dyn View,
    key: &[u8],
    live: LiveVersion,
    with_value: bool,
) -> Result<KeyValue> {
    let value = if with_value {
        load_value(view, key, live.revision())?
    } else {
        Vec::new()
    };
    Ok(live.to_kv(key, value))
}

fn load_record<T>(
    view: &dyn View,
    key: &[u8],
    revision: Revision,
    read: impl FnOnce(keys::Record<'_>) -> T,
) -> Result<T> {
    let bytes = view.record(revision)?.ok_or_else(|| {
        corrupt(format!(
            "the index names revision {revision:?} of {key:?} but it has no record"
        ))
    })?;
    let record = keys::decode_record(&bytes)?;
    if record.kind() != ChangeKind::Put || record.key != key {
        return Err(corrupt(format!("revision {revision:?} is not a put of {key:?}")));
    }
    Ok(read(record))
}

/// The value a put of `key` wrote at `revision`.
pub(crate) fn load_value(view: &dyn View, key: &[u8], revision: Revision) -> Result<Vec<u8>> {
    load_record(view, key, revision, |record| record.value.to_vec())
}

/// The `KeyValue` a put of `key` wrote at `revision`.
pub(crate) fn load_put(view: &dyn View, key: &[u8], revision: Revision) -> Result<KeyValue> {
    load_record(view, key, revision, |record| record.to_kv(revision))
}
