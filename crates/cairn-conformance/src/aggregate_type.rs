//! A stream's aggregate type is fixed by its first append.

use std::sync::Arc;

use cairn_core::ExpectedVersion::Any;
use cairn_core::{Append, AppendError, EventStore, StreamRead};

use crate::fixtures::{append_n, event};

/// Appending with another type is refused; the original type stays.
pub async fn stream_type_is_fixed_for_life(store: Arc<dyn EventStore>) {
    append_n(&store, "typed", 1).await;
    let other = Append {
        aggregate_id: "typed".into(),
        aggregate_type: "Other".into(),
        expected: Any,
        events: vec![event("Tick", 1)],
        idempotency: None,
    };
    assert_eq!(
        store.append(other).await.unwrap_err(),
        AppendError::AggregateTypeMismatch { actual: "Thing".into(), requested: "Other".into() }
    );
    let slice = store.read_stream("typed", StreamRead::forward_from(1, 10)).await.unwrap();
    assert_eq!(slice.aggregate_type, "Thing");
    assert_eq!(slice.stream_version, 1);
}
