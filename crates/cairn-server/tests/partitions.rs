//! A module's projection run in partitions (docs/design/modules.md §3, "partitions"):
//! every event lands, each partition is a row in `/admin/projections`, read-your-writes
//! waits for every partition, rebuild is refused, a changed partition count or version
//! replays to the same read model, the start-up guard resets the whole projection when
//! one partition is ahead, a partition's dead letters retry, and (PostgreSQL) a pause sent
//! to either of two processes reaches every partition's leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use cairn_core::RecordedEvent;
use cairn_core::readmodel::{DocTxn, ReadModelError, TableSpec};
use cairn_cqrs::consumer::Partition;
use cairn_cqrs::projection::Projection;
use cairn_server::consumers::Consumers;
use cairn_server::extract::QueryMap;
use cairn_server::{
    AppState, BuildError, Module, Permission, ProjectionOptions, Route, Server, Stores,
};
use cairn_testkit::{Backend, Place};
use serde_json::{Value, json};
use tokio::sync::watch;

cairn_testkit::backend_tests!(
    every_event_lands_and_each_partition_is_a_row,
    read_your_writes_waits_for_every_partition,
    a_partitioned_projection_is_not_rebuilt_in_place_and_pauses_as_a_whole,
    a_refused_event_lands_in_its_partitions_dead_letters_and_retries,
    a_changed_partition_count_or_version_replays_to_the_same_read_model,
    a_partition_ahead_of_the_log_resets_the_whole_projection,
);

