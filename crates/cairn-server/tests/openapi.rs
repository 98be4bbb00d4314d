//! Contract §6 `GET /openapi.json`: an OpenAPI 3 document that documents every route of
//! the router, with every method, and nothing the router does not serve.

mod support;

use std::collections::BTreeSet;

use cairn_testkit::Backend;
use serde_json::Value;
use support::TestServer;

cairn_testkit::backend_tests!(
    every_route_of_the_router_is_documented_with_every_method,
    every_schema_the_document_refers_to_is_in_it,
    every_route_in_the_table_is_served_by_the_router,
);

/// A server of the Order module and the generic-route `Counter` module, so both
/// hand-written and generic routes are held to the document.
async fn server(backend: Backend) -> TestServer {
    let modules = vec![cairn_orders_http::module(), support::counter::plain()];
    TestServer::with_modules(backend, cairn_server::HttpConfig::default(), modules).await
}

/// Every `(method, path)` the document declares.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete", "options", "head", "patch", "trace"] {
            if item.get(method).is_some() {
                out.insert((method.to_owned(), path.clone()));
            }
        }
    }
    out
}

/// Every `(method, path)` the router serves: `RunningServer::routes` lists what the router
/// is built from.
fn routed(s: &TestServer) -> BTreeSet<(String, String)> {
    s.routes.iter().map(|r| (r.method.as_str().to_lowercase(), r.path.clone())).collect()
}

async fn every_route_of_the_router_is_documented_with_every_method(backend: Backend) {
    let s = server(backend).await;
    let r = s.client.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"].to_str().unwrap().starts_with("application/json"),
        "{:?}",
        r.headers()
    );
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);

    let documented = documented(&doc);
    let routed = routed(&s);
    assert_eq!(routed.len(), s.routes.len(), "a route is declared twice");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(undocumented.is_empty(), "routes without a #[utoipa::path]: {undocumented:?}");
    let phantom: Vec<_> = documented.difference(&routed).collect();
    assert!(phantom.is_empty(), "documented but not routed: {phantom:?}");
    assert!(routed.contains(&("get".to_owned(), "/openapi.json".to_owned())));

    for (method, path) in &routed {
        let op = &doc["paths"][path][method];
        // Every `{param}` of the path is a declared path parameter.
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str())
            .collect();
        let in_path: BTreeSet<&str> =
            path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}')).collect();
        assert_eq!(declared, in_path, "{method} {path}: path parameters");
        // A success response, and the contract's §7 error shape for everything else.
        let responses = op["responses"].as_object().expect("responses");
        assert!(responses.keys().any(|k| k.starts_with('2')), "{method} {path}: no 2xx");
        assert_eq!(
            op["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error",
            "{method} {path}: default error response"
        );
    }
}

/// Collects every `$ref` in the document.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.extend(v.as_str());
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

async fn every_schema_the_document_refers_to_is_in_it(backend: Backend) {
    let s = server(backend).await;
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for r in found {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r}"));
        assert!(doc["components"]["schemas"].get(name).is_some(), "dangling {r}");
    }
    let error = &doc["components"]["schemas"]["Error"];
    let required: BTreeSet<&str> =
        error["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(required, BTreeSet::from(["error", "message"]), "{error}");
}

async fn every_route_in_the_table_is_served_by_the_router(backend: Backend) {
    // The routes build the router, so this holds by construction; it guards the listing
    // (e.g. a route listed under one method and served under another).
    let s = server(backend).await;
    for (method, path) in routed(&s) {
        if path.ends_with("/subscribe") {
            continue; // an endless SSE stream; its method is checked by the document test
        }
        let concrete = path.replace('{', "x-").replace('}', "");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = s.client.request(method.clone(), s.url(&concrete)).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_ne!(body["error"], "method_not_allowed", "{method} {concrete}: {body}");
        let unrouted = body["message"].as_str().is_some_and(|m| m.starts_with("no route for"));
        assert!(!unrouted, "{method} {concrete}: {status} {body}");
    }
}

#[test]
fn the_router_is_built_only_from_the_listed_routes() {
    // A `.route(` or a second `Router::new()` anywhere but `routes::router` would escape
    // `RunningServer::routes` and so the document test: the router is assembled in one loop.
    let router_source = include_str!("../src/routes/mod.rs");
    let calls: Vec<&str> = router_source.lines().filter(|l| l.contains(".route(")).collect();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert!(calls[0].contains("app.route(path, handler)"), "{calls:#?}");
    let sources = [
        router_source,
        include_str!("../src/lib.rs"),
        include_str!("../src/server.rs"),
        include_str!("../src/module.rs"),
        include_str!("../src/routes/admin.rs"),
        include_str!("../src/routes/streams.rs"),
        include_str!("../src/routes/health.rs"),
        include_str!("../src/routes/openapi.rs"),
        include_str!("../src/generic.rs"),
    ];
    let routers: usize = sources.iter().map(|s| s.matches("Router::new()").count()).sum();
    assert_eq!(routers, 1, "one router, in routes::router");
    for other in [".nest(", ".merge(", ".route_service(", ".nest_service("] {
        assert!(!sources.iter().any(|s| s.contains(other)), "a router uses {other}: add a Route");
    }
}
