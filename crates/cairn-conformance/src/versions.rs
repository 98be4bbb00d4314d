//! Per-stream versions and the expected-version condition.

use std::sync::Arc;

use cairn_core::ExpectedVersion::{Any, Exact, NoStream, StreamExists};
use cairn_core::{AppendError, EventStore, StreamRead};

use crate::fixtures::{append_n, append_one};

/// Versions count from 1 and have no holes, across appends of different sizes.
pub async fn versions_count_from_one_without_holes(store: Arc<dyn EventStore>) {
    let a = append_n(&store, "s-1", 3).await;
    assert_eq!((a.first_version, a.last_version), (1, 3));
    let b = append_n(&store, "s-1", 1).await;
    assert_eq!((b.first_version, b.last_version), (4, 4));
    assert!(b.position > a.position);
    let slice = store.read_stream("s-1", StreamRead::forward_from(1, 100)).await.unwrap();
    let versions: Vec<u64> = slice.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert_eq!(slice.stream_version, 4);
    assert_eq!(store.stream_version("s-1").await.unwrap(), 4);
    assert_eq!(store.stream_version("nope").await.unwrap(), 0);
}

/// Every expected-version form against an absent and an existing stream.
pub async fn expected_version_cases(store: Arc<dyn EventStore>) {
    assert!(matches!(
        append_one(&store, "a", StreamExists).await,
        Err(AppendError::WrongExpectedVersion { .. })
    ));
    assert!(matches!(
        append_one(&store, "a", Exact(1)).await,
        Err(AppendError::WrongExpectedVersion { .. })
    ));
    assert_eq!(append_one(&store, "a", NoStream).await.unwrap().last_version, 1);
    assert!(append_one(&store, "a", NoStream).await.is_err());
    assert!(append_one(&store, "a", Exact(0)).await.is_err());
    assert_eq!(append_one(&store, "a", StreamExists).await.unwrap().last_version, 2);
    assert_eq!(append_one(&store, "a", Exact(2)).await.unwrap().last_version, 3);
    assert!(append_one(&store, "a", Exact(2)).await.is_err());
    assert_eq!(append_one(&store, "a", Any).await.unwrap().last_version, 4);
    assert_eq!(append_one(&store, "b", Exact(0)).await.unwrap().last_version, 1);
    assert_eq!(append_one(&store, "c", Any).await.unwrap().last_version, 1);
}

/// A conflict says what was expected and where the stream really is, and stores nothing.
pub async fn wrong_expected_version_reports_actual(store: Arc<dyn EventStore>) {
    append_n(&store, "w", 5).await;
    let err = append_one(&store, "w", Exact(3)).await.unwrap_err();
    assert_eq!(err, AppendError::WrongExpectedVersion { expected: Exact(3), actual: 5 });
    let err = append_one(&store, "fresh", Exact(2)).await.unwrap_err();
    assert_eq!(err, AppendError::WrongExpectedVersion { expected: Exact(2), actual: 0 });
    assert_eq!(store.stream_version("w").await.unwrap(), 5);
    assert_eq!(store.stream_version("fresh").await.unwrap(), 0);
}
