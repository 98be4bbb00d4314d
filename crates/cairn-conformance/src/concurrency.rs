//! Many writers at once: optimistic concurrency and the catch-up reader's guarantee.

use std::collections::HashSet;
use std::sync::Arc;

use cairn_core::{AllFilter, AppendError, EventStore, ExpectedVersion, StreamRead};

use crate::fixtures::{append_n, append_one};

/// 16 appends racing at the same expected version: exactly one wins, 15 get a conflict.
pub async fn sixteen_racers_at_one_expected_version_one_wins(store: Arc<dyn EventStore>) {
    append_n(&store, "race", 2).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            append_one(&store, "race", ExpectedVersion::Exact(2)).await
        }));
    }
    let mut wins = 0;
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(o) => {
                wins += 1;
                assert_eq!(o.last_version, 3);
            }
            Err(AppendError::WrongExpectedVersion { actual: 3, .. }) => conflicts += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!((wins, conflicts), (1, 15));
    assert_eq!(store.stream_version("race").await.unwrap(), 3);
}

/// 8 concurrent writers and a reader paging `$all` while they write: the reader sees every
/// acknowledged event exactly once, in strictly increasing position.
pub async fn eight_writers_and_a_catch_up_reader_see_everything_once_in_order(
    store: Arc<dyn EventStore>,
) {
    const WRITERS: usize = 8;
    const APPENDS_PER_WRITER: u64 = 150;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..APPENDS_PER_WRITER {
                // Mix single events and small batches, and share some streams between writers.
                let stream = format!("cw-{}", (w + i as usize) % 12);
                let n = 1 + i % 3;
                let o = append_n(&store, &stream, n).await;
                acked.push((stream, o.first_version, o.last_version));
            }
            acked
        }));
    }
    let reader_store = Arc::clone(&store);
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut position = 0;
        let expected_total: u64 =
            (0..APPENDS_PER_WRITER).map(|i| 1 + i % 3).sum::<u64>() * WRITERS as u64;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while (seen.len() as u64) < expected_total {
            assert!(
                tokio::time::Instant::now() < deadline,
                "reader stalled at {} events",
                seen.len()
            );
            let page = reader_store.read_all(position, 37, &AllFilter::default()).await.unwrap();
            for e in page.events {
                assert!(e.position > position, "position went from {position} to {}", e.position);
                position = e.position;
                seen.push((e.aggregate_id.clone(), e.version, e.event_id));
            }
            tokio::task::yield_now().await;
        }
        seen
    });
    let mut acked = HashSet::new();
    for w in writers {
        for (stream, first, last) in w.await.unwrap() {
            for v in first..=last {
                assert!(
                    acked.insert((stream.clone(), v)),
                    "version {v} of {stream} acknowledged twice"
                );
            }
        }
    }
    let seen = reader.await.unwrap();
    let ids: HashSet<_> = seen.iter().map(|(_, _, id)| *id).collect();
    assert_eq!(ids.len(), seen.len(), "an event was seen twice");
    let seen_keys: HashSet<_> = seen.iter().map(|(s, v, _)| (s.clone(), *v)).collect();
    assert_eq!(seen_keys, acked, "reader and acknowledgements disagree");
    // And nothing more arrives later.
    let last = store.read_all(0, 10_000, &AllFilter::default()).await.unwrap();
    assert_eq!(last.events.len(), seen.len());
}

/// Concurrent `Any` appends to one stream: every append gets its own dense version range.
pub async fn concurrent_appends_to_one_stream_with_any_keep_versions_dense(
    store: Arc<dyn EventStore>,
) {
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut ranges = Vec::new();
            for _ in 0..10 {
                let o = append_n(&store, "hot", 2).await;
                ranges.push((o.first_version, o.last_version));
            }
            ranges
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        for (first, last) in t.await.unwrap() {
            assert_eq!(last, first + 1);
            versions.extend(first..=last);
        }
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=320).collect::<Vec<_>>());
    let slice = store.read_stream("hot", StreamRead::forward_from(1, 1000)).await.unwrap();
    assert_eq!(slice.events.len(), 320);
    assert!(slice.events.windows(2).all(|w| w[0].position < w[1].position));
}
