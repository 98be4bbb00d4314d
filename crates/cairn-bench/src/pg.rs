//! The PostgreSQL backend beside raw PostgreSQL ceilings measured in the same run: plain
//! `tokio-postgres` inserts into a table of the events' shape, one connection per client,
//! and a batched upsert into a read-model-shaped table. Each scenario runs in a fresh
//! schema (dropped afterwards).

use std::sync::Arc;
use std::time::Instant;

use cairn_core::{AllFilter, EventStore, StreamRead};
use cairn_postgres::testing::TestDatabase;
use cairn_postgres::{PgOptions, PgReadModels, open};
use tokio_postgres::NoTls;

use crate::report::{Table, rate};
use crate::store::{DATA, METADATA, append, concurrent_single};
use crate::{Group, Sizes};

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

pub(crate) async fn stores(
    db: &TestDatabase,
) -> anyhow::Result<(Arc<dyn EventStore>, Arc<PgReadModels>)> {
    let (events, readmodels) = open(&db.url, &PgOptions::from_env()).await?;
    Ok((Arc::new(events), Arc::new(readmodels)))
}

const RAW_TABLE: &str = "CREATE TABLE raw_events (
    position bigserial PRIMARY KEY, event_id uuid NOT NULL UNIQUE, aggregate_id text NOT NULL,
    aggregate_type text NOT NULL, event_type text NOT NULL, version bigint NOT NULL,
    timestamp_us bigint NOT NULL, data text NOT NULL, metadata text NOT NULL,
    UNIQUE (aggregate_id, version))";

