//! Integration events: the reference domain's public, versioned events, and the translator
//! that makes them from stored domain events.
//!
//! Domain events are the aggregates' own history: their shapes follow the aggregate (order
//! lines, `previous_status`, upcast schema versions) and change when it does. Other
//! services must not depend on that. What they get instead is a small set of public events
//! (`OrderCreatedV1`, `OrderConfirmedV1`, `OrderShippedV1`, `OrderCancelledV1`), separate
//! types with only the facts worth a contract, each on its own subject
//! (`public.orders.<fact>.v1`) with a JSON Schema in the registry under its type name.
//!
//! A public type, once released, is never changed incompatibly: a breaking change is a new
//! type (`…V2`) on a new subject, published beside the old one for as long as it has
//! consumers. Every other domain event — item changes, readiness, total corrections, the
//! inventory and customer aggregates — stays internal: [`translate`] gives `None` for it.
//!
//! [`translate`] is pure: it reads one [`RecordedEvent`] through the domain's own read path
//! ([`DomainEvent::from_recorded`], so stored v1 `OrderCreated` events are upcast first)
//! and derives the public event's id from the source event's id, so that publishing the
//! same stored event again yields the same message and the bus de-duplicates it.

use cairn_core::RecordedEvent;
use cairn_core::timestamp::Timestamp;
// The generic half lives in cairn-cqrs; re-exported so every existing path still names
// it, and the id namespace is the same constant, so public event ids are unchanged.
pub use cairn_cqrs::integration::{
    IntegrationEvent, NAMESPACE, PublicEvent, TranslateError, envelope, public_event_id,
};
use cairn_cqrs::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::money::Money;
use crate::order::{Order, OrderEvent};

/// The subject every public order event is published under (a NATS wildcard).
pub const SUBJECTS: &str = "public.orders.>";

/// An order was created (public, v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreatedV1 {
    /// The order (its aggregate id).
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// The total at creation: exact decimal, a JSON number with exactly its digits.
    pub total: Money,
    /// When the store recorded it (RFC 3339, UTC, microseconds).
    pub created_at: Timestamp,
}

/// An order was confirmed by its customer (public, v1).
///
/// No `customer_id`: the domain event does not carry it, and the translator reads one
/// event at a time; consumers that need it have it from [`OrderCreatedV1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmedV1 {
    /// The order.
    pub order_id: String,
    /// The total at confirmation: exact decimal.
    pub total: Money,
    /// When the store recorded it.
    pub confirmed_at: Timestamp,
}

/// An order was handed to its carrier (public, v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderShippedV1 {
    /// The order.
    pub order_id: String,
    /// The carrier's tracking number.
    pub tracking_number: String,
    /// The carrier.
    pub carrier: String,
    /// When the store recorded it.
    pub shipped_at: Timestamp,
}

/// An order was cancelled (public, v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelledV1 {
    /// The order.
    pub order_id: String,
    /// Why, when it may be told (`out_of_stock` when fulfillment could not reserve).
    /// Optional in the contract so that a later domain can withhold it without a v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the store recorded it.
    pub cancelled_at: Timestamp,
}

impl PublicEvent for OrderCreatedV1 {
    const EVENT_TYPE: &'static str = "OrderCreatedV1";
    const SUBJECT: &'static str = "public.orders.created.v1";
}

impl PublicEvent for OrderConfirmedV1 {
    const EVENT_TYPE: &'static str = "OrderConfirmedV1";
    const SUBJECT: &'static str = "public.orders.confirmed.v1";
}

impl PublicEvent for OrderShippedV1 {
    const EVENT_TYPE: &'static str = "OrderShippedV1";
    const SUBJECT: &'static str = "public.orders.shipped.v1";
}

impl PublicEvent for OrderCancelledV1 {
    const EVENT_TYPE: &'static str = "OrderCancelledV1";
    const SUBJECT: &'static str = "public.orders.cancelled.v1";
}

/// Every public event type with its subject: the published catalogue.
pub const PUBLIC_EVENTS: &[(&str, &str)] = &[
    (OrderCreatedV1::EVENT_TYPE, OrderCreatedV1::SUBJECT),
    (OrderConfirmedV1::EVENT_TYPE, OrderConfirmedV1::SUBJECT),
    (OrderShippedV1::EVENT_TYPE, OrderShippedV1::SUBJECT),
    (OrderCancelledV1::EVENT_TYPE, OrderCancelledV1::SUBJECT),
];

/// The domain event types that have a public counterpart; every other one stays internal.
const PUBLISHED_DOMAIN_TYPES: &[&str] =
    &["OrderCreated", "OrderConfirmed", "OrderShipped", "OrderCancelled"];

