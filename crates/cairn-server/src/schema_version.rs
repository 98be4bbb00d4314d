//! `metadata.schema_version` belongs to the server: what a store-API client may send.
//!
//! The version tells every reader which upcasters to run, so a version the server does
//! not know (0, or one above the current) makes an event no consumer can decode: one such
//! append used to stop the public relay for good. A client may send only a version of the
//! type that exists — an import replays history with the versions it was written with —
//! and when it sends none, the server stamps the current one.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// What the server knows of an event type's versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownVersions {
    /// The current version: the registry's when the type has a schema, else the domain's.
    pub current: u32,
}

/// `400 invalid_schema_version` for the `index`-th event.
fn refused(index: usize, event_type: &str, message: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_schema_version",
        format!("events[{index}].metadata.schema_version: {message}"),
    )
    .with("index", index)
    .with("event_type", event_type)
}

/// Checks the client's `schema_version` in `metadata` (a JSON object) and returns it.
///
/// With `known` (a registered or domain type) it must be an integer from 1 to the current
/// version; for a free-form type (`None`) the server has no version of its own and keeps
/// any positive integer as sent.
pub fn client_version(
    index: usize,
    event_type: &str,
    metadata: &Map<String, Value>,
    known: Option<KnownVersions>,
) -> Result<Option<u32>, ApiError> {
    let Some(sent) = metadata.get("schema_version") else { return Ok(None) };
    let version = sent.as_u64().and_then(|v| u32::try_from(v).ok()).filter(|&v| v >= 1);
    let Some(version) = version else {
        return Err(refused(
            index,
            event_type,
            &format!("must be a positive integer (versions start at 1), got {sent}"),
        ));
    };
    if let Some(known) = known
        && version > known.current
    {
        return Err(refused(
            index,
            event_type,
            &format!(
                "{event_type} has versions 1 to {}, got {version}; leave it out and the server stamps the current one",
                known.current
            ),
        )
        .with("current_version", known.current));
    }
    Ok(Some(version))
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::{KnownVersions, client_version};

    fn meta(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn only_an_existing_version_passes() {
        let known = Some(KnownVersions { current: 2 });
        assert_eq!(client_version(0, "T", &meta(json!({})), known).unwrap(), None);
        assert_eq!(
            client_version(0, "T", &meta(json!({"schema_version": 1})), known).unwrap(),
            Some(1)
        );
        assert_eq!(
            client_version(0, "T", &meta(json!({"schema_version": 2})), known).unwrap(),
            Some(2)
        );
        for bad in
            [json!(0), json!(3), json!(-1), json!(1.5), json!("1"), json!(null), json!(u64::MAX)]
        {
            let e =
                client_version(0, "T", &meta(json!({"schema_version": bad})), known).unwrap_err();
            assert_eq!(e.status().as_u16(), 400, "{bad}");
        }
        // A free-form type: any positive integer, never 0.
        assert_eq!(
            client_version(0, "T", &meta(json!({"schema_version": 9})), None).unwrap(),
            Some(9)
        );
        assert!(client_version(0, "T", &meta(json!({"schema_version": 0})), None).is_err());
    }
}
