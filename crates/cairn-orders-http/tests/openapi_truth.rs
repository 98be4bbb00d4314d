//! What schemathesis found (docs/schemathesis.md), held as regression tests: the server
//! answers what the OpenAPI document allows, refuses what it forbids, and the document
//! links an answer to the reads that need it.

mod support;

use cairn_testkit::Backend;
use serde_json::{Value, json};
use support::TestServer;

cairn_testkit::backend_tests!(
    a_whole_float_is_an_integer_in_every_body,
    a_backward_read_from_version_0_is_an_empty_last_page,
    an_idempotency_key_replays_only_its_own_command_on_its_own_aggregate,
    a_creating_command_refused_on_its_own_is_refused_even_with_a_used_key,
    the_document_links_answers_to_reads_and_declares_what_the_server_checks,
);

async fn post_keyed(s: &TestServer, path: &str, key: &str, body: Value) -> (u16, Value) {
    let r =
        s.client.post(s.url(path)).header("Idempotency-Key", key).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn a_whole_float_is_an_integer_in_every_body(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, r) = s.post("/inventory/p-float/restock", &json!({"quantity": 2.0})).await;
    assert_eq!(status, 200, "{r}");
    let body = json!({"customer_id": "c-1", "items": [{"product_id": "p-float", "quantity": 1.0, "price": 3}]});
    let (status, r) = s.post("/orders", &body).await;
    assert_eq!(status, 201, "{r}");
    let append = json!({"expected_version": 0.0, "events": [
        {"aggregate_type": "Ledger", "event_type": "Opened", "data": {}}]});
    let (status, r) = s.post("/streams/ledger-float", &append).await;
    assert_eq!(status, 200, "{r}");
    // A fraction is still no integer.
    let (status, r) = s.post("/inventory/p-float/restock", &json!({"quantity": 2.5})).await;
    assert_eq!((status, r["error"].clone()), (400, json!("bad_request")), "{r}");
    let append = json!({"expected_version": 1.5, "events": [
        {"aggregate_type": "Ledger", "event_type": "Opened", "data": {}}]});
    assert_eq!(s.post("/streams/ledger-float", &append).await.0, 400);
}

async fn a_backward_read_from_version_0_is_an_empty_last_page(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, _) = s.post("/streams/s-back", &support::ticks(json!(0), 3)).await;
    assert_eq!(status, 200);
    let (status, page) = s.get("/streams/s-back?direction=backward&from_version=0").await;
    assert_eq!((status, page), (200, json!({"events": [], "next_version": null})));
    let (status, page) = s.get("/streams/s-back?direction=forward&from_version=0").await;
    assert_eq!((status, page["events"].as_array().unwrap().len()), (200, 3));
    let (status, r) = s.get("/streams/no-such?direction=backward&from_version=0").await;
    assert_eq!((status, r["error"].clone()), (404, json!("not_found")), "{r}");
}

async fn an_idempotency_key_replays_only_its_own_command_on_its_own_aggregate(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, first) =
        post_keyed(&s, "/inventory/p-a/restock", "k", json!({"quantity": 1})).await;
    assert_eq!(status, 200, "{first}");
    // Another aggregate: its own command, not the first one's outcome.
    let (status, other) =
        post_keyed(&s, "/inventory/p-b/restock", "k", json!({"quantity": 1})).await;
    assert_eq!((status, other["aggregate_id"].clone()), (200, json!("p-b")), "{other}");
    // Another command: its own decision (a customer, not the restock's outcome).
    let body = json!({"customer_id": "c-k", "name": "Ada", "email": "ada@example.com"});
    let (status, customer) = post_keyed(&s, "/customers", "k", body).await;
    assert_eq!((status, customer["aggregate_id"].clone()), (201, json!("c-k")), "{customer}");
    // The same command on the same aggregate is replayed.
    let (status, again) =
        post_keyed(&s, "/inventory/p-a/restock", "k", json!({"quantity": 1})).await;
    assert_eq!((status, again), (200, first));
    let (_, all) = s.get("/all").await;
    assert_eq!(all["events"].as_array().unwrap().len(), 3, "{all}");
}

async fn a_creating_command_refused_on_its_own_is_refused_even_with_a_used_key(backend: Backend) {
    let s = TestServer::start(backend).await;
    let good = json!({"order_id": "o-k", "customer_id": "c", "items": [
        {"product_id": "p", "quantity": 1, "price": 1}]});
    let (status, first) = post_keyed(&s, "/orders", "key-1", good.clone()).await;
    assert_eq!(status, 201, "{first}");
    let bad = json!({"order_id": "o-k", "customer_id": "c", "items": [
        {"product_id": "p", "quantity": 0, "price": 1}]});
    let (status, r) = post_keyed(&s, "/orders", "key-1", bad).await;
    assert_eq!((status, r["error"].clone()), (422, json!("rule_violation")), "{r}");
    // A retry of the valid request is still the first answer.
    assert_eq!(post_keyed(&s, "/orders", "key-1", good).await, (201, first));
}

async fn the_document_links_answers_to_reads_and_declares_what_the_server_checks(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    let paths = &doc["paths"];
    // Links name their operation in OpenAPI's spelling and pass `min_position` to the reads.
    let link = &paths["/orders"]["post"]["responses"]["201"]["links"]["get_order"];
    assert_eq!(link["operationId"], "get_order", "{link}");
    assert_eq!(link["parameters"]["min_position"], "$response.body#/position", "{link}");
    let append = &paths["/streams/{aggregate_id}"]["post"]["responses"]["200"]["links"];
    assert_eq!(append["read_stream"]["operationId"], "read_stream", "{append}");
    let mut operation_ids = Vec::new();
    for (path, item) in paths.as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operation_ids.extend(operation["operationId"].as_str().map(str::to_owned));
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let schema = &parameter["schema"];
                let where_ = format!("{method} {path} {}", parameter["name"]);
                // A parameter is absent or has a value; it is never `null`.
                assert!(!schema["type"].is_array(), "{where_}: {schema}");
                // Integer query and header parameters are u64s read as digits: no int64 bound.
                if parameter["in"] != "path" {
                    assert_ne!(schema["format"], "int64", "{where_}: {schema}");
                }
                if parameter["in"] == "path" && parameter["name"] == "aggregate_id" {
                    assert_eq!(schema["pattern"], "^[A-Za-z0-9._:@-]{1,128}$", "{where_}");
                }
            }
            for response in operation["responses"].as_object().unwrap().values() {
                for link in response["links"].as_object().into_iter().flat_map(|l| l.values()) {
                    assert!(link.get("operation_id").is_none(), "{path}: {link}");
                    let target = link["operationId"].as_str().unwrap().to_owned();
                    operation_ids.push(format!("link:{target}"));
                }
            }
        }
    }
    // Every link points at an operation of the document.
    for target in operation_ids.iter().filter_map(|id| id.strip_prefix("link:")) {
        assert!(operation_ids.iter().any(|id| id == target), "a link to {target}");
    }
    let events = &doc["components"]["schemas"]["AppendBody"]["properties"]["events"];
    assert_eq!((events["minItems"].clone(), events["maxItems"].clone()), (json!(1), json!(1000)));
}
