//! Starts the real router on a loopback port over a real embedded store.

#![allow(dead_code)]

pub mod counter;

use std::sync::Arc;

use cairn_core::EventStore;
use cairn_server::{HttpConfig, RouteInfo};
use cairn_testkit::{Backend, Place};
use serde_json::Value;
use tokio::sync::watch;

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Arc<dyn EventStore>,
    /// Where the server keeps aggregate snapshots.
    pub snapshots: Arc<dyn cairn_core::snapshot::SnapshotStore>,
    /// Every route the router serves, with its permission.
    pub routes: Vec<RouteInfo>,
    stop: watch::Sender<bool>,
    /// The directory or database the stores live in (deleted on drop).
    pub place: Place,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::with_config(backend, HttpConfig::default()).await
    }

    pub async fn with_config(backend: Backend, config: HttpConfig) -> Self {
        Self::with_modules(backend, config, vec![cairn_orders_http::module()]).await
    }

    /// A server of `modules` (the Order module is one like any other).
    pub async fn with_modules(
        backend: Backend,
        config: HttpConfig,
        modules: Vec<cairn_server::Module>,
    ) -> Self {
        let (opened, place) = backend.open().await;
        let store = Arc::clone(&opened.events);
        let snapshots = Arc::clone(&opened.snapshots);
        let (stop, stop_rx) = watch::channel(false);
        let stores = cairn_server::Stores {
            events: opened.events,
            readmodels: opened.readmodels,
            snapshots: opened.snapshots,
        };
        // A small snapshot interval, so that the HTTP tests exercise snapshot + tail loads.
        let domain = cairn_server::DomainConfig { snapshot_every: 3, ..Default::default() };
        let server = cairn_server::Server::builder(stores)
            .http(config)
            .domain(domain)
            .modules(modules)
            .build()
            .unwrap()
            .start(stop_rx.clone())
            .unwrap();
        let (app, running, routes) =
            (server.router(), Arc::clone(server.consumers()), server.routes().to_vec());
        // On a shared store, consumers take their leadership a moment after start; admin
        // tests (rebuild, DLQ) act on the leader, so start once this process leads them all.
        for _ in 0..400 {
            if running.all().all(|(_, c)| c.is_leader()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut shutdown = stop_rx;
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        });
        Self { base, client: reqwest::Client::new(), store, snapshots, routes, stop, place }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.client.post(self.url(path)).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// An append body of `n` events of type `Tick` for aggregate type `Order`.
#[allow(clippy::needless_pass_by_value)] // call sites read better with `json!(..)` inline
pub fn ticks(expected: Value, n: usize) -> Value {
    let events: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"aggregate_type": "Ledger", "event_type": "Tick", "data": {"i": i}}))
        .collect();
    serde_json::json!({"expected_version": expected, "events": events})
}
