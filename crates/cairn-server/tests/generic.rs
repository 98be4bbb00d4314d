//! Generic routes (`cairn_server::generic`): a module made only of them (the `Counter`
//! module in `support/counter.rs`) answers with the contract's headers, statuses and
//! error codes like the hand-written Order routes, its consumers are operated like
//! theirs, and its routes are documented. Build-time refusals are checked at the end.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::Method;
use cairn_cqrs::{Aggregate, DomainError, Existence};
use cairn_server::generic::{CommandRoute, EventsRoute, ReadModelRoute, StateRoute};
use cairn_server::{BuildError, HttpConfig, Module, Server, Stores};
use cairn_testkit::Backend;
use serde_json::{Value, json};
use support::TestServer;
use support::counter::{self, Add, Counter, CounterCommand};

cairn_testkit::backend_tests!(
    commands_answer_201_200_404_409_422_and_400,
    if_match_runs_a_command_only_at_that_version,
    an_idempotency_key_replays_the_first_answer_and_appends_once,
    an_idempotency_key_is_scoped_fingerprinted_and_replays_refusals,
    the_correlation_and_user_ids_land_in_the_events_metadata,
    an_oversized_body_is_413,
    a_document_waits_for_min_position_and_answers_504_when_the_projection_lags,
    a_list_filters_on_indexed_fields_and_pages_with_after,
    the_state_route_answers_now_at_a_version_and_as_of_a_time,
    the_events_route_pages_the_stream_and_hides_other_aggregates_streams,
    the_modules_consumers_are_listed_rebuilt_and_measured,
    an_event_the_projection_refuses_is_dead_lettered_and_retried,
    the_openapi_document_describes_the_generic_routes,
);

async fn start(backend: Backend) -> TestServer {
    TestServer::with_modules(backend, HttpConfig::default(), vec![counter::plain()]).await
}

/// Sends `request`, answering status, headers and JSON body.
async fn send(request: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = request.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

fn projection_position(headers: &reqwest::header::HeaderMap) -> u64 {
    headers["x-projection-position"].to_str().unwrap().parse().unwrap()
}

/// Creates counter `id` labelled `label`; answers the command's position.
async fn create(s: &TestServer, id: &str, label: &str) -> u64 {
    let (status, body) = s.post("/counters", &json!({"counter_id": id, "label": label})).await;
    assert_eq!(status, 201, "{body}");
    body["position"].as_u64().unwrap()
}

async fn add(s: &TestServer, id: &str, n: i64) -> u64 {
    let (status, body) = s.post(&format!("/counters/{id}/add"), &json!({ "n": n })).await;
    assert_eq!(status, 200, "{body}");
    body["position"].as_u64().unwrap()
}

async fn commands_answer_201_200_404_409_422_and_400(backend: Backend) {
    let s = start(backend).await;
    let (status, body) =
        s.post("/counters", &json!({"counter_id": "c-1", "label": "apples"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!((body["aggregate_id"].as_str(), body["version"].as_u64()), (Some("c-1"), Some(1)));
    assert!(body["position"].is_u64(), "{body}");

    // No id in the body: one is minted with the route's prefix.
    let (status, body) = s.post("/counters", &json!({"label": "pears"})).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["aggregate_id"].as_str().unwrap().starts_with("ctr-"), "{body}");

    let (status, body) = s.post("/counters", &json!({"counter_id": "c-1", "label": "again"})).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("wrong_expected_version")), "{body}");

    let (status, body) = s.post("/counters/c-1/add", &json!({"n": 2})).await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(2)), "{body}");

    let (status, body) = s.post("/counters/c-1/add", &json!({"n": 0})).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("rule_violation")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("at least 1"), "{body}");
    let (status, body) = s.post("/counters", &json!({"label": ""})).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("rule_violation")), "{body}");

    let (status, body) = s.post("/counters/nope/add", &json!({"n": 1})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = s.post("/counters/nope/reset", &json!({})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");

    for bad in ["{not json", "", r#"{"n": "two"}"#, "[]"] {
        let (status, body) = s.post_raw("/counters/c-1/add", bad).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{bad:?}: {body}");
    }
    let (status, body) =
        s.post("/counters", &json!({"counter_id": "bad id/x", "label": "x"})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, body) = s.post("/counters/%20bad%20/add", &json!({"n": 1})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");

    // A command without a body never reads it: garbage is as good as nothing.
    let (status, body) = s.post_raw("/counters/c-1/reset", "{garbage").await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(3)), "{body}");
    let (status, state) = s.get("/counters/c-1/state").await;
    assert_eq!((status, state["state"]["value"].as_i64()), (200, Some(0)), "{state}");
}

