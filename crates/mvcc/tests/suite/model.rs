//! Model check: random sequences of put / delete_range / txn / compact,
//! split randomly into apply batches, against a plain BTreeMap model of
//! etcd's semantics; then random ranges (current and historical, with limit,
//! sort, filters, keys_only, count_only) must agree, and a second store fed
//! one request per batch must hash the same.

use std::collections::BTreeMap;

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::response_op::Response;
use keel_api::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
};
use keel_api::mvccpb::KeyValue;
use keel_mvcc::{ApplyBatch, MvccError, MvccStore};
use proptest::prelude::*;

/// Keys in byte order, with 0x00 and 0xff bytes to exercise the escaping.
const KEYS: [&[u8]; 7] = [b"a", b"a\x00", b"a\x00\x01", b"ab", b"b", b"b\xff", b"c"];

/// A key selection: `end == None` is the single key; `end == KEYS.len()`
/// means "from key on" (`"\0"`).
#[derive(Debug, Clone, Copy)]
struct Span {
    key: usize,
    end: Option<usize>,
}

impl Span {
    fn key(&self) -> Vec<u8> {
        KEYS[self.key].to_vec()
    }

    fn range_end(&self) -> Vec<u8> {
        match self.end {
            None => Vec::new(),
            Some(end) if end >= KEYS.len() => vec![0],
            Some(end) => KEYS[end].to_vec(),
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        let start = KEYS[self.key];
        match self.end {
            None => key == start,
            Some(end) if end >= KEYS.len() => key >= start,
            Some(end) => key >= start && key < KEYS[end],
        }
    }
}

#[derive(Debug, Clone)]
enum TxnOp {
    Put { key: usize, value: u8 },
    Delete(Span),
    Range(Span),
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: usize,
        value: u8,
        prev_kv: bool,
        ignore_value: bool,
    },
    Delete {
        span: Span,
        prev_kv: bool,
    },
    Txn {
        compare_key: usize,
        compare_version: i64,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
    Compact {
        pick: u16,
    },
}

#[derive(Debug, Clone)]
struct Query {
    span: Span,
    revision_pick: u16,
    limit: i64,
    sort_order: i32,
    sort_target: i32,
    keys_only: bool,
    count_only: bool,
    min_mod_revision: i64,
}

fn span() -> impl Strategy<Value = Span> {
    (0..KEYS.len(), prop::option::of(0..=KEYS.len())).prop_map(|(key, end)| Span { key, end })
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        3 => (0..KEYS.len(), any::<u8>()).prop_map(|(key, value)| TxnOp::Put { key, value }),
        1 => span().prop_map(TxnOp::Delete),
        1 => span().prop_map(TxnOp::Range),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..KEYS.len(), any::<u8>(), any::<bool>(), prop::bool::weighted(0.15))
            .prop_map(|(key, value, prev_kv, ignore_value)| Op::Put { key, value, prev_kv, ignore_value }),
        2 => (span(), any::<bool>()).prop_map(|(span, prev_kv)| Op::Delete { span, prev_kv }),
        2 => (0..KEYS.len(), 0i64..3, prop::collection::vec(txn_op(), 0..4), prop::collection::vec(txn_op(), 0..3))
            .prop_map(|(compare_key, compare_version, success, failure)| Op::Txn {
                compare_key,
                compare_version,
                success,
                failure
            }),
        1 => any::<u16>().prop_map(|pick| Op::Compact { pick }),
    ]
}

fn query() -> impl Strategy<Value = Query> {
    (
        span(),
        any::<u16>(),
        0i64..4,
        0i32..3,
        0i32..5,
        any::<bool>(),
        prop::bool::weighted(0.2),
        0i64..8,
    )
        .prop_map(
            |(span, revision_pick, limit, sort_order, sort_target, keys_only, count_only, min_mod)| Query {
                span,
                revision_pick,
                limit,
                sort_order,
                sort_target,
                keys_only,
                count_only,
                min_mod_revision: if min_mod < 5 { 0 } else { min_mod * 2 },
            },
        )
}

