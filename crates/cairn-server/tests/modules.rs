//! Building a server from modules: every way modules can fail to fit together is refused
//! at build with its `BuildError`, and every served route carries the permission the
//! design assigns it (docs/design/modules.md §2.2).

use std::sync::Arc;

use axum::Extension;
use axum::http::Method;
use cairn_core::RecordedEvent;
use cairn_core::timestamp::Timestamp;
use cairn_orders::Order;
use cairn_orders::projections::order_summary::OrderSummaryProjection;
use cairn_orders::schemas::EVENTS as DOMAIN_SCHEMAS;
use cairn_server::server::CORE;
use cairn_server::{
    BuildError, IntegrationEvents, Module, Permission, Route, RouteInfo, Server, Stores,
};
use cairn_testkit::{Backend, Place};
use serde_json::value::RawValue;
use tokio::sync::watch;

async fn stores() -> (Stores, Place) {
    let (opened, place) = Backend::Sqlite.open().await;
    let stores = Stores {
        events: opened.events,
        readmodels: opened.readmodels,
        snapshots: opened.snapshots,
    };
    (stores, place)
}

/// Builds a server of the Order module and `others`, returning only the error.
async fn build_error(with_orders: bool, others: Vec<Module>) -> BuildError {
    let (stores, _place) = stores().await;
    let mut builder = Server::builder(stores);
    if with_orders {
        builder = builder.module(cairn_orders_http::module());
    }
    match builder.modules(others).build() {
        Ok(_) => panic!("the modules were accepted"),
        Err(e) => e,
    }
}

async fn permission_of(Extension(permission): Extension<Permission>) -> String {
    format!("{permission:?}")
}

#[tokio::test]
async fn an_aggregate_type_registered_twice_is_refused() {
    let again = Module::builder("again").aggregate::<Order>().build();
    let error = build_error(true, vec![again]).await;
    assert_eq!(
        error,
        BuildError::Duplicate {
            what: "aggregate type",
            name: "Order".to_owned(),
            first: "orders",
            second: "again",
        }
    );
}

#[tokio::test]
async fn a_consumer_name_registered_twice_is_refused() {
    let again = Module::builder("again").projection(Arc::new(OrderSummaryProjection)).build();
    let error = build_error(true, vec![again]).await;
    assert_eq!(
        error,
        BuildError::Duplicate {
            what: "consumer",
            name: "order_summary".to_owned(),
            first: "orders",
            second: "again",
        }
    );
}

#[tokio::test]
async fn a_schema_table_naming_another_modules_event_type_is_refused() {
    let again = Module::builder("again").schemas(DOMAIN_SCHEMAS).build();
    let error = build_error(true, vec![again]).await;
    assert_eq!(
        error,
        BuildError::Duplicate {
            what: "event type",
            name: "OrderCreated".to_owned(),
            first: "orders",
            second: "again",
        }
    );
}

#[tokio::test]
async fn a_route_the_server_already_serves_is_refused() {
    let route = Route::new(Method::GET, "/health/live", permission_of, Permission::Public);
    let again = Module::builder("again").route(route).build();
    let error = build_error(false, vec![again]).await;
    assert_eq!(
        error,
        BuildError::Duplicate {
            what: "route",
            name: "GET /health/live".to_owned(),
            first: CORE,
            second: "again",
        }
    );
}

