//! Issue #16 items 3, 4, 6: `metadata.schema_version` is the server's, JSON nesting is
//! capped on every path that takes JSON, a first schema version is checked like later
//! ones, and error bodies carry a request id and no internals. Issue #17: subscriptions and
//! schemas are capped.

mod support;

use cairn_testkit::Backend;
use serde_json::{Value, json};
use support::TestServer;

cairn_testkit::backend_tests!(
    a_schema_version_the_type_does_not_have_is_refused,
    json_nested_400000_deep_is_refused_everywhere,
    a_first_schema_version_is_checked_against_stored_events,
    every_error_carries_a_request_id,
);

fn confirmed(metadata: Option<Value>) -> Value {
    let mut e = json!({"aggregate_type": "Order", "event_type": "OrderConfirmed",
        "data": {"items": [{"product_id": "p", "quantity": 1, "price": "5"}], "total": "5"}});
    if let Some(m) = metadata {
        e["metadata"] = m;
    }
    json!({"events": [e]})
}

async fn a_schema_version_the_type_does_not_have_is_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, created) = s
        .post(
            "/orders",
            &json!({"order_id": "o1", "customer_id": "c", "items": [{"product_id": "p", "quantity": 1, "price": 5}]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    // The observed poison: schema_version 0 has no upcaster.
    for bad in [json!(0), json!(99), json!(-1), json!("1"), json!(1.5)] {
        let (status, err) =
            s.post("/streams/o1", &confirmed(Some(json!({"schema_version": bad})))).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (400, Some("invalid_schema_version")),
            "{bad}: {err}"
        );
    }
    let (_, page) = s.get("/streams/o1").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "nothing stored: {page}");
    // None sent: the server stamps the current version.
    let (status, ok) = s.post("/streams/o1", &confirmed(None)).await;
    assert_eq!(status, 200, "{ok}");
    let (_, page) = s.get("/streams/o1").await;
    let stamped = &page["events"][1]["metadata"]["schema_version"];
    assert!(stamped.as_u64().is_some_and(|v| v >= 1), "{page}");
    // The current version, sent explicitly (an import), is kept.
    let (status, ok) =
        s.post("/streams/o1", &confirmed(Some(json!({"schema_version": stamped.clone()})))).await;
    assert_eq!(status, 200, "{ok}");
}