/// The reference: every version of every key, kept forever; compaction
/// only moves the floor of what may be read.
#[derive(Debug, Clone)]
struct Model {
    revision: i64,
    compacted: i64,
    history: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
}

#[derive(Debug, PartialEq)]
enum ModelError {
    Compacted,
    Future,
    KeyNotFound,
}

fn error_kind(error: &MvccError) -> ModelError {
    match error {
        MvccError::Compacted { .. } => ModelError::Compacted,
        MvccError::FutureRevision { .. } => ModelError::Future,
        MvccError::KeyNotFound => ModelError::KeyNotFound,
        other => panic!("unexpected store error {other:?}"),
    }
}

/// What a write answered, reduced to what the model predicts.
#[derive(Debug, PartialEq)]
enum Outcome {
    Put {
        revision: i64,
        prev_kv: Option<KeyValue>,
    },
    Delete {
        revision: i64,
        deleted: i64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn {
        revision: i64,
        succeeded: bool,
        ranges: Vec<(i64, Vec<KeyValue>)>,
    },
    Compacted,
}

impl Model {
    fn new() -> Self {
        Model {
            revision: 1,
            compacted: -1,
            history: BTreeMap::new(),
        }
    }

    fn live_at(&self, at: i64) -> BTreeMap<Vec<u8>, KeyValue> {
        self.history
            .iter()
            .filter_map(|(key, versions)| {
                versions
                    .iter()
                    .rev()
                    .find(|(main, _)| *main <= at)
                    .and_then(|(_, kv)| kv.clone())
                    .map(|kv| (key.clone(), kv))
            })
            .collect()
    }

    fn apply(&mut self, op: &Op) -> Result<Outcome, ModelError> {
        match op {
            Op::Put {
                key,
                value,
                prev_kv,
                ignore_value,
            } => {
                let previous = self.live_at(self.revision).remove(KEYS[*key]);
                if *ignore_value && previous.is_none() {
                    return Err(ModelError::KeyNotFound);
                }
                let mut live = self.live_at(self.revision);
                let value = if *ignore_value {
                    previous.clone().map(|kv| kv.value).unwrap_or_default()
                } else {
                    vec![*value]
                };
                self.write_put(&mut live, KEYS[*key], value);
                self.revision += 1;
                Ok(Outcome::Put {
                    revision: self.revision,
                    prev_kv: if *prev_kv { previous } else { None },
                })
            }
            Op::Delete { span, prev_kv } => {
                let mut live = self.live_at(self.revision);
                let doomed = self.write_delete(&mut live, span);
                if !doomed.is_empty() {
                    self.revision += 1;
                }
                Ok(Outcome::Delete {
                    revision: self.revision,
                    deleted: doomed.len() as i64,
                    prev_kvs: if *prev_kv { doomed } else { Vec::new() },
                })
            }
            Op::Txn {
                compare_key,
                compare_version,
                success,
                failure,
            } => {
                let mut live = self.live_at(self.revision);
                let version = live.get(KEYS[*compare_key]).map_or(0, |kv| kv.version);
                let succeeded = version == *compare_version;
                let mut changed = false;
                let mut ranges = Vec::new();
                for op in if succeeded { success } else { failure } {
                    match op {
                        TxnOp::Put { key, value } => {
                            self.write_put(&mut live, KEYS[*key], vec![*value]);
                            changed = true;
                        }
                        TxnOp::Delete(span) => changed |= !self.write_delete(&mut live, span).is_empty(),
                        TxnOp::Range(span) => {
                            let kvs = live
                                .values()
                                .filter(|kv| span.contains(&kv.key))
                                .cloned()
                                .collect();
                            ranges.push((self.revision + i64::from(changed), kvs));
                        }
                    }
                }
                if changed {
                    self.revision += 1;
                }
                Ok(Outcome::Txn {
                    revision: self.revision,
                    succeeded,
                    ranges,
                })
            }
            Op::Compact { pick } => {
                let revision = i64::from(*pick) % (self.revision + 2);
                if revision <= self.compacted {
                    return Err(ModelError::Compacted);
                }
                if revision > self.revision {
                    return Err(ModelError::Future);
                }
                self.compacted = revision;
                Ok(Outcome::Compacted)
            }
        }
    }

