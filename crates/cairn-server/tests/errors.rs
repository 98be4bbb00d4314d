//! Contract §7: every bad request gets a JSON error, and nothing stored is lost or changed.

mod support;

use cairn_server::HttpConfig;
use cairn_testkit::Backend;
use serde_json::{Value, json};
use support::{TestServer, ticks};

cairn_testkit::backend_tests!(
    bad_requests_get_json_errors_and_lose_nothing,
    oversized_bodies_get_413_before_or_while_reading,
    the_default_body_limit_is_one_mebibyte,
    an_unknown_process_manager_is_a_json_404,
);

#[allow(clippy::needless_pass_by_value)] // takes the response straight from the call
fn expect_error(status: u16, code: &str, resp: (u16, Value)) {
    assert_eq!(resp.0, status, "{}", resp.1);
    assert_eq!(resp.1["error"], code, "{}", resp.1);
    assert!(resp.1["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", resp.1);
}

async fn bad_requests_get_json_errors_and_lose_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, before) = {
        s.post("/streams/keep", &ticks(json!(0), 3)).await;
        s.get("/all").await
    };
    let event = |extra: Value| {
        let mut e = json!({"aggregate_type": "Ledger", "event_type": "Tick", "data": {}});
        e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"events": [e]})
    };
    let cases: Vec<(&str, Value)> = vec![
        ("no events", json!({"events": []})),
        ("events not a list", json!({"events": {}})),
        ("missing data", json!({"events": [{"aggregate_type": "Ledger", "event_type": "Tick"}]})),
        ("missing event_type", json!({"events": [{"aggregate_type": "Ledger", "data": {}}]})),
        (
            "number as type",
            json!({"events": [{"aggregate_type": "Ledger", "event_type": 5, "data": {}}]}),
        ),
        ("bad uuid", event(json!({"event_id": "not-a-uuid"}))),
        ("metadata not an object", event(json!({"metadata": [1, 2]}))),
        ("unknown field", event(json!({"evnt_type": "typo"}))),
        (
            "misspelt expected_version",
            json!({"expected_verison": 3, "events": ticks(json!(0), 1)["events"]}),
        ),
        (
            "negative expected_version",
            json!({"expected_version": -1, "events": ticks(json!(0), 1)["events"]}),
        ),
        (
            "unknown expected_version",
            json!({"expected_version": "maybe", "events": ticks(json!(0), 1)["events"]}),
        ),
        ("bad event type name", event(json!({"event_type": "has space"}))),
        ("empty aggregate type", event(json!({"aggregate_type": ""}))),
        ("body is an array", json!([1, 2, 3])),
        (
            "mixed aggregate types",
            json!({"events": [
            {"aggregate_type": "Ledger", "event_type": "A", "data": {}},
            {"aggregate_type": "Account", "event_type": "B", "data": {}}]}),
        ),
        (
            "repeated event id",
            json!({"events": [
            {"event_id": "6f1f6a9e-3c1d-4a57-9a0f-1d1b7c3f0a01", "aggregate_type": "Ledger", "event_type": "A", "data": {}},
            {"event_id": "6f1f6a9e-3c1d-4a57-9a0f-1d1b7c3f0a01", "aggregate_type": "Ledger", "event_type": "B", "data": {}}]}),
        ),
    ];
    for (name, body) in cases {
        let resp = s.post("/streams/keep", &body).await;
        assert_eq!(resp.0, 400, "{name}: {}", resp.1);
        expect_error(400, "bad_request", resp);
    }
    for raw in ["", "{", "{\"events\": [}", "null", "\"text\"", "{\"events\": [{\"data\": {}, }]}"]
    {
        expect_error(400, "bad_request", s.post_raw("/streams/keep", raw).await);
    }
    expect_error(400, "bad_request", s.post("/streams/bad%20id", &ticks(json!(0), 1)).await);
    expect_error(400, "bad_request", s.get(&format!("/streams/{}", "x".repeat(129))).await);
    let too_many = ticks(json!("any"), 1001);
    expect_error(400, "bad_request", s.post("/streams/keep", &too_many).await);
    expect_error(404, "not_found", s.get("/no/such/route").await);
    let r = s.client.patch(s.url("/streams/keep")).send().await.unwrap();
    let status = r.status().as_u16();
    expect_error(405, "method_not_allowed", (status, r.json().await.unwrap()));

    // The server still serves, and the log is exactly what it was.
    let (_, after) = s.get("/all").await;
    assert_eq!(before, after);
    assert_eq!(s.post("/streams/keep", &ticks(json!(3), 1)).await.0, 200);
}

async fn oversized_bodies_get_413_before_or_while_reading(backend: Backend) {
    let s = TestServer::with_config(
        backend,
        HttpConfig { body_limit_bytes: 4096, ..HttpConfig::default() },
    )
    .await;
    let big = json!({"events": [{"aggregate_type": "Ledger", "event_type": "Big", "data": {"pad": "x".repeat(5000)}}]});
    expect_error(413, "payload_too_large", s.post("/streams/big", &big).await);
    // Chunked (no Content-Length): refused once the limit is crossed while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(br#"{"events":[{"aggregate_type":"Ledger","event_type":"Big","data":{"pad":""#.to_vec()),
        Ok(vec![b'x'; 8000]),
        Ok(br#""}}]}"#.to_vec()),
    ];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    expect_error(413, "payload_too_large", s.post_raw("/streams/big", body).await);
    let (status, _) = s.get("/streams/big").await;
    assert_eq!(status, 404);
    // Just under the limit is fine.
    let ok = json!({"events": [{"aggregate_type": "Ledger", "event_type": "Small", "data": {"pad": "x".repeat(3000)}}]});
    assert_eq!(s.post("/streams/big", &ok).await.0, 200);
}

async fn the_default_body_limit_is_one_mebibyte(backend: Backend) {
    let s = TestServer::start(backend).await;
    let big = json!({"events": [{"aggregate_type": "Ledger", "event_type": "Big", "data": {"pad": "x".repeat(1024 * 1024)}}]});
    expect_error(413, "payload_too_large", s.post("/streams/big", &big).await);
    let ok = json!({"events": [{"aggregate_type": "Ledger", "event_type": "Big", "data": {"pad": "x".repeat(1000 * 1000)}}]});
    assert_eq!(s.post("/streams/big", &ok).await.0, 200);
}

/// `/admin/process-managers/{name}` is a template over the registered managers: a name
/// no manager has is the handler's own 404 (not the unknown-route fallback), in JSON,
/// while the registered one still lists its instances.
async fn an_unknown_process_manager_is_a_json_404(backend: Backend) {
    let s = TestServer::start(backend).await;
    let r = s.client.get(s.url("/admin/process-managers/no-such-manager")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(
        r.headers()["content-type"].to_str().unwrap().starts_with("application/json"),
        "{:?}",
        r.headers()
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("process manager named no-such-manager"), "{body}");
    // Its state (export and import) is refused the same way.
    let (status, body) = s.get("/admin/process-managers/no-such-manager/state").await;
    assert_eq!((status, &body["error"]), (404, &json!("not_found")), "{body}");
    // The registered manager is served by the same route.
    let (status, body) = s.get("/admin/process-managers/order-fulfillment").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.is_array(), "{body}");
}