async fn json_nested_400000_deep_is_refused_everywhere(backend: Backend) {
    let s = TestServer::start(backend).await;
    let deep = format!("{}{}", "[".repeat(400_000), "]".repeat(400_000));
    let append = format!(
        r#"{{"events":[{{"aggregate_type":"Ledger","event_type":"Tick","data":{{"x":{deep}}}}}]}}"#
    );
    let schema = format!(r#"{{"version":1,"schema":{{"default":{deep}}}}}"#);
    let command = format!(r#"{{"customer_id":"c","items":{deep}}}"#);
    for (path, body, put) in [
        ("/streams/deep-1", append, false),
        ("/admin/schemas/Deep", schema, true),
        ("/orders", command, false),
    ] {
        let request = if put { s.client.put(s.url(path)) } else { s.client.post(s.url(path)) };
        let r = request.header("content-type", "application/json").body(body).send().await.unwrap();
        let status = r.status().as_u16();
        let err: Value = r.json().await.unwrap();
        assert_eq!((status, err["error"].as_str()), (400, Some("json_too_deep")), "{path}: {err}");
        assert_eq!(err["max_depth"], 128, "{err}");
    }
    assert_eq!(s.get("/streams/deep-1").await.0, 404, "nothing stored");
    // At the cap's edge an event still goes in.
    let ok = format!(
        r#"{{"events":[{{"aggregate_type":"Ledger","event_type":"Tick","data":{{"x":{}{}}}}}]}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert_eq!(s.post_raw("/streams/deep-2", ok).await.0, 200);
}

async fn a_first_schema_version_is_checked_against_stored_events(backend: Backend) {
    let s = TestServer::start(backend).await;
    let put = |t: &str, body: Value| {
        let (client, url) = (s.client.clone(), s.url(&format!("/admin/schemas/{t}")));
        async move {
            let r = client.put(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // `false` refuses every event: refused, and the type stays open.
    let (status, err) = put("Blocked", json!({"version": 1, "schema": false})).await;
    assert_eq!((status, err["error"].as_str()), (409, Some("schema_incompatible")), "{err}");
    let tick =
        json!({"events": [{"aggregate_type": "L", "event_type": "Blocked", "data": {"n": "one"}}]});
    assert_eq!(s.post("/streams/l-1", &tick).await.0, 200, "the type is not blocked");
    // A first version the stored event breaks is refused, naming it.
    let numeric = json!({"type": "object", "properties": {"n": {"type": "number"}}});
    let (status, err) = put("Blocked", json!({"version": 1, "schema": numeric})).await;
    assert_eq!((status, err["error"].as_str()), (409, Some("schema_incompatible")), "{err}");
    assert!(err["reasons"][0].as_str().unwrap().contains("l-1"), "{err}");
    let any = json!({"type": "object"});
    assert_eq!(put("Blocked", json!({"version": 1, "schema": any})).await.0, 200);
}

async fn every_error_carries_a_request_id(backend: Backend) {
    let s = TestServer::start(backend).await;
    let r = s.client.get(s.url("/streams/nope")).send().await.unwrap();
    let header = r.headers().get("x-request-id").unwrap().to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["request_id"], header.as_str(), "{body}");
    assert!(uuid::Uuid::parse_str(&header).is_ok(), "a fresh UUID: {header}");
    // A sane incoming id is kept; a malformed one replaced.
    let r = s.client.get(s.url("/nowhere")).header("x-request-id", "gw-42").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "gw-42");
    assert_eq!(r.json::<Value>().await.unwrap()["request_id"], "gw-42");
    let r = s.client.get(s.url("/nowhere")).header("x-request-id", "a b").send().await.unwrap();
    assert_ne!(r.headers()["x-request-id"], "a b");
    // Success answers carry the header too.
    let r = s.client.get(s.url("/health/live")).send().await.unwrap();
    assert!(r.headers().contains_key("x-request-id"));
}

/// Issue #17: open subscriptions are capped; the one over the cap is `429
/// too_many_subscribers`, and a closed one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_over_the_cap_are_refused_until_one_closes() {
    let config = cairn_server::HttpConfig {
        sse_subscribers_max: 2,
        sse_keep_alive_secs: 1,
        ..cairn_server::HttpConfig::default()
    };
    let s = TestServer::with_config(Backend::Sqlite, config).await;
    let open = || s.client.get(s.url("/all/subscribe")).send();
    let first = open().await.unwrap();
    let second = open().await.unwrap();
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let third = open().await.unwrap();
    assert_eq!(third.status().as_u16(), 429);
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"], "too_many_subscribers", "{body}");
    assert_eq!(body["max_subscribers"], 2, "{body}");
    // Other routes are not held by the cap.
    let (status, _) = s.get("/streams/none").await;
    assert_eq!(status, 404);
    drop(first);
    // The server notices the closed connection at its next keep-alive write.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let again = open().await.unwrap();
        if again.status().as_u16() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the closed subscription's place came back");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(second);
}

/// Issue #17: schemas are capped in size and number, and a refusal's reasons stay small
/// whatever the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_are_capped_and_their_refusals_bounded() {
    let s = TestServer::start(Backend::Sqlite).await;
    let put = |t: String, body: Value| {
        let client = s.client.clone();
        let url = s.url(&format!("/admin/schemas/{t}"));
        async move {
            let r = client.put(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status, text)
        }
    };
    // Over 64 KiB as JSON.
    let big: serde_json::Map<String, Value> =
        (0..4000).map(|i| (format!("field_{i:05}"), json!({"type": "string"}))).collect();
    let (status, text) =
        put("Big".into(), json!({"version": 1, "schema": {"type": "object", "properties": big}}))
            .await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("schema_too_large"), "{text}");
    // A change that breaks two hundred fields at once: at most 20 reasons (and a count of
    // the rest), each short, however long the field names.
    let long = "x".repeat(250);
    let props = |t: &str| -> serde_json::Map<String, Value> {
        (0..200).map(|i| (format!("{long}{i}"), json!({"type": t}))).collect()
    };
    let v1 = json!({"version": 1, "schema": {"type": "object", "properties": props("string")}});
    let (status, text) = put("Wide".into(), v1).await;
    assert_eq!(status, 200, "{text}");
    let v2 = json!({"version": 2, "schema": {"type": "object", "properties": props("integer")}});
    let (status, text) = put("Wide".into(), v2).await;
    assert_eq!(status, 409, "{}", &text[..text.len().min(500)]);
    let body: Value = serde_json::from_str(&text).unwrap();
    let reasons = body["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 21, "20 reasons and the count of the rest");
    assert!(reasons.iter().all(|r| r.as_str().unwrap().chars().count() <= 301));
    assert!(reasons[20].as_str().unwrap().contains("180 more"), "{}", reasons[20]);
    assert!(text.len() < 10_000, "the refusal is small: {} bytes", text.len());
    // Versions per type are capped at 100.
    for v in 1..=100 {
        let (status, text) =
            put("Many".into(), json!({"version": v, "schema": {"type": "object"}})).await;
        assert_eq!(status, 200, "version {v}: {text}");
    }
    let (status, text) =
        put("Many".into(), json!({"version": 101, "schema": {"type": "object"}})).await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("too_many_schemas"), "{text}");
}

/// #17: the request deadline is the router's own, so an application serving
/// `RunningServer::router` itself (here `axum::serve`) gets it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_past_the_request_timeout_gets_408_with_its_request_id() {
    use futures_util::StreamExt as _;
    let config = cairn_server::HttpConfig { request_timeout_secs: 1, ..Default::default() };
    let s = TestServer::with_config(Backend::Sqlite, config).await;
    // Under the deadline: served as ever.
    let (status, _) = s.post("/streams/quick-1", &confirmed(None)).await;
    assert_eq!(status, 200);
    // The start of a body, then nothing more.
    let stalled = futures_util::stream::once(async { Ok::<_, std::io::Error>("{\"events\": [") })
        .chain(futures_util::stream::pending());
    let started = std::time::Instant::now();
    let (status, body) = tokio::time::timeout(
        std::time::Duration::from_secs(6),
        s.post_raw("/streams/stalled-1", reqwest::Body::wrap_stream(stalled)),
    )
    .await
    .expect("no answer within the request timeout and a margin");
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"], "request_timeout", "{body}");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "{:?}", started.elapsed());
}