/// Translates a stored event into its public event, or `None` when it stays internal.
///
/// Only `Order` events of the published types are decoded (through
/// [`DomainEvent::from_recorded`], upcasting included); anything else is `None` without
/// being decoded, so an internal event can never fail the translation.
pub fn translate(event: &RecordedEvent) -> Result<Option<IntegrationEvent>, TranslateError> {
    if event.aggregate_type != Order::TYPE
        || !PUBLISHED_DOMAIN_TYPES.contains(&event.event_type.as_str())
    {
        return Ok(None);
    }
    let order_id = event.aggregate_id.clone();
    let at = event.timestamp;
    let public = match OrderEvent::from_recorded(event)? {
        OrderEvent::OrderCreated(e) => envelope(
            event,
            &OrderCreatedV1 {
                order_id,
                customer_id: e.customer_id,
                total: e.total,
                created_at: at,
            },
        ),
        OrderEvent::OrderConfirmed(e) => {
            envelope(event, &OrderConfirmedV1 { order_id, total: e.total, confirmed_at: at })
        }
        OrderEvent::OrderShipped(e) => envelope(
            event,
            &OrderShippedV1 {
                order_id,
                tracking_number: e.tracking_number,
                carrier: e.carrier,
                shipped_at: at,
            },
        ),
        OrderEvent::OrderCancelled(e) => envelope(
            event,
            &OrderCancelledV1 { order_id, reason: Some(e.reason), cancelled_at: at },
        ),
        OrderEvent::ItemAdded(_)
        | OrderEvent::ItemRemoved(_)
        | OrderEvent::OrderReadyToShip(_)
        | OrderEvent::OrderTotalCorrected(_) => return Ok(None),
    }?;
    Ok(Some(public))
}

#[cfg(test)]
mod tests {
    use cairn_core::RecordedEvent;
    use cairn_core::timestamp::Timestamp;
    use serde_json::{Value, json};
    use uuid::Uuid;

    use super::{
        IntegrationEvent, OrderCreatedV1, PUBLIC_EVENTS, PublicEvent, SUBJECTS, public_event_id,
        translate,
    };

    const AT: &str = "2026-02-23T10:00:00.123456Z";

    fn recorded(
        aggregate_type: &str,
        event_type: &str,
        data: &str,
        metadata: &str,
    ) -> RecordedEvent {
        RecordedEvent {
            event_id: Uuid::now_v7(),
            aggregate_id: "order-1".into(),
            aggregate_type: aggregate_type.into(),
            event_type: event_type.into(),
            version: 1,
            position: 1,
            timestamp: Timestamp::parse_rfc3339(AT).unwrap(),
            data: serde_json::value::RawValue::from_string(data.to_owned()).unwrap(),
            metadata: serde_json::value::RawValue::from_string(metadata.to_owned()).unwrap(),
        }
    }

