//! Contract §3, §4, §5 over HTTP: commands, rules, read models, fulfillment.

mod support;

use cairn_testkit::Backend;
use serde_json::{Value, json};
use support::TestServer;

cairn_testkit::backend_tests!(
    an_order_lives_its_whole_life_and_every_view_follows,
    money_is_exact,
    every_rule_is_a_422_rule_violation,
    unknown_aggregates_are_404_and_duplicates_409,
    minted_ids_and_bad_bodies,
    if_match_makes_a_command_conditional,
    without_if_match_concurrent_commands_all_succeed_on_fresh_state,
    an_idempotency_key_returns_the_first_response_and_appends_nothing,
    out_of_stock_compensation_leaves_inventory_as_before,
    cancelling_a_ready_order_releases_its_reservations,
    an_email_change_reaches_the_shipped_orders_view,
    read_your_writes_never_returns_stale_data,
    the_correlation_id_reaches_the_process_managers_events,
    temporal_queries_rebuild_the_past,
    a_stream_longer_than_one_page_of_bytes_is_loaded_to_its_end,
    store_api_appends_to_domain_streams_are_checked,
    admin_projections_report_position_and_lag,
    metrics_are_prometheus_text,
    dead_letter_endpoints_answer_in_json,
    a_rebuild_swaps_in_an_identical_read_model_without_downtime,
);

/// Sends a command; returns (status, body).
async fn cmd(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    s.post(path, &body).await
}

/// GET with read-your-writes on `position`.
async fn query(s: &TestServer, path: &str, position: u64) -> (u16, Value) {
    let sep = if path.contains('?') { '&' } else { '?' };
    s.get(&format!("{path}{sep}min_position={position}")).await
}

