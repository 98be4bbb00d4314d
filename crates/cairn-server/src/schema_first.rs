//! A schema version is checked against what is already stored, the first one included:
//! a first version of `false` used to be accepted and then refused every event of its
//! type for good (no later version can widen it: BACKWARD compatibility is checked
//! against the refusing one, and versions are never removed).

use cairn_core::AllFilter;
use serde_json::Value;

use crate::AppState;
use crate::error::ApiError;

/// Events read from `$all` per page while checking the stored events of a type.
const CHECK_PAGE_EVENTS: usize = 1000;
use crate::schemas::{REASONS_MAX, bounded};

/// Why `schema` cannot be registered for `event_type`: it refuses everything, or some
/// stored event of the type. Empty: fine.
pub async fn check(
    state: &AppState,
    event_type: &str,
    schema: &Value,
) -> Result<Vec<String>, ApiError> {
    if schema == &Value::Bool(false)
        || schema.get("not").is_some_and(|n| n == &Value::Bool(true) || n == &serde_json::json!({}))
    {
        return Ok(vec!["the schema accepts no event at all".to_owned()]);
    }
    // An invalid schema is reported by the registry, with its own error.
    let Ok(validator) = jsonschema::validator_for(schema) else { return Ok(Vec::new()) };
    let filter =
        AllFilter { event_types: vec![event_type.to_owned()], aggregate_types: Vec::new() };
    let mut reasons = Vec::new();
    let mut from = 0;
    loop {
        let page = state.store.read_all(from, CHECK_PAGE_EVENTS, &filter).await?;
        for e in &page.events {
            let Ok(data) = serde_json::from_str::<Value>(e.data.get()) else { continue };
            if let Some(error) = validator.iter_errors(&data).next() {
                // The error quotes the event's value, which may be large.
                reasons.push(bounded(&format!(
                    "stored event at position {} ({}): {} at {}",
                    e.position,
                    e.aggregate_id,
                    error,
                    error.instance_path()
                )));
                if reasons.len() >= REASONS_MAX {
                    return Ok(reasons);
                }
            }
        }
        if page.scanned_to <= from {
            return Ok(reasons);
        }
        from = page.scanned_to;
    }
}
