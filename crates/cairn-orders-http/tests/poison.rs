//! One event must not stop a consumer. An `OrderCreated` whose line cannot be priced
//! (quantity 2^63-1 at 99,999,999,999,999) is refused at the command and at the store API;
//! one already in the log (written before the schemas bounded amounts) is dead-lettered
//! by the projection it breaks, while every other order flows on, readiness holds, and the
//! dead-letter commands answer at once.

mod support;

use std::time::{Duration, Instant};

use cairn_core::{Append, ExpectedVersion, NewEvent};
use cairn_testkit::Backend;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use support::TestServer;

cairn_testkit::backend_tests!(
    an_unpriceable_line_is_refused_at_the_command_and_the_store_api,
    an_unpriceable_event_in_the_log_is_dead_lettered_and_nothing_stalls,
    a_nul_in_text_is_refused_by_commands_and_never_stalls_a_projection,
);

const POISON: &str = r#"{"customer_id":"c-1","items":[{"product_id":"p-1","quantity":9223372036854775807,"price":"99999999999999"}],"total":"0"}"#;

async fn an_unpriceable_line_is_refused_at_the_command_and_the_store_api(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server
        .post(
            "/orders",
            &json!({"order_id": "o-poison", "customer_id": "c-1",
                    "items": [{"product_id": "p-1", "quantity": 9_223_372_036_854_775_807_i64, "price": "99999999999999"}]}),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (422, Some("rule_violation")), "{body}");
    let append = format!(
        r#"{{"expected_version":0,"events":[{{"aggregate_type":"Order","event_type":"OrderCreated","data":{POISON}}}]}}"#
    );
    let (status, body) = server.post_raw("/streams/o-poison", append).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("validation_failed")), "{body}");
    let pointers = body.to_string();
    assert!(pointers.contains("/items/0/quantity"), "names the field: {body}");
    let (status, _) = server.get("/streams/o-poison").await;
    assert_eq!(status, 404, "nothing was stored");
}