async fn if_match_runs_a_command_only_at_that_version(backend: Backend) {
    let s = start(backend).await;
    create(&s, "c-im", "x").await;
    add(&s, "c-im", 1).await;
    let url = s.url("/counters/c-im/add");
    let (status, _, body) =
        send(s.client.post(&url).header("if-match", "1").json(&json!({"n": 1}))).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("wrong_expected_version")), "{body}");
    assert_eq!((body["expected"].as_u64(), body["actual"].as_u64()), (Some(1), Some(2)), "{body}");
    let (status, _, body) =
        send(s.client.post(&url).header("if-match", "\"2\"").json(&json!({"n": 1}))).await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(3)), "{body}");
    let (status, _, body) =
        send(s.client.post(&url).header("if-match", "three").json(&json!({"n": 1}))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
}

async fn an_idempotency_key_replays_the_first_answer_and_appends_once(backend: Backend) {
    let s = start(backend).await;
    // A minted id: the replay answers the first id, it does not mint a second counter.
    let create = || {
        s.client
            .post(s.url("/counters"))
            .header("idempotency-key", "k-create")
            .json(&json!({"label": "l"}))
    };
    let (status, _, first) = send(create()).await;
    assert_eq!(status, 201, "{first}");
    let (status, _, again) = send(create()).await;
    assert_eq!((status, &again), (201, &first));
    let id = first["aggregate_id"].as_str().unwrap().to_owned();

    let add = || {
        s.client
            .post(s.url(&format!("/counters/{id}/add")))
            .header("idempotency-key", "k-add")
            .json(&json!({"n": 5}))
    };
    let (status, _, first) = send(add()).await;
    assert_eq!((status, first["version"].as_u64()), (200, Some(2)), "{first}");
    let (status, _, again) = send(add()).await;
    assert_eq!((status, &again), (200, &first));

    let (status, page) = s.get(&format!("/counters/{id}/events")).await;
    assert_eq!(status, 200, "{page}");
    let types: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["CounterCreated", "CounterAdded"]);
    let (_, state) = s.get(&format!("/counters/{id}/state")).await;
    assert_eq!(state["state"]["value"], 5, "{state}");
}

