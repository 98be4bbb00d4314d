//! Stream lifecycle: soft delete, tombstone, truncation, retention and scavenge, each
//! against optimistic concurrency and idempotent retries (`docs/design/stream-lifecycle.md`).

use std::sync::Arc;
use std::time::Duration;

use cairn_core::ExpectedVersion::{Any, Exact, NoStream, StreamExists};
use cairn_core::lifecycle::{
    DeleteError, Life, MetaError, SCAVENGED_EVENT, STREAM_DELETED, StreamMeta,
};
use cairn_core::{
    AllFilter, AppendError, Direction, EventStore, ReadError, RecordedEvent, StreamRead,
};

use crate::fixtures::{append_n, append_of, append_one, event};

async fn visible(store: &Arc<dyn EventStore>, stream: &str) -> Result<Vec<u64>, ReadError> {
    let slice = store.read_stream(stream, StreamRead::forward_from(1, 1000)).await?;
    Ok(slice.events.iter().map(|e| e.version).collect())
}

async fn all(store: &Arc<dyn EventStore>) -> Vec<RecordedEvent> {
    store.read_all(0, 10_000, &AllFilter::default()).await.unwrap().events
}

/// A soft delete hides the stream; the next append starts it again after the marker, and
/// `$all` keeps every event.
pub async fn soft_delete_hides_the_stream_until_its_next_append(store: Arc<dyn EventStore>) {
    append_n(&store, "sd", 3).await;
    let marker = store.delete_stream("sd", Any, false).await.unwrap();
    assert_eq!(marker.last_version, 4, "the marker takes the next version");
    assert_eq!(visible(&store, "sd").await, Err(ReadError::StreamNotFound));
    let life = store.stream_lifecycle("sd").await.unwrap();
    assert_eq!((life.state, life.version), (Life::Deleted, 4));
    // Every event is still in `$all`, the marker too.
    let types: Vec<String> = all(&store).await.into_iter().map(|e| e.event_type).collect();
    assert_eq!(types, ["Tick", "Tick", "Tick", STREAM_DELETED]);
    // "no stream": a deleted stream counts as absent; versions are never reused.
    let again = append_one(&store, "sd", NoStream).await.unwrap();
    assert_eq!(again.first_version, 5);
    assert_eq!(visible(&store, "sd").await.unwrap(), vec![5]);
    let slice = store.read_stream("sd", StreamRead::forward_from(1, 10)).await.unwrap();
    assert_eq!((slice.first_visible, slice.stream_version), (5, 5));
    assert_eq!(store.stream_lifecycle("sd").await.unwrap().state, Life::Live);
    // Backward reads stop at the first visible version.
    let back = StreamRead { from_version: None, direction: Direction::Backward, limit: 10 };
    let slice = store.read_stream("sd", back).await.unwrap();
    assert_eq!(slice.events.len(), 1);
    assert_eq!(slice.next_version(Direction::Backward), None);
}

/// Deletes are checked against the expected version; a deleted stream is absent for it.
pub async fn delete_and_append_against_expected_versions(store: Arc<dyn EventStore>) {
    append_n(&store, "ev", 3).await;
    assert_eq!(
        store.delete_stream("ev", Exact(2), false).await,
        Err(DeleteError::WrongExpectedVersion { expected: Exact(2), actual: 3 })
    );
    assert_eq!(
        store.delete_stream("ev", NoStream, false).await,
        Err(DeleteError::WrongExpectedVersion { expected: NoStream, actual: 3 })
    );
    store.delete_stream("ev", Exact(3), false).await.unwrap();
    assert_eq!(store.delete_stream("ev", Any, false).await, Err(DeleteError::StreamNotFound));
    assert_eq!(store.delete_stream("never", Any, false).await, Err(DeleteError::StreamNotFound));
    for expected in [StreamExists, Exact(3), Exact(4)] {
        assert_eq!(
            append_one(&store, "ev", expected).await,
            Err(AppendError::WrongExpectedVersion { expected, actual: 0 }),
            "{expected} on a soft-deleted stream"
        );
    }
    assert_eq!(append_one(&store, "ev", Exact(0)).await.unwrap().first_version, 5);
    assert_eq!(append_one(&store, "ev", Exact(5)).await.unwrap().first_version, 6);
    // Any on a deleted stream also starts it again.
    store.delete_stream("ev", Exact(6), false).await.unwrap();
    assert_eq!(append_one(&store, "ev", Any).await.unwrap().first_version, 8);
    assert_eq!(visible(&store, "ev").await.unwrap(), vec![8]);
}

