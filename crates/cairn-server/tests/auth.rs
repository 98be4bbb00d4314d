//! #16: authentication and authorization, generated from the route table. Every route ×
//! every caller (no token, each role) gets exactly what the policy says — `401` without a
//! token, `403` for a role that lacks the route's permission, neither otherwise — on both
//! backends. Plus: revocation, `X-User-Id` only from gateways, appender prefixes, and raw
//! appends to a registered module's streams being the admin's.

mod support;

use cairn_server::auth::{AuthConfig, Role};
use cairn_server::{HttpConfig, Permission, RouteInfo};
use cairn_testkit::Backend;
use serde_json::{Value, json};
use support::TestServer;

const ADMIN: &str = "cairn_bootstrap-admin-token-for-the-matrix-test";

async fn server(backend: Backend) -> TestServer {
    let config = HttpConfig { auth: AuthConfig::required(Some(ADMIN)), ..HttpConfig::default() };
    TestServer::with_config(backend, config).await
}

async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = server.client.request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    // Streaming answers (SSE) are judged by their status alone.
    let body = if headers
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"))
    {
        Value::Null
    } else {
        response.json().await.unwrap_or(Value::Null)
    };
    (status, headers, body)
}

/// A token of `role` named `name` (with `prefixes`), created through the admin API.
async fn token(server: &TestServer, name: &str, role: Role, prefixes: &[&str]) -> String {
    let body = json!({"name": name, "role": role, "prefixes": prefixes});
    let (status, _, created) =
        call(server, "POST", "/admin/tokens", Some(ADMIN), &[], Some(&body)).await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("cairn_") && token.len() == 6 + 43, "{token}");
    token
}