async fn an_idempotency_key_is_scoped_fingerprinted_and_replays_refusals(backend: Backend) {
    let s = start(backend).await;
    create(&s, "c-key", "x").await;
    let keyed = |path: &str, key: &str, user: &str, body: Value| {
        s.client
            .post(s.url(path))
            .header("idempotency-key", key)
            .header("x-user-id", user)
            .json(&body)
    };
    let (status, _, first) = send(keyed("/counters/c-key/add", "k", "ada", json!({"n": 5}))).await;
    assert_eq!(status, 200, "{first}");
    // Same key, same body, key order and spacing aside: the replay.
    let (status, _, again) = send(keyed("/counters/c-key/add", "k", "ada", json!({"n": 5}))).await;
    assert_eq!((status, &again), (200, &first));
    // Same key, another body: refused, nothing appended.
    let (status, _, key_clash) =
        send(keyed("/counters/c-key/add", "k", "ada", json!({"n": 6}))).await;
    assert_eq!(
        (status, key_clash["error"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{key_clash}"
    );
    // Another caller, another route, another aggregate: each a new command.
    let (status, _, other) = send(keyed("/counters/c-key/add", "k", "bob", json!({"n": 5}))).await;
    assert_eq!((status, other["version"].as_u64()), (200, Some(3)), "{other}");
    let (status, _, reset) = send(keyed("/counters/c-key/reset", "k", "ada", json!({}))).await;
    assert_eq!((status, reset["version"].as_u64()), (200, Some(4)), "{reset}");
    create(&s, "c-key-2", "y").await;
    let (status, _, elsewhere) =
        send(keyed("/counters/c-key-2/add", "k", "ada", json!({"n": 5}))).await;
    assert_eq!((status, elsewhere["version"].as_u64()), (200, Some(2)), "{elsewhere}");

    // A refusal is the key's first outcome: the same request after the state changed
    // (so that it would now be accepted) gets the same 422 again, and appends nothing.
    create(&s, "c-ref", "z").await;
    let (status, _, _) = send(keyed("/counters/c-ref/add", "k0", "ada", json!({"n": 10}))).await;
    assert_eq!(status, 200);
    let big = json!({ "n": i64::MAX - 5 });
    let (status, _, refused) =
        send(keyed("/counters/c-ref/add", "k-big", "ada", big.clone())).await;
    assert_eq!((status, refused["error"].as_str()), (422, Some("rule_violation")), "{refused}");
    let (status, _, _) = send(keyed("/counters/c-ref/reset", "k-reset", "ada", json!({}))).await;
    assert_eq!(status, 200);
    let (status, _, replayed) = send(keyed("/counters/c-ref/add", "k-big", "ada", big)).await;
    // The same answer, but each response has its own request id.
    let without_request_id = |mut v: Value| {
        assert!(v["request_id"].is_string(), "{v}");
        v.as_object_mut().map(|o| o.remove("request_id"));
        v
    };
    assert_eq!((status, without_request_id(replayed)), (422, without_request_id(refused)));
    let (_, state) = s.get("/counters/c-ref/state").await;
    assert_eq!(state["state"]["value"], 0, "{state}");
}

async fn the_correlation_and_user_ids_land_in_the_events_metadata(backend: Backend) {
    let s = start(backend).await;
    create(&s, "c-corr", "x").await;
    let (status, _, body) = send(
        s.client
            .post(s.url("/counters/c-corr/add"))
            .header("x-correlation-id", "corr-42")
            .header("x-user-id", "ada")
            .json(&json!({"n": 1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, page) = s.get("/counters/c-corr/events?from_version=2").await;
    let metadata = &page["events"][0]["metadata"];
    assert_eq!(metadata["correlation_id"], "corr-42", "{page}");
    assert_eq!(metadata["user_id"], "ada", "{page}");
    // Without the header, the command's own id correlates (never absent).
    let (_, page) = s.get("/counters/c-corr/events").await;
    assert!(page["events"][0]["metadata"]["correlation_id"].is_string(), "{page}");
}

async fn an_oversized_body_is_413(backend: Backend) {
    let config = HttpConfig { body_limit_bytes: 64, ..HttpConfig::default() };
    let s = TestServer::with_modules(backend, config, vec![counter::plain()]).await;
    let label = "x".repeat(200);
    let (status, body) = s.post("/counters", &json!({"label": label})).await;
    assert_eq!((status, body["error"].as_str()), (413, Some("payload_too_large")), "{body}");
    create(&s, "c-small", "x").await;
}

async fn a_document_waits_for_min_position_and_answers_504_when_the_projection_lags(
    backend: Backend,
) {
    let s = start(backend).await;
    create(&s, "c-ryw", "x").await;
    let position = add(&s, "c-ryw", 3).await;
    let (status, headers, doc) =
        send(s.client.get(s.url(&format!("/counters/c-ryw?min_position={position}")))).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!((doc["value"].as_i64(), doc["parity"].as_str()), (Some(3), Some("odd")), "{doc}");
    assert!(projection_position(&headers) >= position);
    let (status, headers, doc) =
        send(s.client.get(s.url("/counters/c-ryw")).header("x-min-position", position.to_string()))
            .await;
    assert_eq!((status, doc["value"].as_i64()), (200, Some(3)), "{doc}");
    assert!(projection_position(&headers) >= position);

    let (status, body) = s.get("/counters/c-ryw?min_position=-1").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, body) = s.get(&format!("/counters/nope?min_position={position}")).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");

    // Paused, the projection cannot reach the next write: the wait ends in a 504.
    let (status, row) = s.post("/admin/projections/counts/pause", &json!({})).await;
    assert_eq!(status, 200, "{row}");
    let later = add(&s, "c-ryw", 1).await;
    let (status, headers, body) =
        send(s.client.get(s.url(&format!("/counters/c-ryw?min_position={later}&wait_ms=200"))))
            .await;
    assert_eq!((status, body["error"].as_str()), (504, Some("projection_lagging")), "{body}");
    assert!(projection_position(&headers) < later);
    let (status, _, body) = send(
        s.client.get(s.url("/counters?wait_ms=100")).header("x-min-position", later.to_string()),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (504, Some("projection_lagging")), "{body}");
    let (_, list) = s.get("/admin/projections").await;
    let counts = list.as_array().unwrap().iter().find(|p| p["name"] == "counts").unwrap();
    assert_eq!(counts["status"], "paused", "{counts}");

    let (status, row) = s.post("/admin/projections/counts/resume", &json!({})).await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(row["status"], "running", "a resumed projection says so at once: {row}");
    let (status, headers, doc) =
        send(s.client.get(s.url(&format!("/counters/c-ryw?min_position={later}&wait_ms=10000"))))
            .await;
    assert_eq!(
        (status, doc["value"].as_i64(), doc["parity"].as_str()),
        (200, Some(4), Some("even"))
    );
    assert!(projection_position(&headers) >= later);
}

async fn a_list_filters_on_indexed_fields_and_pages_with_after(backend: Backend) {
    let s = start(backend).await;
    let mut last = 0;
    for i in 0..5_i64 {
        let id = format!("c-list-{i}");
        create(&s, &id, if i < 2 { "low" } else { "high" }).await;
        last = add(&s, &id, i + 1).await;
    }
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["counter_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, headers, page) =
        send(s.client.get(s.url(&format!("/counters?parity=odd&min_position={last}")))).await;
    assert_eq!(status, 200, "{page}");
    assert!(projection_position(&headers) >= last);
    assert_eq!(ids(&page), ["c-list-0", "c-list-2", "c-list-4"]);
    assert_eq!(page["next"], Value::Null);
    let (_, page) = s.get("/counters?parity=odd&label=low").await;
    assert_eq!(ids(&page), ["c-list-0"]);
    // An unknown parameter is not a filter: it filters nothing.
    let (_, page) = s.get("/counters?value=3").await;
    assert_eq!(ids(&page).len(), 5, "{page}");

    let mut seen = Vec::new();
    let mut url = "/counters?limit=2".to_owned();
    for _ in 0..5 {
        let (status, page) = s.get(&url).await;
        assert_eq!(status, 200, "{page}");
        assert!(page["items"].as_array().unwrap().len() <= 2);
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => url = format!("/counters?limit=2&after={next}"),
            None => break,
        }
    }
    let all: Vec<String> = (0..5).map(|i| format!("c-list-{i}")).collect();
    assert_eq!(seen, all);
    let (status, body) = s.get("/counters?limit=many").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
}

async fn the_state_route_answers_now_at_a_version_and_as_of_a_time(backend: Backend) {
    let s = start(backend).await;
    create(&s, "c-st", "pears").await;
    add(&s, "c-st", 2).await;
    add(&s, "c-st", 3).await;
    let (status, now) = s.get("/counters/c-st/state").await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(now["aggregate_id"], "c-st");
    assert_eq!(now["aggregate_type"], "Counter");
    assert_eq!((now["version"].as_u64(), now["current_version"].as_u64()), (Some(3), Some(3)));
    assert_eq!(now["state"], json!({"label": "pears", "value": 5}));
    assert!(now["as_of"].is_string(), "{now}");

    let (status, then) = s.get("/counters/c-st/state?version=2").await;
    assert_eq!(status, 200, "{then}");
    assert_eq!((then["version"].as_u64(), then["current_version"].as_u64()), (Some(2), Some(3)));
    assert_eq!(then["state"]["value"], 2);

    let (_, page) = s.get("/counters/c-st/events").await;
    let second = page["events"][1]["timestamp"].as_str().unwrap().to_owned();
    let (status, at) = s.get(&format!("/counters/c-st/state?as_of={second}")).await;
    assert_eq!((status, at["version"].as_u64()), (200, Some(2)), "{at}");

    let (status, body) = s.get("/counters/c-st/state?version=9").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("counter has no version 9"), "{body}");
    let (status, body) = s.get("/counters/c-st/state?as_of=2000-01-01T00:00:00Z").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = s.get(&format!("/counters/c-st/state?version=2&as_of={second}")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, body) = s.get("/counters/c-st/state?as_of=yesterday").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, body) = s.get("/counters/nope/state").await;
    assert_eq!((status, body["message"].as_str()), (404, Some("no such counter")), "{body}");
}

async fn the_events_route_pages_the_stream_and_hides_other_aggregates_streams(backend: Backend) {
    let s = start(backend).await;
    create(&s, "c-ev", "x").await;
    add(&s, "c-ev", 1).await;
    add(&s, "c-ev", 2).await;
    let (status, page) = s.get("/counters/c-ev/events?limit=2").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_version"], 3);
    let (_, page) = s.get("/counters/c-ev/events?direction=backward&limit=1").await;
    assert_eq!(page["events"][0]["version"], 3, "{page}");

    // Another aggregate type's stream, appended through the store API.
    let (status, body) = s.post("/streams/l-1", &support::ticks(json!(0), 2)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.get("/counters/l-1/events").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = s.get("/counters/l-1/state").await;
    assert_eq!((status, body["message"].as_str()), (404, Some("no such counter")), "{body}");
    let (status, body) = s.get("/counters/nope/events").await;
    assert_eq!((status, body["message"].as_str()), (404, Some("no such counter")), "{body}");
}

/// Waits until `check` holds on `GET path`, boundedly.
async fn eventually(s: &TestServer, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = s.get(path).await;
        if check(&body) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn the_modules_consumers_are_listed_rebuilt_and_measured(backend: Backend) {
    let s = start(backend).await;
    create(&s, "c-op", "x").await;
    let position = add(&s, "c-op", 1).await;
    let (status, list) = s.get("/admin/projections").await;
    assert_eq!(status, 200);
    let rows: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rows,
        [("cairn_streams", "projection"), ("counts", "projection"), ("echo", "process_manager")]
    );

    let seen = |b: &Value| b.as_array().is_some_and(|a| a.len() == 1 && a[0]["status"] == "seen");
    let instances = eventually(&s, "/admin/process-managers/echo?status=seen", seen).await;
    assert!(seen(&instances), "{instances}");
    let (status, _) = s.post("/counters/c-op/reset", &json!({})).await;
    assert_eq!(status, 200);
    let reset = |b: &Value| b.as_array().is_some_and(|a| a.len() == 1 && a[0]["status"] == "reset");
    let instances = eventually(&s, "/admin/process-managers/echo?status=reset", reset).await;
    assert!(reset(&instances), "{instances}");
    assert_eq!(s.get("/admin/process-managers/echo?status=seen").await.1, json!([]));

    let (status, before) = s.get(&format!("/counters/c-op?min_position={position}")).await;
    assert_eq!(status, 200, "{before}");
    let (status, body) = s.post("/admin/projections/counts/rebuild", &json!({})).await;
    assert_eq!((status, body["status"].clone()), (202, json!("rebuilding")), "{body}");
    let list = eventually(&s, "/admin/projections", |l| {
        l.as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "counts" && p["status"] == "running" && p["rebuild"].is_null())
    })
    .await;
    let counts = list.as_array().unwrap().iter().find(|p| p["name"] == "counts").unwrap();
    assert_eq!((&counts["status"], &counts["rebuild"]), (&json!("running"), &Value::Null));
    // One process: it leads every consumer, since it took them, in its first term.
    for row in list.as_array().unwrap() {
        let leader = &row["leader"];
        assert_eq!((&leader["leading"], &leader["fence"]), (&json!(true), &json!(1)), "{row}");
        let since = leader["since"].as_str().unwrap_or_default();
        assert!(cairn_core::timestamp::Timestamp::parse_rfc3339(since).is_ok(), "{row}");
    }
    let (status, after) = s.get("/counters/c-op").await;
    assert_eq!((status, after["label"].as_str()), (200, Some("x")), "{after}");
    assert_eq!(after["value"], 0, "the rebuilt model has every event: {after}");

    let metrics = s.client.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        r#"cairn_projection_lag{projection="counts"}"#,
        r#"cairn_projection_position{projection="counts"}"#,
        r#"cairn_projection_dlq_depth{projection="counts"}"#,
        r#"cairn_process_manager_instances{process_manager="echo",status="reset"}"#,
        r#"cairn_consumer_leader{consumer="counts"} 1"#,
        r#"cairn_consumer_leader{consumer="echo"} 1"#,
        r#"cairn_consumer_fence{consumer="counts"} 1"#,
        r#"cairn_consumer_leader_since_seconds{consumer="counts"}"#,
        r#"cairn_commands_total{command="create_counter",outcome="ok"}"#,
        r#"cairn_commands_total{command="reset_counter",outcome="ok"}"#,
    ] {
        assert!(metrics.contains(needle), "/metrics lacks {needle}");
    }
}

async fn an_event_the_projection_refuses_is_dead_lettered_and_retried(backend: Backend) {
    let refuse = Arc::new(AtomicBool::new(true));
    let module = counter::module(Arc::clone(&refuse));
    let s = TestServer::with_modules(backend, HttpConfig::default(), vec![module]).await;
    create(&s, "c-poison", counter::POISON).await;
    let good = create(&s, "c-good", "fine").await;
    // The projection moved past the refused event instead of stalling on it.
    let (status, doc) = s.get(&format!("/counters/c-good?min_position={good}&wait_ms=20000")).await;
    assert_eq!(status, 200, "{doc}");
    let letters = eventually(&s, "/admin/dlq?projection=counts", |b| {
        b.as_array().is_some_and(|l| !l.is_empty())
    })
    .await;
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["aggregate_id"], "c-poison");
    let (status, _) = s.get("/counters/c-poison").await;
    assert_eq!(status, 404);

    refuse.store(false, Ordering::SeqCst);
    let id = letters[0]["id"].as_i64().unwrap();
    let (status, body) = s.post(&format!("/admin/dlq/{id}/retry"), &json!({})).await;
    assert_eq!((status, body["remaining"].as_u64()), (200, Some(0)), "{body}");
    let (status, doc) = s.get("/counters/c-poison").await;
    assert_eq!((status, doc["label"].as_str()), (200, Some(counter::POISON)), "{doc}");
    assert_eq!(s.get("/admin/dlq?projection=counts").await.1, json!([]));
}

