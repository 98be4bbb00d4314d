//! `cairn serve` as a child process: kill -9 under load loses no acknowledged append and
//! shows nothing half-written; SIGTERM drains; a second process on the same data dir fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

mod support;
use tokio::process::Command;

const EVENTS_PER_APPEND: u64 = 3;

/// What a writer saw acknowledged: stream, first version, event ids.
type Acked = Vec<(String, u64, Vec<String>)>;

async fn writer(base: String, w: usize, acked_total: Arc<AtomicUsize>) -> Acked {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut acked = Vec::new();
    for seq in 0u64.. {
        let stream = format!("dur-{w}-{}", seq % 4);
        let ids: Vec<String> = (0..EVENTS_PER_APPEND).map(|_| uuid_v4()).collect();
        let events: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| {
                json!({"event_id": id, "aggregate_type": "Load", "event_type": "Written",
                       "data": {"writer": w, "seq": seq, "k": k}})
            })
            .collect();
        let resp = client
            .post(format!("{base}/streams/{stream}"))
            .json(&json!({"events": events}))
            .send()
            .await;
        let Ok(resp) = resp else { break };
        if resp.status() != 200 {
            break;
        }
        let Ok(body) = resp.json::<Value>().await else { break };
        acked.push((stream, body["first_version"].as_u64().unwrap(), ids));
        acked_total.fetch_add(1, Ordering::Relaxed);
    }
    acked
}

fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn read_everything(base: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let page: Value = client
            .get(format!("{base}/all?from_position={from}&limit=10000"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return all;
        }
        from = page["next_position"].as_u64().unwrap();
        all.extend(events);
    }
}

cairn_testkit::backend_tests!(
    kill_9_under_load_loses_no_acknowledged_append,
    sigterm_drains_in_flight_appends_and_exits_cleanly,
);

async fn kill_9_under_load_loses_no_acknowledged_append(backend: cairn_testkit::Backend) {
    let place = backend.place().await;
    let server = support::Server::start_on(&place, &[]).await;
    let (mut child, base) = (server.child, server.base);
    let acked_total = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> =
        (0..8).map(|w| tokio::spawn(writer(base.clone(), w, Arc::clone(&acked_total)))).collect();
    // Kill mid-load: once a good number of appends are acknowledged, while writers are busy.
    while acked_total.load(Ordering::Relaxed) < 400 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() >= 400);

    let server = support::Server::start_on(&place, &[]).await;
    let (mut child, base) = (server.child, server.base);
    let all = read_everything(&base).await;

    // Every acknowledged append is there, at the version it was acknowledged with.
    let by_id: HashMap<&str, &Value> =
        all.iter().map(|e| (e["event_id"].as_str().unwrap(), e)).collect();
    for (stream, first_version, ids) in &acked {
        for (k, id) in ids.iter().enumerate() {
            let e =
                by_id.get(id.as_str()).unwrap_or_else(|| panic!("acknowledged event {id} lost"));
            assert_eq!(e["aggregate_id"], stream.as_str());
            assert_eq!(e["version"], first_version + k as u64);
        }
    }
    // Nothing half-written: positions strictly increase, every stream is dense, and every
    // append is whole (its 3 events are consecutive versions with k = 0, 1, 2).
    assert!(all.windows(2).all(|w| w[0]["position"].as_u64() < w[1]["position"].as_u64()));
    let mut streams: HashMap<&str, Vec<&Value>> = HashMap::new();
    for e in &all {
        streams.entry(e["aggregate_id"].as_str().unwrap()).or_default().push(e);
    }
    for (stream, events) in streams {
        assert_eq!(events.len() as u64 % EVENTS_PER_APPEND, 0, "{stream} holds a partial append");
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["version"], i as u64 + 1, "{stream} has a hole");
            assert_eq!(e["data"]["k"], i as u64 % EVENTS_PER_APPEND, "{stream} has a torn append");
            assert_eq!(e["data"]["seq"], events[i - i % 3]["data"]["seq"]);
        }
    }
    // And the restarted server takes writes again, continuing the versions.
    let r: Value = reqwest::Client::new()
        .post(format!("{base}/streams/dur-0-0"))
        .json(&json!({"events": [{"aggregate_type": "Load", "event_type": "After", "data": {}}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["position"].as_u64().unwrap() > all.last().unwrap()["position"].as_u64().unwrap());
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

async fn sigterm_drains_in_flight_appends_and_exits_cleanly(backend: cairn_testkit::Backend) {
    let place = backend.place().await;
    let server = support::Server::start_on(&place, &[]).await;
    let (mut child, base) = (server.child, server.base);
    let acked_total = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> =
        (0..4).map(|w| tokio::spawn(writer(base.clone(), w, Arc::clone(&acked_total)))).collect();
    while acked_total.load(Ordering::Relaxed) < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status =
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "exit status {status}");
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let server = support::Server::start_on(&place, &[]).await;
    let (mut child, base) = (server.child, server.base);
    let all = read_everything(&base).await;
    let ids: std::collections::HashSet<&str> =
        all.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    for (_, _, append) in &acked {
        assert!(
            append.iter().all(|id| ids.contains(id.as_str())),
            "acknowledged append lost on SIGTERM"
        );
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = support::Server::start(dir.path(), &[]).await.child;
    let second = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", support::free_port()), "--data-dir"])
        .arg(dir.path())
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(10), second).await.expect("fails fast").unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another cairn process"), "{stderr}");
    first.start_kill().unwrap();
    first.wait().await.unwrap();
}
