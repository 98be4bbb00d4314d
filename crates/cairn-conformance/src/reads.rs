//! Reading streams (both directions, paged), `$all` (paged, filtered) and stream stats.

use std::sync::Arc;

use cairn_core::ExpectedVersion::Any;
use cairn_core::{AllFilter, Append, Direction, EventStore, NewEvent, ReadError, StreamRead};

use crate::fixtures::{append_n, append_of, event, raw};

fn versions(events: &[cairn_core::RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

/// Backward from the end, backward from a version, and the page boundaries.
pub async fn backward_reads_and_paging(store: Arc<dyn EventStore>) {
    append_n(&store, "back", 10).await;
    let read =
        |from, limit| StreamRead { from_version: from, direction: Direction::Backward, limit };
    let end = store.read_stream("back", read(None, 3)).await.unwrap();
    assert_eq!(versions(&end.events), vec![10, 9, 8]);
    assert_eq!(end.next_version(Direction::Backward), Some(7));
    let mid = store.read_stream("back", read(Some(4), 10)).await.unwrap();
    assert_eq!(versions(&mid.events), vec![4, 3, 2, 1]);
    assert_eq!(mid.next_version(Direction::Backward), None);
    let beyond = store.read_stream("back", read(Some(50), 2)).await.unwrap();
    assert_eq!(versions(&beyond.events), vec![10, 9]);
}

/// Forward pages end with `next_version` = None exactly at the stream's end.
pub async fn forward_paging_reports_next_version(store: Arc<dyn EventStore>) {
    append_n(&store, "fwd", 7).await;
    let p1 = store.read_stream("fwd", StreamRead::forward_from(1, 3)).await.unwrap();
    assert_eq!(versions(&p1.events), vec![1, 2, 3]);
    assert_eq!(p1.next_version(Direction::Forward), Some(4));
    let p3 = store.read_stream("fwd", StreamRead::forward_from(7, 3)).await.unwrap();
    assert_eq!(versions(&p3.events), vec![7]);
    assert_eq!(p3.next_version(Direction::Forward), None);
    let past = store.read_stream("fwd", StreamRead::forward_from(8, 3)).await.unwrap();
    assert!(past.events.is_empty());
    assert_eq!(past.next_version(Direction::Forward), None);
    let exact_end = store.read_stream("fwd", StreamRead::forward_from(5, 3)).await.unwrap();
    assert_eq!(exact_end.next_version(Direction::Forward), None);
}

/// A stream with no events is not found, in both directions.
pub async fn missing_stream_is_not_found(store: Arc<dyn EventStore>) {
    for direction in [Direction::Forward, Direction::Backward] {
        let read = StreamRead { from_version: None, direction, limit: 10 };
        assert_eq!(store.read_stream("ghost", read).await.unwrap_err(), ReadError::StreamNotFound);
    }
}

/// Event-type and aggregate-type filters, alone and together.
pub async fn read_all_filters_by_event_and_aggregate_type(store: Arc<dyn EventStore>) {
    let mk = |stream: &str, aggregate_type: &str, types: &[&str]| Append {
        aggregate_id: stream.into(),
        aggregate_type: aggregate_type.into(),
        expected: Any,
        events: types.iter().map(|t| event(t, 0)).collect(),
        idempotency: None,
    };
    store.append(mk("o-1", "Order", &["OrderCreated", "ItemAdded"])).await.unwrap();
    store.append(mk("c-1", "Customer", &["CustomerRegistered"])).await.unwrap();
    store.append(mk("o-2", "Order", &["OrderCreated", "OrderConfirmed"])).await.unwrap();
    let filter = |types: &[&str], aggs: &[&str]| AllFilter {
        event_types: types.iter().map(|s| (*s).to_owned()).collect(),
        aggregate_types: aggs.iter().map(|s| (*s).to_owned()).collect(),
    };
    let kinds = |f: AllFilter| {
        let store = Arc::clone(&store);
        async move {
            let page = store.read_all(0, 100, &f).await.unwrap();
            assert_eq!(page.scanned_to, 5);
            page.events.into_iter().map(|e| (e.aggregate_id, e.event_type)).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        kinds(filter(&["OrderCreated"], &[])).await,
        vec![("o-1".into(), "OrderCreated".into()), ("o-2".into(), "OrderCreated".into())]
    );
    assert_eq!(
        kinds(filter(&[], &["Customer"])).await,
        vec![("c-1".into(), "CustomerRegistered".into())]
    );
    assert_eq!(
        kinds(filter(&["CustomerRegistered", "OrderConfirmed"], &[])).await,
        vec![("c-1".into(), "CustomerRegistered".into()), ("o-2".into(), "OrderConfirmed".into())]
    );
    assert!(kinds(filter(&["CustomerRegistered"], &["Order"])).await.is_empty());
    // A list of aggregate types matches any of them, as a list of event types does.
    assert_eq!(
        kinds(filter(&[], &["Customer", "Order"])).await.len(),
        5,
        "aggregate_type=Customer,Order is every event of either type"
    );
    assert_eq!(
        kinds(filter(&["OrderCreated", "CustomerRegistered"], &["Customer", "Nothing"])).await,
        vec![("c-1".into(), "CustomerRegistered".into())]
    );
}

/// `$all` pages: position > from, ascending, limited, and `scanned_to` tells how far.
pub async fn read_all_pages_and_scanned_to(store: Arc<dyn EventStore>) {
    append_n(&store, "p", 10).await;
    let first = store.read_all(0, 4, &AllFilter::default()).await.unwrap();
    assert_eq!(first.events.len(), 4);
    assert_eq!(first.scanned_to, first.events[3].position);
    let rest = store.read_all(first.scanned_to, 100, &AllFilter::default()).await.unwrap();
    assert_eq!(rest.events.len(), 6);
    assert!(rest.events[0].position > first.events[3].position);
    assert_eq!(rest.scanned_to, rest.events[5].position);
    let none = store.read_all(rest.scanned_to, 100, &AllFilter::default()).await.unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.scanned_to, rest.scanned_to);
    assert_eq!(*store.head().borrow(), rest.scanned_to);
}

/// Stream statistics rank streams by event count.
pub async fn stream_stats_rank_by_event_count(store: Arc<dyn EventStore>) {
    append_n(&store, "small", 1).await;
    append_n(&store, "big", 5).await;
    append_n(&store, "mid", 3).await;
    let stats = store.stream_stats(2).await.unwrap();
    assert_eq!(stats.len(), 2);
    assert_eq!(
        (stats[0].aggregate_id.as_str(), stats[0].event_count, stats[0].latest_version),
        ("big", 5, 5)
    );
    assert_eq!((stats[1].aggregate_id.as_str(), stats[1].event_count), ("mid", 3));
    assert_eq!(stats[0].aggregate_type, "Thing");
}

/// Payload and metadata come back exactly as given, digits and all.
pub async fn data_and_metadata_are_returned_byte_for_byte(store: Arc<dyn EventStore>) {
    let data = r#"{"total":59.98,"big":12345678901234567890.123,"s":"é\n\"q\"","nested":{"a":[1,2.50,null]}}"#;
    let metadata = r#"{"correlation_id":"req-abc","causation_id":null,"user_id":"user-001"}"#;
    let e = NewEvent { metadata: raw(metadata), ..NewEvent::new("Exact", raw(data)) };
    let id = e.event_id;
    store.append(append_of("bytes", Any, vec![e])).await.unwrap();
    let got =
        store.read_stream("bytes", StreamRead::forward_from(1, 1)).await.unwrap().events.remove(0);
    assert_eq!(got.data.get(), data);
    assert_eq!(got.metadata.get(), metadata);
    assert_eq!(got.event_id, id);
    assert_eq!(got.event_type, "Exact");
}

/// Commit timestamps never go backwards along `$all` (temporal queries rely on it).
pub async fn timestamps_never_decrease_along_all(store: Arc<dyn EventStore>) {
    for i in 0..20 {
        append_n(&store, &format!("t-{}", i % 3), 1 + i % 2).await;
    }
    let all = store.read_all(0, 1000, &AllFilter::default()).await.unwrap();
    assert!(all.events.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
}
