//! Idempotent appends by event id, enforced by the store itself (not a cache).

use std::sync::Arc;

use cairn_core::ExpectedVersion::{Any, Exact};
use cairn_core::{AllFilter, AppendError, EventStore, IdempotencyKey, KeyOutcome, NewEvent};
use uuid::Uuid;

use crate::fixtures::{append_n, append_of, event_with_id, raw};

/// Re-sending an append whose events are stored returns the original outcome and stores nothing.
pub async fn retried_append_returns_original_outcome(store: Arc<dyn EventStore>) {
    let ids = [Uuid::new_v4(), Uuid::new_v4()];
    let request = || {
        append_of("idem", Exact(0), ids.iter().map(|&id| event_with_id(id, "Tick", 1)).collect())
    };
    let first = store.append(request()).await.unwrap();
    assert!(!first.deduplicated);
    // Exact(0) would now fail as a fresh append; a retry must still succeed.
    let again = store.append(request()).await.unwrap();
    assert!(again.deduplicated);
    assert_eq!(
        (again.first_version, again.last_version, again.position),
        (first.first_version, first.last_version, first.position)
    );
    assert_eq!(store.read_all(0, 100, &AllFilter::default()).await.unwrap().events.len(), 2);
}

/// The retry is recognised long after, with other writes in between.
pub async fn retry_is_recognised_after_other_writes(store: Arc<dyn EventStore>) {
    let id = Uuid::new_v4();
    let first =
        store.append(append_of("late", Any, vec![event_with_id(id, "Tick", 1)])).await.unwrap();
    append_n(&store, "late", 5).await;
    append_n(&store, "other", 5).await;
    let again =
        store.append(append_of("late", Any, vec![event_with_id(id, "Tick", 1)])).await.unwrap();
    assert_eq!((again.last_version, again.position), (first.last_version, first.position));
    assert_eq!(store.stream_version("late").await.unwrap(), 6);
}

/// The same ids at the same place with other content are not a retry: refused, naming the
/// changed event, and the stored event keeps its data. The same content in another key
/// order and spacing still is a retry.
pub async fn changed_content_under_stored_ids_is_refused(store: Arc<dyn EventStore>) {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let with = |event_type: &str, data: &str, id: Uuid| NewEvent {
        event_id: id,
        event_type: event_type.to_owned(),
        data: raw(data),
        metadata: raw("{}"),
    };
    let first = vec![with("Tick", r#"{"n":1,"s":"x"}"#, a), with("Tick", r#"{"n":2}"#, b)];
    store.append(append_of("changed", Exact(0), first)).await.unwrap();

    let other_data = vec![with("Tick", r#"{"n":1,"s":"x"}"#, a), with("Tick", r#"{"n":3}"#, b)];
    let err = store.append(append_of("changed", Exact(0), other_data)).await.unwrap_err();
    assert_eq!(
        err,
        AppendError::EventChanged { event_id: b, aggregate_id: "changed".into(), version: 2 }
    );
    let other_type = vec![with("Tock", r#"{"n":1,"s":"x"}"#, a)];
    let err = store.append(append_of("changed", Any, other_type)).await.unwrap_err();
    assert!(matches!(err, AppendError::EventChanged { event_id, .. } if event_id == a), "{err:?}");

    let reordered = vec![with("Tick", r#"{ "s": "x", "n": 1 }"#, a), with("Tick", r#"{"n":2}"#, b)];
    let again = store.append(append_of("changed", Exact(0), reordered)).await.unwrap();
    assert!(again.deduplicated);
    let stored = store.read_all(0, 100, &AllFilter::default()).await.unwrap().events;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].data.get(), r#"{"n":2}"#);
}

/// An id stored in one stream cannot be appended to another.
pub async fn reused_id_in_another_stream_is_refused(store: Arc<dyn EventStore>) {
    let id = Uuid::new_v4();
    store.append(append_of("one", Any, vec![event_with_id(id, "Tick", 1)])).await.unwrap();
    let err =
        store.append(append_of("two", Any, vec![event_with_id(id, "Tick", 1)])).await.unwrap_err();
    assert_eq!(err, AppendError::DuplicateEventId { event_id: id });
    assert_eq!(store.stream_version("two").await.unwrap(), 0);
}

/// A request that repeats some stored ids but not all stores nothing.
pub async fn partial_overlap_is_refused_and_stores_nothing(store: Arc<dyn EventStore>) {
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    store.append(append_of("po", Any, vec![event_with_id(a, "Tick", 1)])).await.unwrap();
    // Known id first: refused as not a faithful retry.
    let err = store
        .append(append_of(
            "po",
            Any,
            vec![event_with_id(a, "Tick", 1), event_with_id(b, "Tick", 2)],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::DuplicateEventId { .. }), "{err:?}");
    // Known id later in the batch: the whole batch is refused.
    let err = store
        .append(append_of(
            "po",
            Any,
            vec![event_with_id(c, "Tick", 3), event_with_id(a, "Tick", 1)],
        ))
        .await
        .unwrap_err();
    assert_eq!(err, AppendError::DuplicateEventId { event_id: a });
    assert_eq!(store.stream_version("po").await.unwrap(), 1);
    assert_eq!(store.read_all(0, 100, &AllFilter::default()).await.unwrap().events.len(), 1);
}

/// A command's idempotency key is recorded with its events: a second append with the
/// same key stores nothing and is told the first outcome, whatever stream it names.
pub async fn idempotency_key_is_recorded_with_the_append(store: Arc<dyn EventStore>) {
    assert_eq!(store.idempotent_result("cmd-1").await.unwrap(), None);
    let mut first = append_of("k-1", Any, vec![crate::fixtures::event("Tick", 1)]);
    first.idempotency = Some(IdempotencyKey::new("cmd-1"));
    let outcome = store.append(first).await.unwrap();
    let mut again = append_of("k-2", Any, vec![crate::fixtures::event("Tick", 2)]);
    again.idempotency = Some(IdempotencyKey::new("cmd-1"));
    match store.append(again).await.unwrap_err() {
        AppendError::IdempotencyKeyUsed { record } => match record.outcome {
            KeyOutcome::Appended { aggregate_id, outcome: o } => {
                assert_eq!(aggregate_id, "k-1");
                assert_eq!((o.first_version, o.last_version, o.position), (1, 1, outcome.position));
            }
            other @ KeyOutcome::Refused { .. } => {
                panic!("expected an appended record, got {other:?}")
            }
        },
        other => panic!("expected IdempotencyKeyUsed, got {other:?}"),
    }
    assert_eq!(store.stream_version("k-2").await.unwrap(), 0);
    let recorded = store.idempotent_result("cmd-1").await.unwrap().unwrap();
    assert!(matches!(
        recorded.outcome,
        KeyOutcome::Appended { ref aggregate_id, outcome: o } if aggregate_id == "k-1" && o.position == outcome.position
    ));
    // A rejected append records nothing under its key.
    let mut rejected = append_of(
        "k-1",
        cairn_core::ExpectedVersion::Exact(9),
        vec![crate::fixtures::event("Tick", 3)],
    );
    rejected.idempotency = Some(IdempotencyKey::new("cmd-2"));
    assert!(matches!(store.append(rejected).await, Err(AppendError::WrongExpectedVersion { .. })));
    assert_eq!(store.idempotent_result("cmd-2").await.unwrap(), None);
}
