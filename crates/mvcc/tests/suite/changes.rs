//! The change feed for watchers: every change once, in revision order,
//! whole txns, the same from memory and from disk, and compaction.

use keel_api::etcdserverpb::TxnRequest;
use keel_api::key_range::KeySelection;
use keel_api::mvccpb::event::EventType;
use keel_api::mvccpb::Event;
use keel_mvcc::{MvccError, MvccStore, PullBudget, RECENT_CHANGES_MAX_EVENTS};

use crate::common::*;

const BUDGET: PullBudget = PullBudget {
    scanned_events: 100,
    matched_bytes: usize::MAX,
};

const ALL: KeySelection<'static> = KeySelection::Range {
    start: b"",
    end: None,
};

/// `(type, key, mod_revision, version)` of each event, to compare feeds.
fn shapes(events: &[Event]) -> Vec<(i32, String, i64, i64)> {
    events
        .iter()
        .map(|event| {
            let kv = event.kv.clone().unwrap_or_default();
            (
                event.r#type,
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
                kv.version,
            )
        })
        .collect()
}

/// Pulls everything after `after` in small steps, as a watcher does.
fn pull_all(
    store: &MvccStore,
    after: i64,
    selection: &KeySelection<'_>,
    scanned_events: usize,
) -> Vec<Event> {
    let budget = PullBudget {
        scanned_events,
        matched_bytes: usize::MAX,
    };
    let mut events = Vec::new();
    let mut through = after;
    while through < store.current_revision() {
        let changes = store.changes_after(through, selection, budget).expect("pull");
        assert!(changes.through_revision > through, "a pull makes progress");
        events.extend(changes.decoded_events().expect("events decode"));
        through = changes.through_revision;
    }
    events
}

fn write_history(store: &MvccStore) {
    put(store, "a", "1"); // 2
    put(store, "b", "1"); // 3
    put(store, "a", "2"); // 4
    txn(
        store,
        &TxnRequest {
            success: vec![op_put("c", "1"), op_put("b", "2"), op_delete("a", "")],
            ..Default::default()
        },
    )
    .expect("txn"); // 5
    delete(store, "b", "c"); // 6
}

#[test]
fn every_change_comes_once_in_revision_order_with_txns_whole() {
    let t = temp_store();
    write_history(&t.store);
    let events = pull_all(&t.store, 1, &ALL, 1);
    let put = EventType::Put as i32;
    let delete = EventType::Delete as i32;
    assert_eq!(
        shapes(&events),
        vec![
            (put, "a".into(), 2, 1),
            (put, "b".into(), 3, 1),
            (put, "a".into(), 4, 2),
            (put, "c".into(), 5, 1),
            (put, "b".into(), 5, 2),
            (delete, "a".into(), 5, 0),
            (delete, "b".into(), 6, 0),
        ]
    );
    let prefix_b = KeySelection::Single(b"b");
    assert_eq!(
        shapes(&pull_all(&t.store, 3, &prefix_b, 1)),
        vec![(put, "b".into(), 5, 2), (delete, "b".into(), 6, 0)]
    );
}

#[test]
fn history_read_from_disk_after_reopen_equals_the_feed_from_memory() {
    let t = temp_store();
    write_history(&t.store);
    let from_memory = pull_all(&t.store, 1, &ALL, 2);
    let (reopened, _db, _dir) = reopen(t);
    let from_disk = pull_all(&reopened, 1, &ALL, 2);
    assert_eq!(from_disk, from_memory);
}

#[test]
fn a_pull_below_the_compact_revision_fails_and_one_at_it_is_served() {
    let t = temp_store();
    write_history(&t.store);
    compact(&t.store, 4).expect("compact");
    let below = t.store.changes_after(2, &ALL, BUDGET);
    assert!(
        matches!(
            below,
            Err(MvccError::Compacted {
                requested: 3,
                compacted: 4
            })
        ),
        "{below:?}"
    );
    let at = t
        .store
        .changes_after(3, &ALL, BUDGET)
        .expect("a start at the compact revision");
    assert_eq!(at.events.first().map(|event| event.revision), Some(4));
}

#[test]
fn a_pull_at_or_beyond_the_current_revision_is_empty_and_keeps_its_place() {
    let t = temp_store();
    put(&t.store, "a", "1");
    let now = t.store.changes_after(2, &ALL, BUDGET).expect("pull");
    assert_eq!((now.events.len(), now.through_revision), (0, 2));
    let future = t.store.changes_after(10, &ALL, BUDGET).expect("pull");
    assert_eq!((future.events.len(), future.through_revision), (0, 10));
}

#[test]
fn changes_older_than_memory_holds_come_from_disk_without_a_gap() {
    let t = temp_store();
    let writes = RECENT_CHANGES_MAX_EVENTS + 100;
    for chunk in 0..writes / 1000 + 1 {
        let mut batch = t.store.begin_apply();
        for i in 0..1000 {
            if chunk * 1000 + i < writes {
                batch.put(&put_request(&format!("k{}", i % 7), "v")).expect("put");
            }
        }
        batch.commit().expect("commit");
    }
    let events = pull_all(&t.store, 1, &ALL, 500);
    assert_eq!(events.len(), writes);
    for (index, event) in events.iter().enumerate() {
        let kv = event.kv.as_ref().expect("kv");
        assert_eq!(kv.mod_revision, index as i64 + 2, "event {index}");
    }
}

#[tokio::test]
async fn a_commit_announces_its_revision() {
    let t = temp_store();
    let mut revisions = t.store.subscribe_revisions();
    assert_eq!(*revisions.borrow_and_update(), 1);
    put(&t.store, "a", "1");
    tokio::time::timeout(std::time::Duration::from_secs(5), revisions.changed())
        .await
        .expect("announced")
        .expect("store alive");
    assert_eq!(*revisions.borrow(), 2);
}

#[test]
fn after_a_compaction_memory_and_disk_give_the_same_history() {
    let t = temp_store();
    write_history(&t.store);
    // Revision 5 deleted "a": a compaction at 5 drops that tombstone.
    compact(&t.store, 5).expect("compact");
    let from_memory = pull_all(&t.store, 4, &ALL, 100);
    let (reopened, _db, _dir) = reopen(t);
    assert_eq!(pull_all(&reopened, 4, &ALL, 100), from_memory);
    assert!(
        !from_memory
            .iter()
            .any(|event| event.kv.as_ref().is_some_and(|kv| kv.key == b"a")),
        "the compacted tombstone is not served: {from_memory:?}"
    );
}
