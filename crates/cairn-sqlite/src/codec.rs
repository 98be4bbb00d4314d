//! Mapping between SQL rows and the core envelope.

use cairn_core::RecordedEvent;
use cairn_core::timestamp::Timestamp;
use rusqlite::Row;
use rusqlite::types::Type;
use serde_json::value::RawValue;
use uuid::Uuid;

/// The column list every event query selects, in the order [`event_from_row`] reads.
pub const EVENT_COLUMNS: &str = "position, event_id, aggregate_id, aggregate_type, event_type, version, timestamp_us, data, metadata";

fn conversion(
    col: usize,
    ty: Type,
    e: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, ty, Box::new(e))
}

/// Reads one event row selected with [`EVENT_COLUMNS`]. When the stream is known
/// (`Some((aggregate_id, aggregate_type))`), its id and type are cloned instead of read
/// and validated again for every row of a long stream.
pub fn event_of_stream(
    row: &Row<'_>,
    stream: Option<(&str, &str)>,
) -> rusqlite::Result<RecordedEvent> {
    let id: [u8; 16] = row.get(1)?;
    let data: String = row.get(7)?;
    let metadata: String = row.get(8)?;
    let (aggregate_id, aggregate_type) = match stream {
        Some((id, t)) => (id.to_owned(), t.to_owned()),
        None => (row.get(2)?, row.get(3)?),
    };
    Ok(RecordedEvent {
        position: row.get::<_, i64>(0)? as u64,
        event_id: Uuid::from_bytes(id),
        aggregate_id,
        aggregate_type,
        event_type: row.get(4)?,
        version: row.get::<_, i64>(5)? as u64,
        timestamp: Timestamp::from_micros(row.get(6)?),
        data: RawValue::from_string(data).map_err(|e| conversion(7, Type::Text, e))?,
        metadata: RawValue::from_string(metadata).map_err(|e| conversion(8, Type::Text, e))?,
    })
}
