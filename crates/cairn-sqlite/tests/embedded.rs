//! Behaviour only the embedded backend has: the directory lock, reopening, poisoning.

use std::sync::Arc;

use cairn_core::{AllFilter, AppendError, EventStore, ExpectedVersion, NewEvent};
use cairn_sqlite::{OpenError, SqliteEventStore, SqliteOptions};
use serde_json::value::RawValue;

fn append(stream: &str) -> cairn_core::Append {
    cairn_core::Append {
        aggregate_id: stream.into(),
        aggregate_type: "Thing".into(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent::new("Tick", RawValue::from_string("{}".into()).unwrap())],
        idempotency: None,
    }
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteEventStore::open(dir.path(), &SqliteOptions::default()).unwrap();
    let err = SqliteEventStore::open(dir.path(), &SqliteOptions::default())
        .err()
        .expect("second open must fail");
    assert!(matches!(err, OpenError::Locked(..)), "{err}");
    assert!(err.to_string().contains("in use by another cairn process"), "{err}");
    first.close().await;
    drop(first);
    // Once the first is closed the directory can be opened again.
    SqliteEventStore::open(dir.path(), &SqliteOptions::default()).unwrap().close().await;
}

#[tokio::test]
async fn reopening_keeps_every_event_and_continues_positions() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path(), &SqliteOptions::default()).unwrap();
    for i in 0..10 {
        store.append(append(&format!("r-{}", i % 3))).await.unwrap();
    }
    let before = store.read_all(0, 100, &AllFilter::default()).await.unwrap().events;
    store.close().await;
    drop(store);

    let store = SqliteEventStore::open(dir.path(), &SqliteOptions::default()).unwrap();
    assert_eq!(*store.head().borrow(), 10);
    let after = store.read_all(0, 100, &AllFilter::default()).await.unwrap().events;
    assert_eq!(before, after);
    let next = store.append(append("r-0")).await.unwrap();
    assert_eq!((next.position, next.last_version), (11, 5));
    assert!(
        store.read_all(10, 1, &AllFilter::default()).await.unwrap().events[0].timestamp
            >= after[9].timestamp
    );
    store.close().await;
}

#[tokio::test]
async fn a_failed_commit_poisons_the_store_and_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path(), &SqliteOptions::default()).unwrap());
    store.append(append("p")).await.unwrap();
    store.inject_commit_failure();
    let failed = store.append(append("p")).await.unwrap_err();
    assert!(matches!(failed, AppendError::Unavailable(_)), "{failed:?}");
    assert!(store.is_poisoned());
    // Never retried: every later write is refused, reads still work, health reports it.
    assert_eq!(store.append(append("q")).await.unwrap_err(), AppendError::Poisoned);
    assert_eq!(store.check_health().await.unwrap_err(), AppendError::Poisoned);
    assert_eq!(store.read_all(0, 10, &AllFilter::default()).await.unwrap().events.len(), 1);
    assert_eq!(*store.head().borrow(), 1);
    store.close().await;
    drop(store);

    let store = SqliteEventStore::open(dir.path(), &SqliteOptions::default()).unwrap();
    assert_eq!(store.read_all(0, 10, &AllFilter::default()).await.unwrap().events.len(), 1);
    assert_eq!(store.append(append("p")).await.unwrap().last_version, 2);
    store.close().await;
}

#[tokio::test]
async fn appends_after_close_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path(), &SqliteOptions::default()).unwrap();
    store.append(append("c")).await.unwrap();
    store.close().await;
    assert_eq!(store.append(append("c")).await.unwrap_err(), AppendError::ShuttingDown);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    SqliteEventStore::open(dir.path(), &SqliteOptions::default()).unwrap().close().await;
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    let err = SqliteEventStore::open(dir.path(), &SqliteOptions::default()).err().unwrap();
    assert!(err.to_string().contains("schema version 99"), "{err}");
}
