//! The JSON Schemas of the reference domain's events (`crates/cairn-server/schemas/`),
//! registered in the schema registry when the server starts, so that appends of domain
//! events through the store API are validated from the first request on.
//!
//! They describe the serde shapes of `cairn-orders`' event structs: field names, JSON
//! types and required fields. The domain's rules (quantities ≥ 1, prices with two
//! decimals, ...) stay with the aggregates; a schema only says what an event looks like.
//! Extra properties are allowed, as the decoders ignore them, so that a later version can
//! add an optional field.
//!
//! A version, once released, is never edited: a change is a new file and a new version,
//! BACKWARD compatible with the previous one (the registry refuses anything else), and for
//! a breaking change an upcaster in the domain as well (see `OrderCreated`).
//!
//! The domain's public integration events (`cairn_orders::integration`) have their schemas
//! here too, registered the same way under their public type names (`OrderConfirmedV1`,
//! version 1). Their contract is stricter: a public type is never given an incompatible
//! version; a breaking change is a new type (`…V2`).

use cairn_core::readmodel::ReadModelError;
use serde_json::Value;

use crate::schemas::{RegisterError, SchemaRegistry, backward_incompatibilities};

/// Every event type of the reference domain with its schema versions, oldest first. The
/// number of versions is the domain's current schema version of that type.
pub const DOMAIN_SCHEMAS: &[(&str, &[&str])] = &[
    (
        "OrderCreated",
        &[
            include_str!("../schemas/OrderCreated.v1.json"),
            include_str!("../schemas/OrderCreated.v2.json"),
        ],
    ),
    ("ItemAdded", &[include_str!("../schemas/ItemAdded.v1.json")]),
    ("ItemRemoved", &[include_str!("../schemas/ItemRemoved.v1.json")]),
    ("OrderConfirmed", &[include_str!("../schemas/OrderConfirmed.v1.json")]),
    ("OrderReadyToShip", &[include_str!("../schemas/OrderReadyToShip.v1.json")]),
    ("OrderShipped", &[include_str!("../schemas/OrderShipped.v1.json")]),
    ("OrderCancelled", &[include_str!("../schemas/OrderCancelled.v1.json")]),
    ("OrderTotalCorrected", &[include_str!("../schemas/OrderTotalCorrected.v1.json")]),
    ("StockAdded", &[include_str!("../schemas/StockAdded.v1.json")]),
    ("StockReserved", &[include_str!("../schemas/StockReserved.v1.json")]),
    ("StockReleased", &[include_str!("../schemas/StockReleased.v1.json")]),
    ("StockShipped", &[include_str!("../schemas/StockShipped.v1.json")]),
    ("StockDepleted", &[include_str!("../schemas/StockDepleted.v1.json")]),
    ("CustomerRegistered", &[include_str!("../schemas/CustomerRegistered.v1.json")]),
    ("CustomerEmailChanged", &[include_str!("../schemas/CustomerEmailChanged.v1.json")]),
];

/// Every public integration event type of the reference domain with its schema versions
/// (one each: a breaking change is a new type, not a new version).
pub const INTEGRATION_SCHEMAS: &[(&str, &[&str])] = &[
    ("OrderCreatedV1", &[include_str!("../schemas/OrderCreatedV1.v1.json")]),
    ("OrderConfirmedV1", &[include_str!("../schemas/OrderConfirmedV1.v1.json")]),
    ("OrderShippedV1", &[include_str!("../schemas/OrderShippedV1.v1.json")]),
    ("OrderCancelledV1", &[include_str!("../schemas/OrderCancelledV1.v1.json")]),
];

/// Registers every version of every domain and integration event schema that the registry
/// does not hold yet.
///
/// Idempotent: a version already registered — by an earlier start, or by an operator — is
/// left as it is, so a restart registers nothing and bumps no version. A registry that is
/// ahead of the domain (an operator added a compatible version) is kept. Where the
/// registry holds something else, the operator's schemas win and a warning says which
/// domain events they may refuse: the server still starts. Only a storage failure is an
/// error.
pub fn register(registry: &SchemaRegistry) -> Result<(), ReadModelError> {
    register_tables(registry, &[DOMAIN_SCHEMAS, INTEGRATION_SCHEMAS])
}