async fn register(s: &TestServer, id: &str) -> u64 {
    let (status, r) = cmd(
        s,
        "/customers",
        json!({"customer_id": id, "name": "Ada", "email": format!("{id}@example.com")}),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    r["position"].as_u64().unwrap()
}

async fn restock(s: &TestServer, product: &str, quantity: i64) -> u64 {
    let (status, r) =
        cmd(s, &format!("/inventory/{product}/restock"), json!({"quantity": quantity})).await;
    assert_eq!(status, 200, "{r}");
    r["position"].as_u64().unwrap()
}

async fn create_order(s: &TestServer, id: &str, customer: &str, items: Value) -> (u16, Value) {
    cmd(s, "/orders", json!({"order_id": id, "customer_id": customer, "items": items})).await
}

/// Polls the fulfillment instance until it reaches `status`.
async fn wait_fulfillment(s: &TestServer, order: &str, status: &str) -> Value {
    for _ in 0..200 {
        let (_, list) =
            s.get(&format!("/admin/process-managers/order-fulfillment?status={status}")).await;
        if let Some(i) = list.as_array().and_then(|a| a.iter().find(|i| i["order_id"] == order)) {
            return i.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("fulfillment of {order} never reached {status}");
}

async fn an_order_lives_its_whole_life_and_every_view_follows(backend: Backend) {
    let s = TestServer::start(backend).await;
    register(&s, "cust-1").await;
    restock(&s, "prod-1", 10).await;
    restock(&s, "prod-2", 5).await;
    let (status, created) = create_order(
        &s,
        "order-1",
        "cust-1",
        json!([{"product_id": "prod-1", "quantity": 2, "price": 29.99}]),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (created["aggregate_id"].clone(), created["version"].clone()),
        (json!("order-1"), json!(1))
    );
    let (status, added) = cmd(
        &s,
        "/orders/order-1/items",
        json!({"product_id": "prod-2", "quantity": 1, "price": "10.01"}),
    )
    .await;
    assert_eq!((status, added["version"].clone()), (200, json!(2)));
    let (_, summary) = query(&s, "/orders/order-1", added["position"].as_u64().unwrap()).await;
    assert_eq!(summary["status"], "pending");
    assert_eq!(summary["item_count"], 2);
    assert_eq!(summary["total"], json!(69.99));
    let (status, confirmed) = cmd(&s, "/orders/order-1/confirm", json!({})).await;
    assert_eq!(status, 200, "{confirmed}");

    let instance = wait_fulfillment(&s, "order-1", "ready_to_ship").await;
    assert_eq!(instance["reserved"], json!(["prod-1", "prod-2"]));
    let (_, state) = s.get("/orders/order-1/state").await;
    assert_eq!(state["status"], "ready_to_ship");
    let head = s.get("/all?from_position=0&limit=10000").await.1["next_position"].as_u64().unwrap();
    let (_, inv) = query(&s, "/inventory/prod-1", head).await;
    assert_eq!(
        (inv["on_hand"].clone(), inv["reserved"].clone(), inv["available"].clone()),
        (json!(10), json!(2), json!(8))
    );

    let (status, shipped) =
        cmd(&s, "/orders/order-1/ship", json!({"tracking_number": "TRK1", "carrier": "DHL"})).await;
    assert_eq!(status, 200, "{shipped}");
    wait_fulfillment(&s, "order-1", "shipped").await;
    let head = s.get("/all?from_position=0&limit=10000").await.1["next_position"].as_u64().unwrap();
    let (_, summary) = query(&s, "/orders/order-1", head).await;
    assert_eq!(summary["status"], "shipped");
    assert_eq!(
        (summary["tracking_number"].clone(), summary["carrier"].clone()),
        (json!("TRK1"), json!("DHL"))
    );
    for field in ["created_at", "confirmed_at", "shipped_at", "updated_at"] {
        assert!(summary[field].is_string(), "{field} missing: {summary}");
    }
    let (_, view) = query(&s, "/shipped-orders/order-1", head).await;
    assert_eq!(view["customer_name"], "Ada");
    assert_eq!(view["customer_email"], "cust-1@example.com");
    assert_eq!((view["item_count"].clone(), view["total"].clone()), (json!(2), json!(69.99)));
    let (_, inv) = query(&s, "/inventory/prod-1", head).await;
    assert_eq!(
        (inv["on_hand"].clone(), inv["reserved"].clone(), inv["available"].clone()),
        (json!(8), json!(0), json!(8))
    );
    let (_, customer) = query(&s, "/customers/cust-1", head).await;
    assert_eq!(
        (customer["order_count"].clone(), customer["lifetime_total"].clone()),
        (json!(1), json!(69.99))
    );
    // The stock events the process manager caused.
    let (_, events) = s.get("/streams/prod-1").await;
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["StockAdded", "StockReserved", "StockShipped"]);
}

async fn money_is_exact(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, r) = create_order(
        &s,
        "order-m",
        "cust-m",
        json!([{"product_id": "p", "quantity": 2, "price": 29.99}]),
    )
    .await;
    let text = s
        .client
        .get(s.url(&format!("/orders/order-m?min_position={}", r["position"])))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#""total":59.98"#), "{text}");
    let (_, r) = cmd(
        &s,
        "/orders/order-m/items",
        json!({"product_id": "q", "quantity": 3, "price": "0.10"}),
    )
    .await;
    let text =
        s.client.get(s.url("/orders/order-m/state")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#""total":60.28"#), "{text} after {r}");
}

async fn every_rule_is_a_422_rule_violation(backend: Backend) {
    let s = TestServer::start(backend).await;
    restock(&s, "p1", 5).await;
    let line = |q: Value, p: Value| json!({"product_id": "p1", "quantity": q, "price": p});
    let rule = |r: (u16, Value)| {
        assert_eq!(r.0, 422, "{}", r.1);
        assert_eq!(r.1["error"], "rule_violation", "{}", r.1);
        assert!(r.1["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    rule(create_order(&s, "o-bad", "c", json!([line(json!(0), json!(1))])).await);
    rule(create_order(&s, "o-bad", "c", json!([line(json!(-2), json!(1))])).await);
    rule(create_order(&s, "o-bad", "c", json!([line(json!(1), json!(-1))])).await);
    rule(create_order(&s, "o-bad", "c", json!([line(json!(1), json!(1.005))])).await);
    rule(
        create_order(&s, "o-bad", "c", json!([line(json!(1), json!(1)), line(json!(1), json!(2))]))
            .await,
    );
    assert_eq!(s.get("/orders/o-bad/state").await.0, 404, "a refused create stores nothing");

    assert_eq!(create_order(&s, "o-1", "c", json!([])).await.0, 201);
    rule(cmd(&s, "/orders/o-1/confirm", json!({})).await); // confirm needs an item
    rule(cmd(&s, "/orders/o-1/items", line(json!(0), json!(1))).await);
    rule(cmd(&s, "/orders/o-1/items", line(json!(1), json!("2.999"))).await);
    assert_eq!(cmd(&s, "/orders/o-1/items", line(json!(1), json!(2))).await.0, 200);
    rule(cmd(&s, "/orders/o-1/items", line(json!(1), json!(3))).await); // same product, other price
    let (status, more) = cmd(&s, "/orders/o-1/items", line(json!(2), json!(2))).await; // adds to the line
    assert_eq!(status, 200);
    let (_, summary) = query(&s, "/orders/o-1", more["position"].as_u64().unwrap()).await;
    assert_eq!((summary["item_count"].clone(), summary["total"].clone()), (json!(1), json!(6)));
    rule(
        s.client
            .delete(s.url("/orders/o-1/items/nope"))
            .send()
            .await
            .map(|r| (r.status().as_u16(), json!({"error": "rule_violation", "message": "x"})))
            .unwrap(),
    );
    rule(cmd(&s, "/orders/o-1/ship", json!({"tracking_number": "T", "carrier": "C"})).await); // not ready
    assert_eq!(cmd(&s, "/orders/o-1/confirm", json!({})).await.0, 200);
    rule(cmd(&s, "/orders/o-1/items", line(json!(1), json!(2))).await); // items only while pending
    rule(cmd(&s, "/orders/o-1/confirm", json!({})).await);
    wait_fulfillment(&s, "o-1", "ready_to_ship").await;
    assert_eq!(
        cmd(&s, "/orders/o-1/ship", json!({"tracking_number": "T", "carrier": "C"})).await.0,
        200
    );
    rule(cmd(&s, "/orders/o-1/cancel", json!({"reason": "too late"})).await); // not after shipped
    // Inventory rules.
    rule(cmd(&s, "/inventory/p1/restock", json!({"quantity": 0})).await);
    // Customer rules.
    rule(cmd(&s, "/customers", json!({"name": "", "email": "a@b"})).await);
    rule(cmd(&s, "/customers", json!({"name": "A", "email": "not-an-email"})).await);
}

async fn unknown_aggregates_are_404_and_duplicates_409(backend: Backend) {
    let s = TestServer::start(backend).await;
    for path in ["/orders/nope/confirm", "/orders/nope/cancel", "/customers/nope/email"] {
        let (status, err) = cmd(&s, path, json!({"reason": "x", "email": "a@b.c"})).await;
        assert_eq!((status, err["error"].clone()), (404, json!("not_found")), "{path}");
    }
    for path in [
        "/orders/nope",
        "/customers/nope",
        "/inventory/nope",
        "/shipped-orders/nope",
        "/orders/nope/state",
        "/orders/nope/events",
    ] {
        let (status, err) = s.get(path).await;
        assert_eq!((status, err["error"].clone()), (404, json!("not_found")), "{path}");
    }
    register(&s, "cust-dup").await;
    let (status, err) =
        cmd(&s, "/customers", json!({"customer_id": "cust-dup", "name": "B", "email": "b@b.b"}))
            .await;
    assert_eq!((status, err["error"].clone()), (409, json!("wrong_expected_version")));
}

async fn minted_ids_and_bad_bodies(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, r) =
        cmd(&s, "/customers", json!({"name": "Ada", "email": "ada@example.com"})).await;
    assert_eq!(status, 201);
    assert!(r["aggregate_id"].as_str().unwrap().starts_with("cust-"), "{r}");
    let (status, r) = cmd(&s, "/orders", json!({"customer_id": "cust-x", "items": []})).await;
    assert_eq!(status, 201);
    assert!(r["aggregate_id"].as_str().unwrap().starts_with("order-"), "{r}");
    for bad in [
        json!({"customer_id": 5}),
        json!({"customer_id": "c", "items": [{"product_id": "p", "quantity": "two", "price": 1}]}),
        json!({"customer_id": "c", "items": [{"product_id": "p", "quantity": 1.5, "price": 1}]}),
        json!({"customer_id": "c", "items": [{"product_id": "p", "quantity": 1, "price": "abc"}]}),
        json!({"order_id": "bad id", "customer_id": "c"}),
    ] {
        let (status, err) = cmd(&s, "/orders", bad.clone()).await;
        assert_eq!((status, err["error"].clone()), (400, json!("bad_request")), "{bad}");
    }
}

async fn if_match_makes_a_command_conditional(backend: Backend) {
    let s = TestServer::start(backend).await;
    create_order(&s, "o-im", "c", json!([])).await;
    let add = |v: &str| {
        s.client
            .post(s.url("/orders/o-im/items"))
            .header("If-Match", v)
            .json(&json!({"product_id": "p", "quantity": 1, "price": 1}))
            .send()
    };
    let r = add("1").await.unwrap();
    assert_eq!(r.status(), 200);
    let r = add("1").await.unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["error"].clone(), body["expected"].clone(), body["actual"].clone()),
        (json!("wrong_expected_version"), json!(1), json!(2))
    );
    assert_eq!(add("\"2\"").await.unwrap().status(), 200);
    assert_eq!(add("soon").await.unwrap().status(), 400);
}

async fn without_if_match_concurrent_commands_all_succeed_on_fresh_state(backend: Backend) {
    let s = TestServer::start(backend).await;
    create_order(&s, "o-c", "c", json!([])).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (client, url) = (s.client.clone(), s.url("/orders/o-c/items"));
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"product_id": format!("p{i}"), "quantity": 1, "price": 1}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let (_, state) = s.get("/orders/o-c/state").await;
    assert_eq!((state["version"].clone(), state["item_count"].clone()), (json!(17), json!(16)));
}

async fn an_idempotency_key_returns_the_first_response_and_appends_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let send = |path: &'static str, body: Value| {
        s.client.post(s.url(path)).header("Idempotency-Key", "key-1").json(&body).send()
    };
    let first = send("/orders", json!({"customer_id": "c", "items": []})).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send("/orders", json!({"customer_id": "c", "items": []})).await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let (_, all) = s.get("/all").await;
    assert_eq!(all["events"].as_array().unwrap().len(), 1);
}

