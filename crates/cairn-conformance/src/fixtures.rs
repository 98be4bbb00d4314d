//! Small builders shared by the checks.

use std::sync::Arc;

use cairn_core::{Append, AppendError, AppendOutcome, EventStore, ExpectedVersion, NewEvent};
use serde_json::value::RawValue;
use uuid::Uuid;

/// An event of type `event_type` whose data is `{"n": n}`.
#[must_use]
pub fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::new(event_type, raw(&format!(r#"{{"n":{n}}}"#)))
}

/// An event with a chosen id.
#[must_use]
pub fn event_with_id(id: Uuid, event_type: &str, n: u64) -> NewEvent {
    NewEvent { event_id: id, ..event(event_type, n) }
}

/// Parses JSON text into a raw value (panics on invalid test input).
#[must_use]
pub fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("test JSON is valid")
}

/// An append to `stream` of aggregate type `Thing`.
#[must_use]
pub fn append_of(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> Append {
    Append {
        aggregate_id: stream.to_owned(),
        aggregate_type: "Thing".to_owned(),
        expected,
        events,
        idempotency: None,
    }
}

/// Appends `count` events of type `Tick` to `stream` with `Any`.
pub async fn append_n(store: &Arc<dyn EventStore>, stream: &str, count: u64) -> AppendOutcome {
    let events = (0..count).map(|n| event("Tick", n)).collect();
    store.append(append_of(stream, ExpectedVersion::Any, events)).await.expect("append succeeds")
}

/// Appends one event and returns the result.
pub async fn append_one(
    store: &Arc<dyn EventStore>,
    stream: &str,
    expected: ExpectedVersion,
) -> Result<AppendOutcome, AppendError> {
    store.append(append_of(stream, expected, vec![event("Tick", 0)])).await
}
