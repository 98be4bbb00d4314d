//! The relay when NATS misbehaves, on private `nats-server` processes (never the shared
//! one): a server restarted mid-stream, and a three-node cluster (R3 stream) losing a node.
//! In both cases every event ends up in the stream exactly once.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::readmodel::ReadModelStore;
use cairn_core::{Append, EventStore, ExpectedVersion, NewEvent};
use cairn_nats::testing::{NatsServer, free_port};
use cairn_nats::{Relay, RelayConfig};
use serde_json::value::RawValue;
use tokio::sync::watch;

const EVENTS: u64 = 2000;

async fn stores(dir: &std::path::Path) -> (Arc<dyn EventStore>, Arc<dyn ReadModelStore>) {
    let store =
        cairn_sqlite::SqliteEventStore::open(dir, &cairn_sqlite::SqliteOptions::default()).unwrap();
    let store: Arc<dyn EventStore> = Arc::new(store);
    for chunk in 0..EVENTS / 100 {
        for s in 0..10 {
            let events = (0..10)
                .map(|k| {
                    let data =
                        RawValue::from_string(format!(r#"{{"c":{chunk},"k":{k}}}"#)).unwrap();
                    NewEvent::new("Credited", data)
                })
                .collect();
            let append = Append {
                aggregate_id: format!("acct-{s}"),
                aggregate_type: "Account".into(),
                expected: ExpectedVersion::Any,
                events,
                idempotency: None,
            };
            store.append(append).await.unwrap();
        }
    }
    (store, Arc::new(cairn_sqlite::SqliteReadModels::open(dir).unwrap()))
}

fn config(replicas: usize) -> RelayConfig {
    // Small windows of acks, so that the failure lands mid-stream.
    RelayConfig { max_in_flight: 8, batch: 100, replicas, ..RelayConfig::default() }
}

async fn count(url: &str, stream: &str) -> u64 {
    let servers: Vec<&str> = url.split(',').collect();
    let js = async_nats::jetstream::new(async_nats::connect(servers).await.unwrap());
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_stream_nothing_is_lost_and_the_relay_resumes_by_itself() {
    if cairn_nats::testing::nats_url().is_none() {
        return;
    }
    let (data, nats_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut server = NatsServer::start("solo", nats_dir.path());
    let (store, readmodels) = stores(data.path()).await;
    let relay = Arc::new(
        Relay::connect(&server.url(), Arc::clone(&store), readmodels, config(1)).await.unwrap(),
    );
    let (_stop, stop_rx) = watch::channel(false);
    let mut progress = relay.progress();
    tokio::spawn(Arc::clone(&relay).run(stop_rx));
    progress.wait_for(|p| p.published >= 300).await.unwrap();
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    tokio::time::timeout(Duration::from_secs(60), progress.wait_for(|p| p.position >= EVENTS))
        .await
        .expect("the relay resumes after NATS comes back")
        .unwrap();
    assert_eq!(count(&server.url(), "CAIRN_EVENTS").await, EVENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_keeps_every_event_when_a_node_dies_mid_stream() {
    if cairn_nats::testing::nats_url().is_none() {
        return;
    }
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<NatsServer> = (0..3)
        .map(|i| {
            let routes =
                cluster.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| *p).collect();
            NatsServer::start_clustered(&format!("n{i}"), dirs[i].path(), cluster[i], routes)
        })
        .collect();
    let urls = nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",");
    let data = tempfile::tempdir().unwrap();
    let (store, readmodels) = stores(data.path()).await;
    // The cluster needs a moment to elect its JetStream meta leader.
    let mut relay = None;
    for _ in 0..100 {
        match Relay::connect(&urls, Arc::clone(&store), Arc::clone(&readmodels), config(3)).await {
            Ok(r) => {
                relay = Some(Arc::new(r));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let relay = relay.expect("an R3 stream on the cluster");
    let (_stop, stop_rx) = watch::channel(false);
    let mut progress = relay.progress();
    tokio::spawn(Arc::clone(&relay).run(stop_rx));
    progress.wait_for(|p| p.published >= 500).await.unwrap();
    nodes[0].kill();
    tokio::time::timeout(Duration::from_secs(60), progress.wait_for(|p| p.position >= EVENTS))
        .await
        .expect("the relay finishes on the two surviving nodes")
        .unwrap();
    let survivors = format!("{},{}", nodes[1].url(), nodes[2].url());
    assert_eq!(count(&survivors, "CAIRN_EVENTS").await, EVENTS, "every event kept, once");
}
