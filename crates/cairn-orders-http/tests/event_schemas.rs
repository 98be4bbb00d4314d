//! The Order context's event schemas against its aggregates: every type has its history,
//! every version is BACKWARD compatible, and every event the handlers emit (and every
//! public event the translator makes) validates.

use std::collections::{BTreeMap, BTreeSet};

use cairn_core::RecordedEvent;
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::{Aggregate, DomainEvent};
use cairn_orders::customer::CustomerCommand;
use cairn_orders::inventory::InventoryCommand;
use cairn_orders::order::{Line, OrderCommand};
use cairn_orders::{Customer, Inventory, Order};
use serde_json::{Value, json};

use cairn_orders::schemas::{EVENTS as DOMAIN_SCHEMAS, PUBLIC as INTEGRATION_SCHEMAS};
use cairn_server::schemas::backward_incompatibilities;

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
    let v1 = r#"{"customer_id":"c1","items":[{"product_id":"p1","quantity":2,"price":"29.99"}]}"#;
    assert_eq!(
        check_public(&recorded("OrderCreated", v1, r#"{"schema_version":1}"#, 1)).as_deref(),
        Some("OrderCreatedV1")
    );
    let all: BTreeSet<String> = INTEGRATION_SCHEMAS.iter().map(|(t, _)| (*t).to_owned()).collect();
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
