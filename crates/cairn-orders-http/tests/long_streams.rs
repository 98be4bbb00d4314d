//! Long streams (#18): a bulk append through the store API is snapshotted in the
//! background, without waiting for a load, and the projections fold it as they fold
//! events appended one command at a time.

mod support;

use std::time::Duration;

use cairn_testkit::Backend;
use serde_json::{Value, json};
use support::TestServer;

cairn_testkit::backend_tests!(a_bulk_append_is_snapshotted_without_a_load);

/// Events appended to the order, in appends of [`APPEND_EVENTS`].
const STREAM_EVENTS: u64 = 1_200;
/// Events per store-API append.
const APPEND_EVENTS: u64 = 400;
/// How long the background snapshot may take to appear.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(20);

fn item_added(k: u64) -> Value {
    json!({
        "aggregate_type": "Order",
        "event_type": "ItemAdded",
        "data": {"product_id": format!("p-{}", k % 300), "quantity": 1, "price": "1.00"},
    })
}

async fn a_bulk_append_is_snapshotted_without_a_load(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, _) =
        s.post("/orders", &json!({"order_id": "o-long", "customer_id": "c-1", "items": []})).await;
    assert_eq!(status, 201);
    let mut version = 1;
    for k in (0..STREAM_EVENTS).step_by(APPEND_EVENTS as usize) {
        let events: Vec<Value> = (k..k + APPEND_EVENTS).map(item_added).collect();
        let (status, body) = s
            .post("/streams/o-long", &json!({"expected_version": version, "events": events}))
            .await;
        assert_eq!(status, 200, "{body}");
        version = body["last_version"].as_u64().unwrap();
    }
    assert_eq!(version, STREAM_EVENTS + 1);
    // Nothing loads the order: only the background snapshot can write this.
    let snapshots = std::sync::Arc::clone(&s.snapshots);
    let deadline = tokio::time::Instant::now() + SNAPSHOT_WAIT;
    let snapshot = loop {
        let store = std::sync::Arc::clone(&snapshots);
        let found = tokio::task::spawn_blocking(move || store.load("o-long")).await.unwrap();
        match found.unwrap() {
            Some(snap) if snap.version == version => break snap,
            _ if tokio::time::Instant::now() > deadline => {
                panic!("no snapshot at version {version} after {SNAPSHOT_WAIT:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(snapshot.aggregate_type, "Order");
    let state: Value = serde_json::from_str(&snapshot.state).unwrap();
    assert_eq!(state["items"].as_array().map(Vec::len), Some(300), "{state}");

    // The next command loads that snapshot; the projection folds the bulk append as the
    // aggregate does: 300 lines of quantity 4 at 1.00, one more from the command.
    let (status, body) = s
        .post("/orders/o-long/items", &json!({"product_id": "p-x", "quantity": 2, "price": "2.50"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let position = body["position"].as_u64().unwrap();
    let (status, row) = s.get(&format!("/orders/o-long?min_position={position}")).await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(row["item_count"], 301, "{row}");
    assert_eq!(row["total"], json!(1205), "{row}");
    assert_eq!(row["version"], version + 1, "{row}");
    assert_eq!(row["status"], "pending", "{row}");
}
