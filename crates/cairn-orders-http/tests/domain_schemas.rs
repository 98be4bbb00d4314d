//! The reference domain's event schemas: registered when the server starts, idempotently
//! across restarts, tolerant of an operator's newer compatible version, and enforced on
//! store-API appends of domain events. The public integration events' schemas are
//! registered beside them.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use cairn_orders::schemas::{EVENTS as DOMAIN_SCHEMAS, PUBLIC as INTEGRATION_SCHEMAS};
use cairn_server::domain_schemas::register_tables;
use cairn_server::schemas::SchemaRegistry;
use cairn_sqlite::SqliteReadModels;
use cairn_testkit::Backend;
use serde_json::{Value, json};
use support::TestServer;

/// What a server of the Order module registers at start.
fn register(registry: &SchemaRegistry) -> Result<(), cairn_core::readmodel::ReadModelError> {
    register_tables(registry, &[DOMAIN_SCHEMAS, INTEGRATION_SCHEMAS])
}

cairn_testkit::backend_tests!(
    the_domain_event_types_are_registered_at_start,
    a_wrong_typed_order_created_is_refused_with_validation_failed,
);

async fn the_domain_event_types_are_registered_at_start(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, list) = s.get("/admin/schemas").await;
    assert_eq!(status, 200, "{list}");
    let listed: BTreeSet<&str> =
        list.as_array().unwrap().iter().filter_map(|e| e["event_type"].as_str()).collect();
    for (event_type, history) in DOMAIN_SCHEMAS.iter().chain(INTEGRATION_SCHEMAS) {
        assert!(listed.contains(event_type), "{event_type} missing from {list}");
        let entry = list.as_array().unwrap().iter().find(|e| e["event_type"] == *event_type);
        assert_eq!(entry.unwrap()["version"], json!(history.len()), "{event_type}");
    }
    for t in ["OrderCreated", "StockReserved", "CustomerRegistered", "OrderConfirmedV1"] {
        assert!(listed.contains(t), "{t}");
    }
    let created = list.as_array().unwrap().iter().find(|e| e["event_type"] == "OrderCreated");
    assert_eq!(created.unwrap()["versions"], json!([1, 2]));
}

async fn a_wrong_typed_order_created_is_refused_with_validation_failed(backend: Backend) {
    let s = TestServer::start(backend).await;
    let append = |data: Value| json!({"events": [{"aggregate_type": "Order", "event_type": "OrderCreated", "data": data}]});
    let bad = append(json!({
        "customer_id": 42,
        "items": [{"product_id": "prod-1", "quantity": "two", "price": 29.99}],
        "total": 59.98
    }));
    let (status, body) = s.post("/streams/order-bad", &bad).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "validation_failed", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert_eq!(body["event_type"], "OrderCreated", "{body}");
    assert_eq!(body["schema_version"], 2, "{body}");
    let pointers: BTreeSet<&str> =
        body["errors"].as_array().unwrap().iter().filter_map(|e| e["pointer"].as_str()).collect();
    assert_eq!(pointers, BTreeSet::from(["/customer_id", "/items/0/quantity"]), "{body}");
    assert_eq!(s.get("/streams/order-bad").await.0, 404, "nothing was stored");

    // The same event with the right types is stored, stamped with the schema version.
    let good = append(json!({
        "customer_id": "cust-1",
        "items": [{"product_id": "prod-1", "quantity": 2, "price": 29.99}],
        "total": 59.98
    }));
    let (status, body) = s.post("/streams/order-good", &good).await;
    assert_eq!(status, 200, "{body}");
    let (_, page) = s.get("/streams/order-good").await;
    assert_eq!(page["events"][0]["metadata"]["schema_version"], 2, "{page}");
    let (status, state) = s.get("/orders/order-good/state").await;
    assert_eq!(status, 200, "{state}");
}

fn versions(registry: &SchemaRegistry) -> Vec<(String, u64)> {
    registry
        .list()
        .iter()
        .map(|e| (e["event_type"].as_str().unwrap().to_owned(), e["version"].as_u64().unwrap()))
        .collect()
}

#[test]
fn registering_again_after_a_restart_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let store = Arc::new(SqliteReadModels::open(dir.path()).unwrap());
        SchemaRegistry::load(store).unwrap()
    };
    let first = open();
    register(&first).unwrap();
    let after_first = versions(&first);
    assert_eq!(after_first.len(), DOMAIN_SCHEMAS.len() + INTEGRATION_SCHEMAS.len());
    register(&first).unwrap();
    assert_eq!(versions(&first), after_first, "a second registration is a no-op");
    drop(first);

    let restarted = open();
    assert_eq!(versions(&restarted), after_first, "stored");
    register(&restarted).unwrap();
    assert_eq!(versions(&restarted), after_first, "no version bump on restart");
    let listed = restarted.list();
    let created = listed.iter().find(|e| e["event_type"] == "OrderCreated").unwrap();
    assert_eq!(created["versions"], json!([1, 2]));
}

#[test]
fn an_operators_newer_compatible_version_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let store = Arc::new(SqliteReadModels::open(dir.path()).unwrap());
        SchemaRegistry::load(store).unwrap()
    };
    let registry = open();
    register(&registry).unwrap();
    // An operator adds an optional field to OrderCreated: v3.
    let (_, mut v3) = registry.current_schema("OrderCreated").unwrap();
    v3["properties"]["channel"] = json!({"type": "string"});
    registry.register("OrderCreated", 3, v3.clone()).unwrap();
    drop(registry);

    let restarted = open();
    register(&restarted).unwrap();
    assert_eq!(restarted.current_schema("OrderCreated"), Some((3, v3)));
    let listed = restarted.list();
    let created = listed.iter().find(|e| e["event_type"] == "OrderCreated").unwrap();
    assert_eq!(created["versions"], json!([1, 2, 3]));
}

#[test]
fn an_operators_schema_for_a_domain_type_registered_first_does_not_stop_the_start() {
    // Before the domain's first start an operator registered their own (different)
    // `StockAdded` v1: it stays, and the start goes on.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteReadModels::open(dir.path()).unwrap());
    let registry = SchemaRegistry::load(store).unwrap();
    let theirs = json!({"type": "object", "required": ["quantity", "note"]});
    registry.register("StockAdded", 1, theirs.clone()).unwrap();
    register(&registry).unwrap();
    assert_eq!(registry.current_schema("StockAdded"), Some((1, theirs)));
    assert_eq!(versions(&registry).len(), DOMAIN_SCHEMAS.len() + INTEGRATION_SCHEMAS.len());
}
