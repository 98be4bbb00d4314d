//! Read models ahead of the event log (a crash with `--sync normal`, a mixed restore):
//! `cairn serve` never accepts them silently. Forged here through the store APIs while no
//! server runs: projections past the head are rebuilt, snapshots past it dropped, and the
//! process manager past it stops the start-up until `--repair`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use cairn_core::snapshot::Snapshot;
use cairn_core::timestamp::Timestamp;
use serde_json::{Value, json};
use support::Server;

/// Generous: a refused start exits as soon as it has read the stores.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(120);
/// How far past the head the forged state claims to be.
const AHEAD_BY: u64 = 100;

async fn post(base: &str, path: &str, body: &Value) -> Value {
    let r = reqwest::Client::new().post(format!("{base}{path}")).json(body).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Runs `cairn serve` expecting it to refuse to start; returns its stderr.
async fn refused_start(place: &cairn_testkit::Place) -> String {
    let port = support::free_port().to_string();
    let child = tokio::process::Command::new(support::CAIRN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--log", "warn"])
        .args(cairn_testkit::serve::place_args(place))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(REFUSAL_DEADLINE, child.wait_with_output())
        .await
        .expect("cairn serve started although the read models are ahead of the log")
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

cairn_testkit::backend_tests!(state_ahead_of_the_log_is_never_accepted_silently);

async fn state_ahead_of_the_log_is_never_accepted_silently(backend: cairn_testkit::Backend) {
    if !backend.enabled() {
        return;
    }
    let place = backend.place().await;
    let server = Server::start_on(&place, &[]).await;
    let url = server.base.clone();
    let r =
        post(&url, "/customers", &json!({"customer_id": "c-1", "name": "A", "email": "a@x.io"}))
            .await;
    let (status, _) = get(&url, &format!("/customers/c-1?min_position={}", r["position"])).await;
    assert_eq!(status, 200);
    server.kill().await;

    // Forge: the customer view, the process manager and a snapshot past the head, and a
    // dead letter of the customer view past it.
    let head = r["position"].as_u64().unwrap();
    let ahead = head + AHEAD_BY;
    {
        let stores = place.open().await;
        let (rm, snapshots) = (stores.readmodels.clone(), stores.snapshots.clone());
        tokio::task::spawn_blocking(move || {
            // Consumers' state is written only by their leader (on PostgreSQL: the session
            // holding the lock), so the forger leads them first; the killed server's
            // sessions end when PostgreSQL notices the closed sockets, a moment later.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let mut fences = Vec::new();
            for consumer in ["customer_view", "order-fulfillment"] {
                loop {
                    if let Some(fence) = rm.try_lead(consumer).unwrap() {
                        fences.push(fence);
                        break;
                    }
                    assert!(std::time::Instant::now() < deadline, "{consumer}: never led");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            rm.transact(&fences[0], "customer_view", Some(ahead), &mut |_| Ok(())).unwrap();
            rm.transact(&fences[1], "order-fulfillment", Some(ahead), &mut |_| Ok(())).unwrap();
            rm.park(
                &fences[0],
                ahead,
                &cairn_core::readmodel::DeadLetter {
                    id: 0,
                    projection: "customer_view".into(),
                    position: ahead,
                    aggregate_id: "c-lost".into(),
                    event_type: "CustomerRegistered".into(),
                    error: "forged".into(),
                    attempts: 3,
                    first_failed_at: Timestamp::now(),
                    last_failed_at: Timestamp::now(),
                },
            )
            .unwrap();
            snapshots
                .save(&Snapshot {
                    aggregate_id: "c-1".into(),
                    aggregate_type: "Customer".into(),
                    snapshot_version: 1,
                    version: 7,
                    position: ahead,
                    timestamp: Timestamp::now(),
                    state: "{}".into(),
                })
                .unwrap();
        })
        .await
        .unwrap();
        stores.events.close().await;
    }

    // The process manager's effects cannot be undone by a restart: refused, named.
    let stderr = refused_start(&place).await;
    assert!(stderr.contains("order-fulfillment at position"), "{stderr}");
    assert!(stderr.contains("cairn serve --repair"), "{stderr}");

    // With --repair: the process manager moves back to the head, the projection is
    // rebuilt, the snapshot and the dead letter past the head are gone.
    let server = Server::start_on_with(&place, &["--repair"]).await;
    let url = server.base.clone();
    let r2 =
        post(&url, "/customers", &json!({"customer_id": "c-2", "name": "B", "email": "b@x.io"}))
            .await;
    let p2 = r2["position"].as_u64().unwrap();
    assert!(p2 <= ahead, "the forged state is about positions new appends reuse");
    for (id, name) in [("c-1", "A"), ("c-2", "B")] {
        let (status, customer) = get(&url, &format!("/customers/{id}?min_position={p2}")).await;
        assert_eq!((status, customer["name"].clone()), (200, json!(name)), "{id}: {customer}");
    }
    let (_, letters) = get(&url, "/admin/dlq").await;
    assert_eq!(letters, json!([]));
    let (_, rows) = get(&url, "/admin/projections").await;
    let row = rows.as_array().unwrap().iter().find(|p| p["name"] == "customer_view").unwrap();
    assert_eq!(row["position"], row["head_position"], "{row}");
    server.kill().await;

    let stores = place.open().await;
    let (rm, snapshots) = (stores.readmodels.clone(), stores.snapshots.clone());
    let (fulfillment, snapshot) = tokio::task::spawn_blocking(move || {
        (rm.checkpoint("order-fulfillment").unwrap(), snapshots.load("c-1").unwrap())
    })
    .await
    .unwrap();
    assert!(fulfillment <= p2, "the process manager was moved back: {fulfillment}");
    assert!(snapshot.is_none_or(|s| s.position <= p2), "the forged snapshot is gone");
    stores.events.close().await;
}