async fn an_unpriceable_event_in_the_log_is_dead_lettered_and_nothing_stalls(backend: Backend) {
    let server = TestServer::start(backend).await;
    // As if written before the schemas bounded amounts: straight into the log.
    let poison = server
        .store
        .append(Append {
            aggregate_id: "o-poison".into(),
            aggregate_type: "Order".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent {
                metadata: RawValue::from_string(r#"{"schema_version":2}"#.into()).unwrap(),
                ..NewEvent::new("OrderCreated", RawValue::from_string(POISON.into()).unwrap())
            }],
            idempotency: None,
        })
        .await
        .unwrap();
    // A good order after it: its summary appears (read-your-writes), so the projection
    // moved past the poison instead of stalling on it.
    let (status, created) = server
        .post(
            "/orders",
            &json!({"order_id": "o-good", "customer_id": "c-1",
                    "items": [{"product_id": "p-1", "quantity": 2, "price": "29.99"}]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let position = created["position"].as_u64().unwrap();
    assert!(position > poison.position);
    let (status, summary) = server.get(&format!("/orders/o-good?min_position={position}")).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["total"], json!(59.98));

    let letters = dead_letters(&server, "order_summary").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["position"].as_u64(), Some(poison.position));
    assert_eq!(letters[0]["attempts"].as_u64(), Some(3));
    let (status, projections) = server.get("/admin/projections").await;
    assert_eq!(status, 200);
    let row = projections
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "order_summary")
        .unwrap()
        .clone();
    assert_eq!((row["status"].as_str(), row["dlq_depth"].as_u64()), (Some("running"), Some(1)));
    let (status, ready) = server.get("/health/ready").await;
    assert_eq!(status, 200, "a dead letter does not make the process unready: {ready}");
    // The write side answers about the poisoned order without a 500.
    let (status, state) = server.get("/orders/o-poison/state").await;
    assert!(status < 500, "{status} {state}");

    // Dead-letter commands answer at once: a retry fails again and keeps the letter, a
    // discard removes it.
    let id = letters[0]["id"].as_i64().unwrap();
    let started = Instant::now();
    let (status, body) = server.post(&format!("/admin/dlq/{id}/retry"), &json!({})).await;
    assert_eq!((status, body["remaining"].as_u64()), (200, Some(1)), "{body}");
    let r = server.client.delete(server.url(&format!("/admin/dlq/{id}"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(started.elapsed() < Duration::from_secs(10), "answered in {:?}", started.elapsed());
    let (_, left) = server.get("/admin/dlq?projection=order_summary").await;
    assert_eq!(left, json!([]));

    // #17: the listing is paged. Three more letters, walked one per page by the Link
    // header, are the whole listing in order.
    for i in 1..=3 {
        append_poison(&server, &format!("o-poison-{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let whole = loop {
        let (_, body) = server.get("/admin/dlq?projection=order_summary").await;
        let letters = body.as_array().cloned().unwrap_or_default();
        if letters.len() == 3 || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(whole.len(), 3, "{whole:?}");
    let mut walked = Vec::new();
    let mut next = Some("/admin/dlq?projection=order_summary&limit=1".to_owned());
    while let Some(path) = next.take() {
        let r = server.client.get(server.url(&path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        next = r.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with(">; rel=\"next\""), "{l}");
            l[1..l.find('>').unwrap()].to_owned()
        });
        let page: Vec<Value> = r.json().await.unwrap();
        assert_eq!(page.len(), 1);
        walked.extend(page);
        assert!(walked.len() <= 3, "the last page has no next link");
    }
    assert_eq!(walked, whole);
    let (status, body) = server.get("/admin/dlq?after=nonsense").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, body) = server.get("/admin/dlq?after=").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, body) = server.get("/admin/dlq?limit=0").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
}

async fn append_poison(server: &TestServer, id: &str) {
    server
        .store
        .append(Append {
            aggregate_id: id.into(),
            aggregate_type: "Order".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent {
                metadata: RawValue::from_string(r#"{"schema_version":2}"#.into()).unwrap(),
                ..NewEvent::new("OrderCreated", RawValue::from_string(POISON.into()).unwrap())
            }],
            idempotency: None,
        })
        .await
        .unwrap();
}

async fn dead_letters(server: &TestServer, projection: &str) -> Vec<Value> {
    // The projection dead-letters after its tries: wait for it, boundedly.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = server.get(&format!("/admin/dlq?projection={projection}")).await;
        assert_eq!(status, 200, "{body}");
        let letters = body.as_array().cloned().unwrap_or_default();
        if !letters.is_empty() || Instant::now() > deadline {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `\u0000` is valid JSON but PostgreSQL cannot parse it as `jsonb`, which an indexed
/// read-model table does: retried as a storage failure, it stalled the consumer for good.
async fn a_nul_in_text_is_refused_by_commands_and_never_stalls_a_projection(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, _) = server
        .post(
            "/orders",
            &json!({"order_id": "o-1", "customer_id": "c-1",
                    "items": [{"product_id": "p-1", "quantity": 1, "price": "1.00"}]}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) =
        server.post("/orders/o-1/cancel", &json!({"reason": "changed\u{0}mind"})).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("rule_violation")), "{body}");

    // Through the store API (no aggregate rules there): a shipment whose tracking number
    // the order summary cannot store on PostgreSQL.
    let line = json!({"product_id": "p-1", "quantity": 1, "price": "1.00"});
    let append = json!({"expected_version": 0, "events": [
        {"aggregate_type": "Order", "event_type": "OrderCreated",
         "data": {"customer_id": "c-1", "items": [line], "total": "1.00"}},
        {"aggregate_type": "Order", "event_type": "OrderShipped",
         "data": {"tracking_number": "T\u{0}X", "carrier": "DHL", "items": [line], "total": "1.00"}},
    ]});
    let (status, body) = server.post("/streams/o-nul", &append).await;
    assert_eq!(status, 200, "{body}");
    let (status, created) = server
        .post(
            "/orders",
            &json!({"order_id": "o-2", "customer_id": "c-1",
                    "items": [{"product_id": "p-1", "quantity": 1, "price": "1.00"}]}),
        )
        .await;
    assert_eq!(status, 201);
    let position = created["position"].as_u64().unwrap();
    let (status, body) =
        server.get(&format!("/orders/o-2?min_position={position}&wait_ms=20000")).await;
    assert_eq!(status, 200, "the projection moved past the event: {body}");
    let (status, ready) = server.get("/health/ready").await;
    assert_eq!((status, ready.get("stalled")), (200, None), "{ready}");
    let (_, letters) = server.get("/admin/dlq?projection=order_summary").await;
    let letters = letters.as_array().unwrap().clone();
    match backend {
        // Stored as is on the embedded store; refused, so dead-lettered, on PostgreSQL.
        Backend::Sqlite => assert!(letters.is_empty(), "{letters:?}"),
        Backend::Postgres => {
            assert_eq!(letters.len(), 1, "{letters:?}");
            assert_eq!(letters[0]["aggregate_id"], "o-nul");
        }
    }
}
