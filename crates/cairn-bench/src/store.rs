//! Scenarios on the real embedded store, through the `EventStore` trait.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{AllFilter, Append, EventStore, ExpectedVersion, NewEvent, StreamRead};
use cairn_sqlite::{SqliteEventStore, SqliteOptions};
use serde_json::value::RawValue;

use crate::Sizes;
use crate::report::{Table, rate};

/// A realistic `OrderCreated` payload (~110 bytes) and metadata (~70 bytes).
pub const DATA: &str = r#"{"customer_id":"cust-456","items":[{"product_id":"prod-789","quantity":2,"price":29.99}],"total":59.98}"#;
/// Metadata as the command path writes it.
pub const METADATA: &str =
    r#"{"correlation_id":"req-abc","causation_id":null,"user_id":"user-001"}"#;

pub(crate) fn event() -> NewEvent {
    NewEvent {
        metadata: RawValue::from_string(METADATA.to_owned()).expect("valid JSON"),
        ..NewEvent::new("OrderCreated", RawValue::from_string(DATA.to_owned()).expect("valid JSON"))
    }
}

pub(crate) fn append(stream: String, n: usize) -> Append {
    Append {
        aggregate_id: stream,
        aggregate_type: "Order".into(),
        expected: ExpectedVersion::Any,
        events: (0..n).map(|_| event()).collect(),
        idempotency: None,
    }
}

fn fresh_store(
    dir: &Path,
    name: &str,
) -> anyhow::Result<(Arc<SqliteEventStore>, std::path::PathBuf)> {
    let path = dir.join(name);
    let _ = std::fs::remove_dir_all(&path);
    Ok((Arc::new(SqliteEventStore::open(&path, &SqliteOptions::default())?), path))
}

/// Appends of one event by `writers` concurrent tasks, `total` appends in all.
pub(crate) async fn concurrent_single<S: EventStore + ?Sized>(
    store: &Arc<S>,
    writers: u64,
    total: u64,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            for i in 0..total / writers {
                store.append(append(format!("order-{w}-{}", i % 16), 1)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed())
}

/// One run of durable append throughput at 1, 16 and 64 writers, and 100-event batches.
pub async fn appends(
    table: &mut Table,
    dir: &Path,
    sizes: Sizes,
    run: usize,
) -> anyhow::Result<()> {
    for writers in [1u64, 16, 64] {
        // One writer waits for an fsync per append: fewer appends keep the run short.
        let total = if writers == 1 { sizes.single_appends / 4 } else { sizes.single_appends };
        let (store, path) = fresh_store(dir, &format!("appends-{writers}-{run}"))?;
        let elapsed = concurrent_single(&store, writers, total).await?;
        let stats = store.commit_stats();
        eprintln!(
            "    {writers} writers: {} appends in {} group commits ({:.1} per fsync)",
            stats.appends,
            stats.groups,
            stats.appends as f64 / stats.groups.max(1) as f64
        );
        table.sample(
            &format!("append 1 event, {writers} writers"),
            "events/s",
            rate(total / writers * writers, elapsed),
        );
        store.close().await;
        drop(store);
        let _ = std::fs::remove_dir_all(path);
    }
    let (store, path) = fresh_store(dir, &format!("batches-{run}"))?;
    let start = Instant::now();
    for i in 0..sizes.batches {
        store.append(append(format!("order-{}", i % 16), 100)).await?;
    }
    table.sample(
        "append 100-event batches, 1 writer",
        "events/s",
        rate(sizes.batches * 100, start.elapsed()),
    );
    store.close().await;
    drop(store);
    let _ = std::fs::remove_dir_all(path);
    Ok(())
}

/// Reading one long stream and `$all`, beside raw queries on the same file.
pub async fn reads(table: &mut Table, dir: &Path, sizes: Sizes, runs: usize) -> anyhow::Result<()> {
    let (store, path) = fresh_store(dir, "reads")?;
    // `$all` of `all_events`, with one long stream interleaved among 1000 others.
    let mut written = 0;
    let mut long_written = 0;
    let mut i = 0u64;
    while written < sizes.all_events {
        let (stream, n) = if i.is_multiple_of(10) && long_written < sizes.stream_events {
            long_written += 1000;
            ("order-long".to_owned(), 1000)
        } else {
            (format!("order-{}", i % 1000), 1000)
        };
        store.append(append(stream, n)).await?;
        written += n as u64;
        i += 1;
    }
    let db = store.path().to_owned();
    let all_name = if sizes.all_events == 1_000_000 {
        "read $all (1M events)".to_owned()
    } else {
        format!("read $all ({} events)", sizes.all_events)
    };

    for _ in 0..runs {
        let start = Instant::now();
        let mut from = 0;
        let mut count = 0u64;
        loop {
            let page = store.read_all(from, 10_000, &AllFilter::default()).await?;
            if page.events.is_empty() {
                break;
            }
            count += page.events.len() as u64;
            from = page.scanned_to;
        }
        table.sample(&all_name, "events/s", rate(count, start.elapsed()));
        table.sample("raw scan of events", "events/s", crate::raw::scan_all(&db)?);

        // Several reads per run, alternating with the raw query, so both see the same cache.
        for _ in 0..3 {
            let start = Instant::now();
            let slice =
                store.read_stream("order-long", StreamRead::forward_from(1, 10_000)).await?;
            let elapsed = start.elapsed();
            anyhow::ensure!(
                slice.events.len() as u64 == sizes.stream_events.min(10_000),
                "short stream read"
            );
            table.sample(
                "read one 10k-event stream",
                "events/s",
                rate(slice.events.len() as u64, elapsed),
            );
            table.sample(
                "read one 10k-event stream (latency)",
                "ms",
                elapsed.as_secs_f64() * 1000.0,
            );
            table.sample(
                "raw query of one 10k stream",
                "events/s",
                crate::raw::query_stream(&db, "order-long")?,
            );
        }
    }
    store.close().await;
    drop(store);
    let _ = std::fs::remove_dir_all(path);
    Ok(())
}
