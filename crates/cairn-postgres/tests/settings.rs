//! Database settings Cairn must not depend on, and limits it must keep: a database whose
//! default isolation is `repeatable read` (two "processes" appending at once), TCP
//! keepalives on every session, and a bounded wait for a pooled connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_conformance::fixtures::{append_of, event};
use cairn_core::{EventStore, ExpectedVersion, ReadError, StreamRead};
use cairn_postgres::testing::TestDatabase;
use cairn_postgres::{PgOptions, open};
use tokio_postgres::NoTls;

const WRITERS: u64 = 32;
const APPENDS_PER_WRITER: u64 = 40;

/// The test schema's URL with extra server settings for every session.
fn with_settings(url: &str, settings: &str) -> String {
    format!("{url}%20{settings}")
}

async fn show(url: &str, setting: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client.query_one(&format!("SHOW {setting}"), &[]).await.expect("show").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_append_on_a_database_whose_default_is_repeatable_read() {
    let Some(db) = TestDatabase::create().await else { return };
    let url = with_settings(&db.url, "-cdefault_transaction_isolation%3Drepeatable%5C%20read");
    assert_eq!(show(&url, "default_transaction_isolation").await, "repeatable read");
    let (a, _) = open(&url, &PgOptions::default()).await.expect("open a");
    let (b, _) = open(&url, &PgOptions::default()).await.expect("open b");
    let stores: [Arc<dyn EventStore>; 2] = [Arc::new(a), Arc::new(b)];

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&stores[(w % 2) as usize]);
        writers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for n in 0..APPENDS_PER_WRITER {
                // A new stream each time: every append must succeed.
                let append = append_of(
                    &format!("s-{w}-{n}"),
                    ExpectedVersion::NoStream,
                    vec![event("Tick", n)],
                );
                if let Err(e) = store.append(append).await {
                    failures.push(e.to_string());
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for w in writers {
        failures.extend(w.await.unwrap());
    }
    assert!(failures.is_empty(), "{} appends failed, e.g. {:?}", failures.len(), failures.first());
    let all =
        stores[0].read_all(0, 10_000, &cairn_core::AllFilter::default()).await.expect("read $all");
    assert_eq!(all.events.len() as u64, WRITERS * APPENDS_PER_WRITER);
    let positions: Vec<u64> = all.events.iter().map(|e| e.position).collect();
    let dense: Vec<u64> = (1..=WRITERS * APPENDS_PER_WRITER).collect();
    assert_eq!(positions, dense, "positions dense, in order, none reused");
    for s in &stores {
        s.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_has_tcp_keepalives_on_both_ends() {
    let Some(db) = TestDatabase::create().await else { return };
    // A plain session keeps the server's default (0 = the OS's two hours)...
    assert_ne!(show(&db.url, "tcp_keepalives_idle").await, "10");
    // ...a session opened the way Cairn opens its leadership sessions does not.
    let options = PgOptions::default();
    let config = cairn_postgres::session_config(&db.url, &options).expect("config");
    assert_eq!(config.get_keepalives_idle(), Duration::from_secs(10));
    assert_eq!(config.get_keepalives_interval(), Some(Duration::from_secs(5)));
    assert_eq!(config.get_keepalives_retries(), Some(cairn_postgres::KEEPALIVE_PROBES));
    let (client, connection) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(connection);
    // What every leadership (and LISTEN) session runs right after connecting: a `SET`,
    // not a startup option, which poolers such as PgBouncer refuse.
    cairn_postgres::server_keepalives(&client, &options).await;
    let mut server = Vec::new();
    for setting in ["tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"] {
        server.push(
            client.query_one(&format!("SHOW {setting}"), &[]).await.unwrap().get::<_, String>(0),
        );
    }
    assert_eq!(server, ["10", "5", "3"], "the server probes a vanished client too");
    // The URL's own options (the test schema's search_path) still apply.
    let schema: String = client.query_one("SELECT current_schema()", &[]).await.unwrap().get(0);
    assert!(db.url.contains(&schema) && schema.starts_with("cairn_test_"), "{schema}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_that_cannot_get_a_connection_fails_in_bounded_time_as_unavailable() {
    let Some(db) = TestDatabase::create().await else { return };
    let options =
        PgOptions { pool_size: 2, pool_wait: Duration::from_millis(300), ..PgOptions::default() };
    let (store, _) = open(&db.url, &options).await.expect("open");
    let store: Arc<dyn EventStore> = Arc::new(store);
    store.append(append_of("p-1", ExpectedVersion::Any, vec![event("Tick", 1)])).await.unwrap();

    // Every read blocks behind a lock held by another session, keeping its pooled
    // connection busy: the pool runs dry.
    let (admin, connection) = tokio_postgres::connect(&db.url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    admin.batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(
                async move { store.read_stream("p-1", StreamRead::forward_from(1, 10)).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked_at = Instant::now();
    let starved = store.read_stream("p-1", StreamRead::forward_from(1, 10)).await;
    let waited = asked_at.elapsed();
    assert!(
        matches!(starved, Err(ReadError::Unavailable(_))),
        "a starved read is unavailable, got {starved:?}"
    );
    assert!(waited < Duration::from_secs(5), "the wait is bounded (waited {waited:?})");
    admin.batch_execute("ROLLBACK").await.unwrap();
    // The reads that got a connection finish once the lock is gone (the writer holds one
    // of the two connections, so the others were starved as well).
    let finished = futures_util::future::join_all(blocked).await;
    assert!(finished.iter().any(|r| matches!(r, Ok(Ok(_)))), "{finished:?}");
    assert!(
        finished.iter().all(|r| matches!(r, Ok(Ok(_) | Err(ReadError::Unavailable(_))))),
        "{finished:?}"
    );
    store.read_stream("p-1", StreamRead::forward_from(1, 10)).await.expect("served again");
    store.close().await;
}
