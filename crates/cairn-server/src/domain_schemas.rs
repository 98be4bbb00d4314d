//! Registering modules' event schemas in the schema registry at start, so that appends
//! through the store API are validated from the first request on.

use cairn_core::readmodel::ReadModelError;
use serde_json::Value;

use crate::schemas::{RegisterError, SchemaRegistry, backward_incompatibilities};

/// Registers every version of every schema in `tables` that the registry does not hold
/// yet.
///
/// Idempotent: a version already registered — by an earlier start, or by an operator — is
/// left as it is, so a restart registers nothing and bumps no version. A registry that is
/// ahead of the domain (an operator added a compatible version) is kept. Where the
/// registry holds something else, the operator's schemas win and a warning says which
/// domain events they may refuse: the server still starts. Only a storage failure is an
/// error.
pub fn register_tables(
    registry: &SchemaRegistry,
    tables: &[crate::module::SchemaTable],
) -> Result<(), ReadModelError> {
    for (event_type, texts) in tables.iter().flat_map(|table| table.iter()) {
        let history: Result<Vec<Value>, _> =
            texts.iter().map(|text| serde_json::from_str::<Value>(text)).collect();
        match history {
            Ok(history) => register_history(registry, event_type, &history)?,
            // A broken file is a bug the unit tests catch; it must not stop a server.
            Err(e) => tracing::error!(event_type, error = %e, "built-in schema is not JSON"),
        }
    }
    Ok(())
}

fn register_history(
    registry: &SchemaRegistry,
    event_type: &str,
    history: &[Value],
) -> Result<(), ReadModelError> {
    let stored = registry.current_schema(event_type).map_or(0, |(version, _)| version);
    for (version, schema) in (1..).zip(history) {
        if version <= stored {
            continue;
        }
        match registry.register(event_type, version, schema.clone()) {
            Ok(()) => {}
            Err(RegisterError::Storage(e)) => return Err(e),
            Err(refused) => {
                tracing::warn!(
                    event_type,
                    version,
                    refused = ?refused,
                    "the built-in schema was not registered; the registered one stays"
                );
                break;
            }
        }
    }
    let (Some(ours), Some((current, theirs))) =
        (history.last(), registry.current_schema(event_type))
    else {
        return Ok(());
    };
    let domain_version = u32::try_from(history.len()).unwrap_or(u32::MAX);
    let reasons = backward_incompatibilities(ours, &theirs, "");
    if current < domain_version {
        tracing::warn!(
            event_type,
            registered = current,
            domain = domain_version,
            "the registry is behind the domain: store-API appends of this type are stamped with the older version and upcast on read"
        );
    } else if !reasons.is_empty() {
        tracing::warn!(
            event_type,
            registered = current,
            ?reasons,
            "the registered schema may refuse events the domain writes"
        );
    } else if current > domain_version {
        tracing::info!(
            event_type,
            registered = current,
            domain = domain_version,
            "keeping a newer registered schema"
        );
    }
    Ok(())
}
