//! Mapping between rows and the core envelope.

use cairn_core::RecordedEvent;
use cairn_core::timestamp::Timestamp;
use serde_json::value::RawValue;
use tokio_postgres::Row;

/// The column list every event query selects, in the order [`event_from_row`] reads,
/// starting at column `offset`.
pub const EVENT_COLUMNS: &str = "position, event_id, aggregate_id, aggregate_type, event_type, version, timestamp_us, data, metadata";

/// Reads one event selected with [`EVENT_COLUMNS`] (from column `at`).
pub fn event_from_row(row: &Row, at: usize) -> Result<RecordedEvent, String> {
    let data: String = row.try_get(at + 7).map_err(|e| e.to_string())?;
    let metadata: String = row.try_get(at + 8).map_err(|e| e.to_string())?;
    Ok(RecordedEvent {
        position: row.try_get::<_, i64>(at).map_err(|e| e.to_string())? as u64,
        event_id: row.try_get(at + 1).map_err(|e| e.to_string())?,
        aggregate_id: row.try_get(at + 2).map_err(|e| e.to_string())?,
        aggregate_type: row.try_get(at + 3).map_err(|e| e.to_string())?,
        event_type: row.try_get(at + 4).map_err(|e| e.to_string())?,
        version: row.try_get::<_, i64>(at + 5).map_err(|e| e.to_string())? as u64,
        timestamp: Timestamp::from_micros(row.try_get(at + 6).map_err(|e| e.to_string())?),
        data: RawValue::from_string(data).map_err(|e| e.to_string())?,
        metadata: RawValue::from_string(metadata).map_err(|e| e.to_string())?,
    })
}
