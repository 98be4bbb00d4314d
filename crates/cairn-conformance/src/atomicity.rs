//! A batch is appended atomically: all of it or none of it.

use std::sync::Arc;

use cairn_core::ExpectedVersion::Any;
use cairn_core::{AllFilter, AppendError, EventStore};
use uuid::Uuid;

use crate::fixtures::{append_n, append_of, event, event_with_id};

/// A batch refused halfway (its 3rd event's id is taken) leaves no trace, and the next
/// append continues as if it never happened.
pub async fn failed_append_stores_none_of_its_events(store: Arc<dyn EventStore>) {
    let taken = Uuid::new_v4();
    store.append(append_of("x", Any, vec![event_with_id(taken, "Tick", 0)])).await.unwrap();
    let batch =
        vec![event("Tick", 1), event("Tick", 2), event_with_id(taken, "Tick", 3), event("Tick", 4)];
    assert!(matches!(
        store.append(append_of("y", Any, batch)).await,
        Err(AppendError::DuplicateEventId { .. })
    ));
    assert_eq!(store.stream_version("y").await.unwrap(), 0);
    let next = append_n(&store, "y", 1).await;
    assert_eq!(next.first_version, 1);
    let all = store.read_all(0, 100, &AllFilter::default()).await.unwrap();
    assert_eq!(all.events.len(), 2);
    assert!(all.events.iter().all(|e| e.event_type == "Tick" && e.data.get() != r#"{"n":1}"#));
}

/// One append's events get consecutive versions and increasing positions, with nothing
/// from another append in between.
pub async fn batch_gets_consecutive_versions_and_positions(store: Arc<dyn EventStore>) {
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move { append_n(&store, &format!("b-{w}"), 50).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = store.read_all(0, 10_000, &AllFilter::default()).await.unwrap();
    assert_eq!(all.events.len(), 400);
    for chunk in all.events.chunks(50) {
        assert!(
            chunk.iter().all(|e| e.aggregate_id == chunk[0].aggregate_id),
            "batches interleaved"
        );
        let versions: Vec<u64> = chunk.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=50).collect::<Vec<_>>());
    }
}