#[tokio::test]
async fn a_schema_history_shorter_than_the_schema_version_is_refused() {
    // OrderCreated is at schema version 2: one schema would stamp appends as v1.
    const ONE_VERSION: cairn_server::SchemaTable = &[("OrderCreated", &[r#"{"type":"object"}"#])];
    let module = Module::builder("shop").aggregate::<Order>().schemas(ONE_VERSION).build();
    let error = build_error(false, vec![module]).await;
    assert_eq!(
        error,
        BuildError::SchemaHistory {
            event_type: "OrderCreated".to_owned(),
            schemas: 1,
            expected: 2
        }
    );
}

#[tokio::test]
async fn a_schema_that_is_not_json_or_not_backward_compatible_is_refused() {
    const BROKEN: cairn_server::SchemaTable = &[("Pinged", &["{not json"])];
    // v2 requires a field v1 events lack: the registry would refuse it at start.
    const NARROWED: cairn_server::SchemaTable =
        &[("Pinged", &[r#"{"type":"object"}"#, r#"{"type":"object","required":["at"]}"#])];
    let error = build_error(false, vec![Module::builder("a").schemas(BROKEN).build()]).await;
    assert!(
        matches!(&error, BuildError::Schema { event_type, version: 1, reason }
            if event_type == "Pinged" && reason.starts_with("not JSON")),
        "{error:?}"
    );

    let error = build_error(false, vec![Module::builder("a").schemas(NARROWED).build()]).await;
    assert!(
        matches!(&error, BuildError::Schema { event_type, version: 2, reason }
            if event_type == "Pinged" && reason.contains("new required field at")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_route_axum_cannot_serve_is_refused() {
    let relative = Route::new(Method::GET, "pings", permission_of, Permission::Read);
    let error = build_error(false, vec![Module::builder("a").route(relative).build()]).await;
    assert!(matches!(&error, BuildError::Route { path, .. } if path == "pings"), "{error:?}");

    let purge = Method::from_bytes(b"PURGE").unwrap();
    let custom = Route::new(purge, "/pings", permission_of, Permission::Write);
    let error = build_error(false, vec![Module::builder("a").route(custom).build()]).await;
    assert!(
        matches!(&error, BuildError::Route { path, reason }
            if path == "/pings" && reason.contains("PURGE")),
        "{error:?}"
    );
}

#[tokio::test]
async fn paths_the_router_cannot_hold_together_are_refused_at_build() {
    // `GET /orders/{aggregate_id}` is the Order module's: the same path under another
    // parameter name is not a duplicate by name, but the matcher cannot hold both.
    let renamed = Route::new(Method::PUT, "/orders/{id}", permission_of, Permission::Write);
    let error = build_error(true, vec![Module::builder("a").route(renamed).build()]).await;
    assert!(
        matches!(&error, BuildError::Route { path, .. } if path == "/orders/{id}"),
        "{error:?}"
    );
    // axum 0.7's `:id` syntax panics in axum 0.8.
    let legacy = Route::new(Method::GET, "/pings/:id", permission_of, Permission::Read);
    let error = build_error(false, vec![Module::builder("a").route(legacy).build()]).await;
    assert!(matches!(&error, BuildError::Route { path, .. } if path == "/pings/:id"), "{error:?}");
}

#[tokio::test]
async fn a_module_name_that_is_not_lower_case_is_refused() {
    let error = build_error(false, vec![Module::builder("Shop Floor").build()]).await;
    assert!(matches!(error, BuildError::Invalid { module: "Shop Floor", .. }), "{error:?}");
}

/// The design's rule for the server's own routes.
fn core_permission(method: &Method, path: &str) -> Permission {
    if path.starts_with("/admin") {
        Permission::Admin
    } else if path.starts_with("/health/") || path == "/openapi.json" {
        Permission::Public
    } else if method != Method::GET && path.starts_with("/streams/") {
        // Raw appends and the stream lifecycle's writes (delete, metadata, truncate).
        Permission::Append
    } else {
        Permission::Read // store reads, $all, /metrics
    }
}

#[tokio::test]
async fn every_route_has_the_permission_of_its_kind() {
    let (stores, _place) = stores().await;
    let (_stop, stop_rx) = watch::channel(false);
    let running = Server::builder(stores)
        .module(cairn_orders_http::module())
        .build()
        .unwrap()
        .start(stop_rx)
        .unwrap();
    let routes = running.routes();
    let core: Vec<&RouteInfo> = routes.iter().filter(|r| r.module.is_none()).collect();
    assert_eq!(core.len(), cairn_server::CORE_ROUTES.len());
    for (route, (method, path, permission)) in core.iter().zip(cairn_server::CORE_ROUTES) {
        assert_eq!(route.method.as_str().to_lowercase(), *method);
        assert_eq!(route.path, *path);
        assert_eq!(route.permission, *permission, "{method} {path}");
        assert_eq!(route.permission, core_permission(&route.method, path), "{method} {path}");
    }
    // Spot checks of the table as the design lists it.
    let find = |method: Method, path: &str| {
        routes.iter().find(|r| r.method == method && r.path == path).map(|r| r.permission)
    };
    assert_eq!(find(Method::POST, "/streams/{aggregate_id}"), Some(Permission::Append));
    assert_eq!(find(Method::GET, "/metrics"), Some(Permission::Read));
    assert_eq!(find(Method::GET, "/all/subscribe"), Some(Permission::Read));
    assert_eq!(find(Method::DELETE, "/admin/dlq/{id}"), Some(Permission::Admin));
    assert_eq!(find(Method::GET, "/openapi.json"), Some(Permission::Public));

    // The Order routes: queries read, commands write.
    let orders: Vec<&RouteInfo> = routes.iter().filter(|r| r.module == Some("orders")).collect();
    assert_eq!(orders.len(), 17, "{orders:#?}");
    for route in orders {
        let expected =
            if route.method == Method::GET { Permission::Read } else { Permission::Write };
        assert_eq!(route.permission, expected, "{} {}", route.method, route.path);
    }
    assert_eq!(
        find(Method::DELETE, "/orders/{aggregate_id}/items/{product_id}"),
        Some(Permission::Write)
    );
}

#[tokio::test]
async fn a_modules_route_is_served_with_its_permission_beside_the_others() {
    let (stores, _place) = stores().await;
    let (stop, stop_rx) = watch::channel(false);
    let pings = Module::builder("pings")
        .route(Route::new(Method::GET, "/pings", permission_of, Permission::Read))
        .route(Route::new(Method::POST, "/pings", permission_of, Permission::Write))
        .build();
    let running = Server::builder(stores)
        .modules([cairn_orders_http::module(), pings])
        .build()
        .unwrap()
        .start(stop_rx)
        .unwrap();
    assert_eq!(running.routes().iter().filter(|r| r.module == Some("pings")).count(), 2);
    let base = serve(&running).await;
    let client = reqwest::Client::new();
    // Each method of one path sees its own permission, set by the server, not the handler.
    let read = client.get(format!("{base}/pings")).send().await.unwrap();
    assert_eq!(read.status().as_u16(), 200);
    assert_eq!(read.text().await.unwrap(), "Read");
    let write = client.post(format!("{base}/pings")).send().await.unwrap();
    assert_eq!(write.text().await.unwrap(), "Write");
    // The Order module is served by the same router.
    let order = client.get(format!("{base}/orders/o-missing")).send().await.unwrap();
    assert_eq!(order.status().as_u16(), 404);
    let body: serde_json::Value = order.json().await.unwrap();
    assert_ne!(body["error"], "method_not_allowed", "{body}");
    assert!(!body["message"].as_str().unwrap_or("").starts_with("no route"), "{body}");
    stop.send(true).unwrap();
}

/// Serves `running` on a loopback port; the base URL.
async fn serve(running: &cairn_server::RunningServer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = running.router();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn the_store_api_checks_appends_against_the_registered_aggregates_only() {
    let append = serde_json::json!({"events": [
        {"aggregate_type": "Order", "event_type": "OrderExploded", "data": {}}
    ]});
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for modules in [vec![], vec![cairn_orders_http::module()]] {
        let (stores, _place) = stores().await;
        let (_stop, stop_rx) = watch::channel(false);
        let running =
            Server::builder(stores).modules(modules).build().unwrap().start(stop_rx).unwrap();
        let base = serve(&running).await;
        let r = client.post(format!("{base}/streams/order-x")).json(&append).send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        answers.push((status, body["error"].clone()));
    }
    // Without the Order module an `Order` stream is free-form; with it, the type is checked.
    assert_eq!(answers[0].0, 200, "{answers:?}");
    assert_eq!(answers[1], (422, serde_json::json!("unknown_event_type")));
}

#[tokio::test]
async fn a_nats_route_whose_parameter_is_not_a_whole_segment_is_refused() {
    for path in ["/pings/v{ping_id}", "/pings/{aggregate_id}/x/{other}.json"] {
        let pings = Module::builder("pings")
            .route(Route::new(Method::POST, path, permission_of, Permission::Write).nats("ping"))
            .build();
        let error = build_error(false, vec![pings]).await;
        assert!(matches!(&error, BuildError::Route { path: p, .. } if p == path), "{error:?}");
    }
    let dotted = Module::builder("pings")
        .route(Route::new(Method::POST, "/pings", permission_of, Permission::Write).nats("a.b"))
        .build();
    let error = build_error(false, vec![dotted]).await;
    assert!(matches!(&error, BuildError::Route { reason, .. } if reason.contains("token")));
}

#[tokio::test]
async fn a_nats_command_name_registered_twice_is_refused() {
    let again = Module::builder("again")
        .route(
            Route::new(Method::POST, "/again/{aggregate_id}", permission_of, Permission::Write)
                .nats("ship_order"),
        )
        .build();
    let error = build_error(true, vec![again]).await;
    assert_eq!(
        error,
        BuildError::Duplicate {
            what: "NATS command",
            name: "ship_order".to_owned(),
            first: "orders",
            second: "again",
        }
    );
}

/// A module publishing `prefix`, whose translator must never be called.
fn publisher(name: &'static str, prefix: &'static str) -> Module {
    Module::builder(name)
        .integration_events(IntegrationEvents {
            subject_prefix: prefix,
            schemas: &[],
            translate: Arc::new(|e| panic!("asked to translate {}", e.event_type)),
        })
        .build()
}

#[tokio::test]
async fn a_subject_prefix_declared_twice_or_overlapping_is_refused() {
    let error = build_error(true, vec![publisher("again", "public.orders")]).await;
    assert_eq!(
        error,
        BuildError::Duplicate {
            what: "subject prefix",
            name: "public.orders".to_owned(),
            first: "orders",
            second: "again",
        }
    );
    let error = build_error(true, vec![publisher("wide", "public")]).await;
    assert!(matches!(&error, BuildError::Invalid { module: "wide", .. }), "{error:?}");
    let error = build_error(false, vec![publisher("wild", "public.*")]).await;
    assert!(matches!(&error, BuildError::Invalid { module: "wild", .. }), "{error:?}");
}

#[tokio::test]
async fn the_order_commands_over_nats_are_the_routes_marked_nats() {
    let (stores, _place) = stores().await;
    let (_stop, stop_rx) = watch::channel(false);
    let running = Server::builder(stores)
        .module(cairn_orders_http::module())
        .build()
        .unwrap()
        .start(stop_rx)
        .unwrap();
    let commands: Vec<(&str, String, String)> = running
        .nats_commands()
        .into_iter()
        .map(|c| (c.name, c.method.to_string(), c.path))
        .collect();
    let expected = [
        ("register_customer", "/customers"),
        ("change_email", "/customers/{aggregate_id}/email"),
        ("restock", "/inventory/{aggregate_id}/restock"),
        ("create_order", "/orders"),
        ("add_item", "/orders/{aggregate_id}/items"),
        ("remove_item", "/orders/{aggregate_id}/items/{product_id}"),
        ("confirm_order", "/orders/{aggregate_id}/confirm"),
        ("ship_order", "/orders/{aggregate_id}/ship"),
        ("cancel_order", "/orders/{aggregate_id}/cancel"),
        ("correct_total", "/orders/{aggregate_id}/correct-total"),
    ];
    let expected: Vec<(&str, String, String)> = expected
        .iter()
        .map(|(n, p)| {
            let method = if *n == "remove_item" { "DELETE" } else { "POST" };
            (*n, method.to_owned(), (*p).to_owned())
        })
        .collect();
    assert_eq!(commands, expected);
    let marked: Vec<&RouteInfo> = running.routes().iter().filter(|r| r.nats.is_some()).collect();
    assert_eq!(marked.len(), 10);
    // Every command over HTTP (a route that writes) is a command over NATS too.
    let writes: Vec<&RouteInfo> = running
        .routes()
        .iter()
        .filter(|r| r.module.is_some() && r.permission == Permission::Write)
        .collect();
    assert_eq!(writes.len(), 10);
    assert!(writes.iter().all(|r| r.nats.is_some()), "{writes:?}");
    assert_eq!(
        running.nats_commands().iter().find(|c| c.name == "remove_item").unwrap().subject_shape(),
        "remove_item.<aggregate_id>.<product_id>"
    );
    // docs/deploy.md lists every one, with its route.
    let deploy = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy.md"),
    )
    .unwrap();
    for c in running.nats_commands() {
        let row = format!("| `cairn.commands.{}` | `{} {}` |", c.subject_shape(), c.method, c.path);
        assert!(deploy.contains(&row), "docs/deploy.md lacks {row}");
    }
}

fn recorded(aggregate_type: &str, event_type: &str, data: &str) -> RecordedEvent {
    RecordedEvent {
        event_id: uuid::Uuid::now_v7(),
        aggregate_id: "o-1".into(),
        aggregate_type: aggregate_type.into(),
        event_type: event_type.into(),
        version: 1,
        position: 1,
        timestamp: Timestamp::now(),
        data: RawValue::from_string(data.into()).unwrap(),
        metadata: RawValue::from_string("{}".into()).unwrap(),
    }
}

#[tokio::test]
async fn integration_events_are_translated_only_by_the_module_owning_the_aggregate() {
    let (bare, _bare_place) = stores().await;
    let (_stop, stop_rx) = watch::channel(false);
    let none = Server::builder(bare).build().unwrap().start(stop_rx.clone()).unwrap();
    assert!(none.integration().is_none(), "no module publishes");

    let (both, _place) = stores().await;
    let running = Server::builder(both)
        .modules([cairn_orders_http::module(), publisher("bank", "public.bank")])
        .build()
        .unwrap()
        .start(stop_rx)
        .unwrap();
    let router = running.integration().expect("the Order module publishes");
    assert_eq!(router.subject_prefixes(), ["public.orders", "public.bank"]);
    let cancelled = recorded(
        "Order",
        "OrderCancelled",
        r#"{"reason":"changed_mind","previous_status":"pending"}"#,
    );
    let public = router.translate(&cancelled).unwrap().expect("a public event");
    assert!(public.subject.starts_with("public.orders."), "{}", public.subject);
    assert_eq!(public.source_event_id, cancelled.event_id);
    // An internal Order event stays internal; an aggregate no publisher owns reaches no
    // translator (the bank module's would panic).
    assert!(router.translate(&recorded("Order", "ItemRemoved", "{}")).unwrap().is_none());
    assert!(router.translate(&recorded("Account", "Credited", "{}")).unwrap().is_none());
}
