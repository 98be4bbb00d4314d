//! Cairn's values in the protocol's terms and back (docs/grpc.md, "The mapping"):
//! revision = version − 1, commit = prepare = position, ids as strings, metadata keys
//! renamed where the two conventions differ.

use ::uuid::Uuid;
use cairn_core::lifecycle::METADATA_EVENT;
use cairn_core::{ExpectedVersion, RecordedEvent};
use serde_json::{Map, Value};
use tonic::Status;

use crate::metastream;
use crate::proto::event_store::client::streams::read_resp::{self, read_event};
use crate::proto::event_store::client::{StreamIdentifier, Uuid as ProtoUuid, uuid};

/// What starts a metadata stream's name (`cairn_core::lifecycle::meta_stream`).
const META_STREAM_PREFIX: &str = "$$";
/// The content type of every event Cairn stores.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Ticks (100 ns) per microsecond: the protocol's `created` is .NET ticks since the epoch.
const TICKS_PER_MICRO: i64 = 10;

/// Metadata keys the protocol's clients write (`$correlationId`) and the names Cairn's
/// envelope gives them (`correlation_id`).
const RENAMED_KEYS: [(&str, &str); 2] =
    [("$correlationId", "correlation_id"), ("$causationId", "causation_id")];

/// A stream the protocol names: one of Cairn's streams, or its metadata stream (`$$id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamName {
    /// An aggregate's stream.
    Stream(String),
    /// The metadata stream of the aggregate's stream named inside.
    Meta(String),
}

impl StreamName {
    /// The stream `identifier` names; a clear error for names Cairn cannot hold.
    pub fn parse(identifier: Option<&StreamIdentifier>) -> Result<Self, Status> {
        let bytes = identifier.map(|i| i.stream_name.as_slice()).unwrap_or_default();
        let name = std::str::from_utf8(bytes)
            .map_err(|_| Status::invalid_argument("the stream name is not UTF-8"))?;
        if let Some(id) = name.strip_prefix(META_STREAM_PREFIX) {
            valid_id(id)?;
            return Ok(Self::Meta(id.to_owned()));
        }
        if name.starts_with('$') {
            return Err(Status::invalid_argument(format!(
                "stream {name:?}: Cairn has no system streams but `$$<stream>` (metadata); \
                 `$ce-`, `$et-` and other projection streams are not supported (docs/grpc.md)"
            )));
        }
        valid_id(name)?;
        Ok(Self::Stream(name.to_owned()))
    }

    /// The name as Cairn's store holds it (`$$id` for a metadata stream).
    pub fn store_id(&self) -> String {
        match self {
            Self::Stream(id) => id.clone(),
            Self::Meta(id) => cairn_core::lifecycle::meta_stream(id),
        }
    }
}

fn valid_id(id: &str) -> Result<(), Status> {
    cairn_core::id::validate_aggregate_id(id)
        .map_err(|e| Status::invalid_argument(format!("stream {id:?}: {e}")))
}

/// The protocol's expected revision as Cairn's expected version.
pub fn expected_from_revision(revision: u64) -> ExpectedVersion {
    ExpectedVersion::Exact(revision.saturating_add(1))
}

/// A stream's identifier on the wire.
pub fn identifier(stream: &str) -> StreamIdentifier {
    StreamIdentifier { stream_name: stream.as_bytes().to_vec() }
}

/// An event id from the wire, either form; `None` when absent (Cairn mints one).
pub fn event_id(id: Option<&ProtoUuid>) -> Result<Option<Uuid>, Status> {
    match id.and_then(|u| u.value.as_ref()) {
        None => Ok(None),
        Some(uuid::Value::String(s)) => Uuid::parse_str(s)
            .map(Some)
            .map_err(|_| Status::invalid_argument(format!("event id {s:?} is not a UUID"))),
        Some(uuid::Value::Structured(s)) => {
            let bits = (u128::from(s.most_significant_bits as u64) << 64)
                | u128::from(s.least_significant_bits as u64);
            Ok(Some(Uuid::from_u128(bits)))
        }
    }
}

/// An id on the wire, in the form the client asked for (structured unless it asked for
/// strings, as the protocol's default is).
pub fn wire_uuid(id: Uuid, as_string: bool) -> ProtoUuid {
    let value = if as_string {
        uuid::Value::String(id.to_string())
    } else {
        let bits = id.as_u128();
        uuid::Value::Structured(uuid::Structured {
            most_significant_bits: (bits >> 64) as u64 as i64,
            least_significant_bits: bits as u64 as i64,
        })
    };
    ProtoUuid { value: Some(value) }
}