/// Like [`register`], for the schema tables of a server's modules.
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use cairn_core::RecordedEvent;
    use cairn_core::timestamp::Timestamp;
    use cairn_cqrs::{Aggregate, DomainEvent};
    use cairn_orders::customer::CustomerCommand;
    use cairn_orders::inventory::InventoryCommand;
    use cairn_orders::order::{Line, OrderCommand};
    use cairn_orders::{Customer, Inventory, Order};
    use serde_json::{Value, json};

    use super::{DOMAIN_SCHEMAS, INTEGRATION_SCHEMAS};
    use crate::schemas::backward_incompatibilities;

    fn history(event_type: &str) -> Vec<Value> {
        let (_, texts) = DOMAIN_SCHEMAS.iter().find(|(t, _)| *t == event_type).unwrap();
        texts.iter().map(|t| serde_json::from_str(t).unwrap()).collect()
    }

    fn assert_valid(event_type: &str, schema: &Value, data: &Value) {
        let validator = jsonschema::validator_for(schema).unwrap();
        let errors: Vec<String> = validator.iter_errors(data).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{event_type} {data}: {errors:?}");
    }

    fn versions_of<E: DomainEvent>(out: &mut BTreeMap<&'static str, usize>) {
        for t in E::EVENT_TYPES {
            out.insert(t, E::schema_version(t) as usize);
        }
    }

    #[test]
    fn every_domain_event_type_has_its_schema_history_and_nothing_else() {
        let mut domain = BTreeMap::new();
        versions_of::<<Order as Aggregate>::Event>(&mut domain);
        versions_of::<<Inventory as Aggregate>::Event>(&mut domain);
        versions_of::<<Customer as Aggregate>::Event>(&mut domain);
        let ours: BTreeMap<&str, usize> =
            DOMAIN_SCHEMAS.iter().map(|(t, history)| (*t, history.len())).collect();
        assert_eq!(ours, domain, "one schema per schema version of every domain event type");
    }

    #[test]
    fn every_schema_compiles_and_every_version_is_backward_compatible() {
        for (t, _) in DOMAIN_SCHEMAS {
            let history = history(t);
            for schema in &history {
                jsonschema::validator_for(schema).unwrap();
            }
            for pair in history.windows(2) {
                let reasons = backward_incompatibilities(&pair[0], &pair[1], "");
                assert!(reasons.is_empty(), "{t}: {reasons:?}");
            }
        }
    }

    /// Runs commands on an aggregate, validating every event it emits against the current
    /// schema of its type.
    fn drive<A: Aggregate>(commands: Vec<A::Command>, seen: &mut BTreeSet<&'static str>) -> A {
        let mut state = A::default();
        for command in commands {
            for event in state.handle(&command).unwrap() {
                let data: Value = serde_json::from_str(event.to_json().get()).unwrap();
                let current = history(event.event_type()).pop().unwrap();
                assert_valid(event.event_type(), &current, &data);
                seen.insert(event.event_type());
                state.apply(&event);
            }
        }
        state
    }

    #[test]
    fn every_event_the_command_handlers_emit_validates() {
        let mut seen = BTreeSet::new();
        let line = |p: &str, q: i64, price: &str| Line {
            product_id: p.into(),
            quantity: q,
            price: price.parse().unwrap(),
        };
        let create = || OrderCommand::Create {
            customer_id: "cust-1".into(),
            items: vec![line("prod-1", 2, "29.99"), line("prod-2", 1, "0.5")],
        };
        drive::<Order>(
            vec![
                create(),
                OrderCommand::AddItem(line("prod-3", 3, "10")),
                OrderCommand::RemoveItem { product_id: "prod-2".into() },
                OrderCommand::CorrectTotal {
                    corrected_total: "12.34".parse().unwrap(),
                    reason: "goodwill".into(),
                },
                OrderCommand::Confirm,
                OrderCommand::MarkReadyToShip,
                OrderCommand::Ship { tracking_number: "TRK1".into(), carrier: "DHL".into() },
            ],
            &mut seen,
        );
        for last in [
            vec![OrderCommand::Cancel { reason: "changed my mind".into() }],
            vec![OrderCommand::Confirm, OrderCommand::Cancel { reason: "out_of_stock".into() }],
        ] {
            drive::<Order>([vec![create()], last].concat(), &mut seen);
        }
        drive::<Inventory>(
            vec![
                InventoryCommand::Restock { quantity: 5 },
                InventoryCommand::Reserve { order_id: "order-1".into(), quantity: 2 },
                InventoryCommand::Release { order_id: "order-1".into() },
                InventoryCommand::Reserve { order_id: "order-2".into(), quantity: 5 },
                InventoryCommand::Ship { order_id: "order-2".into() },
            ],
            &mut seen,
        );
        drive::<Customer>(
            vec![
                CustomerCommand::Register { name: "Ada".into(), email: "ada@example.com".into() },
                CustomerCommand::ChangeEmail { email: "ada@example.org".into() },
            ],
            &mut seen,
        );
        let all: BTreeSet<&str> = DOMAIN_SCHEMAS.iter().map(|(t, _)| *t).collect();
        assert_eq!(seen, all, "every event type was emitted at least once");
    }

    #[test]
    fn v1_order_created_events_are_valid_under_both_versions() {
        // As stored before v2: prices as strings, no total (see cairn-orders' upcasting test).
        let v1 = json!({"customer_id": "c1", "items": [{"product_id": "p1", "quantity": 2, "price": "29.99"}]});
        for schema in history("OrderCreated") {
            assert_valid("OrderCreated", &schema, &v1);
        }
    }

    #[test]
    fn money_is_a_number_or_a_decimal_string_and_nothing_else() {
        let schema = history("ItemAdded").pop().unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let with_price = |price: Value| json!({"product_id": "p", "quantity": 1, "price": price});
        for ok in [json!(59.98), json!(100), json!("59.98"), json!("0")] {
            assert!(validator.is_valid(&with_price(ok.clone())), "{ok}");
        }
        for bad in [json!("ten"), json!("1,5"), json!(true), json!(null), json!({"amount": 1})] {
            assert!(!validator.is_valid(&with_price(bad.clone())), "{bad}");
        }
    }

    fn integration_schema(event_type: &str) -> Value {
        let (_, texts) = INTEGRATION_SCHEMAS
            .iter()
            .find(|(t, _)| *t == event_type)
            .unwrap_or_else(|| panic!("no schema for {event_type}"));
        serde_json::from_str(texts.last().unwrap()).unwrap()
    }

    #[test]
    fn every_public_event_type_has_one_schema_and_nothing_else() {
        use cairn_orders::integration::PUBLIC_EVENTS;
        let ours: BTreeMap<&str, usize> =
            INTEGRATION_SCHEMAS.iter().map(|(t, history)| (*t, history.len())).collect();
        let public: BTreeMap<&str, usize> = PUBLIC_EVENTS.iter().map(|(t, _)| (*t, 1)).collect();
        assert_eq!(ours, public, "one schema, version 1, per public event type");
        for (t, _) in INTEGRATION_SCHEMAS {
            jsonschema::validator_for(&integration_schema(t)).unwrap();
            assert!(DOMAIN_SCHEMAS.iter().all(|(d, _)| d != t), "{t} is also a domain type");
        }
    }

    /// Stores the events of `commands` as the repository would (current schema version in
    /// the metadata), translates each, and validates every public event against its schema.
    fn publish(commands: Vec<OrderCommand>, seen: &mut BTreeSet<String>) {
        let mut state = Order::default();
        let mut version = 0;
        for command in commands {
            for event in state.handle(&command).unwrap() {
                version += 1;
                let current = <Order as Aggregate>::Event::schema_version(event.event_type());
                let source = recorded(
                    event.event_type(),
                    event.to_json().get(),
                    &format!(r#"{{"schema_version":{current}}}"#),
                    version,
                );
                if let Some(public) = check_public(&source) {
                    seen.insert(public);
                }
                state.apply(&event);
            }
        }
    }

    fn recorded(event_type: &str, data: &str, metadata: &str, version: u64) -> RecordedEvent {
        let raw = |s: &str| serde_json::value::RawValue::from_string(s.to_owned()).unwrap();
        RecordedEvent {
            event_id: uuid::Uuid::now_v7(),
            aggregate_id: "order-1".into(),
            aggregate_type: Order::TYPE.into(),
            event_type: event_type.into(),
            version,
            position: version,
            timestamp: Timestamp::now(),
            data: raw(data),
            metadata: raw(metadata),
        }
    }

    /// Translates one stored event; a public one must validate against its registered
    /// schema and be on its catalogued subject. Returns its type.
    fn check_public(source: &RecordedEvent) -> Option<String> {
        use cairn_orders::integration::{PUBLIC_EVENTS, translate};
        let public = translate(source).unwrap()?;
        let data: Value = serde_json::from_str(public.data.get()).unwrap();
        assert_valid(&public.event_type, &integration_schema(&public.event_type), &data);
        let (_, subject) = PUBLIC_EVENTS.iter().find(|(t, _)| *t == public.event_type).unwrap();
        assert_eq!(public.subject, *subject);
        Some(public.event_type)
    }

    #[test]
    fn every_translated_event_validates_against_its_registered_schema() {
        let mut seen = BTreeSet::new();
        let line = |p: &str, q: i64, price: &str| Line {
            product_id: p.into(),
            quantity: q,
            price: price.parse().unwrap(),
        };
        let create = || OrderCommand::Create {
            customer_id: "cust-1".into(),
            items: vec![line("prod-1", 2, "29.99"), line("prod-2", 1, "0.5")],
        };
        publish(
            vec![
                create(),
                OrderCommand::AddItem(line("prod-3", 3, "10")),
                OrderCommand::RemoveItem { product_id: "prod-2".into() },
                OrderCommand::CorrectTotal {
                    corrected_total: "12.34".parse().unwrap(),
                    reason: "goodwill".into(),
                },
                OrderCommand::Confirm,
                OrderCommand::MarkReadyToShip,
                OrderCommand::Ship { tracking_number: "TRK1".into(), carrier: "DHL".into() },
            ],
            &mut seen,
        );
        publish(
            vec![
                create(),
                OrderCommand::Confirm,
                OrderCommand::Cancel { reason: "out_of_stock".into() },
            ],
            &mut seen,
        );
        // A stored v1 OrderCreated (string prices, no total) is upcast, then translated.
        let v1 =
            r#"{"customer_id":"c1","items":[{"product_id":"p1","quantity":2,"price":"29.99"}]}"#;
        assert_eq!(
            check_public(&recorded("OrderCreated", v1, r#"{"schema_version":1}"#, 1)).as_deref(),
            Some("OrderCreatedV1")
        );
        let all: BTreeSet<String> =
            INTEGRATION_SCHEMAS.iter().map(|(t, _)| (*t).to_owned()).collect();
        assert_eq!(seen, all, "every public event type was produced at least once");
    }

    #[test]
    fn a_public_schema_refuses_what_its_type_would_not_write() {
        let schema = integration_schema("OrderConfirmedV1");
        let validator = jsonschema::validator_for(&schema).unwrap();
        let at = "2026-02-23T10:00:00.123456Z";
        let ok = json!({"order_id": "o1", "total": 59.98, "confirmed_at": at});
        assert!(validator.is_valid(&ok));
        for bad in [
            json!({"order_id": "o1", "total": "59.98", "confirmed_at": at}),
            json!({"order_id": "o1", "total": 59.98, "confirmed_at": "yesterday"}),
            json!({"order_id": "o1", "total": 59.98}),
            json!({"total": 59.98, "confirmed_at": at}),
        ] {
            assert!(!validator.is_valid(&bad), "{bad}");
        }
    }
}