/// Two servers on one PostgreSQL database, each leading some partitions: a pause or resume
/// of the whole projection sent to either reaches every partition's leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_projection_is_paused_through_either_process() {
    let backend = Backend::Postgres;
    if !backend.enabled() {
        return;
    }
    let (stores_a, place) = stores(backend).await;
    let a = Running::start_with(&stores_a, module(Some(4), 1, &Arc::default()), true).await;
    let opened = place.open().await;
    let stores_b = Stores {
        events: opened.events,
        readmodels: opened.readmodels,
        snapshots: opened.snapshots,
    };
    let b = Running::start_with(&stores_b, module(Some(4), 1, &Arc::default()), false).await;
    // The partitions spread over both processes, and each knows where every one is led.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (on_a, on_b) = (a.rows().await, b.rows().await);
        let partitions = |rows: &[Value]| -> Vec<Value> {
            rows.iter().filter(|r| r["name"].as_str().unwrap().contains('#')).cloned().collect()
        };
        let (pa, pb) = (partitions(&on_a), partitions(&on_b));
        let led = |rows: &[Value]| rows.iter().filter(|r| r["leader"]["leading"] == true).count();
        let known = pa.iter().chain(&pb).all(|r| {
            let url = &r["leader"]["url"];
            url == a.base.as_str() && (r["leader"]["leading"] == true) == pa.contains(r)
                || url == b.base.as_str() && (r["leader"]["leading"] == true) == pb.contains(r)
        });
        if led(&pa) >= 1 && led(&pb) >= 1 && led(&pa) + led(&pb) == 4 && known {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never spread: {pa:?} {pb:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (via, action, status) in [(&a, "pause", "paused"), (&b, "resume", "running")] {
        let (code, row) = via.post(&format!("/admin/projections/{NAME}/{action}")).await;
        assert_eq!(code, 200, "{action}: {row}");
        assert_eq!(row["status"], status, "{action}: {row}");
        for server in [&a, &b] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !server.rows().await.iter().all(|r| r["status"] == status) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{action}: {:?}",
                    server.rows().await
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    b.stop().await;
    a.stop().await;
}

const NAME: &str = "tallies";

/// Counts `Tick` events per aggregate: `{"id", "count"}` in table `tallies`. While
/// `refusing`, an event whose data has `"poison": true` is refused.
struct Tallies {
    version: u32,
    refusing: Arc<AtomicBool>,
}

impl Projection for Tallies {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: NAME, indexed: &[] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        vec!["Tick"]
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn apply(&self, event: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        let data: Value = serde_json::from_str(event.data.get())
            .map_err(|e| ReadModelError::Handler(e.to_string()))?;
        if data["poison"] == true && self.refusing.load(Ordering::SeqCst) {
            return Err(ReadModelError::Handler("a poisoned tick".to_owned()));
        }
        let id = event.aggregate_id.as_str();
        let count = match txn.get(NAME, id)? {
            Some(doc) => serde_json::from_str::<Value>(&doc)
                .map_err(|e| ReadModelError::Handler(e.to_string()))?["count"]
                .as_u64()
                .unwrap_or(0),
            None => 0,
        };
        txn.put(NAME, id, &json!({"id": id, "count": count + 1}).to_string())
    }
}

async fn tally(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: QueryMap,
    headers: HeaderMap,
) -> Response {
    cairn_server::query::document(&state, NAME, NAME, id, &query, &headers).await
}

fn module(partitions: Option<u32>, version: u32, refusing: &Arc<AtomicBool>) -> Module {
    let projection = Arc::new(Tallies { version, refusing: Arc::clone(refusing) });
    let options = match partitions {
        Some(n) => ProjectionOptions::new().partitions(n),
        None => ProjectionOptions::new(),
    };
    Module::builder("tally")
        .projection_with(projection, options)
        .route(Route::new(Method::GET, "/tallies/{id}", tally, Permission::Read))
        .build()
}

async fn stores(backend: Backend) -> (Stores, Place) {
    let (opened, place) = backend.open().await;
    let stores = Stores {
        events: opened.events,
        readmodels: opened.readmodels,
        snapshots: opened.snapshots,
    };
    (stores, place)
}

/// A server of the tally module, served on a loopback port; stops when dropped.
struct Running {
    base: String,
    client: reqwest::Client,
    consumers: Arc<Consumers>,
    stop: watch::Sender<bool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Running {
    async fn start(stores: &Stores, module: Module) -> Self {
        Self::start_with(stores, module, true).await
    }

    /// Starts a server advertising its own loopback URL; waits until it leads every
    /// partition when `lead_all`.
    async fn start_with(stores: &Stores, module: Module, lead_all: bool) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let http = cairn_server::HttpConfig {
            advertise_url: Some(base.clone()),
            ..cairn_server::HttpConfig::default()
        };
        let server = Server::builder(stores.clone()).http(http).module(module).build().unwrap();
        let report = server.check_against_log(false).await.unwrap();
        assert!(report.reset_projections.is_empty(), "{report:?}");
        let running = server.start(stop_rx.clone()).unwrap();
        let consumers = Arc::clone(running.consumers());
        // Dead-letter retries and pauses act on the leader: start once this process leads.
        for _ in 0..400 {
            if !lead_all || consumers.all().all(|(_, c)| c.is_leader()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let app = running.router();
        let mut shutdown = stop_rx;
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        });
        Self { base, client: reqwest::Client::new(), consumers, stop }
    }

    /// Stops the server and waits until its consumers have let go of their leadership.
    async fn stop(self) {
        let _ = self.stop.send(true);
        for _ in 0..400 {
            if self.consumers.all().all(|(_, c)| !c.is_leader()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Resigning follows on a blocking thread.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(Method::GET, path, None).await
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        self.send(Method::POST, path, Some(&json!({}))).await
    }

    /// Appends `n` ticks to aggregate `id` through the store API; the last position.
    async fn tick(&self, id: &str, n: usize, data: &Value) -> u64 {
        let events: Vec<Value> = (0..n)
            .map(|_| json!({"aggregate_type": "Ledger", "event_type": "Tick", "data": data}))
            .collect();
        let (status, body) = self
            .send(Method::POST, &format!("/streams/{id}"), Some(&json!({"events": events})))
            .await;
        assert_eq!(status, 200, "{body}");
        body["position"].as_u64().unwrap()
    }

    /// The rows of `/admin/projections` of the tallies projection.
    async fn rows(&self) -> Vec<Value> {
        let (status, rows) = self.get("/admin/projections").await;
        assert_eq!(status, 200, "{rows}");
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["name"].as_str().is_some_and(|n| n.starts_with(NAME)))
            .cloned()
            .collect()
    }

    /// Waits until every partition has caught up with the log; the rows then.
    async fn quiet(&self) -> Vec<Value> {
        for _ in 0..400 {
            let rows = self.rows().await;
            if rows.iter().all(|r| r["lag"] == 0 && r["status"] == "running") {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the partitions never caught up: {:?}", self.rows().await);
    }

    /// Every tally of `ids`, read after `position`.
    async fn tallies(&self, ids: &[String], position: u64) -> Vec<Value> {
        let mut docs = Vec::new();
        for id in ids {
            let (status, doc) =
                self.get(&format!("/tallies/{id}?min_position={position}&wait_ms=10000")).await;
            assert_eq!(status, 200, "{id}: {doc}");
            docs.push(doc);
        }
        docs
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("ledger-{i}")).collect()
}

/// The partition (of `count`) that handles aggregate `id`.
fn owner(id: &str, count: u32) -> u32 {
    (0..count).find(|&index| Partition { index, count }.owns(id)).unwrap()
}

/// Appends `1 + i % 3` ticks to each of `ids`; the last position.
async fn fill(server: &Running, ids: &[String]) -> u64 {
    let mut last = 0;
    for (i, id) in ids.iter().enumerate() {
        last = server.tick(id, 1 + i % 3, &json!({})).await;
    }
    last
}

async fn every_event_lands_and_each_partition_is_a_row(backend: Backend) {
    let (stores, _place) = stores(backend).await;
    let server = Running::start(&stores, module(Some(4), 1, &Arc::default())).await;
    let ids = ids(24);
    // The aggregates spread over every partition, so each has work to do.
    let owners: std::collections::BTreeSet<u32> = ids.iter().map(|id| owner(id, 4)).collect();
    assert_eq!(owners.len(), 4);
    let last = fill(&server, &ids).await;

    let docs = server.tallies(&ids, last).await;
    for (i, (id, doc)) in ids.iter().zip(&docs).enumerate() {
        assert_eq!(doc, &json!({"id": id, "count": 1 + i % 3}));
    }
    let rows = server.quiet().await;
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tallies#p0of4", "tallies#p1of4", "tallies#p2of4", "tallies#p3of4"]);
    for row in &rows {
        assert_eq!(row["kind"], "projection", "{row}");
        assert_eq!(row["position"], row["head_position"], "{row}");
        assert!(row["position"].as_u64().unwrap() >= last, "{row}");
    }
    // `/metrics` and readiness cover each partition.
    let metrics = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for i in 0..4 {
        let gauge = format!("cairn_projection_lag{{projection=\"tallies#p{i}of4\"}} 0");
        assert!(metrics.contains(&gauge), "no {gauge} in:\n{metrics}");
    }
    assert_eq!(server.get("/health/ready").await.0, 200);
}

async fn read_your_writes_waits_for_every_partition(backend: Backend) {
    let (stores, _place) = stores(backend).await;
    let server = Running::start(&stores, module(Some(4), 1, &Arc::default())).await;
    let ids = ids(8);
    fill(&server, &ids).await;
    server.quiet().await;
    // Read an aggregate whose partition keeps running while another partition is paused.
    let id = &ids[0];
    let paused = (owner(id, 4) + 1) % 4;
    let (status, row) =
        server.post(&format!("/admin/projections/tallies%23p{paused}of4/pause")).await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(row["name"], format!("tallies#p{paused}of4"));
    let position = server.tick(id, 1, &json!({})).await;

    // The document is written (its own partition runs), but not every partition has passed
    // the position: the read must not claim it.
    let (status, body) =
        server.get(&format!("/tallies/{id}?min_position={position}&wait_ms=300")).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"], "projection_lagging", "{body}");
    assert!(body["position"].as_u64().unwrap() < position, "{body}");

    // Resumed, the paused partition moves over the event it skips and the wait ends.
    let resume = {
        let client = server.client.clone();
        let url = format!("{}/admin/projections/tallies%23p{paused}of4/resume", server.base);
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.post(url).send().await.unwrap().status().as_u16()
        }
    };
    let read = server
        .client
        .get(format!("{}/tallies/{id}?min_position={position}&wait_ms=10000", server.base));
    let (resumed, read) = tokio::join!(resume, read.send());
    assert_eq!(resumed, 200);
    let read = read.unwrap();
    assert_eq!(read.status().as_u16(), 200);
    let seen: u64 = read.headers()["x-projection-position"].to_str().unwrap().parse().unwrap();
    assert!(seen >= position, "X-Projection-Position {seen} < {position}");
    assert_eq!(read.json::<Value>().await.unwrap(), json!({"id": id, "count": 2}));
}

async fn a_partitioned_projection_is_not_rebuilt_in_place_and_pauses_as_a_whole(backend: Backend) {
    let (stores, _place) = stores(backend).await;
    let server = Running::start(&stores, module(Some(4), 1, &Arc::default())).await;
    fill(&server, &ids(4)).await;
    server.quiet().await;
    for name in ["tallies", "tallies%23p2of4"] {
        let (status, body) = server.post(&format!("/admin/projections/{name}/rebuild")).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"], "rebuild_refused", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("version") && message.contains("partition"), "{message}");
    }
    let (status, body) = server.post("/admin/projections/nothing/rebuild").await;
    assert_eq!((status, body["error"].clone()), (404, json!("not_found")), "{body}");
    assert!(server.rows().await.iter().all(|r| r["status"] == "running"));

    // The projection's own name steers every partition and answers with one summed-up row.
    let (status, row) = server.post("/admin/projections/tallies/pause").await;
    assert_eq!(status, 200, "{row}");
    assert_eq!((row["name"].clone(), row["status"].clone()), (json!(NAME), json!("paused")));
    assert!(server.rows().await.iter().all(|r| r["status"] == "paused"));
    let (status, row) = server.post("/admin/projections/tallies/resume").await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(server.quiet().await.len(), 4);
}

async fn a_refused_event_lands_in_its_partitions_dead_letters_and_retries(backend: Backend) {
    let (stores, _place) = stores(backend).await;
    let refusing = Arc::new(AtomicBool::new(true));
    let server = Running::start(&stores, module(Some(4), 1, &refusing)).await;
    let id = "ledger-poisoned";
    let partition = format!("tallies#p{}of4", owner(id, 4));
    let position = server.tick(id, 1, &json!({"poison": true})).await;
    let mut letters = Value::Null;
    for _ in 0..400 {
        letters = server.get("/admin/dlq").await.1;
        if letters.as_array().is_some_and(|l| !l.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let letters = letters.as_array().unwrap().clone();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["projection"], partition.as_str());
    assert_eq!(letters[0]["position"], position);
    let (status, own) =
        server.get(&format!("/admin/dlq?projection={}", partition.replace('#', "%23"))).await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own.as_array().unwrap().len(), 1, "{own}");
    let row = server.rows().await.into_iter().find(|r| r["name"] == partition.as_str()).unwrap();
    assert_eq!(row["dlq_depth"], 1, "{row}");
    // Parked, not lost: the read model does not have it yet.
    let (status, _) = server.get(&format!("/tallies/{id}?min_position={position}")).await;
    assert_eq!(status, 404);

    refusing.store(false, Ordering::SeqCst);
    let letter = letters[0]["id"].as_i64().unwrap();
    let (status, body) = server.post(&format!("/admin/dlq/{letter}/retry")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get(&format!("/tallies/{id}")).await, (200, json!({"id": id, "count": 1})));
    assert_eq!(server.get("/admin/dlq").await.1, json!([]));
}

async fn a_changed_partition_count_or_version_replays_to_the_same_read_model(backend: Backend) {
    let (stores, _place) = stores(backend).await;
    let ids = ids(24);
    let refusing = Arc::default();
    let server = Running::start(&stores, module(Some(4), 1, &refusing)).await;
    let last = fill(&server, &ids).await;
    let before = server.tallies(&ids, last).await;
    server.stop().await;

    // Each restart changes how the read model is built; the events are replayed from 0
    // onto empty tables (without the reset, every count would double).
    for (partitions, version) in [(Some(3), 1), (Some(3), 2), (None, 2), (Some(2), 2)] {
        let server = Running::start(&stores, module(partitions, version, &refusing)).await;
        let rows = server.quiet().await;
        let expected: Vec<String> = match partitions {
            Some(n) => (0..n).map(|i| format!("tallies#p{i}of{n}")).collect(),
            None => vec![NAME.to_owned()],
        };
        let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, expected);
        assert_eq!(server.tallies(&ids, last).await, before, "{partitions:?} v{version}");
        server.stop().await;
    }
}

async fn a_partition_ahead_of_the_log_resets_the_whole_projection(backend: Backend) {
    let (stores, _place) = stores(backend).await;
    let ids = ids(12);
    let refusing = Arc::default();
    let server = Running::start(&stores, module(Some(4), 1, &refusing)).await;
    let last = fill(&server, &ids).await;
    let before = server.tallies(&ids, last).await;
    server.stop().await;

    // As after a crash that lost the log's tail: one partition's checkpoint is past it.
    let rm = Arc::clone(&stores.readmodels);
    tokio::task::spawn_blocking(move || {
        let fence = rm.try_lead("tallies#p1of4").unwrap().expect("nobody leads it");
        rm.transact(&fence, "tallies#p1of4", Some(last + 100), &mut |_| Ok(())).unwrap();
        rm.resign("tallies#p1of4");
    })
    .await
    .unwrap();

    let server =
        Server::builder(stores.clone()).module(module(Some(4), 1, &refusing)).build().unwrap();
    let report = server.check_against_log(false).await.unwrap();
    assert_eq!(report.reset_projections, [NAME]);
    let rm = Arc::clone(&stores.readmodels);
    let (checkpoints, doc) = tokio::task::spawn_blocking(move || {
        (rm.checkpoints().unwrap(), rm.get(NAME, "ledger-0").unwrap())
    })
    .await
    .unwrap();
    for (consumer, position) in checkpoints.iter().filter(|(c, _)| c.starts_with(NAME)) {
        assert_eq!(*position, 0, "{consumer} was not reset");
    }
    assert_eq!(doc, None, "the tables were not emptied");
    drop(server);

    let server = Running::start(&stores, module(Some(4), 1, &refusing)).await;
    assert_eq!(server.tallies(&ids, last).await, before);
    server.stop().await;
}

#[tokio::test]
async fn zero_partitions_are_refused_at_build() {
    let (stores, _place) = stores(Backend::Sqlite).await;
    let error = Server::builder(stores)
        .module(module(Some(0), 1, &Arc::default()))
        .build()
        .err()
        .expect("0 partitions were accepted");
    assert!(
        matches!(&error, BuildError::Invalid { module: "tally", reason } if reason.contains("0 partitions")),
        "{error:?}"
    );
}
