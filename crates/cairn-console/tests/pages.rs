//! The console in process, on both backends, through its router (no browser: the browser
//! flows are `crates/cairn/tests/console.rs`): sessions and CSRF, roles, escaping, and
//! the index behind correlation chains and process-manager histories.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cairn_server::auth::AuthConfig;
use cairn_server::{HttpConfig, Server};
use cairn_testkit::{Backend, Place};
use http_body_util::BodyExt as _;
use tokio::sync::watch;
use tower::ServiceExt as _;

const ADMIN: &str = "cairn_bootstrap-admin-token-for-the-console-tests";

struct Console {
    app: Router,
    _place: Place,
    _stop: watch::Sender<bool>,
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    location: String,
    cookies: Vec<String>,
    body: String,
}

impl Console {
    async fn start(backend: Backend) -> Self {
        let (opened, place) = backend.open().await;
        let stores = cairn_server::Stores {
            events: opened.events,
            readmodels: opened.readmodels,
            snapshots: opened.snapshots,
        };
        let orders = cairn_orders_http::module();
        let managers = orders.process_managers().to_vec();
        let server = Server::builder(stores)
            .http(HttpConfig { auth: AuthConfig::required(Some(ADMIN)), ..HttpConfig::default() })
            .module(orders)
            .module(cairn_console::module(managers))
            .build()
            .expect("the modules fit");
        let (stop, shutdown) = watch::channel(false);
        let running = server.start(shutdown).expect("the server starts");
        let console = cairn_console::router(
            running.router(),
            running.state().clone(),
            cairn_console::ConsoleConfig::default(),
        );
        Self { app: running.router().merge(console), _place: place, _stop: stop }
    }

    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let header = |name| {
            response
                .headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_owned))
                .collect::<Vec<_>>()
        };
        let location = header(header::LOCATION).pop().unwrap_or_default();
        let cookies = header(header::SET_COOKIE);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer { status, location, cookies, body: String::from_utf8_lossy(&body).into_owned() }
    }

    async fn get(&self, path: &str, session: Option<&str>) -> Answer {
        let mut request = Request::get(path).header(header::ACCEPT, "text/html");
        if let Some(session) = session {
            request = request.header(header::COOKIE, session);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, session: &str, form: &str) -> Answer {
        let request = Request::post(path)
            .header(header::COOKIE, session)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.to_owned()))
            .unwrap();
        self.send(request).await
    }

    async fn api(&self, method: &str, path: &str, token: &str, body: &str) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        self.send(request).await
    }

    /// Logs in through the form; the session cookie (`cairn_session=…`).
    async fn login(&self, token: &str) -> Result<String, Answer> {
        let page = self.get("/ui/login", None).await;
        let nonce = cookie(&page.cookies, "cairn_login").expect("a login cookie");
        let form = format!("token={token}&csrf={nonce}");
        let answer = self.post("/ui/login", &format!("cairn_login={nonce}"), &form).await;
        match cookie(&answer.cookies, "cairn_session") {
            Some(id) if answer.status == StatusCode::SEE_OTHER => Ok(format!("cairn_session={id}")),
            _ => Err(answer),
        }
    }

    async fn token(&self, name: &str, role: &str) -> (String, String) {
        let answer = self
            .api("POST", "/admin/tokens", ADMIN, &format!(r#"{{"name":"{name}","role":"{role}"}}"#))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        (body["token"].as_str().unwrap().to_owned(), body["id"].as_str().unwrap().to_owned())
    }
}

fn cookie(set_cookies: &[String], name: &str) -> Option<String> {
    set_cookies.iter().find_map(|c| {
        let value = c.split(';').next()?.strip_prefix(&format!("{name}="))?;
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// The CSRF token a page carries.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf-token\" content=\"").expect("a csrf meta tag") + 27;
    page[at..].split('"').next().unwrap().to_owned()
}

/// Waits until `path` (as `session`) answers 200 with `needle` in it.
async fn eventually(console: &Console, path: &str, session: &str, needle: &str) -> String {
    for _ in 0..100 {
        let page = console.get(path, Some(session)).await;
        if page.status == StatusCode::OK && page.body.contains(needle) {
            return page.body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never showed {needle:?}");
}

async fn sessions_csrf_and_roles(backend: Backend) {
    let console = Console::start(backend).await;
    // Without a session: a page leads to the login, an action is refused.
    let page = console.get("/ui/projections", None).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location, "/ui/login");
    let answer = console.post("/ui/projections/order_summary/pause", "", "").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    // A wrong token, and a good token without the login form's own CSRF value.
    let wrong = console.login("cairn_not-a-token").await.unwrap_err();
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("id=\"login-error\""));
    let no_nonce = console.post("/ui/login", "", &format!("token={ADMIN}")).await;
    assert_eq!(no_nonce.status, StatusCode::FORBIDDEN);
    assert!(cookie(&no_nonce.cookies, "cairn_session").is_none());

    let admin = console.login(ADMIN).await.unwrap();
    let page = console.get("/ui/projections", Some(&admin)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("class=\"pause\""), "an admin gets the buttons");
    let headers = console.app.clone().oneshot(
        Request::get("/ui/projections").header(header::COOKIE, &admin).body(Body::empty()).unwrap(),
    );
    let csp = headers.await.unwrap().headers()[header::CONTENT_SECURITY_POLICY].clone();
    assert!(csp.to_str().unwrap().contains("script-src 'self'"));
    // An action without the CSRF token, or with another session's, changes nothing.
    let token = csrf(&page.body);
    for form in [String::new(), "csrf=forged".to_owned(), format!("csrf={token}x")] {
        let refused = console.post("/ui/projections/order_summary/pause", &admin, &form).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{form}");
    }
    let rows = console.api("GET", "/admin/projections", ADMIN, "").await.body;
    assert!(!rows.contains("\"paused\""), "nothing was paused: {rows}");
    // With it, the API does it.
    let done =
        console.post("/ui/projections/order_summary/pause", &admin, &format!("csrf={token}")).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert!(done.location.contains("paused"), "{}", done.location);
    let rows = console.api("GET", "/admin/projections", ADMIN, "").await.body;
    assert!(rows.contains("\"paused\""), "{rows}");

    // A reader sees the read-only pages, no button, no admin page; its actions are the
    // API's to refuse.
    let (reader_token, reader_id) = console.token("ops-reader", "reader").await;
    let reader = console.login(&reader_token).await.unwrap();
    let page = console.get("/ui/projections", Some(&reader)).await;
    assert_eq!(page.status, StatusCode::OK);
    for admin_only in
        ["class=\"rebuild\"", "class=\"pause\"", "class=\"resume\"", "data-page=\"dead-letters\""]
    {
        assert!(!page.body.contains(admin_only), "a reader is shown {admin_only}");
    }
    for path in
        ["/ui/dead-letters", "/ui/process-managers", "/ui/schemas", "/ui/schemas/OrderCreated"]
    {
        assert_eq!(console.get(path, Some(&reader)).await.status, StatusCode::FORBIDDEN, "{path}");
    }
    let refused = console
        .post(
            "/ui/projections/order_summary/resume",
            &reader,
            &format!("csrf={}", csrf(&page.body)),
        )
        .await;
    assert!(refused.location.contains("refused"), "{}", refused.location);
    let rows = console.api("GET", "/admin/projections", ADMIN, "").await.body;
    assert!(rows.contains("\"paused\""), "the reader resumed nothing: {rows}");
    // Revoking the token ends its console session at the next page.
    let revoked = console.api("DELETE", &format!("/admin/tokens/{reader_id}"), ADMIN, "").await;
    assert!(revoked.status.is_success(), "{}", revoked.body);
    let page = console.get("/ui/projections", Some(&reader)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location, "/ui/login");
}

async fn data_is_escaped_and_chains_cross_aggregates(backend: Backend) {
    let console = Console::start(backend).await;
    let admin = console.login(ADMIN).await.unwrap();
    // Markup in an event's data is shown as text.
    let evil = r#"{"expected_version":"any","events":[{"aggregate_type":"Note","event_type":"Noted","data":{"note":"</pre><script>alert(1)</script>"}}]}"#;
    let appended = console.api("POST", "/streams/note-1", ADMIN, evil).await;
    assert!(appended.status.is_success(), "{}", appended.body);
    let page = eventually(&console, "/ui/streams/note-1", &admin, "Noted").await;
    assert!(!page.contains("<script>alert"), "markup ran through");
    assert!(
        page.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{}",
        &page[page.find("Noted").unwrap()..]
    );

    // An order confirmed: the fulfillment process manager reserves stock (another
    // aggregate) and marks the order ready, all under the command's correlation id.
    for (path, body) in [
        ("/inventory/prod-1/restock", r#"{"quantity":10}"#),
        (
            "/orders",
            r#"{"order_id":"order-1","customer_id":"cust-1","items":[{"product_id":"prod-1","quantity":2,"price":3.5}]}"#,
        ),
    ] {
        assert!(console.api("POST", path, ADMIN, body).await.status.is_success(), "{path}");
    }
    let confirm = Request::post("/orders/order-1/confirm")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header("x-correlation-id", "req-confirm-1")
        .body(Body::empty())
        .unwrap();
    assert!(console.send(confirm).await.status.is_success());
    let chain =
        eventually(&console, "/ui/correlations/req-confirm-1", &admin, "OrderReadyToShip").await;
    for needle in ["OrderConfirmed", "StockReserved", "/ui/streams/prod-1", "/ui/streams/order-1"] {
        assert!(chain.contains(needle), "the chain lacks {needle}");
    }
    // The reservation is nested under the confirmation that caused it.
    let confirmed = chain.find("OrderConfirmed").unwrap();
    let nested = chain[confirmed..].find("class=\"caused\"").map(|i| i + confirmed);
    let reserved = chain.find("StockReserved").unwrap();
    assert!(nested.is_some_and(|n| n < reserved), "not nested: {chain}");
    // The instance's history: the confirmation handled, what it caused under it.
    let history = eventually(
        &console,
        "/ui/process-managers/order-fulfillment/instances/order-1",
        &admin,
        "StockReserved",
    )
    .await;
    assert!(history.contains("class=\"history-event\""));
    // Time travel: version 1 had no confirmation; the difference says what changed.
    let travel = console.get("/ui/time-travel/order-1?version=1&compare=3", Some(&admin)).await;
    assert_eq!(travel.status, StatusCode::OK, "{}", travel.body);
    assert!(travel.body.contains("id=\"state-diff\""), "{}", travel.body);
    // Search: by id, by prefix, by type.
    let found = eventually(&console, "/ui/streams?q=order-", &admin, "/ui/streams/order-1").await;
    assert!(!found.contains("/ui/streams/prod-1"), "a prefix search matched another prefix");
    let found =
        eventually(&console, "/ui/streams?type=Inventory", &admin, "/ui/streams/prod-1").await;
    assert!(!found.contains("/ui/streams/order-1\""));
    // Unknown things are a page saying so, never a panic.
    for path in [
        "/ui/streams/nope",
        "/ui/correlations/nope",
        "/ui/time-travel/nope",
        "/ui/time-travel/note-1",
        "/ui/nope",
        "/ui/schemas/Nope",
    ] {
        let page = console.get(path, Some(&admin)).await;
        assert!(page.status.is_client_error(), "{path}: {}", page.status);
        assert!(page.body.contains("role=\"alert\""), "{path}");
    }
    let bad = console.get("/ui/time-travel/order-1?at=yesterday", Some(&admin)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // A draft schema check registers nothing.
    let page = console.get("/ui/schemas/OrderCreated", Some(&admin)).await;
    let token = csrf(&page.body);
    let checked = console
        .post(
            "/ui/schemas/OrderCreated/check",
            &admin,
            &format!("csrf={token}&draft=%7B%22type%22%3A%22string%22%7D"),
        )
        .await;
    assert_eq!(checked.status, StatusCode::OK);
    assert!(checked.body.contains("class=\"incompatible\""), "{}", checked.body);
    let checked = console
        .post("/ui/schemas/OrderCreated/check", &admin, &format!("csrf={token}&draft=not%20json"))
        .await;
    assert!(checked.body.contains("not JSON"));
}

cairn_testkit::backend_tests!(sessions_csrf_and_roles, data_is_escaped_and_chains_cross_aggregates);
