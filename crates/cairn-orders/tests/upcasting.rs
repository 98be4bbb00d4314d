//! A breaking change with an upcaster in code: stored v1 `OrderCreated` events (prices as
//! strings, no total) are read as v2 by the aggregate and the projections, and a read
//! model built from v1 events equals one built from v2 events.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::readmodel::ReadModelStore;
use cairn_core::{Append, EventStore, ExpectedVersion, NewEvent};
use cairn_cqrs::projection::spawn_projection;
use cairn_cqrs::{CommandOptions, Repository};
use cairn_orders::Order;
use cairn_orders::order::{Line, OrderCommand};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::watch;

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

async fn v1_order(store: &Arc<dyn EventStore>, id: &str) {
    let append = Append {
        aggregate_id: id.into(),
        aggregate_type: "Order".into(),
        expected: ExpectedVersion::NoStream,
        events: vec![NewEvent {
            metadata: raw(r#"{"schema_version":1}"#),
            ..NewEvent::new(
                "OrderCreated",
                raw(
                    r#"{"customer_id":"c1","items":[{"product_id":"p1","quantity":2,"price":"29.99"},{"product_id":"p2","quantity":1,"price":"0.02"}]}"#,
                ),
            )
        }],
        idempotency: None,
    };
    store.append(append).await.unwrap();
}

async fn v2_order(repo: &Repository, id: &str) {
    let items = vec![
        Line { product_id: "p1".into(), quantity: 2, price: "29.99".parse().unwrap() },
        Line { product_id: "p2".into(), quantity: 1, price: "0.02".parse().unwrap() },
    ];
    let create = OrderCommand::Create { customer_id: "c1".into(), items };
    repo.execute::<Order>(id, &create, &CommandOptions::default()).await.unwrap();
}

fn summary_without_times(rm: &Arc<dyn ReadModelStore>, id: &str) -> Value {
    let mut doc: Value =
        serde_json::from_str(&rm.get("order_summary", id).unwrap().unwrap()).unwrap();
    let obj = doc.as_object_mut().unwrap();
    for field in ["created_at", "updated_at", "order_id"] {
        obj.remove(field);
    }
    doc
}

cairn_testkit::backend_tests!(v1_events_are_read_as_v2_everywhere);

async fn v1_events_are_read_as_v2_everywhere(backend: cairn_testkit::Backend) {
    let (stores, _place) = backend.open().await;
    let store: Arc<dyn EventStore> = stores.events;
    let repo = Repository::new(Arc::clone(&store));
    v1_order(&store, "order-v1").await;
    v2_order(&repo, "order-v2").await;

    // The store API returns events as stored; new ones carry the current version.
    let v2 =
        store.read_stream("order-v2", cairn_core::StreamRead::forward_from(1, 1)).await.unwrap();
    assert!(
        v2.events[0].metadata.get().contains(r#""schema_version":2"#),
        "{}",
        v2.events[0].metadata.get()
    );
    let v1 =
        store.read_stream("order-v1", cairn_core::StreamRead::forward_from(1, 1)).await.unwrap();
    assert!(!v1.events[0].data.get().contains("total"));

    // The aggregate sees v2: same state, and it keeps working on the upcast history.
    let a = repo.load::<Order>("order-v1").await.unwrap().state;
    let b = repo.load::<Order>("order-v2").await.unwrap().state;
    assert_eq!(a, b);
    assert_eq!(serde_json::to_string(&a.total()).unwrap(), "60");
    repo.execute::<Order>("order-v1", &OrderCommand::Confirm, &CommandOptions::default())
        .await
        .unwrap();

    // A projection built from the v1 history equals one built from v2 events.
    let rm: Arc<dyn ReadModelStore> = stores.readmodels;
    let (_stop, stop_rx) = watch::channel(false);
    let handle = spawn_projection(
        Arc::clone(&store),
        Arc::clone(&rm),
        Arc::new(cairn_orders::projections::order_summary::OrderSummaryProjection),
        stop_rx,
    )
    .unwrap();
    repo.execute::<Order>("order-v2", &OrderCommand::Confirm, &CommandOptions::default())
        .await
        .unwrap();
    let head = *store.head().borrow();
    handle.wait_for(head, Duration::from_secs(10)).await.unwrap();
    let mut one = summary_without_times(&rm, "order-v1");
    let mut two = summary_without_times(&rm, "order-v2");
    for doc in [&mut one, &mut two] {
        doc.as_object_mut().unwrap().remove("confirmed_at");
    }
    assert_eq!(one, two);
    assert_eq!(one["total"], serde_json::json!(60));
}