    /// A put at revision `self.revision + 1` (the caller bumps it once).
    fn write_put(&mut self, live: &mut BTreeMap<Vec<u8>, KeyValue>, key: &[u8], value: Vec<u8>) {
        let main = self.revision + 1;
        let previous = live.get(key);
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: previous.map_or(main, |kv| kv.create_revision),
            mod_revision: main,
            version: previous.map_or(1, |kv| kv.version + 1),
            value,
            lease: 0,
        };
        live.insert(key.to_vec(), kv.clone());
        self.history
            .entry(key.to_vec())
            .or_default()
            .push((main, Some(kv)));
    }

    fn write_delete(&mut self, live: &mut BTreeMap<Vec<u8>, KeyValue>, span: &Span) -> Vec<KeyValue> {
        let main = self.revision + 1;
        let doomed: Vec<KeyValue> = live
            .values()
            .filter(|kv| span.contains(&kv.key))
            .cloned()
            .collect();
        for kv in &doomed {
            live.remove(&kv.key);
            self.history.entry(kv.key.clone()).or_default().push((main, None));
        }
        doomed
    }

    fn range(&self, query: &Query) -> Result<RangeResponse, ModelError> {
        let requested = self.requested_revision(query);
        if requested > self.revision {
            return Err(ModelError::Future);
        }
        let at = if requested <= 0 { self.revision } else { requested };
        if at < self.compacted {
            return Err(ModelError::Compacted);
        }
        let mut kvs: Vec<KeyValue> = self
            .live_at(at)
            .into_values()
            .filter(|kv| query.span.contains(&kv.key))
            .collect();
        let count = kvs.len() as i64;
        if query.count_only {
            kvs.clear();
        }
        kvs.retain(|kv| query.min_mod_revision == 0 || kv.mod_revision >= query.min_mod_revision);
        let target = SortTarget::try_from(query.sort_target).expect("target");
        let mut order = SortOrder::try_from(query.sort_order).expect("order");
        if target != SortTarget::Key && order == SortOrder::None {
            order = SortOrder::Ascend;
        }
        if order != SortOrder::None {
            kvs.sort_by(|a, b| {
                let ordering = match target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                };
                if order == SortOrder::Descend {
                    ordering.reverse()
                } else {
                    ordering
                }
            });
        }
        let more = query.limit > 0 && kvs.len() as i64 > query.limit;
        if more {
            kvs.truncate(query.limit as usize);
        }
        if query.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        Ok(RangeResponse {
            header: Some(keel_api::etcdserverpb::ResponseHeader {
                revision: self.revision,
                ..Default::default()
            }),
            kvs,
            more,
            count,
        })
    }

    fn requested_revision(&self, query: &Query) -> i64 {
        i64::from(query.revision_pick) % (self.revision + 2)
    }
}

fn txn_request_op(op: &TxnOp) -> RequestOp {
    let request = match op {
        TxnOp::Put { key, value } => Request::RequestPut(PutRequest {
            key: KEYS[*key].to_vec(),
            value: vec![*value],
            ..Default::default()
        }),
        TxnOp::Delete(span) => Request::RequestDeleteRange(DeleteRangeRequest {
            key: span.key(),
            range_end: span.range_end(),
            prev_kv: false,
        }),
        TxnOp::Range(span) => Request::RequestRange(RangeRequest {
            key: span.key(),
            range_end: span.range_end(),
            ..Default::default()
        }),
    };
    RequestOp {
        request: Some(request),
    }
}

fn revision_of(header: &Option<keel_api::etcdserverpb::ResponseHeader>) -> i64 {
    header.as_ref().expect("header").revision
}