/// A concrete path for a route (every parameter a harmless id nobody registered).
fn concrete(route: &RouteInfo) -> String {
    route
        .path
        .split('/')
        .map(|s| if s.starts_with('{') { "matrix-x" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// What the policy says a caller gets on a route: `Some(401)`, `Some(403)`, or `None`
/// (neither: the handler answers).
fn expected(role: Option<Role>, permission: Permission) -> Option<u16> {
    match (permission, role) {
        (Permission::Public, _) => None,
        (_, None) => Some(401),
        (permission, Some(role)) => (!role.allows(permission)).then_some(403),
    }
}

async fn matrix(backend: Backend) {
    if !backend.enabled() {
        eprintln!("{backend:?} not enabled here: skipped");
        return;
    }
    let server = server(backend).await;
    let mut callers: Vec<(Option<Role>, Option<String>)> = vec![(None, None)];
    for role in Role::ALL {
        let token = token(&server, &format!("matrix-{role}"), role, &[]).await;
        callers.push((Some(role), Some(token)));
    }
    let routes = server.routes.clone();
    let mut checked = 0;
    let mut failures = Vec::new();
    for route in &routes {
        let path = concrete(route);
        let body = (route.method != "GET" && route.method != "DELETE").then(|| json!({}));
        for (role, token) in &callers {
            let (status, headers, answer) =
                call(&server, route.method.as_str(), &path, token.as_deref(), &[], body.as_ref())
                    .await;
            let want = expected(*role, route.permission);
            let ok = match want {
                Some(401) => {
                    status == 401
                        && answer["error"] == "unauthorized"
                        && headers.get("www-authenticate").is_some_and(|v| v == "Bearer")
                }
                Some(403) => status == 403 && answer["error"] == "forbidden",
                _ => status != 401 && status != 403,
            };
            if !ok {
                failures.push(format!(
                    "{} {} as {role:?}: want {want:?}, got {status} {answer}",
                    route.method, route.path
                ));
            }
            checked += 1;
        }
    }
    println!(
        "{backend:?}: authorization matrix {} routes x {} callers = {checked} checks",
        routes.len(),
        callers.len()
    );
    assert_eq!(checked, routes.len() * (Role::ALL.len() + 1));
    assert!(routes.iter().any(|r| r.module.is_some()), "module routes are in the matrix");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_sqlite() {
    matrix(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_postgres() {
    matrix(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_unknown_tokens_are_refused() {
    let server = server(Backend::Sqlite).await;
    let reader = token(&server, "alice", Role::Reader, &[]).await;
    assert_eq!(call(&server, "GET", "/all", Some(&reader), &[], None).await.0, 200);
    let (_, _, list) = call(&server, "GET", "/admin/tokens", Some(ADMIN), &[], None).await;
    let tokens = list["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].get("token").is_none() && tokens[0].get("hash").is_none(), "{list}");
    let id = tokens[0]["id"].as_str().unwrap();
    let (status, _, revoked) =
        call(&server, "DELETE", &format!("/admin/tokens/{id}"), Some(ADMIN), &[], None).await;
    assert_eq!(status, 200);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let (status, _, answer) = call(&server, "GET", "/all", Some(&reader), &[], None).await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("unauthorized")));
    let forged = format!("{reader}x");
    assert_eq!(call(&server, "GET", "/all", Some(&forged), &[], None).await.0, 401);
    assert_eq!(call(&server, "DELETE", "/admin/tokens/nope", Some(ADMIN), &[], None).await.0, 404);
    // The probes never need a token.
    assert_eq!(call(&server, "GET", "/health/live", None, &[], None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_name_is_the_user_id_unless_a_gateway_says_otherwise() {
    let server = server(Backend::Sqlite).await;
    let writer = token(&server, "bob", Role::Writer, &[]).await;
    let gateway = token(&server, "edge", Role::Gateway, &[]).await;
    let place = json!({"customer_id": "c-1"});
    let mut ids = Vec::new();
    for (token, claimed) in
        [(&writer, Some("mallory")), (&gateway, Some("carol")), (&gateway, None)]
    {
        let headers: Vec<(&str, &str)> = claimed.iter().map(|c| ("X-User-Id", *c)).collect();
        let (status, _, answer) =
            call(&server, "POST", "/orders", Some(token), &headers, Some(&place)).await;
        assert_eq!(status, 201, "{answer}");
        ids.push(answer["aggregate_id"].as_str().unwrap().to_owned());
    }
    let mut users = Vec::new();
    for id in &ids {
        let (_, _, page) =
            call(&server, "GET", &format!("/streams/{id}"), Some(&writer), &[], None).await;
        users.push(page["events"][0]["metadata"]["user_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(users, ["bob", "carol", "edge"], "a writer's claim is replaced by its name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appenders_keep_to_their_prefixes_and_off_module_streams() {
    let server = server(Backend::Sqlite).await;
    let appender = token(&server, "importer", Role::Appender, &["legacy-"]).await;
    let event = |aggregate_type: &str| {
        json!({"expected_version": "any",
               "events": [{"aggregate_type": aggregate_type, "event_type": "Imported", "data": {}}]})
    };
    let (status, _, answer) =
        call(&server, "POST", "/streams/legacy-1", Some(&appender), &[], Some(&event("Legacy")))
            .await;
    assert_eq!(status, 200, "{answer}");
    let (status, _, answer) =
        call(&server, "POST", "/streams/other-1", Some(&appender), &[], Some(&event("Legacy")))
            .await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("forbidden")), "outside its prefix");
    let (status, _, answer) =
        call(&server, "POST", "/streams/legacy-2", Some(&appender), &[], Some(&event("Order")))
            .await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("forbidden")), "a module's stream");
    let body = json!({"name": "", "role": "reader"});
    assert_eq!(call(&server, "POST", "/admin/tokens", Some(ADMIN), &[], Some(&body)).await.0, 400);
    // A malformed X-User-Id stays a 400, whoever sends it.
    let writer = token(&server, "w", Role::Writer, &[]).await;
    let place = json!({"customer_id": "c-1"});
    let headers = [("X-User-Id", " ")];
    let (status, _, answer) =
        call(&server, "POST", "/orders", Some(&writer), &headers, Some(&place)).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("bad_request")));
}