/// The protocol's `custom_metadata` bytes as Cairn's metadata object: empty is `{}`;
/// anything else must be a JSON object. `$correlationId`/`$causationId` take Cairn's
/// names unless those are set too.
pub fn metadata_in(
    index: usize,
    bytes: &[u8],
) -> Result<Option<Box<serde_json::value::RawValue>>, Status> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let mut object: Map<String, Value> = match serde_json::from_slice(bytes) {
        Ok(Value::Object(object)) => object,
        _ => {
            return Err(Status::invalid_argument(format!(
                "event {index}: custom_metadata must be a JSON object (Cairn keeps metadata as JSON)"
            )));
        }
    };
    for (theirs, ours) in RENAMED_KEYS {
        if !object.contains_key(ours)
            && let Some(value) = object.remove(theirs)
        {
            object.insert(ours.to_owned(), value);
        }
    }
    serde_json::value::to_raw_value(&object)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("event {index}: custom_metadata: {e}")))
}

/// Cairn's metadata object as the protocol's `custom_metadata`: `{}` is empty bytes (as
/// it was sent), the two renamed keys go back to the protocol's names.
pub fn metadata_out(metadata: &str) -> Vec<u8> {
    match serde_json::from_str::<Value>(metadata) {
        Ok(Value::Object(object)) if object.is_empty() => Vec::new(),
        Ok(Value::Object(mut object)) => {
            for (theirs, ours) in RENAMED_KEYS {
                if !object.contains_key(theirs)
                    && let Some(value) = object.remove(ours)
                {
                    object.insert(theirs.to_owned(), value);
                }
            }
            serde_json::to_vec(&object).unwrap_or_else(|_| metadata.as_bytes().to_vec())
        }
        _ => metadata.as_bytes().to_vec(),
    }
}

/// A stored event as the protocol's `ReadEvent` (no link: Cairn has no link events).
pub fn read_event(event: &RecordedEvent, uuid_as_string: bool) -> read_resp::ReadEvent {
    let data = if event.event_type == METADATA_EVENT
        && event.aggregate_id.starts_with(META_STREAM_PREFIX)
    {
        metastream::to_protocol(event.data.get()).into_bytes()
    } else {
        event.data.get().as_bytes().to_vec()
    };
    let ticks = event.timestamp.as_micros().saturating_mul(TICKS_PER_MICRO);
    let metadata = [
        ("type".to_owned(), event.event_type.clone()),
        ("content-type".to_owned(), JSON_CONTENT_TYPE.to_owned()),
        ("created".to_owned(), ticks.to_string()),
    ]
    .into_iter()
    .collect();
    let recorded = read_event::RecordedEvent {
        id: Some(wire_uuid(event.event_id, uuid_as_string)),
        stream_identifier: Some(identifier(&event.aggregate_id)),
        stream_revision: event.version.saturating_sub(1),
        prepare_position: event.position,
        commit_position: event.position,
        metadata,
        custom_metadata: metadata_out(event.metadata.get()),
        data,
    };
    read_resp::ReadEvent {
        event: Some(recorded),
        link: None,
        position: Some(read_event::Position::CommitPosition(event.position)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_and_string_ids_name_the_same_event() {
        let id = Uuid::now_v7();
        for as_string in [true, false] {
            assert_eq!(event_id(Some(&wire_uuid(id, as_string))).unwrap(), Some(id));
        }
    }

    #[test]
    fn correlation_ids_round_trip_between_the_conventions() {
        let sent = br#"{"$correlationId":"c-1","$causationId":"c-0","tenant":"t"}"#;
        let stored = metadata_in(0, sent).unwrap().unwrap();
        let object: Value = serde_json::from_str(stored.get()).unwrap();
        assert_eq!(object["correlation_id"], "c-1");
        assert_eq!(object["causation_id"], "c-0");
        let back: Value = serde_json::from_slice(&metadata_out(stored.get())).unwrap();
        assert_eq!(back, serde_json::from_slice::<Value>(sent).unwrap());
        assert!(metadata_out("{}").is_empty());
        assert!(metadata_in(0, b"[1]").is_err());
    }

    #[test]
    fn names_cairn_cannot_hold_are_refused() {
        let parse = |s: &str| StreamName::parse(Some(&identifier(s)));
        assert_eq!(parse("order-1").unwrap(), StreamName::Stream("order-1".into()));
        assert_eq!(parse("$$order-1").unwrap(), StreamName::Meta("order-1".into()));
        assert!(parse("$ce-order").is_err());
        assert!(parse("").is_err());
        assert!(parse("a b").is_err());
    }
}