/// `clients` connections each inserting `rows` rows per transaction; events/s.
async fn raw_insert(admin: &str, clients: u64, total: u64, rows: u64) -> anyhow::Result<f64> {
    let db = TestDatabase::create_at(admin).await;
    connect(&db.url).await?.batch_execute(RAW_TABLE).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    let txns = total / clients / rows;
    for c in 0..clients {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await?;
            let stmt = client
                .prepare(
                    "INSERT INTO raw_events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp_us, data, metadata)
                     VALUES ($1, $2, 'Order', 'OrderCreated', $3, 0, $4, $5)",
                )
                .await?;
            for t in 0..txns {
                let tx = client.transaction().await?;
                for r in 0..rows {
                    let version = (t * rows + r) as i64 + 1;
                    tx.execute(
                        &stmt,
                        &[&uuid::Uuid::new_v4(), &format!("order-{c}"), &version, &DATA, &METADATA],
                    )
                    .await?;
                }
                tx.commit().await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(rate(txns * clients * rows, start.elapsed()))
}

/// Batched upserts (500 rows per transaction, `unnest`) into a read-model-shaped table with
/// the same expression indexes as `order_summary`; rows/s.
async fn raw_upsert(admin: &str, rows: u64) -> anyhow::Result<f64> {
    let db = TestDatabase::create_at(admin).await;
    let mut client = connect(&db.url).await?;
    client
        .batch_execute(
            "CREATE TABLE raw_rm (key text PRIMARY KEY, doc text NOT NULL);
             CREATE INDEX ON raw_rm (((doc::jsonb) ->> 'customer_id'), key);
             CREATE INDEX ON raw_rm (((doc::jsonb) ->> 'status'), key);",
        )
        .await?;
    let keys_total = (rows / 4).max(1);
    let start = Instant::now();
    let mut written = 0;
    while written < rows {
        let n = 500.min(rows - written);
        let keys: Vec<String> = (written..written + n)
            .map(|i| format!("order-{}", i % keys_total))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let docs: Vec<String> = keys
            .iter()
            .map(|k| format!(r#"{{"order_id":"{k}","customer_id":"cust-1","status":"confirmed","total":"179.94","item_count":3}}"#))
            .collect();
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO raw_rm (key, doc) SELECT * FROM unnest($1::text[], $2::text[])
             ON CONFLICT (key) DO UPDATE SET doc = excluded.doc",
            &[&keys, &docs],
        )
        .await?;
        tx.commit().await?;
        written += n;
    }
    Ok(rate(rows, start.elapsed()))
}

/// Every PostgreSQL scenario, `runs` times.
pub async fn run(
    table: &mut Table,
    admin: &str,
    sizes: Sizes,
    runs: usize,
    only: &[Group],
) -> anyhow::Result<()> {
    for run in 0..runs {
        if !only.contains(&Group::Appends) {
            break;
        }
        eprintln!("  postgres run {}", run + 1);
        for writers in [1u64, 16, 64] {
            let total = if writers == 1 { sizes.single_appends / 4 } else { sizes.single_appends };
            let db = TestDatabase::create_at(admin).await;
            let (store, _rm) = open(&db.url, &PgOptions::from_env()).await?;
            let store = Arc::new(store);
            let elapsed = concurrent_single(&store, writers, total).await?;
            let (groups, appends, _) = store.commit_stats();
            eprintln!(
                "    {writers} writers: {appends} appends in {groups} group commits ({:.1} per commit)",
                appends as f64 / groups.max(1) as f64
            );
            table.sample(
                &format!("pg: append 1 event, {writers} writers"),
                "events/s",
                rate(total / writers * writers, elapsed),
            );
            store.close().await;
            table.sample(
                &format!("pg: raw INSERT 1 row/txn, {writers} clients"),
                "events/s",
                raw_insert(admin, writers, total, 1).await?,
            );
        }
        table.sample(
            "pg: raw INSERT 10 rows/txn, 16 clients",
            "events/s",
            raw_insert(admin, 16, sizes.single_appends, 10).await?,
        );
        let db = TestDatabase::create_at(admin).await;
        let (store, _rm) = stores(&db).await?;
        let start = Instant::now();
        for i in 0..sizes.batches {
            store.append(append(format!("order-{}", i % 16), 100)).await?;
        }
        table.sample(
            "pg: append 100-event batches, 1 writer",
            "events/s",
            rate(sizes.batches * 100, start.elapsed()),
        );
        store.close().await;
        table.sample(
            "pg: raw INSERT 100 rows/txn, 1 client",
            "events/s",
            raw_insert(admin, 1, sizes.batches * 100, 100).await?,
        );
    }

    if only.contains(&Group::Cqrs) {
        for _ in 0..runs {
            http_commands(table, admin, sizes).await?;
        }
    }
    if only.contains(&Group::Reads) {
        reads(table, admin, sizes, runs).await?;
    }
    if only.contains(&Group::Cqrs) {
        catch_up(table, admin, sizes, runs).await?;
    }
    Ok(())
}

/// Create-order commands over HTTP at 16 clients, on PostgreSQL stores.
async fn http_commands(table: &mut Table, admin: &str, sizes: Sizes) -> anyhow::Result<()> {
    let db = TestDatabase::create_at(admin).await;
    let (events, readmodels) = stores(&db).await?;
    let per_client = if sizes.single_appends >= 20_000 { 150 } else { 40 };
    crate::cqrs::create_orders(
        table,
        "pg: HTTP create order, 16 clients",
        cairn_server::Stores { events, readmodels: readmodels.clone(), snapshots: readmodels },
        16,
        per_client,
    )
    .await
}

/// Reading one long stream and `$all`, beside raw `SELECT`s of the same rows.
async fn reads(table: &mut Table, admin: &str, sizes: Sizes, runs: usize) -> anyhow::Result<()> {
    // Reads: one long stream among others, and `$all`.
    let events_total = sizes.all_events;
    let db = TestDatabase::create_at(admin).await;
    let (store, readmodels) = stores(&db).await?;
    let mut written = 0;
    let mut long_written = 0;
    let mut i = 0u64;
    while written < events_total {
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
    let raw = connect(&db.url).await?;
    for _ in 0..runs {
        let start = Instant::now();
        let (mut from, mut count) = (0, 0u64);
        loop {
            let page = store.read_all(from, 10_000, &AllFilter::default()).await?;
            if page.events.is_empty() {
                break;
            }
            count += page.events.len() as u64;
            from = page.scanned_to;
        }
        table.sample(
            &format!("pg: read $all ({events_total} events)"),
            "events/s",
            rate(count, start.elapsed()),
        );
        let start = Instant::now();
        let rows = raw
            .query("SELECT position, event_id, aggregate_id, aggregate_type, event_type, version, timestamp_us, data, metadata FROM events ORDER BY position", &[])
            .await?;
        table.sample(
            "pg: raw SELECT of all events",
            "events/s",
            rate(rows.len() as u64, start.elapsed()),
        );
        drop(rows);
        for _ in 0..3 {
            let start = Instant::now();
            let slice =
                store.read_stream("order-long", StreamRead::forward_from(1, 10_000)).await?;
            table.sample(
                "pg: read one 10k-event stream",
                "events/s",
                rate(slice.events.len() as u64, start.elapsed()),
            );
            let start = Instant::now();
            let rows = raw
                .query("SELECT position, event_id, aggregate_id, aggregate_type, event_type, version, timestamp_us, data, metadata FROM events WHERE aggregate_id = 'order-long' ORDER BY version", &[])
                .await?;
            table.sample(
                "pg: raw SELECT of one 10k stream",
                "events/s",
                rate(rows.len() as u64, start.elapsed()),
            );
        }
    }
    store.close().await;
    drop(readmodels);

    Ok(())
}

/// `order_summary` caught up over an order log, beside the raw batched upsert.
async fn catch_up(table: &mut Table, admin: &str, sizes: Sizes, runs: usize) -> anyhow::Result<()> {
    // Projection catch-up: order_summary over an order log, beside the raw batched upsert.
    let catch_up_events = (sizes.all_events / 4).max(4);
    let db = TestDatabase::create_at(admin).await;
    let (store, _) = stores(&db).await?;
    eprintln!("  building a PostgreSQL log of {catch_up_events} order events");
    crate::cqrs::fill_orders(&store, catch_up_events).await?;
    store.close().await;
    for _ in 0..runs {
        let (store, readmodels) = stores(&db).await?;
        // A fresh read model each run: drop the projection's table and checkpoint.
        let admin_client = connect(&db.url).await?;
        admin_client
            .batch_execute("DROP TABLE IF EXISTS rm_order_summary; DELETE FROM checkpoints; DELETE FROM projection_versions;")
            .await?;
        let (_handle, stop, head, elapsed) =
            crate::cqrs::order_summary_over(&store, readmodels).await?;
        let _ = stop.send(true);
        table.sample(
            &format!("pg: projection catch-up, order_summary over {catch_up_events} events"),
            "events/s",
            rate(head, elapsed),
        );
        store.close().await;
        table.sample(
            "pg: raw batched upsert, read-model-shaped table",
            "rows/s",
            raw_upsert(admin, catch_up_events / 4).await?,
        );
        for processes in [1usize, 2] {
            let r = partitioned(&db.url, processes, 4).await?;
            table.sample(
                &format!("pg: partitioned catch-up (4 partitions), {processes} process(es)"),
                "events/s",
                r,
            );
        }
    }
    Ok(())
}

/// `order_summary` as `partitions` partitions over `processes` store instances (each
/// with its own pools and sessions, as separate processes would have), from position 0;
/// events/s until every partition's checkpoint reached the head.
async fn partitioned(url: &str, processes: usize, partitions: u32) -> anyhow::Result<f64> {
    let admin = connect(url).await?;
    admin
        .batch_execute("DROP TABLE IF EXISTS rm_order_summary, rm_order_summary_state; DELETE FROM checkpoints; DELETE FROM projection_versions;")
        .await?;
    let projection: Arc<dyn cairn_cqrs::projection::Projection> =
        Arc::new(cairn_orders::projections::order_summary::OrderSummaryProjection);
    let mut running = Vec::new();
    for _ in 0..processes {
        let (events, readmodels) = open(url, &PgOptions::from_env()).await?;
        running.push((
            Arc::new(events) as Arc<dyn EventStore>,
            Arc::new(readmodels) as Arc<dyn cairn_core::readmodel::ReadModelStore>,
        ));
    }
    let head = *running[0].0.head().borrow();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let mut handles = Vec::new();
    for (events, readmodels) in &running {
        handles.push(cairn_cqrs::projection::spawn_partitioned_projection(
            events,
            readmodels,
            &projection,
            partitions,
            &stop_rx,
        )?);
    }
    // Done when each partition is caught up on whichever process leads it.
    let names: Vec<String> =
        (0..partitions).map(|i| format!("order_summary#p{i}of{partitions}")).collect();
    loop {
        let rows = admin
            .query(
                "SELECT count(*) FROM checkpoints WHERE consumer = ANY($1) AND position >= $2",
                &[&names, &(head as i64)],
            )
            .await?;
        if rows[0].get::<_, i64>(0) == i64::from(partitions) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let _ = stop.send(true);
    drop(handles);
    for (events, _) in running {
        events.close().await;
    }
    Ok(rate(head, elapsed))
}

/// The ratios the PostgreSQL issue sets targets for.
pub fn ratios(table: &mut Table, sizes: Sizes) {
    table.ratio(
        "pg: append 1 event, 64 writers",
        "pg: raw INSERT 1 row/txn, 64 clients",
        "target >= 2x",
    );
    table.ratio("pg: append 1 event, 16 writers", "pg: raw INSERT 1 row/txn, 16 clients", "");
    table.ratio("pg: append 1 event, 1 writers", "pg: raw INSERT 1 row/txn, 1 clients", "");
    table.ratio(
        "pg: append 100-event batches, 1 writer",
        "pg: raw INSERT 100 rows/txn, 1 client",
        "",
    );
    table.ratio(
        "pg: HTTP create order, 16 clients",
        "pg: raw INSERT 1 row/txn, 16 clients",
        "target >= 1x",
    );
    table.ratio(
        &format!("pg: read $all ({} events)", sizes.all_events),
        "pg: raw SELECT of all events",
        "",
    );
    table.ratio("pg: read one 10k-event stream", "pg: raw SELECT of one 10k stream", "");
    let catch_up_events = (sizes.all_events / 4).max(4);
    table.ratio(
        &format!("pg: projection catch-up, order_summary over {catch_up_events} events"),
        "pg: raw batched upsert, read-model-shaped table",
        "target >= 1.0 (#18)",
    );
    table.ratio(
        "pg: partitioned catch-up (4 partitions), 2 process(es)",
        "pg: partitioned catch-up (4 partitions), 1 process(es)",
        "",
    );
}
