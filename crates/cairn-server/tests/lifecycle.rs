//! Contract §2, "Stream lifecycle", over HTTP on every backend: delete, tombstone,
//! truncate, metadata, scavenge, and erasing a customer (crypto-shredding).

mod support;

use std::time::Duration;

use cairn_core::{AllFilter, StreamRead};
use cairn_testkit::Backend;
use serde_json::{Value, json};
use support::{TestServer, ticks};

cairn_testkit::backend_tests!(
    delete_tombstone_truncate_and_metadata_follow_the_contract,
    a_scavenge_erases_hidden_events_in_place,
    a_deleted_order_leaves_its_summary,
    an_erased_customer_reads_as_erased_everywhere,
);

async fn send(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = s.client.request(method, s.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn delete_tombstone_truncate_and_metadata_follow_the_contract(backend: Backend) {
    let s = TestServer::start(backend).await;
    let del = reqwest::Method::DELETE;
    assert_eq!(s.post("/streams/led-1", &ticks(json!("no_stream"), 3)).await.0, 200);
    let (status, body) = send(&s, del.clone(), "/streams/led-1?expected_version=2", None).await;
    assert_eq!((status, body["error"].clone()), (409, json!("wrong_expected_version")), "{body}");
    assert_eq!(body["actual"], 3);
    let (status, body) = send(&s, del.clone(), "/streams/led-1?expected_version=3", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"aggregate_id": "led-1", "version": 4, "position": 4, "tombstoned": false})
    );
    assert_eq!(s.get("/streams/led-1").await.0, 404);
    assert_eq!(send(&s, del.clone(), "/streams/led-1", None).await.0, 404, "deleted already");
    let (_, life) = s.get("/streams/led-1/metadata").await;
    assert_eq!((life["state"].clone(), life["version"].clone()), (json!("deleted"), json!(4)));
    // An integer expected version on a deleted stream: it does not exist.
    let (status, body) = s.post("/streams/led-1", &ticks(json!(4), 1)).await;
    assert_eq!((status, body["actual"].clone()), (409, json!(0)), "{body}");
    let (status, body) = s.post("/streams/led-1", &ticks(json!("no_stream"), 2)).await;
    assert_eq!((status, body["first_version"].clone()), (200, json!(5)), "{body}");
    let (_, page) = s.get("/streams/led-1").await;
    let versions: Vec<u64> =
        page["events"].as_array().unwrap().iter().map(|e| e["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, vec![5, 6]);

    // Truncation and metadata.
    let (status, life) =
        send(&s, reqwest::Method::POST, "/streams/led-1/truncate", Some(json!({"before": 6})))
            .await;
    assert_eq!((status, life["first_visible"].clone()), (200, json!(6)), "{life}");
    assert_eq!(s.get("/streams/led-1").await.1["events"].as_array().unwrap().len(), 1);
    let meta = json!({"max_count": 5, "expected_meta_version": 0});
    let (status, body) =
        send(&s, reqwest::Method::PUT, "/streams/led-1/metadata", Some(meta)).await;
    assert_eq!((status, body["error"].clone()), (409, json!("wrong_expected_version")), "{body}");
    let meta = json!({"max_count": 1, "expected_meta_version": 1});
    let (status, life) =
        send(&s, reqwest::Method::PUT, "/streams/led-1/metadata", Some(meta)).await;
    assert_eq!(status, 200, "{life}");
    assert_eq!(life["metadata"], json!({"max_count": 1}));
    assert_eq!(life["meta_version"], 2);
    let bad = json!({"max_count": 0});
    assert_eq!(send(&s, reqwest::Method::PUT, "/streams/led-1/metadata", Some(bad)).await.0, 400);
    let unknown = json!({"max_cont": 3});
    assert_eq!(
        send(&s, reqwest::Method::PUT, "/streams/led-1/metadata", Some(unknown)).await.0,
        400
    );

    // A tombstone: every later write and read is 410.
    let (status, body) = send(&s, del.clone(), "/streams/led-1?tombstone=true", None).await;
    assert_eq!((status, body["tombstoned"].clone()), (200, json!(true)), "{body}");
    for expected in [json!("any"), json!("no_stream"), json!(7), json!("exists")] {
        let (status, body) = s.post("/streams/led-1", &ticks(expected, 1)).await;
        assert_eq!((status, body["error"].clone()), (410, json!("stream_tombstoned")), "{body}");
    }
    assert_eq!(s.get("/streams/led-1").await.0, 410);
    assert_eq!(send(&s, del.clone(), "/streams/led-1", None).await.0, 410);
    let truncate = Some(json!({"before": 2}));
    assert_eq!(send(&s, reqwest::Method::POST, "/streams/led-1/truncate", truncate).await.0, 410);
    assert_eq!(s.get("/streams/led-1/metadata").await.1["state"], "tombstoned");

    // Cairn's own names: only its own events where they belong (an import replays them);
    // bad parameters are 400.
    let forged =
        json!({"events": [{"aggregate_type": "Ledger", "event_type": "$streamGone", "data": {}}]});
    assert_eq!(s.post("/streams/led-2", &forged).await.0, 400);
    assert_eq!(s.post("/streams/$$led-2", &ticks(json!("any"), 1)).await.0, 400);
    let bad_meta = json!({"events": [{"aggregate_type": "$stream", "event_type": "$metadata", "data": {"max_count": 0}}]});
    assert_eq!(s.post("/streams/$$led-2", &bad_meta).await.0, 400);
    let meta = json!({"events": [{"aggregate_type": "$stream", "event_type": "$metadata", "data": {"max_count": 1}}]});
    assert_eq!(s.post("/streams/$$led-2", &meta).await.0, 200);
    assert_eq!(s.get("/streams/led-2/metadata").await.1["metadata"], json!({"max_count": 1}));
    let marker = json!({"events": [{"aggregate_type": "Ledger", "event_type": "$streamDeleted", "data": {}}]});
    assert_eq!(s.post("/streams/led-3", &ticks(json!("no_stream"), 1)).await.0, 200);
    assert_eq!(s.post("/streams/led-3", &marker).await.0, 200, "a replayed delete");
    assert_eq!(s.get("/streams/led-3").await.0, 404);
    assert_eq!(send(&s, del.clone(), "/streams/led-2?tombstone=yes", None).await.0, 400);
    assert_eq!(send(&s, del.clone(), "/streams/led-2?expected_version=-1", None).await.0, 400);
    assert_eq!(send(&s, del, "/streams/never", None).await.0, 404);
    // `$all` still holds every event, the markers and the metadata.
    let (_, all) = s.get("/all?limit=100").await;
    let types: Vec<&str> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types.iter().filter(|t| **t == "Tick").count(), 6);
    assert!(
        types.contains(&"$streamDeleted")
            && types.contains(&"$streamTombstoned")
            && types.contains(&"$metadata"),
        "{types:?}"
    );
}

async fn a_scavenge_erases_hidden_events_in_place(backend: Backend) {
    let s = TestServer::start(backend).await;
    assert_eq!(s.post("/streams/sc-1", &ticks(json!("no_stream"), 4)).await.0, 200);
    assert_eq!(s.post("/streams/sc-2", &ticks(json!("no_stream"), 2)).await.0, 200);
    let truncate = Some(json!({"before": 3}));
    assert_eq!(send(&s, reqwest::Method::POST, "/streams/sc-1/truncate", truncate).await.0, 200);
    let (status, report) = send(&s, reqwest::Method::POST, "/admin/scavenge", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (report["streams"].clone(), report["events_redacted"].clone()),
        (json!(1), json!(2))
    );
    let (_, all) = s.get("/all?limit=100").await;
    let events = all["events"].as_array().unwrap();
    let positions: Vec<u64> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=7).collect::<Vec<u64>>(), "no position is lost");
    assert_eq!(events[0]["event_type"], "$scavenged");
    assert_eq!(events[0]["data"], json!({}));
    assert_eq!(events[2]["event_type"], "Tick");
    let (_, again) = send(&s, reqwest::Method::POST, "/admin/scavenge", None).await;
    assert_eq!(again["events_redacted"], 0);
}

