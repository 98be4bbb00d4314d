//! `cairn serve --nats-url`: the outbox relay inside the server. Killed with `-9` between
//! publish and checkpoint, the restarted server re-publishes from its checkpoint and
//! JetStream drops the duplicates: every event is in the stream exactly once, in order
//! per aggregate. Uses the machine's NATS (`CAIRN_TEST_NATS_URL`), its own stream.

use std::time::Duration;

use serde_json::{Value, json};

mod support;

async fn relay_row(client: &reqwest::Client, base: &str, name: &str) -> Option<Value> {
    let rows: Value =
        client.get(format!("{base}/admin/projections")).send().await.ok()?.json().await.ok()?;
    rows.as_array()?.iter().find(|r| r["name"] == name).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_publish_and_checkpoint_loses_and_duplicates_nothing() {
    let Some(nats) = cairn_nats::testing::nats_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let stream = format!("CAIRN_T_{}", id.to_uppercase());
    let prefix = format!("t{id}.events");
    let env = [
        ("CAIRN_NATS_URL", nats.as_str()),
        ("CAIRN_NATS_STREAM", stream.as_str()),
        ("CAIRN_NATS_SUBJECT_PREFIX", prefix.as_str()),
        // Every batch waits 2 s between its acks and its checkpoint.
        ("CAIRN_FAULT_RELAY_CHECKPOINT_DELAY_MS", "2000"),
    ];
    let server = support::Server::start(dir.path(), &env).await;
    let client = reqwest::Client::new();
    for i in 0..60 {
        let body = json!({"events": [{"aggregate_type": "Account", "event_type": "Credited", "data": {"i": i}}]});
        let r = client
            .post(format!("{}/streams/acct.{}", server.base, i % 4))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Published and acknowledged, checkpoint not yet written: kill now.
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = js.get_stream(&stream).await.unwrap();
        if s.info().await.unwrap().state.messages >= 60 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay never published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill().await;

    // Restart without the delay; write a few more.
    let env = [
        ("CAIRN_NATS_URL", nats.as_str()),
        ("CAIRN_NATS_STREAM", stream.as_str()),
        ("CAIRN_NATS_SUBJECT_PREFIX", prefix.as_str()),
    ];
    let server = support::Server::start(dir.path(), &env).await;
    for i in 60..80 {
        let body = json!({"events": [{"aggregate_type": "Account", "event_type": "Credited", "data": {"i": i}}]});
        client
            .post(format!("{}/streams/acct.{}", server.base, i % 4))
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    let name = format!("relay:{stream}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let row = relay_row(&client, &server.base, &name).await;
        if row.as_ref().is_some_and(|r| r["position"] == 80) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "relay never caught up: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics =
        client.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    let republished: f64 = metrics
        .lines()
        .find(|l| l.starts_with("cairn_relay_published_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("relay metric");
    // Only 20 events are new since the kill: the rest were re-published from the old
    // checkpoint (and dropped by JetStream as duplicates).
    assert!(
        republished > 20.0,
        "the restarted relay re-published from its old checkpoint: {republished}"
    );

    let mut s = js.get_stream(&stream).await.unwrap();
    let count = s.info().await.unwrap().state.messages;
    assert_eq!(count, 80, "exactly once after dedup");
    let mut versions = std::collections::HashMap::new();
    for seq in 1..=count {
        let m = s.get_raw_message(seq).await.unwrap();
        let e: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(e["position"], seq, "$all order");
        let v = e["version"].as_u64().unwrap();
        let prev = versions.insert(e["aggregate_id"].as_str().unwrap().to_owned(), v);
        assert_eq!(prev.unwrap_or(0) + 1, v, "per-aggregate order");
        assert!(m.subject.starts_with(&format!("{prefix}.Account.acct%2E")), "{}", m.subject);
    }
    js.delete_stream(&stream).await.unwrap();
    server.kill().await;
}
