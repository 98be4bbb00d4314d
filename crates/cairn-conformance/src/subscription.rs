//! Catch-up-then-live subscriptions over `$all`.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::{AllFilter, EventStore, subscribe_all};
use futures_util::StreamExt;

use crate::fixtures::append_n;

/// Subscribe with history present while writers keep appending: every event once, in order.
pub async fn catch_up_then_live_without_gap_or_duplicate(store: Arc<dyn EventStore>) {
    for i in 0..30 {
        append_n(&store, &format!("sub-{}", i % 4), 20).await;
    }
    let from = 37; // start mid-history
    let writer_store = Arc::clone(&store);
    let writer = tokio::spawn(async move {
        for i in 0..200 {
            append_n(&writer_store, &format!("live-{}", i % 5), 1 + i % 2).await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let expected_total = 600 - from + (0..200).map(|i| 1 + i % 2).sum::<u64>();
    let mut sub = Box::pin(subscribe_all(Arc::clone(&store), from, AllFilter::default()));
    let mut last = from;
    for _ in 0..expected_total {
        let e = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("subscription stalled")
            .expect("subscription ended")
            .expect("read failed");
        // Holes in the numbering are allowed; going backwards or repeating is not. Since the
        // count is exact, a skipped event would show up as a stall above.
        assert!(e.position > last, "position went from {last} to {}", e.position);
        last = e.position;
    }
    writer.await.unwrap();
    // Nothing beyond what was written arrives.
    assert!(tokio::time::timeout(Duration::from_millis(200), sub.next()).await.is_err());
    assert_eq!(*store.head().borrow(), last);
}

/// A filtered subscriber moves past events it does not want and still wakes for new ones.
pub async fn filtered_subscription_moves_past_unwanted_events(store: Arc<dyn EventStore>) {
    append_n(&store, "noise", 50).await;
    let filter = AllFilter { event_types: vec!["Wanted".into()], aggregate_types: Vec::new() };
    let mut sub = Box::pin(subscribe_all(Arc::clone(&store), 0, filter));
    let writer_store = Arc::clone(&store);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        append_n(&writer_store, "noise", 50).await;
        let wanted = vec![crate::fixtures::event("Wanted", 7)];
        writer_store
            .append(crate::fixtures::append_of("signal", cairn_core::ExpectedVersion::Any, wanted))
            .await
            .unwrap();
    });
    let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("stalled")
        .unwrap()
        .unwrap();
    assert_eq!((e.event_type.as_str(), e.aggregate_id.as_str()), ("Wanted", "signal"));
    assert_eq!(e.position, *store.head().borrow());
}
