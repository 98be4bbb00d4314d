//! #15 item 5: an admin action sent to any of the `cairn serve` processes sharing one
//! PostgreSQL database works. The process that does not lead the consumer forwards the
//! request to the one that does (found in the leader registry, under its advertised URL),
//! answers with its answer and says who handled it; a request that was forwarded already
//! is never forwarded again.

use std::time::{Duration, Instant};

use cairn_core::readmodel::DeadLetter;
use cairn_core::timestamp::Timestamp;
use serde_json::{Value, json};

mod support;

/// The whole projection these tests steer.
const VIEW: &str = "customer_view";
/// Longest wait for what the processes publish to each other (leaders, statuses).
const SETTLE: Duration = Duration::from_secs(30);

async fn get(client: &reqwest::Client, base: &str, path: &str) -> Value {
    let r = client.get(format!("{base}{path}")).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// `customer_view`'s row of `GET /admin/projections` on `base`.
async fn row(client: &reqwest::Client, base: &str) -> Value {
    let rows = get(client, base, "/admin/projections").await;
    rows.as_array().unwrap().iter().find(|r| r["name"] == VIEW).unwrap().clone()
}

/// Waits until `check` holds of `customer_view`'s row on `base`; the last row otherwise.
async fn until(
    client: &reqwest::Client,
    base: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let r = row(client, base).await;
        if check(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what} on {base}: never; last row {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parks a dead letter of `customer_view` at `position` (the event there is a customer's
/// registration it handles again harmlessly), with no server running: the consumer's state
/// is written only by its leader, so the forger leads it first.
async fn forge_dead_letter(place: &cairn_testkit::Place, position: u64) {
    let stores = place.open().await;
    let rm = stores.readmodels.clone();
    tokio::task::spawn_blocking(move || {
        // The killed server's sessions end when PostgreSQL notices the closed sockets.
        let deadline = Instant::now() + SETTLE;
        let fence = loop {
            if let Some(fence) = rm.try_lead(VIEW).unwrap() {
                break fence;
            }
            assert!(Instant::now() < deadline, "{VIEW}: never led");
            std::thread::sleep(Duration::from_millis(50));
        };
        let checkpoint = rm.checkpoint(VIEW).unwrap();
        rm.park(
            &fence,
            checkpoint,
            &DeadLetter {
                id: 0,
                projection: VIEW.into(),
                position,
                aggregate_id: "c-1".into(),
                event_type: "CustomerRegistered".into(),
                error: "forged".into(),
                attempts: 3,
                first_failed_at: Timestamp::now(),
                last_failed_at: Timestamp::now(),
            },
        )
        .unwrap();
        rm.resign(VIEW);
    })
    .await
    .unwrap();
    stores.events.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_action_sent_to_the_process_that_does_not_lead_is_carried_out_by_the_leader() {
    let backend = cairn_testkit::Backend::Postgres;
    if !backend.enabled() {
        return;
    }
    let place = backend.place().await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();

    // A customer, projected, then a dead letter of the customer view for its event.
    let first = support::Server::start_on(&place, &[]).await;
    let r = client
        .post(format!("{}/customers", first.base))
        .json(&json!({"customer_id": "c-1", "name": "A", "email": "a@x.io"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let position = r.json::<Value>().await.unwrap()["position"].as_u64().unwrap();
    get(&client, &first.base, &format!("/customers/c-1?min_position={position}")).await;
    first.kill().await;
    forge_dead_letter(&place, position).await;

    // Two processes; each advertises `http://127.0.0.1:<port>` (the default for a
    // loopback --listen).
    let a = support::Server::start_on(&place, &[]).await;
    let b = support::Server::start_on(&place, &[]).await;
    // (The first process's row, naming a process now gone, is stale until one of them
    // takes the consumer.)
    let urls = [a.base.as_str(), b.base.as_str()];
    let on_a = until(&client, &a.base, "a settled leader", |r| {
        urls.iter().any(|u| r["leader"]["url"] == *u) && r["status"] == "running"
    })
    .await;
    let a_leads = on_a["leader"]["leading"] == true;
    let (leader, follower) = if a_leads { (&a, &b) } else { (&b, &a) };
    assert_eq!(on_a["leader"]["url"], leader.base.as_str(), "{on_a}");
    // The follower names the leader's URL.
    let seen = until(&client, &follower.base, "the leader's URL", |r| {
        r["leader"]["url"] == leader.base.as_str()
    })
    .await;
    assert_eq!(seen["leader"]["leading"], false, "{seen}");

    // The loop guard: a forwarded request is not forwarded again.
    let r = client
        .post(format!("{}/admin/projections/{VIEW}/pause", follower.base))
        .header("Cairn-Forwarded", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.headers().get("cairn-handled-by").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_leader", "{body}");
    assert_eq!(body["leader"], leader.base.as_str(), "{body}");
    assert_eq!(row(&client, &leader.base).await["status"], "running", "nothing was paused");

    // A dead letter retried through the follower: re-run by the leader.
    let letters = get(&client, &follower.base, &format!("/admin/dlq?projection={VIEW}")).await;
    let id = letters.as_array().unwrap().first().expect("the forged dead letter")["id"]
        .as_i64()
        .unwrap();
    let r = client.post(format!("{}/admin/dlq/{id}/retry", follower.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cairn-handled-by"], leader.base.as_str());
    for process in [leader, follower] {
        until(&client, &process.base, "no dead letter", |r| r["dlq_depth"] == 0).await;
    }
    assert_eq!(get(&client, &leader.base, "/admin/dlq").await, json!([]));

    // Pause and resume through the follower: carried out by the leader, and both
    // processes show the consumer's status.
    for (action, status) in [("pause", "paused"), ("resume", "running")] {
        let r = client
            .post(format!("{}/admin/projections/{VIEW}/{action}", follower.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{action}");
        assert_eq!(r.headers()["cairn-handled-by"], leader.base.as_str(), "{action}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["status"], status, "{action}: the leader's row {answer}");
        assert_eq!(answer["leader"]["leading"], true, "{action}: {answer}");
        for process in [leader, follower] {
            until(&client, &process.base, status, |r| r["status"] == status).await;
        }
    }

    // A rebuild through the follower: started on the leader, and it completes.
    let r = client
        .post(format!("{}/admin/projections/{VIEW}/rebuild", follower.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["cairn-handled-by"], leader.base.as_str());
    until(&client, &leader.base, "the rebuild done", |r| {
        r["rebuilds_completed"] == 1 && r["status"] == "running"
    })
    .await;
    until(&client, &follower.base, "running after the rebuild", |r| r["status"] == "running").await;
    let customer = get(&client, &follower.base, "/customers/c-1").await;
    assert_eq!(customer["name"], "A", "{customer}");

    // The leader gone: the follower takes over and acts itself (no forwarding).
    let (gone, survivor) = if a_leads { (a, b) } else { (b, a) };
    gone.kill().await;
    until(&client, &survivor.base, "the takeover", |r| {
        r["leader"]["leading"] == true && r["leader"]["url"] == survivor.base.as_str()
    })
    .await;
    let r = client
        .post(format!("{}/admin/projections/{VIEW}/pause", survivor.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("cairn-handled-by").is_none(), "carried out here");
    survivor.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_cannot_be_reached_is_named_in_a_503() {
    let backend = cairn_testkit::Backend::Postgres;
    if !backend.enabled() {
        return;
    }
    let place = backend.place().await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    // The first process leads every consumer, under a URL nothing answers at.
    let nowhere = format!("http://127.0.0.1:{}", support::free_port());
    let leader = support::Server::start_on_args(&place, &["--advertise-url", &nowhere], &[]).await;
    until(&client, &leader.base, "the lead", |r| r["leader"]["url"] == nowhere.as_str()).await;
    let follower = support::Server::start_on(&place, &[]).await;
    until(&client, &follower.base, "the leader's URL", |r| {
        r["leader"]["leading"] == false && r["leader"]["url"] == nowhere.as_str()
    })
    .await;
    let r = client
        .post(format!("{}/admin/projections/{VIEW}/pause", follower.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "leader_unreachable", "{body}");
    assert_eq!(body["leader"], nowhere.as_str(), "{body}");
    assert_eq!(row(&client, &leader.base).await["status"], "running", "nothing was paused");
    follower.kill().await;
    leader.kill().await;
}
