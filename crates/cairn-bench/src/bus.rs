//! The outbox relay beside raw JetStream acked publishing, measured in the same run
//! against the same NATS server, and the end-to-end latency from an append's
//! acknowledgement to a subscriber receiving the event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::EventStore;
use cairn_nats::{Relay, RelayConfig};
use cairn_sqlite::{SqliteEventStore, SqliteOptions, SqliteReadModels, Synchronous};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::report::{Table, rate};
use crate::store::append;

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Relay throughput over `events` stored events, and the raw ceiling.
pub async fn run(
    table: &mut Table,
    dir: &std::path::Path,
    nats: &str,
    events: u64,
    runs: usize,
) -> anyhow::Result<()> {
    let log = dir.join("bus-log");
    let _ = std::fs::remove_dir_all(&log);
    let options = SqliteOptions { synchronous: Synchronous::Off, ..SqliteOptions::default() };
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&log, &options)?);
    // Single-event appends from 32 writers over 512 streams, as commands write them: the
    // relay keeps at most one unacknowledged event per aggregate, so the spread matters.
    crate::store::concurrent_single(&store, 32, events).await?;
    let head = *store.head().borrow();
    let js = async_nats::jetstream::new(async_nats::connect(nats).await?);
    for run in 0..runs {
        // The relay, from position 0, into a fresh stream.
        let id = unique();
        let config = RelayConfig {
            stream: format!("BENCH_{}", id.to_uppercase()),
            subject_prefix: format!("b{id}.events"),
            ..RelayConfig::default()
        };
        let rm_dir = dir.join(format!("bus-rm-{run}"));
        let readmodels = Arc::new(SqliteReadModels::open(&rm_dir).map_err(anyhow::Error::msg)?);
        let relay =
            Arc::new(Relay::connect(nats, Arc::clone(&store), readmodels, config.clone()).await?);
        let (stop, stop_rx) = watch::channel(false);
        let mut progress = relay.progress();
        let start = Instant::now();
        let task = tokio::spawn(Arc::clone(&relay).run(stop_rx));
        progress.wait_for(|p| p.position >= head).await?;
        table.sample("relay $all -> JetStream", "events/s", rate(head, start.elapsed()));
        let _ = stop.send(true);
        task.await?;
        js.delete_stream(&config.stream).await?;

        // Raw: the same number of acked publishes of the same size, 256 in flight.
        let id = unique();
        let stream = format!("BENCHRAW_{}", id.to_uppercase());
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("r{id}.>")],
            ..Default::default()
        })
        .await?;
        let body = bytes::Bytes::from(vec![b'x'; 420]);
        let start = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        for i in 0..head {
            if in_flight.len() >= 256 {
                let ack: async_nats::jetstream::context::PublishAckFuture =
                    in_flight.pop_front().expect("non-empty");
                ack.await?;
            }
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(body.clone())
                .message_id(format!("{id}-{i}"));
            in_flight.push_back(js.send_publish(format!("r{id}.o.{}", i % 1000), message).await?);
        }
        for ack in in_flight {
            ack.await?;
        }
        table.sample(
            "raw JetStream acked publish, 256 in flight",
            "msgs/s",
            rate(head, start.elapsed()),
        );
        js.delete_stream(&stream).await?;
        let _ = std::fs::remove_dir_all(rm_dir);
    }
    store.close().await;
    latency(table, dir, nats).await
}

/// Appends one event at a time (durably) with the relay running; the time from the
/// append's acknowledgement to a subscriber receiving it.
async fn latency(table: &mut Table, dir: &std::path::Path, nats: &str) -> anyhow::Result<()> {
    let path = dir.join("bus-latency");
    let _ = std::fs::remove_dir_all(&path);
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteEventStore::open(&path, &SqliteOptions::default())?);
    let readmodels = Arc::new(SqliteReadModels::open(&path).map_err(anyhow::Error::msg)?);
    let id = unique();
    let config = RelayConfig {
        stream: format!("BENCHLAT_{}", id.to_uppercase()),
        subject_prefix: format!("l{id}.events"),
        ..RelayConfig::default()
    };
    let client = async_nats::connect(nats).await?;
    let mut sub = client.subscribe(format!("l{id}.events.>")).await?;
    let relay =
        Arc::new(Relay::connect(nats, Arc::clone(&store), readmodels, config.clone()).await?);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(Arc::clone(&relay).run(stop_rx));
    let mut latencies = Vec::new();
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    for i in 0..500u64 {
        let outcome = store.append(append(format!("order-{}", i % 50), 1)).await?;
        sent.insert(outcome.position, Instant::now());
        let message = tokio::time::timeout(Duration::from_secs(5), sub.next()).await?;
        let message = message.ok_or_else(|| anyhow::anyhow!("subscription ended"))?;
        let position: u64 = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Cairn-Position"))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0);
        if let Some(t) = sent.remove(&position) {
            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    table.sample("append -> subscriber, p50", "ms", pick(0.5));
    table.sample("append -> subscriber, p99", "ms", pick(0.99));
    let _ = stop.send(true);
    task.await?;
    async_nats::jetstream::new(client).delete_stream(&config.stream).await?;
    store.close().await;
    Ok(())
}
