//! `cairn serve --nats-url` killed with `-9` between the relay's acks and its checkpoint,
//! and restarted only after the stream's duplicate window (`--nats-duplicate-window-secs`,
//! here 2 s) has passed, so JetStream's de-duplication cannot hide a re-publish: every
//! event is in the stream exactly once, nothing skipped. Uses the machine's NATS
//! (`CAIRN_TEST_NATS_URL`), its own streams.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

mod support;

/// The duplicate window the servers give their streams.
const WINDOW_SECS: u64 = 2;

async fn relay_row(client: &reqwest::Client, base: &str, name: &str) -> Option<Value> {
    let rows: Value =
        client.get(format!("{base}/admin/projections")).send().await.ok()?.json().await.ok()?;
    rows.as_array()?.iter().find(|r| r["name"] == name).cloned()
}

async fn append(client: &reqwest::Client, base: &str, range: std::ops::Range<usize>) {
    for i in range {
        let body = json!({"events": [{"aggregate_type": "Account", "event_type": "Credited", "data": {"i": i}}]});
        let r =
            client.post(format!("{base}/streams/acct.{}", i % 4)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_ack_and_checkpoint_and_resumed_after_the_window_publishes_each_event_once()
{
    kill_between_ack_and_checkpoint(cairn_testkit::Backend::Sqlite).await;
}

/// The same on PostgreSQL: the checkpoint and its mark in one PostgreSQL transaction,
/// leadership released by the killed process's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_killed_between_ack_and_checkpoint_and_resumed_after_the_window_publishes_each_event_once()
 {
    if cairn_testkit::Backend::Postgres.enabled() {
        kill_between_ack_and_checkpoint(cairn_testkit::Backend::Postgres).await;
    }
}

async fn kill_between_ack_and_checkpoint(backend: cairn_testkit::Backend) {
    let Some(nats) = cairn_nats::testing::nats_url() else { return };
    let place = backend.place().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let stream = format!("CAIRN_TR_{}", id.to_uppercase());
    let prefix = format!("t{id}.events");
    let public = format!("CAIRN_TRP_{}", id.to_uppercase());
    let namespace = format!("t{id}.");
    let window = WINDOW_SECS.to_string();
    let base_env = [
        ("CAIRN_NATS_URL", nats.as_str()),
        ("CAIRN_NATS_INTERNAL", "true"),
        ("CAIRN_NATS_STREAM", stream.as_str()),
        ("CAIRN_NATS_SUBJECT_PREFIX", prefix.as_str()),
        ("CAIRN_NATS_PUBLIC_STREAM", public.as_str()),
        ("CAIRN_NATS_PUBLIC_NAMESPACE", namespace.as_str()),
        ("CAIRN_NATS_DUPLICATE_WINDOW_SECS", window.as_str()),
    ];
    // Every batch waits 1.5 s between its acks and its checkpoint.
    let mut env = base_env.to_vec();
    env.push(("CAIRN_FAULT_RELAY_CHECKPOINT_DELAY_MS", "1500"));
    let server = support::Server::start_on(&place, &env).await;
    let client = reqwest::Client::new();
    append(&client, &server.base, 0..60).await;

    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    let mut s = js.get_stream(&stream).await.unwrap();
    let config = s.info().await.unwrap().config.clone();
    assert_eq!(
        config.duplicate_window,
        Duration::from_secs(WINDOW_SECS),
        "the flag sets the window"
    );
    // All 60 published and acknowledged; the last batch's checkpoint not yet written.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.info().await.unwrap().state.messages < 60 {
        assert!(tokio::time::Instant::now() < deadline, "the relay never published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let name = format!("relay:{stream}");
    let row = relay_row(&client, &server.base, &name).await.expect("the relay's row");
    server.kill().await;
    let checkpoint = row["position"].as_u64().unwrap();
    assert!(checkpoint < 60, "the kill landed between acks and checkpoint: {row}");

    // Past the window, JetStream no longer recognises a re-published id.
    tokio::time::sleep(Duration::from_secs(WINDOW_SECS + 1)).await;
    let server = support::Server::start_on(&place, &base_env).await;
    append(&client, &server.base, 60..80).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let row = relay_row(&client, &server.base, &name).await;
        if row.as_ref().is_some_and(|r| r["position"] == 80) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "relay never caught up: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let state = s.info().await.unwrap().state.clone();
    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    for seq in state.first_sequence..=state.last_sequence {
        let m = s.get_raw_message(seq).await.unwrap();
        let e: Value = serde_json::from_slice(&m.payload).unwrap();
        *copies.entry(e["position"].as_u64().unwrap()).or_default() += 1;
        ids.insert(e["event_id"].as_str().unwrap().to_owned());
    }
    let once: BTreeMap<u64, usize> = (1..=80).map(|p| (p, 1)).collect();
    assert_eq!(copies, once, "every event exactly once, none skipped");
    assert_eq!(ids.len(), 80);

    let metrics =
        client.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    let published: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("cairn_relay_published_total") && l.contains(&format!("\"{name}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("relay metric");
    assert!(
        (published - 20.0).abs() < 0.5,
        "the restarted relay published only the 20 new events: {published}"
    );
    js.delete_stream(&stream).await.unwrap();
    let _ = js.delete_stream(&public).await;
    server.kill().await;
}