async fn out_of_stock_compensation_leaves_inventory_as_before(backend: Backend) {
    let s = TestServer::start(backend).await;
    restock(&s, "plenty", 10).await;
    restock(&s, "scarce", 1).await;
    create_order(
        &s,
        "o-oos",
        "c",
        json!([
            {"product_id": "plenty", "quantity": 3, "price": 1},
            {"product_id": "scarce", "quantity": 2, "price": 1}
        ]),
    )
    .await;
    let (_, confirmed) = cmd(&s, "/orders/o-oos/confirm", json!({})).await;
    let instance = wait_fulfillment(&s, "o-oos", "cancelled").await;
    assert_eq!(instance["reason"], "out_of_stock");
    let (_, state) = s.get("/orders/o-oos/state").await;
    assert_eq!(state["status"], "cancelled");
    let (_, events) = s.get("/orders/o-oos/events").await;
    let last = events["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["event_type"].clone(), last["data"]["reason"].clone()),
        (json!("OrderCancelled"), json!("out_of_stock"))
    );
    let head = s.get("/all?limit=10000").await.1["next_position"].as_u64().unwrap();
    assert!(head > confirmed["position"].as_u64().unwrap());
    for (product, on_hand) in [("plenty", 10), ("scarce", 1)] {
        let (_, inv) = query(&s, &format!("/inventory/{product}"), head).await;
        assert_eq!(
            (inv["on_hand"].clone(), inv["reserved"].clone(), inv["available"].clone()),
            (json!(on_hand), json!(0), json!(on_hand)),
            "{product}"
        );
    }
    let (_, plenty) = s.get("/streams/plenty").await;
    let types: Vec<&str> = plenty["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["StockAdded", "StockReserved", "StockReleased"]);
}

async fn cancelling_a_ready_order_releases_its_reservations(backend: Backend) {
    let s = TestServer::start(backend).await;
    restock(&s, "p", 4).await;
    create_order(&s, "o-cx", "c", json!([{"product_id": "p", "quantity": 4, "price": 1}])).await;
    cmd(&s, "/orders/o-cx/confirm", json!({})).await;
    wait_fulfillment(&s, "o-cx", "ready_to_ship").await;
    let head = s.get("/all?limit=10000").await.1["next_position"].as_u64().unwrap();
    assert_eq!(query(&s, "/inventory/p", head).await.1["available"], 0);
    assert_eq!(cmd(&s, "/orders/o-cx/cancel", json!({"reason": "changed my mind"})).await.0, 200);
    wait_fulfillment(&s, "o-cx", "cancelled").await;
    let head = s.get("/all?limit=10000").await.1["next_position"].as_u64().unwrap();
    let (_, inv) = query(&s, "/inventory/p", head).await;
    assert_eq!((inv["reserved"].clone(), inv["available"].clone()), (json!(0), json!(4)));
}

async fn an_email_change_reaches_the_shipped_orders_view(backend: Backend) {
    let s = TestServer::start(backend).await;
    register(&s, "cust-e").await;
    restock(&s, "p", 1).await;
    create_order(&s, "o-e", "cust-e", json!([{"product_id": "p", "quantity": 1, "price": 5}]))
        .await;
    cmd(&s, "/orders/o-e/confirm", json!({})).await;
    wait_fulfillment(&s, "o-e", "ready_to_ship").await;
    let (_, shipped) =
        cmd(&s, "/orders/o-e/ship", json!({"tracking_number": "T", "carrier": "C"})).await;
    assert_eq!(
        query(&s, "/shipped-orders/o-e", shipped["position"].as_u64().unwrap()).await.1["customer_email"],
        "cust-e@example.com"
    );
    let (status, changed) =
        cmd(&s, "/customers/cust-e/email", json!({"email": "new@example.com"})).await;
    assert_eq!(status, 200);
    let (_, view) = query(&s, "/shipped-orders/o-e", changed["position"].as_u64().unwrap()).await;
    assert_eq!(view["customer_email"], "new@example.com");
    assert_eq!(
        query(&s, "/customers/cust-e", changed["position"].as_u64().unwrap()).await.1["email"],
        "new@example.com"
    );
}

async fn read_your_writes_never_returns_stale_data(backend: Backend) {
    let s = TestServer::start(backend).await;
    create_order(&s, "o-ryw", "c", json!([])).await;
    for i in 0..30 {
        let (_, r) = cmd(
            &s,
            "/orders/o-ryw/items",
            json!({"product_id": format!("p{i}"), "quantity": 1, "price": 1}),
        )
        .await;
        let position = r["position"].as_u64().unwrap();
        let resp = s
            .client
            .get(s.url("/orders/o-ryw"))
            .header("X-Min-Position", position.to_string())
            .send()
            .await
            .unwrap();
        let applied: u64 =
            resp.headers()["x-projection-position"].to_str().unwrap().parse().unwrap();
        assert!(applied >= position);
        let summary: Value = resp.json().await.unwrap();
        assert_eq!(summary["item_count"], i + 1, "stale read after position {position}");
        assert_eq!(summary["version"], r["version"]);
    }
    // A position that will not come in time is a 504 with the applied position.
    let (status, err) = s.get("/orders/o-ryw?min_position=999999&wait_ms=50").await;
    assert_eq!((status, err["error"].clone()), (504, json!("projection_lagging")));
    assert!(err["position"].as_u64().is_some());
    let r = s.client.get(s.url("/customers/none")).send().await.unwrap();
    assert!(r.headers().contains_key("x-projection-position"));
}

async fn the_correlation_id_reaches_the_process_managers_events(backend: Backend) {
    let s = TestServer::start(backend).await;
    restock(&s, "p", 5).await;
    create_order(&s, "o-corr", "c", json!([{"product_id": "p", "quantity": 1, "price": 1}])).await;
    let r = s
        .client
        .post(s.url("/orders/o-corr/confirm"))
        .header("X-Correlation-Id", "corr-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_fulfillment(&s, "o-corr", "ready_to_ship").await;
    let (_, order) = s.get("/orders/o-corr/events").await;
    let events = order["events"].as_array().unwrap();
    let confirmed = events.iter().find(|e| e["event_type"] == "OrderConfirmed").unwrap();
    let ready = events.iter().find(|e| e["event_type"] == "OrderReadyToShip").unwrap();
    assert_eq!(confirmed["metadata"]["correlation_id"], "corr-42");
    assert_eq!(ready["metadata"]["correlation_id"], "corr-42");
    assert_eq!(ready["metadata"]["causation_id"], confirmed["event_id"]);
    let (_, stock) = s.get("/streams/p").await;
    let reserved = stock["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "StockReserved")
        .unwrap()
        .clone();
    assert_eq!(reserved["metadata"]["correlation_id"], "corr-42");
    assert_eq!(reserved["metadata"]["causation_id"], confirmed["event_id"]);
}

async fn temporal_queries_rebuild_the_past(backend: Backend) {
    let s = TestServer::start(backend).await;
    create_order(&s, "o-t", "c", json!([{"product_id": "a", "quantity": 1, "price": 1}])).await;
    cmd(&s, "/orders/o-t/items", json!({"product_id": "b", "quantity": 1, "price": 2})).await;
    cmd(&s, "/orders/o-t/items", json!({"product_id": "c", "quantity": 1, "price": 3})).await;
    let (_, v1) = s.get("/orders/o-t/state?version=1").await;
    assert_eq!(
        (v1["version"].clone(), v1["item_count"].clone(), v1["total"].clone()),
        (json!(1), json!(1), json!(1))
    );
    let (_, now) = s.get("/orders/o-t/state").await;
    assert_eq!((now["version"].clone(), now["total"].clone()), (json!(3), json!(6)));
    assert_eq!(s.get("/orders/o-t/state?version=4").await.0, 404);
    let (_, events) = s.get("/orders/o-t/events").await;
    let t2 = events["events"][1]["timestamp"].as_str().unwrap().to_owned();
    let (status, at) = s.get(&format!("/orders/o-t/state?as_of={t2}")).await;
    assert_eq!(status, 200, "{at}");
    assert_eq!(at["version"], 2, "as_of is inclusive");
    assert_eq!(s.get("/orders/o-t/state?as_of=2000-01-01T00:00:00Z").await.0, 404);
    assert_eq!(s.get("/orders/o-t/state?as_of=yesterday").await.0, 400);
}

/// ~4 KB events past the stores' 16 MiB page cap: every load follows the cut pages.
async fn a_stream_longer_than_one_page_of_bytes_is_loaded_to_its_end(backend: Backend) {
    const ADDED: u64 = 4_800;
    const BATCH: u64 = 1_000;
    let s = TestServer::start(backend).await;
    let (status, r) =
        create_order(&s, "o-long", "c", json!([{"product_id": "a", "quantity": 1, "price": 1}]))
            .await;
    assert_eq!(status, 201, "{r}");
    // One product whose id makes each event ~4 KB; every event adds one unit of it.
    let product = format!("p-{}", "x".repeat(4_000));
    let data =
        serde_json::value::to_raw_value(&json!({"product_id": product, "quantity": 1, "price": 1}))
            .unwrap();
    let mut version = 1;
    while version < ADDED + 1 {
        let n = BATCH.min(ADDED + 1 - version);
        let append = cairn_core::Append {
            aggregate_id: "o-long".into(),
            aggregate_type: "Order".into(),
            expected: cairn_core::ExpectedVersion::Exact(version),
            events: (0..n).map(|_| cairn_core::NewEvent::new("ItemAdded", data.clone())).collect(),
            idempotency: None,
        };
        s.store.append(append).await.unwrap();
        version += n;
    }
    let last = ADDED + 1;
    let units = |state: &Value| {
        state["items"].as_array().unwrap().iter().find(|l| l["product_id"] == product).unwrap()
            ["quantity"]
            .clone()
    };

    // Before any snapshot of the whole stream exists, so each of these reads it from the start.
    let near_end = last - 10;
    let (status, at) = s.get(&format!("/orders/o-long/state?version={near_end}")).await;
    assert_eq!(status, 200, "{at}");
    assert_eq!((at["version"].clone(), units(&at)), (json!(near_end), json!(near_end - 1)));

    let (_, page) = s.get(&format!("/orders/o-long/events?from_version={near_end}")).await;
    let events = page["events"].as_array().unwrap();
    let t = events[0]["timestamp"].as_str().unwrap().to_owned();
    // Events of one commit share its timestamp: "as of" it is the last of them.
    let expected = events
        .iter()
        .filter(|e| e["timestamp"] == t.as_str())
        .map(|e| e["version"].clone())
        .next_back();
    let (status, at) = s.get(&format!("/orders/o-long/state?as_of={t}")).await;
    assert_eq!(status, 200, "{at}");
    assert_eq!(Some(at["version"].clone()), expected);

    let (status, now) = s.get("/orders/o-long/state").await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(
        (now["version"].clone(), now["current_version"].clone()),
        (json!(last), json!(last))
    );
    assert_eq!(units(&now), json!(ADDED));

    let (status, r) = cmd(&s, "/orders/o-long/confirm", json!({})).await;
    assert_eq!((status, r["version"].clone()), (200, json!(last + 1)), "{r}");
}

async fn store_api_appends_to_domain_streams_are_checked(backend: Backend) {
    let s = TestServer::start(backend).await;
    let append = |event_type: &str, data: Value| json!({"events": [{"aggregate_type": "Order", "event_type": event_type, "data": data}]});
    let (status, err) = s.post("/streams/order-x", &append("OrderExploded", json!({}))).await;
    assert_eq!((status, err["error"].clone()), (422, json!("unknown_event_type")));
    let (status, err) =
        s.post("/streams/order-x", &append("OrderCreated", json!({"customer_id": 5}))).await;
    assert_eq!((status, err["error"].clone()), (422, json!("validation_failed")));
    let good = append("OrderCreated", json!({"customer_id": "c", "items": [], "total": 0}));
    assert_eq!(s.post("/streams/order-x", &good).await.0, 200);
    // The aggregate stays loadable and usable.
    let (status, _) =
        cmd(&s, "/orders/order-x/items", json!({"product_id": "p", "quantity": 1, "price": 1}))
            .await;
    assert_eq!(status, 200);
}

async fn admin_projections_report_position_and_lag(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, r) = create_order(&s, "o-adm", "c", json!([])).await;
    query(&s, "/orders/o-adm", r["position"].as_u64().unwrap()).await;
    let (status, list) = s.get("/admin/projections").await;
    assert_eq!(status, 200);
    let names: Vec<&str> =
        list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        vec![
            "cairn_streams",
            "customer_view",
            "inventory_view",
            "order_summary",
            "shipped_orders_view",
            "order-fulfillment"
        ]
    );
    let kinds: Vec<&str> =
        list.as_array().unwrap().iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        vec![
            "projection",
            "projection",
            "projection",
            "projection",
            "projection",
            "process_manager"
        ]
    );
    let summary = list.as_array().unwrap().iter().find(|p| p["name"] == "order_summary").unwrap();
    assert!(summary["position"].as_u64().unwrap() >= r["position"].as_u64().unwrap());
    assert_eq!(summary["status"], "running");
    assert!(summary["lag"].is_u64() && summary["dlq_depth"] == 0);
    assert_eq!(s.get("/health/ready").await.0, 200);
}

