//! `--only grpc`: the same appends and reads over gRPC (the official `kurrentdb` client)
//! and over HTTP (reqwest), against one release `cairn` binary with authentication on,
//! in the same run: the protocol's cost beside HTTP's.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use kurrentdb::{AppendToStreamOptions, EventData, ReadAllOptions, ReadStreamOptions};
use serde_json::json;

use crate::Backend;
use crate::external::{CairnProcess, Storage};
use crate::report::{Table, rate};

/// Concurrent clients of the single-event append scenario.
const CLIENTS: u64 = 16;
/// Events in one batched append.
const BATCH_EVENTS: u64 = 100;
/// Events of the stream read back (and of `$all` read).
const READ_EVENTS: u64 = 10_000;
/// Events per HTTP read page (the contract's largest stream page is larger; this is the
/// page a client typically asks for).
const HTTP_PAGE: u64 = 1_000;

/// Sizes of one run.
#[derive(Clone, Copy)]
struct Work {
    single_appends: u64,
    batches: u64,
}

/// Appends and reads over both protocols, `runs` times, each run on a fresh server.
pub async fn run(
    table: &mut Table,
    backend: Backend,
    bin: &Path,
    dir: &Path,
    database_url: &str,
    runs: usize,
    quick: bool,
) -> anyhow::Result<()> {
    let work = if quick {
        Work { single_appends: 1_600, batches: 20 }
    } else {
        Work { single_appends: 16_000, batches: 200 }
    };
    for run in 0..runs {
        let (storage, _db) = match backend {
            Backend::Sqlite => (Storage::Sqlite(dir.join(format!("grpc-{run}"))), None),
            Backend::Postgres => {
                let db = cairn_postgres::testing::TestDatabase::create_at(database_url).await;
                (Storage::Postgres(db.url.clone()), Some(db))
            }
        };
        let grpc_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let grpc_listen = format!("127.0.0.1:{grpc_port}");
        let server =
            CairnProcess::start_with(bin, &storage, &["--grpc-listen", &grpc_listen]).await?;
        let settings: kurrentdb::ClientSettings =
            format!("esdb://admin:{}@{grpc_listen}?tls=false", server.admin_token)
                .parse()
                .context("connection string")?;
        let client = Arc::new(
            kurrentdb::Client::new(settings)
                .map_err(|e| anyhow::anyhow!("kurrentdb client: {e}"))?,
        );
        appends(table, &server, &client, work, run).await?;
        reads(table, &server, &client, run).await?;
        server.stop().await?;
    }
    for (a, b) in [
        ("grpc append 1 event, 16 clients", "http append 1 event, 16 clients"),
        ("grpc append 100 events, 1 client", "http append 100 events, 1 client"),
        ("grpc read stream 10k events", "http read stream 10k events"),
        ("grpc read $all 10k events", "http read $all 10k events"),
    ] {
        table.ratio(a, b, "gRPC beside HTTP (same server, same run)");
    }
    Ok(())
}