async fn the_openapi_document_describes_the_generic_routes(backend: Backend) {
    let s = start(backend).await;
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    let schemas = &doc["components"]["schemas"];
    let create = &doc["paths"]["/counters"]["post"];
    assert_eq!(create["operationId"], "create_counter", "{create}");
    assert_eq!(create["tags"], json!(["counters"]));
    assert_eq!(create["summary"], "Creates a counter");
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Create"
    );
    assert!(schemas["Create"]["properties"]["label"].is_object(), "{}", schemas["Create"]);
    assert!(create["responses"]["201"].is_object() && create["responses"]["422"].is_object());

    let add = &doc["paths"]["/counters/{aggregate_id}/add"]["post"];
    let params: Vec<(String, String)> = add["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["in"].as_str().unwrap().to_owned(), p["name"].as_str().unwrap().to_owned()))
        .collect();
    for (place, name) in [
        ("path", "aggregate_id"),
        ("header", "If-Match"),
        ("header", "Idempotency-Key"),
        ("header", "X-Correlation-Id"),
        ("header", "X-User-Id"),
    ] {
        assert!(params.contains(&(place.to_owned(), name.to_owned())), "{name}: {params:?}");
    }
    for code in ["200", "400", "404", "409", "422"] {
        assert!(add["responses"][code].is_object(), "add: no {code}");
    }
    assert_eq!(
        add["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CommandOutcome"
    );
    assert!(schemas["Add"].is_object() && schemas["CommandOutcome"].is_object());
    assert!(doc["paths"]["/counters/{aggregate_id}/reset"]["post"]["requestBody"].is_null());

    let list = &doc["paths"]["/counters"]["get"];
    let names: Vec<&str> =
        list["parameters"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    for name in ["parity", "label", "limit", "after", "min_position", "wait_ms", "X-Min-Position"] {
        assert!(names.contains(&name), "{name}: {names:?}");
    }
    assert!(list["responses"]["200"]["headers"]["X-Projection-Position"].is_object(), "{list}");
    assert!(list["responses"]["504"].is_object());
    let one = &doc["paths"]["/counters/{aggregate_id}"]["get"];
    assert_eq!(
        one["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CountRow"
    );
    assert!(schemas["CountRow"]["properties"]["parity"].is_object());
    assert!(one["responses"]["404"].is_object() && one["responses"]["504"].is_object());
    let state = &doc["paths"]["/counters/{aggregate_id}/state"]["get"];
    assert!(
        state["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["state"]
            .is_object()
    );
    let events = &doc["paths"]["/counters/{aggregate_id}/events"]["get"];
    assert_eq!(
        events["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/StreamPage"
    );
}

// Build-time refusals: a generic route that cannot work never reaches a request.

async fn build_error(module: Module) -> BuildError {
    let (opened, _place) = Backend::Sqlite.open().await;
    let stores = Stores {
        events: opened.events,
        readmodels: opened.readmodels,
        snapshots: opened.snapshots,
    };
    match Server::builder(stores).module(module).build() {
        Ok(_) => panic!("the module was accepted"),
        Err(e) => e,
    }
}

/// An aggregate without snapshots, so it renders no state.
#[derive(Default)]
struct Opaque;

impl Aggregate for Opaque {
    const TYPE: &'static str = "Opaque";
    type Event = counter::CounterEvent;
    type Command = ();

    fn apply(&mut self, _: &counter::CounterEvent) {}

    fn handle(&self, (): &()) -> Result<Vec<counter::CounterEvent>, DomainError> {
        Ok(Vec::new())
    }

    fn existence((): &()) -> Existence {
        Existence::Any
    }
}

#[tokio::test]
async fn a_state_route_on_an_aggregate_that_renders_nothing_is_refused() {
    let module = Module::builder("opaque")
        .aggregate::<Opaque>()
        .route(StateRoute::<Opaque>::new("/opaque/{aggregate_id}/state"))
        .build();
    assert_eq!(build_error(module).await, BuildError::StateNotRenderable { aggregate: "Opaque" });
}

#[tokio::test]
async fn a_read_model_route_must_name_a_projection_its_table_and_indexed_fields() {
    let base = || {
        Module::builder("c")
            .aggregate::<Counter>()
            .projection(Arc::new(counter::Counts { refuse: Arc::new(AtomicBool::new(false)) }))
    };
    let cases = [
        (ReadModelRoute::document("/x/{aggregate_id}", "nope", "counts"), "projection nope"),
        (ReadModelRoute::document("/x/{aggregate_id}", "counts", "other"), "other is not a table"),
        (ReadModelRoute::list("/x", "counts", "counts", &["value"]), "value is not an indexed"),
        (ReadModelRoute::list("/x/{aggregate_id}", "counts", "counts", &[]), "no parameter"),
        (ReadModelRoute::document("/x", "counts", "counts"), "{aggregate_id}"),
    ];
    for (route, reason) in cases {
        let error = build_error(base().route(route).build()).await;
        assert!(
            matches!(&error, BuildError::Route { path, reason: r } if path.starts_with("/x") && r.contains(reason)),
            "{reason}: {error:?}"
        );
    }
}

#[tokio::test]
async fn a_command_route_must_have_its_parameter_and_a_registered_aggregate() {
    let path_without_id =
        CommandRoute::<Counter, Add>::post("/counters/add", "add", CounterCommand::Add);
    let error =
        build_error(Module::builder("c").aggregate::<Counter>().route(path_without_id).build())
            .await;
    assert!(
        matches!(&error, BuildError::Route { reason, .. } if reason.contains("{aggregate_id}")),
        "{error:?}"
    );

    let unregistered = CommandRoute::<Counter, Add>::post(
        "/counters/{aggregate_id}/add",
        "add",
        CounterCommand::Add,
    );
    let error = build_error(Module::builder("c").route(unregistered).build()).await;
    assert!(
        matches!(&error, BuildError::Route { reason, .. } if reason.contains("aggregate Counter")),
        "{error:?}"
    );

    let events = EventsRoute::<Counter>::new("/counters/{aggregate_id}/events");
    let error = build_error(Module::builder("c").route(events).build()).await;
    assert!(matches!(&error, BuildError::Route { .. }), "{error:?}");

    let unroutable =
        CommandRoute::<Counter, Add>::post("/c/{aggregate_id}", "add", CounterCommand::Add)
            .method(Method::from_bytes(b"BREW").unwrap());
    let error =
        build_error(Module::builder("c").aggregate::<Counter>().route(unroutable).build()).await;
    assert!(
        matches!(&error, BuildError::Route { reason, .. } if reason.contains("cannot be routed")),
        "{error:?}"
    );
}