async fn metrics_are_prometheus_text(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, r) = create_order(&s, "o-met", "c", json!([])).await;
    query(&s, "/orders/o-met", r["position"].as_u64().unwrap()).await;
    cmd(&s, "/orders/o-met/confirm", json!({})).await; // refused: no items
    let resp = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    for needle in [
        r#"cairn_commands_total{command="create_order",outcome="ok"}"#,
        r#"cairn_commands_total{command="confirm_order",outcome="refused"}"#,
        "cairn_command_duration_seconds_bucket",
        r#"cairn_appends_total{outcome="ok"}"#,
        "cairn_append_duration_seconds_bucket",
        r#"cairn_projection_lag{projection="order_summary"}"#,
        r#"cairn_projection_position{projection="customer_view"}"#,
        r#"cairn_projection_dlq_depth{projection="inventory_view"}"#,
        r#"cairn_projection_status{projection="order_summary",status="running"} 1"#,
        "cairn_store_group_commits_total",
        "cairn_store_size_bytes",
        "cairn_process_manager_lag",
        r#"cairn_process_manager_instances{process_manager="order-fulfillment",status="ready_to_ship"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

async fn dead_letter_endpoints_answer_in_json(backend: Backend) {
    let s = TestServer::start(backend).await;
    assert_eq!(s.get("/admin/dlq").await, (200, json!([])));
    assert_eq!(s.get("/admin/dlq?projection=order_summary").await, (200, json!([])));
    assert_eq!(s.get("/admin/dlq?projection=order-fulfillment").await, (200, json!([])));
    assert_eq!(s.get("/admin/dlq?projection=nope").await.0, 404);
    let (status, err) = s.post("/admin/dlq/42/retry", &json!({})).await;
    assert_eq!((status, err["error"].clone()), (404, json!("not_found")));
    let r = s.client.delete(s.url("/admin/dlq/x")).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

async fn all_summaries(s: &TestServer, head: u64) -> Vec<Value> {
    let (_, page) = query(s, "/orders?limit=1000", head).await;
    page["items"].as_array().unwrap().clone()
}

async fn a_rebuild_swaps_in_an_identical_read_model_without_downtime(backend: Backend) {
    let s = TestServer::start(backend).await;
    restock(&s, "p", 1000).await;
    for i in 0..60 {
        let id = format!("o-rb-{i:03}");
        create_order(
            &s,
            &id,
            &format!("c{}", i % 7),
            json!([{"product_id": "p", "quantity": 1, "price": "1.25"}]),
        )
        .await;
        if i % 3 == 0 {
            cmd(
                &s,
                &format!("/orders/{id}/items"),
                json!({"product_id": "q", "quantity": 2, "price": 3}),
            )
            .await;
        }
        if i % 4 == 0 {
            cmd(&s, &format!("/orders/{id}/confirm"), json!({})).await;
        }
    }
    // Let the process manager finish its work on the 15 confirmed orders first, so that
    // nothing changes the live model between the two snapshots but the rebuild.
    for _ in 0..300 {
        let (_, ready) =
            s.get("/admin/process-managers/order-fulfillment?status=ready_to_ship").await;
        let (_, cancelled) =
            s.get("/admin/process-managers/order-fulfillment?status=cancelled").await;
        if ready.as_array().unwrap().len() + cancelled.as_array().unwrap().len() == 15 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let head = s.get("/all?limit=10000").await.1["next_position"].as_u64().unwrap();
    let before = all_summaries(&s, head).await;
    assert_eq!(before.len(), 60);

    let (status, body) = s.post("/admin/projections/order_summary/rebuild", &json!({})).await;
    assert_eq!((status, body["status"].clone()), (202, json!("rebuilding")), "{body}");
    // Queries keep answering while it rebuilds, and writes keep flowing.
    assert_eq!(s.get("/orders/o-rb-000").await.0, 200);
    let (_, late) = create_order(&s, "o-rb-late", "c1", json!([])).await;
    let mut rebuilt = false;
    for _ in 0..300 {
        let (_, list) = s.get("/admin/projections").await;
        let row =
            list.as_array().unwrap().iter().find(|p| p["name"] == "order_summary").unwrap().clone();
        if row["status"] == "running" && row["rebuild"].is_null() {
            rebuilt = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(rebuilt, "the rebuild never finished");
    let after = all_summaries(&s, late["position"].as_u64().unwrap()).await;
    assert_eq!(after.len(), 61);
    let after_without_late: Vec<Value> =
        after.into_iter().filter(|o| o["order_id"] != "o-rb-late").collect();
    assert_eq!(after_without_late, before, "the rebuilt read model differs from the live one");
    // The rebuilt model keeps following new events.
    let (_, more) =
        cmd(&s, "/orders/o-rb-late/items", json!({"product_id": "p", "quantity": 1, "price": 1}))
            .await;
    assert_eq!(
        query(&s, "/orders/o-rb-late", more["position"].as_u64().unwrap()).await.1["item_count"],
        1
    );
    assert_eq!(s.post("/admin/projections/nope/rebuild", &json!({})).await.0, 404);
}