/// A tombstone refuses every later write, whatever its expected version, and every read;
/// a retry of an append stored before it still gets its original answer.
pub async fn tombstone_refuses_every_later_write(store: Arc<dyn EventStore>) {
    let first = append_of("tb", Any, vec![event("Tick", 1)]);
    let stored = store.append(first.clone()).await.unwrap();
    store.delete_stream("tb", Any, true).await.unwrap();
    for expected in [Any, NoStream, StreamExists, Exact(0), Exact(1), Exact(2)] {
        assert_eq!(
            append_one(&store, "tb", expected).await,
            Err(AppendError::StreamTombstoned { aggregate_id: "tb".into() }),
            "{expected}"
        );
    }
    assert_eq!(visible(&store, "tb").await, Err(ReadError::StreamTombstoned));
    let tombstoned = DeleteError::StreamTombstoned { aggregate_id: "tb".into() };
    assert_eq!(store.delete_stream("tb", Any, false).await, Err(tombstoned.clone()));
    assert_eq!(store.delete_stream("tb", Any, true).await, Err(tombstoned));
    assert!(matches!(
        store.set_stream_meta("tb", None, StreamMeta::default()).await,
        Err(MetaError::StreamTombstoned { .. })
    ));
    let retry = store.append(first).await.unwrap();
    assert_eq!((retry.last_version, retry.position), (stored.last_version, stored.position));
    assert_eq!(store.stream_lifecycle("tb").await.unwrap().state, Life::Tombstoned);
    // A soft-deleted stream can still be tombstoned.
    append_n(&store, "tb2", 1).await;
    store.delete_stream("tb2", Any, false).await.unwrap();
    store.delete_stream("tb2", Any, true).await.unwrap();
    assert_eq!(visible(&store, "tb2").await, Err(ReadError::StreamTombstoned));
}

/// A retried append stored before a soft delete is answered with its original outcome
/// and stores nothing (the stream stays deleted).
pub async fn retry_of_an_append_from_before_a_delete_is_recognised(store: Arc<dyn EventStore>) {
    let append = append_of("rd", NoStream, vec![event("Tick", 1), event("Tick", 2)]);
    let first = store.append(append.clone()).await.unwrap();
    store.delete_stream("rd", Any, false).await.unwrap();
    let retry = store.append(append).await.unwrap();
    assert_eq!(
        (retry.first_version, retry.last_version),
        (first.first_version, first.last_version)
    );
    assert_eq!(visible(&store, "rd").await, Err(ReadError::StreamNotFound));
    assert_eq!(all(&store).await.len(), 3);
}

