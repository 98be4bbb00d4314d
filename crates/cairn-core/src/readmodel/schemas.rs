//! The registry of event schemas.

use super::ReadModelError;

/// Registered JSON schemas of events, by type and version.
pub trait SchemaStore: Send + Sync {
    /// Every registered event schema as `(event_type, version, schema JSON)`, ordered by
    /// type and version.
    fn schemas(&self) -> Result<Vec<(String, u32, String)>, ReadModelError>;
    /// Registers a schema version; `false` (and nothing changes) when that version
    /// already exists.
    fn put_schema(
        &self,
        event_type: &str,
        version: u32,
        schema: &str,
    ) -> Result<bool, ReadModelError>;
}
