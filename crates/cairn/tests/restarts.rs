//! The CQRS path across process deaths: idempotency keys and the fulfillment process
//! manager survive `kill -9` and finish exactly once.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::Server;

async fn post(base: &str, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("{base}{path}")).json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str) -> Value {
    reqwest::get(format!("{base}{path}")).await.unwrap().json().await.unwrap()
}

fn types(stream: &Value) -> Vec<String> {
    stream["events"].as_array().map_or_else(Vec::new, |a| {
        a.iter().map(|e| e["event_type"].as_str().unwrap().to_owned()).collect()
    })
}

cairn_testkit::backend_tests!(
    an_idempotency_key_holds_across_a_restart,
    fulfillment_killed_after_the_reservations_completes_once_after_restart,
);

async fn an_idempotency_key_holds_across_a_restart(backend: cairn_testkit::Backend) {
    let place = backend.place().await;
    let mut server = Server::start_on(&place, &[]).await;
    let body =
        json!({"customer_id": "c", "items": [{"product_id": "p", "quantity": 1, "price": "9.99"}]});
    let (status, first) = post(&server.base, "/orders", body.clone(), Some("restart-key")).await;
    assert_eq!(status, 201);
    // kill -9, then the same binary and flags on the same port.
    let port = server.port();
    server.restart().await;
    assert_eq!(server.port(), port);

    let (status, again) = post(&server.base, "/orders", body, Some("restart-key")).await;
    assert_eq!((status, again), (201, first));
    let all = get(&server.base, "/all").await;
    assert_eq!(all["events"].as_array().unwrap().len(), 1, "the repeat appended something");
    server.kill().await;
}

async fn fulfillment_killed_after_the_reservations_completes_once_after_restart(
    backend: cairn_testkit::Backend,
) {
    let place = backend.place().await;
    // Every process-manager command waits 400 ms. The lines' reservations go out together,
    // so the kill lands after them and before the order is marked ready to ship.
    let server = Server::start_on(&place, &[("CAIRN_FAULT_PM_COMMAND_DELAY_MS", "400")]).await;
    let base = server.base.clone();
    for p in ["p1", "p2"] {
        assert_eq!(
            post(&base, &format!("/inventory/{p}/restock"), json!({"quantity": 5}), None).await.0,
            200
        );
    }
    let items = json!([{"product_id": "p1", "quantity": 2, "price": 1}, {"product_id": "p2", "quantity": 3, "price": 1}]);
    assert_eq!(
        post(
            &base,
            "/orders",
            json!({"order_id": "o-1", "customer_id": "c", "items": items}),
            None
        )
        .await
        .0,
        201
    );
    assert_eq!(post(&base, "/orders/o-1/confirm", json!({}), None).await.0, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !types(&get(&base, "/streams/p1").await).contains(&"StockReserved".to_owned()) {
        assert!(tokio::time::Instant::now() < deadline, "first reservation never happened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill().await;
    // Look at the store with the process manager held back: the kill landed mid-way
    // (p1 reserved, p2 too or not yet, the order not ready).
    let server = Server::start_on(&place, &[("CAIRN_FAULT_PM_COMMAND_DELAY_MS", "60000")]).await;
    assert!(
        !types(&get(&server.base, "/orders/o-1/events").await)
            .contains(&"OrderReadyToShip".to_owned()),
        "kill came too late: the order is ready"
    );
    server.kill().await;

    let server = Server::start_on(&place, &[]).await;
    let base = server.base.clone();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let instances =
            get(&base, "/admin/process-managers/order-fulfillment?status=ready_to_ship").await;
        if instances.as_array().is_some_and(|a| a.iter().any(|i| i["order_id"] == "o-1")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "fulfillment did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        types(&get(&base, "/streams/p1").await),
        vec!["StockAdded", "StockReserved"],
        "p1 reserved twice?"
    );
    assert_eq!(types(&get(&base, "/streams/p2").await), vec!["StockAdded", "StockReserved"]);
    let order = get(&base, "/orders/o-1/events").await;
    assert_eq!(types(&order).iter().filter(|t| *t == "OrderReadyToShip").count(), 1);
    let head = get(&base, "/all?limit=10000").await["next_position"].as_u64().unwrap();
    for (p, reserved) in [("p1", 2), ("p2", 3)] {
        let inv = get(&base, &format!("/inventory/{p}?min_position={head}")).await;
        assert_eq!(
            (inv["on_hand"].clone(), inv["reserved"].clone(), inv["available"].clone()),
            (json!(5), json!(reserved), json!(5 - reserved)),
            "{p}"
        );
    }
    server.kill().await;
}