/// Truncation hides versions below a bound; the stream's version and appends are
/// unchanged, and lifting it shows the events again.
pub async fn truncate_hides_versions_below_it(store: Arc<dyn EventStore>) {
    append_n(&store, "tr", 5).await;
    assert_eq!(store.truncate_stream("tr", 3).await.unwrap(), 1, "metadata version 1");
    assert_eq!(visible(&store, "tr").await.unwrap(), vec![3, 4, 5]);
    let slice = store.read_stream("tr", StreamRead::forward_from(1, 2)).await.unwrap();
    assert_eq!(slice.events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!((slice.first_visible, slice.stream_version), (3, 5));
    assert_eq!(slice.next_version(Direction::Forward), Some(5));
    let back = StreamRead { from_version: Some(4), direction: Direction::Backward, limit: 10 };
    let slice = store.read_stream("tr", back).await.unwrap();
    assert_eq!(slice.events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![4, 3]);
    assert_eq!(slice.next_version(Direction::Backward), None);
    assert_eq!(append_one(&store, "tr", Exact(5)).await.unwrap().first_version, 6);
    // Everything hidden: the stream exists, with no visible event.
    store.truncate_stream("tr", 100).await.unwrap();
    let slice = store.read_stream("tr", StreamRead::forward_from(1, 10)).await.unwrap();
    assert!(slice.events.is_empty());
    assert_eq!(slice.stream_version, 6);
    // Lifted: every event is back (nothing was erased).
    store.set_stream_meta("tr", None, StreamMeta::default()).await.unwrap();
    assert_eq!(visible(&store, "tr").await.unwrap(), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(store.truncate_stream("nope", 2).await, Err(MetaError::StreamNotFound));
}

/// Retention by count keeps the last N versions visible, a window that moves with appends.
pub async fn max_count_keeps_the_last_versions(store: Arc<dyn EventStore>) {
    append_n(&store, "mc", 5).await;
    let meta = StreamMeta { max_count: Some(2), ..StreamMeta::default() };
    store.set_stream_meta("mc", Some(0), meta).await.unwrap();
    assert_eq!(visible(&store, "mc").await.unwrap(), vec![4, 5]);
    append_n(&store, "mc", 1).await;
    assert_eq!(visible(&store, "mc").await.unwrap(), vec![5, 6]);
    let slice = store.read_stream("mc", StreamRead::forward_from(1, 10)).await.unwrap();
    assert!(slice.moving);
}

/// Retention by age hides events committed longer ago than `max_age_s`.
pub async fn max_age_hides_old_events(store: Arc<dyn EventStore>) {
    append_n(&store, "ma", 2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    append_n(&store, "ma", 1).await;
    let meta = StreamMeta { max_age_s: Some(1), ..StreamMeta::default() };
    store.set_stream_meta("ma", None, meta).await.unwrap();
    assert_eq!(visible(&store, "ma").await.unwrap(), vec![3]);
}

/// Metadata changes are checked against the metadata's own version; values of 0 are
/// refused; metadata can be set before a stream's first event.
pub async fn metadata_has_its_own_optimistic_concurrency(store: Arc<dyn EventStore>) {
    let meta = StreamMeta { max_count: Some(3), ..StreamMeta::default() };
    assert_eq!(store.set_stream_meta("md", Some(0), meta).await.unwrap(), 1);
    assert_eq!(
        store.set_stream_meta("md", Some(0), meta).await,
        Err(MetaError::WrongExpectedVersion { expected: 0, actual: 1 })
    );
    assert_eq!(store.set_stream_meta("md", None, meta).await.unwrap(), 2);
    let zero = StreamMeta { max_count: Some(0), ..StreamMeta::default() };
    assert!(matches!(store.set_stream_meta("md", None, zero).await, Err(MetaError::Invalid(_))));
    let life = store.stream_lifecycle("md").await.unwrap();
    assert_eq!((life.metadata, life.meta_version, life.version), (meta, 2, 0));
    append_n(&store, "md", 5).await;
    assert_eq!(visible(&store, "md").await.unwrap(), vec![3, 4, 5]);
    // Metadata streams are not a client's to append to, or to read as a stream's events.
    assert!(append_one(&store, "$$md", Any).await.is_err());
}

/// Of a delete and an append racing at one expected version, exactly one wins.
pub async fn delete_and_append_racing_at_one_version_one_wins(store: Arc<dyn EventStore>) {
    for round in 0..8 {
        let stream = format!("race-{round}");
        append_n(&store, &stream, 2).await;
        let (s1, s2) = (Arc::clone(&store), Arc::clone(&store));
        let (id1, id2) = (stream.clone(), stream.clone());
        let delete = tokio::spawn(async move { s1.delete_stream(&id1, Exact(2), false).await });
        let append = tokio::spawn(async move { append_one(&s2, &id2, Exact(2)).await });
        let (deleted, appended) = (delete.await.unwrap(), append.await.unwrap());
        assert!(deleted.is_ok() != appended.is_ok(), "{deleted:?} / {appended:?}");
        if deleted.is_ok() {
            assert_eq!(visible(&store, &stream).await, Err(ReadError::StreamNotFound));
        } else {
            assert_eq!(visible(&store, &stream).await.unwrap(), vec![1, 2, 3]);
        }
    }
}

/// A scavenge redacts exactly the hidden events, in place: every position stays, the
/// visible events are untouched, a second run finds nothing, and a retry of a scavenged
/// append is still recognised.
pub async fn scavenge_redacts_only_hidden_events_in_place(store: Arc<dyn EventStore>) {
    let gone = append_of("sc-gone", Any, vec![event("Tick", 1), event("Tick", 2)]);
    store.append(gone.clone()).await.unwrap();
    append_n(&store, "sc-trunc", 4).await;
    append_n(&store, "sc-kept", 2).await;
    store.delete_stream("sc-gone", Any, false).await.unwrap();
    store.truncate_stream("sc-trunc", 3).await.unwrap();
    let before = all(&store).await;
    let report = store.scavenge().await.unwrap();
    assert_eq!((report.streams, report.events_redacted), (2, 4));
    let after = all(&store).await;
    let positions =
        |events: &[RecordedEvent]| events.iter().map(|e| e.position).collect::<Vec<_>>();
    assert_eq!(positions(&before), positions(&after), "every position stays");
    for (b, a) in before.iter().zip(&after) {
        let hidden = (a.aggregate_id == "sc-gone" && a.version <= 2)
            || (a.aggregate_id == "sc-trunc" && a.version < 3);
        if hidden {
            assert_eq!(a.event_type, SCAVENGED_EVENT);
            assert_eq!((a.data.get(), a.metadata.get()), ("{}", "{}"));
            assert_eq!((a.event_id, a.version), (b.event_id, b.version));
        } else {
            assert_eq!(
                (a.event_type.as_str(), a.data.get()),
                (b.event_type.as_str(), b.data.get())
            );
        }
    }
    assert_eq!(visible(&store, "sc-trunc").await.unwrap(), vec![3, 4]);
    assert_eq!(visible(&store, "sc-kept").await.unwrap(), vec![1, 2]);
    assert_eq!(store.scavenge().await.unwrap().events_redacted, 0, "nothing left to erase");
    let retry = store.append(gone).await.unwrap();
    assert_eq!(retry.last_version, 2, "a retry is still recognised by its ids");
    // Lifting the truncation shows what is left of the erased events: markers.
    store.set_stream_meta("sc-trunc", None, StreamMeta::default()).await.unwrap();
    assert_eq!(visible(&store, "sc-trunc").await.unwrap(), vec![3, 4]);
}