async fn a_deleted_order_leaves_its_summary(backend: Backend) {
    let s = TestServer::start(backend).await;
    let order = json!({"order_id": "order-del", "customer_id": "cust-1", "items": [{"product_id": "p-1", "quantity": 1, "price": 5}]});
    let (status, body) = s.post("/orders", &order).await;
    assert_eq!(status, 201, "{body}");
    let position = body["position"].as_u64().unwrap();
    assert_eq!(s.get(&format!("/orders/order-del?min_position={position}")).await.0, 200);
    let (status, body) = send(&s, reqwest::Method::DELETE, "/streams/order-del", None).await;
    assert_eq!(status, 200, "{body}");
    let position = body["position"].as_u64().unwrap();
    let (status, _) = s.get(&format!("/orders/order-del?min_position={position}")).await;
    assert_eq!(status, 404, "the summary goes with the order");
    // A command on the deleted order sees no order.
    let (status, body) = s.post("/orders/order-del/confirm", &json!({})).await;
    assert_eq!(status, 404, "{body}");
    // The id can be used again: a new order, from the version after the marker.
    let (status, body) = s.post("/orders", &order).await;
    assert_eq!(status, 201, "{body}");
}

async fn an_erased_customer_reads_as_erased_everywhere(backend: Backend) {
    let s = TestServer::start(backend).await;
    let address = "ann.erasable@example.com";
    let customer = json!({"customer_id": "cust-erase", "name": "Ann", "email": address});
    assert_eq!(s.post("/customers", &customer).await.0, 201);
    let (status, body) =
        s.post("/customers/cust-erase/email", &json!({"email": "ann2@example.com"})).await;
    assert_eq!(status, 200, "{body}");
    let position = body["position"].as_u64().unwrap();
    let (_, view) = s.get(&format!("/customers/cust-erase?min_position={position}")).await;
    assert_eq!(view["email"], "ann2@example.com", "{view}");
    let (_, page) = s.get("/streams/cust-erase").await;
    assert_eq!(page["events"][0]["data"]["email"], address, "readable before the erasure");
    // The log holds ciphertext: the backend's own read (under the server's) has no address.
    let raw = s.store.read_all(0, 100, &AllFilter::default()).await.unwrap();
    for e in &raw.events {
        assert!(!e.data.get().contains("example.com"), "stored in clear: {}", e.data.get());
    }
    assert!(raw.events[0].data.get().contains("$cairn_enc"));

    let (status, body) =
        send(&s, reqwest::Method::DELETE, "/admin/subjects/cust-erase", None).await;
    assert_eq!((status, body["erased"].clone()), (200, json!(true)), "{body}");
    assert_eq!(send(&s, reqwest::Method::DELETE, "/admin/subjects/cust-erase", None).await.0, 404);
    let erased = json!("[erased]");
    let (_, page) = s.get("/streams/cust-erase").await;
    assert_eq!(page["events"][0]["data"]["email"], erased, "{page}");
    assert_eq!(page["events"][0]["data"]["name"], "Ann", "unmarked fields stay");
    assert_eq!(page["events"][1]["data"]["previous_email"], erased);
    let (_, all) = s.get("/all?limit=100").await;
    assert!(!all.to_string().contains("example.com"), "{all}");
    let stream = s.store.read_stream("cust-erase", StreamRead::forward_from(1, 10)).await.unwrap();
    assert_eq!(stream.events.len(), 2, "the events stay");
    // A rebuilt read model shows no address either.
    assert_eq!(s.post("/admin/projections/customer_view/rebuild", &json!({})).await.0, 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, rows) = s.get("/admin/projections").await;
        let done = rows.as_array().unwrap().iter().any(|p| {
            p["name"] == "customer_view"
                && p["rebuilds_completed"].as_u64() >= Some(1)
                && p["rebuild"].is_null()
        });
        if done {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rebuild never ended: {rows}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, view) = s.get("/customers/cust-erase").await;
    assert_eq!(view["email"], erased, "{view}");
    // The customer can still be commanded: its state folds the erased events.
    let (status, body) =
        s.post("/customers/cust-erase/email", &json!({"email": "new@example.org"})).await;
    assert_eq!(status, 200, "{body}");
}