    fn order(event_type: &str, data: &str) -> RecordedEvent {
        recorded("Order", event_type, data, r#"{"schema_version":1}"#)
    }

    /// Translates and checks subject, type, ids and the exact JSON text of the payload.
    fn check(source: &RecordedEvent, subject: &str, event_type: &str, data: &str) {
        let public = translate(source).unwrap().expect("a public event");
        assert_eq!(public.subject, subject);
        assert_eq!(public.event_type, event_type);
        assert_eq!(public.source_event_id, source.event_id);
        assert_eq!(public.event_id, public_event_id(source.event_id, event_type));
        assert_eq!(public.data.get(), data, "payload text, digits included");
    }

    const LINES: &str = r#"[{"product_id":"p1","quantity":2,"price":29.99},{"product_id":"p2","quantity":1,"price":0.02}]"#;

    #[test]
    fn created_confirmed_shipped_and_cancelled_translate_with_exact_money() {
        let created = recorded(
            "Order",
            "OrderCreated",
            &format!(r#"{{"customer_id":"c1","items":{LINES},"total":60.00}}"#),
            r#"{"schema_version":2}"#,
        );
        check(
            &created,
            "public.orders.created.v1",
            "OrderCreatedV1",
            &format!(
                r#"{{"order_id":"order-1","customer_id":"c1","total":60,"created_at":"{AT}"}}"#
            ),
        );
        let confirmed = order("OrderConfirmed", &format!(r#"{{"items":{LINES},"total":59.99}}"#));
        check(
            &confirmed,
            "public.orders.confirmed.v1",
            "OrderConfirmedV1",
            &format!(r#"{{"order_id":"order-1","total":59.99,"confirmed_at":"{AT}"}}"#),
        );
        // Beyond what an f64 holds: the digits go through untouched.
        let big = order("OrderConfirmed", r#"{"items":[],"total":"12345678901234567.89"}"#);
        check(
            &big,
            "public.orders.confirmed.v1",
            "OrderConfirmedV1",
            &format!(
                r#"{{"order_id":"order-1","total":12345678901234567.89,"confirmed_at":"{AT}"}}"#
            ),
        );
        let shipped = order(
            "OrderShipped",
            &format!(
                r#"{{"tracking_number":"TRK1","carrier":"DHL","items":{LINES},"total":59.99}}"#
            ),
        );
        check(
            &shipped,
            "public.orders.shipped.v1",
            "OrderShippedV1",
            &format!(
                r#"{{"order_id":"order-1","tracking_number":"TRK1","carrier":"DHL","shipped_at":"{AT}"}}"#
            ),
        );
        let cancelled =
            order("OrderCancelled", r#"{"reason":"out_of_stock","previous_status":"confirmed"}"#);
        check(
            &cancelled,
            "public.orders.cancelled.v1",
            "OrderCancelledV1",
            &format!(r#"{{"order_id":"order-1","reason":"out_of_stock","cancelled_at":"{AT}"}}"#),
        );
    }

    #[test]
    fn internal_events_stay_internal() {
        let line = r#"{"product_id":"p1","quantity":1,"price":1}"#;
        for (aggregate_type, event_type, data) in [
            ("Order", "ItemAdded", line),
            ("Order", "ItemRemoved", line),
            ("Order", "OrderReadyToShip", "{}"),
            (
                "Order",
                "OrderTotalCorrected",
                r#"{"previous_total":1,"corrected_total":2,"reason":"x"}"#,
            ),
            ("Inventory", "StockReserved", r#"{"order_id":"o1","quantity":1}"#),
            ("Inventory", "StockAdded", r#"{"quantity":5}"#),
            ("Customer", "CustomerRegistered", r#"{"name":"Ada","email":"a@b.c"}"#),
            // Another bounded context's event with a name like ours is not ours.
            ("Ledger", "OrderConfirmed", r#"{"total":1}"#),
        ] {
            let source = recorded(aggregate_type, event_type, data, "{}");
            assert_eq!(translate(&source).unwrap(), None, "{aggregate_type}/{event_type}");
        }
    }

    #[test]
    fn internal_events_are_not_even_decoded() {
        // Not a valid ItemAdded: an internal event can never fail the translation.
        assert_eq!(translate(&order("ItemAdded", r#"{"nonsense":true}"#)).unwrap(), None);
    }

    #[test]
    fn a_v1_order_created_translates_like_a_v2_one() {
        let v1 = order(
            "OrderCreated",
            r#"{"customer_id":"c1","items":[{"product_id":"p1","quantity":2,"price":"29.99"},{"product_id":"p2","quantity":1,"price":"0.02"}]}"#,
        );
        let no_metadata_version = recorded("Order", "OrderCreated", v1.data.get(), "{}");
        let v2 = recorded(
            "Order",
            "OrderCreated",
            &format!(r#"{{"customer_id":"c1","items":{LINES},"total":60.00}}"#),
            r#"{"schema_version":2}"#,
        );
        let data = |e: &RecordedEvent| -> Value {
            serde_json::from_str(translate(e).unwrap().unwrap().data.get()).unwrap()
        };
        assert_eq!(data(&v1), data(&v2));
        assert_eq!(data(&no_metadata_version), data(&v2), "no schema_version means v1");
        let text = translate(&v1).unwrap().unwrap().data;
        assert!(text.get().contains(r#""total":60,"#), "exact number: {}", text.get());
    }

    #[test]
    fn a_broken_published_event_is_an_error_not_a_silent_skip() {
        assert!(translate(&order("OrderConfirmed", r#"{"total":"ten"}"#)).is_err());
        assert!(translate(&order("OrderCancelled", "[]")).is_err());
    }

    #[test]
    fn the_public_id_is_deterministic_and_distinct_from_the_source_id() {
        let source = order("OrderConfirmed", r#"{"items":[],"total":1}"#);
        let a: IntegrationEvent = translate(&source).unwrap().unwrap();
        let b = translate(&source).unwrap().unwrap();
        assert_eq!(a, b, "a re-translation is the same message");
        assert_ne!(a.event_id, source.event_id);
        assert_ne!(public_event_id(source.event_id, "OrderShippedV1"), a.event_id);
        let other = order("OrderConfirmed", r#"{"items":[],"total":1}"#);
        assert_ne!(translate(&other).unwrap().unwrap().event_id, a.event_id);
        assert_eq!(a.event_id.get_version_num(), 5);
    }

    #[test]
    fn the_catalogue_names_every_type_once_under_the_public_subjects() {
        let prefix = SUBJECTS.trim_end_matches('>');
        for (event_type, subject) in PUBLIC_EVENTS {
            assert!(subject.starts_with(prefix), "{subject}");
            assert!(event_type.ends_with("V1"), "{event_type}");
            assert_eq!(subject.rsplit('.').next(), Some("v1"), "{subject}");
            assert_eq!(PUBLIC_EVENTS.iter().filter(|(t, _)| t == event_type).count(), 1);
            assert_eq!(PUBLIC_EVENTS.iter().filter(|(_, s)| s == subject).count(), 1);
        }
        // A consumer reads the payload back into the public type.
        let created: OrderCreatedV1 = serde_json::from_value(json!({
            "order_id": "o1", "customer_id": "c1", "total": 59.98, "created_at": AT
        }))
        .unwrap();
        assert_eq!(created.total.to_string(), "59.98");
        assert_eq!(OrderCreatedV1::EVENT_TYPE, "OrderCreatedV1");
    }
}