fn apply_to_store(batch: &mut ApplyBatch<'_>, op: &Op, model: &Model) -> Result<Outcome, MvccError> {
    match op {
        Op::Put {
            key,
            value,
            prev_kv,
            ignore_value,
        } => {
            let response = batch.put(&PutRequest {
                key: KEYS[*key].to_vec(),
                value: vec![*value],
                prev_kv: *prev_kv,
                ignore_value: *ignore_value,
                ..Default::default()
            })?;
            Ok(Outcome::Put {
                revision: revision_of(&response.header),
                prev_kv: response.prev_kv,
            })
        }
        Op::Delete { span, prev_kv } => {
            let response = batch.delete_range(&DeleteRangeRequest {
                key: span.key(),
                range_end: span.range_end(),
                prev_kv: *prev_kv,
            })?;
            Ok(Outcome::Delete {
                revision: revision_of(&response.header),
                deleted: response.deleted,
                prev_kvs: response.prev_kvs,
            })
        }
        Op::Txn {
            compare_key,
            compare_version,
            success,
            failure,
        } => {
            let request = TxnRequest {
                compare: vec![Compare {
                    key: KEYS[*compare_key].to_vec(),
                    target: CompareTarget::Version as i32,
                    result: CompareResult::Equal as i32,
                    target_union: Some(TargetUnion::Version(*compare_version)),
                    range_end: Vec::new(),
                }],
                success: success.iter().map(txn_request_op).collect(),
                failure: failure.iter().map(txn_request_op).collect(),
            };
            let response = batch.txn(&request)?;
            let ranges = response
                .responses
                .iter()
                .filter_map(|op| match &op.response {
                    Some(Response::ResponseRange(range)) => {
                        Some((revision_of(&range.header), range.kvs.clone()))
                    }
                    _ => None,
                })
                .collect();
            Ok(Outcome::Txn {
                revision: revision_of(&response.header),
                succeeded: response.succeeded,
                ranges,
            })
        }
        Op::Compact { pick } => {
            // The model picks the revision from its own state, which the
            // store must match at this point.
            let revision = i64::from(*pick) % (model.revision + 2);
            batch.compact(revision)?;
            Ok(Outcome::Compacted)
        }
    }
}

fn range_request(query: &Query, model: &Model) -> RangeRequest {
    RangeRequest {
        key: query.span.key(),
        range_end: query.span.range_end(),
        limit: query.limit,
        revision: model.requested_revision(query),
        sort_order: query.sort_order,
        sort_target: query.sort_target,
        keys_only: query.keys_only,
        count_only: query.count_only,
        min_mod_revision: query.min_mod_revision,
        ..Default::default()
    }
}

fn temporary_store() -> (keel_storage::Database, MvccStore) {
    let db = keel_storage::Database::open_temporary().expect("sled");
    let store = MvccStore::open(&db).expect("store");
    (db, store)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_like_the_model(
        ops in prop::collection::vec((op(), prop::bool::weighted(0.3)), 1..40),
        queries in prop::collection::vec(query(), 1..12),
    ) {
        let (_db, store) = temporary_store();
        let (_db_single, single) = temporary_store();
        let mut model = Model::new();
        let mut batch = store.begin_apply();
        for (op, commit_after) in &ops {
            let before = model.clone();
            let expected = model.apply(op);
            let got = apply_to_store(&mut batch, op, &before).map_err(|e| error_kind(&e));
            prop_assert_eq!(&got, &expected, "op {:?}", op);
            prop_assert_eq!(batch.current_revision(), model.revision);
            {
                let mut single_batch = single.begin_apply();
                let single_got = apply_to_store(&mut single_batch, op, &before).map_err(|e| error_kind(&e));
                prop_assert_eq!(&single_got, &expected);
                single_batch.commit().expect("commit");
            }
            if *commit_after {
                batch.commit().expect("commit");
                prop_assert_eq!(store.current_revision(), model.revision);
                prop_assert_eq!(store.compact_revision(), model.compacted);
                batch = store.begin_apply();
            }
        }
        batch.commit().expect("commit");
        prop_assert_eq!(store.current_revision(), model.revision);
        prop_assert_eq!(store.compact_revision(), model.compacted);
        for query in &queries {
            let request = range_request(query, &model);
            let got = store.range(&request).map_err(|e| error_kind(&e));
            prop_assert_eq!(&got, &model.range(query), "query {:?}", request);
        }
        prop_assert_eq!(store.hash_kv(0).expect("hash"), single.hash_kv(0).expect("hash"));
    }
}
