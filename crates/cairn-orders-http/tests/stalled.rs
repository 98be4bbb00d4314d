//! A consumer whose storage keeps failing is `stalled`: retried without limit (never
//! dead-lettered: the events are fine), named by `/health/ready` while the process stays
//! ready, and back to `running` with nothing lost once its storage works again.

mod support;

use std::time::{Duration, Instant};

use cairn_testkit::Backend;
use serde_json::{Value, json};
use support::TestServer;

cairn_testkit::backend_tests!(a_stalled_projection_is_named_by_readiness_and_recovers);

/// Renames a read-model table behind the server's back (its storage "fails").
async fn rename(server: &TestServer, from: &str, to: &str) {
    if let Some(url) = server.place.database_url() {
        let (client, connection) =
            tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(&format!("ALTER TABLE {from} RENAME TO {to}")).await.unwrap();
    } else {
        let path = server.place.dir().unwrap().join("readmodels.db");
        let sql = format!("ALTER TABLE {from} RENAME TO {to}");
        tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            conn.execute_batch(&sql).unwrap();
        })
        .await
        .unwrap();
    }
}

async fn ready_until(server: &TestServer, what: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server.get("/health/ready").await;
        if done(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: last answer {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn order(id: &str) -> Value {
    json!({"order_id": id, "customer_id": "c-1", "items": [{"product_id": "p-1", "quantity": 1, "price": "1.00"}]})
}

async fn a_stalled_projection_is_named_by_readiness_and_recovers(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, _) = server.post("/orders", &order("o-1")).await;
    assert_eq!(status, 201);
    let (status, body) = server.get("/health/ready").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));

    rename(&server, "rm_order_summary", "rm_order_summary_away").await;
    let (status, created) = server.post("/orders", &order("o-2")).await;
    assert_eq!(status, 201, "commands do not depend on a projection's storage");
    let position = created["position"].as_u64().unwrap();
    let body = ready_until(&server, "the stalled projection is named", |status, body| {
        status == 200 && body["stalled"] == json!(["order_summary"])
    })
    .await;
    assert_eq!(body["status"], "ok", "stalled is still ready (its queries answer, lagging)");
    assert!(body["message"].as_str().unwrap().contains("order_summary"), "{body}");
    let (_, projections) = server.get("/admin/projections").await;
    let row = projections
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "order_summary")
        .unwrap()
        .clone();
    assert_eq!(
        (row["status"].as_str(), row["dlq_depth"].as_u64()),
        (Some("stalled"), Some(0)),
        "{row}"
    );

    // Storage back: it resumes where it stopped; the event it could not write is applied.
    rename(&server, "rm_order_summary_away", "rm_order_summary").await;
    ready_until(&server, "the projection recovers", |status, body| {
        status == 200 && body.get("stalled").is_none()
    })
    .await;
    let (status, summary) =
        server.get(&format!("/orders/o-2?min_position={position}&wait_ms=10000")).await;
    assert_eq!(status, 200, "{summary}");
    let (_, letters) = server.get("/admin/dlq?projection=order_summary").await;
    assert_eq!(letters, json!([]), "a storage failure never dead-letters a good event");
}
