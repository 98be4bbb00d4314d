//! Integration events: a bounded context's public, versioned events, published for other
//! services, and the envelope a translator makes them in.
//!
//! Domain events are the aggregates' own history: their shapes follow the aggregate and
//! change when it does. Other services must not depend on that. What they get instead is
//! a small set of public events — separate types with only the facts worth a contract,
//! each on its own subject with a JSON Schema registered under its type name. A public
//! type, once released, is never changed incompatibly: a breaking change is a new type
//! (`…V2`) on a new subject.
//!
//! A translator is pure: it reads one [`RecordedEvent`] through the domain's own read path
//! ([`DomainEvent::from_recorded`](crate::DomainEvent::from_recorded), upcasting included)
//! and wraps the public event with [`envelope`], whose id derives from the source event's
//! id, so that publishing the same stored event again yields the same message and the bus
//! de-duplicates it.

use cairn_core::RecordedEvent;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::aggregate::DecodeError;

/// The namespace of public event ids: `id = UUIDv5(NAMESPACE, source_event_id ‖ event_type)`.
///
/// Never change it: every public event id ever published derives from it, and consumers
/// de-duplicate by those ids.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x6b2f_1f0e_4c1a_4e55_9a7d_3c0b_5e8f_a1d2);

/// A public event type: its name, its subject and its schema version.
pub trait PublicEvent: Serialize + DeserializeOwned {
    /// The type name, version included (`OrderConfirmedV1`); also its schema's name.
    const EVENT_TYPE: &'static str;
    /// The subject it is published on (`public.orders.confirmed.v1`).
    const SUBJECT: &'static str;
}

/// A public event ready to publish.
#[derive(Debug, Clone)]
pub struct IntegrationEvent {
    /// Its own id, derived from `source_event_id` and `event_type` (see [`public_event_id`]):
    /// the same stored event always gives the same id, the message id to de-duplicate by.
    pub event_id: Uuid,
    /// Where it is published (`public.orders.confirmed.v1`).
    pub subject: String,
    /// Its type, version included (`OrderConfirmedV1`): the name its schema is registered under.
    pub event_type: String,
    /// The id of the stored domain event it was made from.
    pub source_event_id: Uuid,
    /// The payload: the public struct as JSON, numbers with their exact digits.
    pub data: Box<RawValue>,
}

// By hand: `RawValue` has no `PartialEq`; two payloads are equal when their text is.
impl PartialEq for IntegrationEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event_id == other.event_id
            && self.subject == other.subject
            && self.event_type == other.event_type
            && self.source_event_id == other.source_event_id
            && self.data.get() == other.data.get()
    }
}

impl Eq for IntegrationEvent {}

/// Why a stored event could not be translated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// The stored domain event does not decode (after upcasting) into the domain's event.
    #[error("the domain event cannot be decoded: {0}")]
    Decode(#[from] DecodeError),
    /// The public event could not be written as JSON.
    #[error("the public event cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The id of the public event `event_type` made from the stored event `source_event_id`:
/// UUID v5 in [`NAMESPACE`] of the source id's 16 bytes followed by the type name.
///
/// Deterministic, so a re-publish carries the same id; distinct from the source id, so a
/// broker that de-duplicates by id never mistakes the public event for the domain event.
#[must_use]
pub fn public_event_id(source_event_id: Uuid, event_type: &str) -> Uuid {
    let mut name = Vec::with_capacity(16 + event_type.len());
    name.extend_from_slice(source_event_id.as_bytes());
    name.extend_from_slice(event_type.as_bytes());
    Uuid::new_v5(&NAMESPACE, &name)
}

/// Wraps `public`, made from the stored event `source`, as the message to publish: its id
/// from [`public_event_id`], its subject and type from the [`PublicEvent`] impl.
pub fn envelope<E: PublicEvent>(
    source: &RecordedEvent,
    public: &E,
) -> Result<IntegrationEvent, TranslateError> {
    Ok(IntegrationEvent {
        event_id: public_event_id(source.event_id, E::EVENT_TYPE),
        subject: E::SUBJECT.to_owned(),
        event_type: E::EVENT_TYPE.to_owned(),
        source_event_id: source.event_id,
        data: serde_json::value::to_raw_value(public)?,
    })
}

#[cfg(test)]
mod tests {
    use cairn_core::RecordedEvent;
    use cairn_core::timestamp::Timestamp;
    use serde::{Deserialize, Serialize};
    use serde_json::value::RawValue;
    use uuid::Uuid;

    use super::{PublicEvent, envelope, public_event_id};

    #[derive(Serialize, Deserialize)]
    struct PingedV1 {
        amount: Box<RawValue>,
    }

    impl PublicEvent for PingedV1 {
        const EVENT_TYPE: &'static str = "PingedV1";
        const SUBJECT: &'static str = "public.test.pinged.v1";
    }

    #[test]
    fn a_public_event_id_is_pinned_to_the_namespace() {
        // Computed independently (SHA-1 over NAMESPACE ‖ source bytes ‖ type name): ids
        // already published must never change, whichever crate computes them.
        let source = Uuid::parse_str("0190c3a2-7b1e-7cc0-8a11-1234567890ab").unwrap();
        assert_eq!(
            public_event_id(source, "OrderConfirmedV1").to_string(),
            "97d9c72d-a423-5091-b523-89a76207c156"
        );
    }

    #[test]
    fn the_envelope_derives_its_id_and_keeps_the_payload_digits() {
        let source = RecordedEvent {
            event_id: Uuid::now_v7(),
            aggregate_id: "a-1".into(),
            aggregate_type: "Thing".into(),
            event_type: "Pinged".into(),
            version: 1,
            position: 7,
            timestamp: Timestamp::now(),
            data: RawValue::from_string("{}".into()).unwrap(),
            metadata: RawValue::from_string("{}".into()).unwrap(),
        };
        let public: PingedV1 = serde_json::from_str(r#"{"amount":12345678901234567.89}"#).unwrap();
        let message = envelope(&source, &public).unwrap();
        assert_eq!(message.event_id, public_event_id(source.event_id, "PingedV1"));
        assert_ne!(message.event_id, source.event_id);
        assert_eq!(message.source_event_id, source.event_id);
        assert_eq!(message.subject, "public.test.pinged.v1");
        assert_eq!(message.event_type, "PingedV1");
        assert_eq!(message.data.get(), r#"{"amount":12345678901234567.89}"#);
        assert_eq!(message, envelope(&source, &public).unwrap(), "a re-translation is equal");
    }
}
