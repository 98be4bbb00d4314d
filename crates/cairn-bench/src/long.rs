//! Long streams (issue #18 item 5): 10,000 `ItemAdded` appended to one order through the
//! store API, then how long until every consumer has caught up, and how long the next
//! command on that order takes. Each repetition runs on a fresh server; the worst of the
//! repetitions is what the targets are about.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cqrs::Server;
use crate::report::Table;

/// Events appended to the one order, in appends of [`APPEND_EVENTS`].
const STREAM_EVENTS: u64 = 10_000;
/// Events per store-API append.
const APPEND_EVENTS: u64 = 500;
/// How long a consumer may take before the scenario gives up on it.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// Target: every consumer (the relay aside) caught up this soon after the last append.
const CATCH_UP_TARGET_MS: f64 = 150.0;
/// Target: the next command's latency.
const COMMAND_TARGET_MS: f64 = 5.0;
/// The order every repetition grows.
const ORDER: &str = "order-long";

/// One append of `APPEND_EVENTS` lines, each a new product (so the order's document grows).
fn append_body(first_line: u64, expected_version: u64) -> Value {
    let events: Vec<Value> = (first_line..first_line + APPEND_EVENTS)
        .map(|k| {
            json!({
                "aggregate_type": "Order",
                "event_type": "ItemAdded",
                "data": {"product_id": format!("p-{k}"), "quantity": 1, "price": "1.00"},
            })
        })
        .collect();
    json!({"expected_version": expected_version, "events": events})
}

/// One repetition: (ms from the last append's answer until every consumer reached its
/// position, ms of the next command).
async fn once(dir: &Path) -> anyhow::Result<(f64, f64)> {
    let server = Server::start(dir).await?;
    server.post("/orders", &json!({"order_id": ORDER, "customer_id": "c", "items": []})).await?;
    let mut version = 1;
    let mut position = 0;
    let mut answered = Instant::now();
    for k in 0..STREAM_EVENTS / APPEND_EVENTS {
        let r = server
            .post(&format!("/streams/{ORDER}"), &append_body(k * APPEND_EVENTS, version))
            .await?;
        answered = Instant::now();
        version = r["last_version"].as_u64().unwrap_or_default();
        position = r["position"].as_u64().unwrap_or_default();
    }
    anyhow::ensure!(version == STREAM_EVENTS + 1, "the order is at version {version}");
    for (_, consumer) in server.consumers.all() {
        consumer
            .wait_for(position, CATCH_UP_TIMEOUT)
            .await
            .map_err(|p| anyhow::anyhow!("{} stuck at {p}", consumer.name()))?;
    }
    let caught_up = answered.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    server
        .post(
            &format!("/orders/{ORDER}/items"),
            &json!({"product_id": "py", "quantity": 1, "price": "1.00"}),
        )
        .await?;
    let command = t.elapsed().as_secs_f64() * 1000.0;
    server.stop().await;
    Ok((caught_up, command))
}

/// `repetitions` repetitions; each sampled, then the worst beside its target.
pub async fn run(table: &mut Table, dir: &Path, repetitions: usize) -> anyhow::Result<()> {
    let (mut worst_catch_up, mut worst_command) = (0.0f64, 0.0f64);
    for _ in 0..repetitions {
        let (caught_up, command) = once(&dir.join("long-stream")).await?;
        table.sample("10k ItemAdded on one order → all consumers caught up", "ms", caught_up);
        table.sample("10k ItemAdded on one order → next command", "ms", command);
        worst_catch_up = worst_catch_up.max(caught_up);
        worst_command = worst_command.max(command);
    }
    table.sample(
        &format!("… caught up, worst of {repetitions} (target <= {CATCH_UP_TARGET_MS} ms)"),
        "ms",
        worst_catch_up,
    );
    table.sample(
        &format!("… next command, worst of {repetitions} (target <= {COMMAND_TARGET_MS} ms)"),
        "ms",
        worst_command,
    );
    Ok(())
}