async fn appends(
    table: &mut Table,
    server: &CairnProcess,
    client: &Arc<kurrentdb::Client>,
    work: Work,
    run: usize,
) -> anyhow::Result<()> {
    let per_client = work.single_appends / CLIENTS;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = Arc::clone(client);
        tasks.push(tokio::spawn(async move {
            let stream = format!("g{run}-single-{c}");
            for i in 0..per_client {
                let event = EventData::json("Credited", &json!({"i": i}))?;
                client
                    .append_to_stream(stream.as_str(), &AppendToStreamOptions::default(), event)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    table.sample(
        "grpc append 1 event, 16 clients",
        "events/s",
        rate(per_client * CLIENTS, start.elapsed()),
    );

    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let http = server.client.clone();
        let (base, token) = (server.base.clone(), server.admin_token.clone());
        tasks.push(tokio::spawn(async move {
            let url = format!("{base}/streams/h{run}-single-{c}");
            for i in 0..per_client {
                let body = json!({"events": [{"aggregate_type": "Account", "event_type": "Credited", "data": {"i": i}}]});
                let r = http.post(&url).bearer_auth(&token).json(&body).send().await?;
                anyhow::ensure!(r.status().is_success(), "POST {url}: {}", r.status());
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    table.sample(
        "http append 1 event, 16 clients",
        "events/s",
        rate(per_client * CLIENTS, start.elapsed()),
    );

    let start = Instant::now();
    for b in 0..work.batches {
        let events: Vec<EventData> = (0..BATCH_EVENTS)
            .map(|i| EventData::json("Credited", &json!({"i": i})))
            .collect::<Result<_, _>>()?;
        client
            .append_to_stream(
                format!("g{run}-batch-{}", b % 8),
                &AppendToStreamOptions::default(),
                events,
            )
            .await?;
    }
    table.sample(
        "grpc append 100 events, 1 client",
        "events/s",
        rate(work.batches * BATCH_EVENTS, start.elapsed()),
    );

    let start = Instant::now();
    for b in 0..work.batches {
        let events: Vec<_> = (0..BATCH_EVENTS)
            .map(|i| json!({"aggregate_type": "Account", "event_type": "Credited", "data": {"i": i}}))
            .collect();
        let url = format!("{}/streams/h{run}-batch-{}", server.base, b % 8);
        let r = server
            .client
            .post(&url)
            .bearer_auth(&server.admin_token)
            .json(&json!({"events": events}))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "POST {url}: {}", r.status());
    }
    table.sample(
        "http append 100 events, 1 client",
        "events/s",
        rate(work.batches * BATCH_EVENTS, start.elapsed()),
    );
    Ok(())
}

async fn reads(
    table: &mut Table,
    server: &CairnProcess,
    client: &Arc<kurrentdb::Client>,
    run: usize,
) -> anyhow::Result<()> {
    // One stream of READ_EVENTS, written in batches, read whole by each protocol.
    let stream = format!("g{run}-long");
    for _ in 0..READ_EVENTS / BATCH_EVENTS {
        let events: Vec<EventData> = (0..BATCH_EVENTS)
            .map(|i| {
                EventData::json("Credited", &json!({"i": i, "note": "a payload of a typical size"}))
            })
            .collect::<Result<_, _>>()?;
        client.append_to_stream(stream.as_str(), &AppendToStreamOptions::default(), events).await?;
    }
    let start = Instant::now();
    let mut reader = client.read_stream(stream.as_str(), &ReadStreamOptions::default()).await?;
    let mut n = 0u64;
    while reader.next().await?.is_some() {
        n += 1;
    }
    anyhow::ensure!(n == READ_EVENTS, "gRPC read {n} of {READ_EVENTS} events");
    table.sample("grpc read stream 10k events", "events/s", rate(n, start.elapsed()));

    let start = Instant::now();
    let (mut n, mut from) = (0u64, Some(1u64));
    while let Some(version) = from {
        let url =
            format!("{}/streams/{stream}?from_version={version}&limit={HTTP_PAGE}", server.base);
        let page: serde_json::Value =
            server.client.get(&url).bearer_auth(&server.admin_token).send().await?.json().await?;
        n += page["events"].as_array().map_or(0, |e| e.len() as u64);
        from = page["next_version"].as_u64();
    }
    anyhow::ensure!(n == READ_EVENTS, "HTTP read {n} of {READ_EVENTS} events");
    table.sample("http read stream 10k events", "events/s", rate(n, start.elapsed()));

    let start = Instant::now();
    let mut reader =
        client.read_all(&ReadAllOptions::default().max_count(READ_EVENTS as usize)).await?;
    let mut n = 0u64;
    while reader.next().await?.is_some() {
        n += 1;
    }
    anyhow::ensure!(n == READ_EVENTS, "gRPC $all read {n} of {READ_EVENTS} events");
    table.sample("grpc read $all 10k events", "events/s", rate(n, start.elapsed()));

    let start = Instant::now();
    let (mut n, mut after) = (0u64, 0u64);
    while n < READ_EVENTS {
        let limit = HTTP_PAGE.min(READ_EVENTS - n);
        let url = format!("{}/all?from_position={after}&limit={limit}", server.base);
        let page: serde_json::Value =
            server.client.get(&url).bearer_auth(&server.admin_token).send().await?.json().await?;
        let events = page["events"].as_array().context("no events in an $all page")?;
        anyhow::ensure!(!events.is_empty(), "HTTP $all ended after {n} events");
        n += events.len() as u64;
        after = events.last().and_then(|e| e["position"].as_u64()).context("no position")?;
    }
    table.sample("http read $all 10k events", "events/s", rate(n, start.elapsed()));
    Ok(())
}
