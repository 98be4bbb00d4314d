//! The global order on PostgreSQL: many writers in two "processes" (two stores on one
//! database, each with its own writer), commits artificially delayed while the append lock
//! is held, and a catch-up reader that must see every event exactly once, in order. Plus
//! the stall diagnostic: a session holding the append lock is reported with its pid.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cairn_conformance::fixtures::{append_of, event};
use cairn_core::{AllFilter, EventStore, ExpectedVersion, subscribe_all};
use cairn_postgres::testing::TestDatabase;
use cairn_postgres::{PgOptions, open};
use futures_util::StreamExt;

const WRITERS: u64 = 32;
const EVENTS: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_writers_and_a_catch_up_reader_see_every_event_once_in_order() {
    let Some(db) = TestDatabase::create().await else { return };
    let (a, _) = open(&db.url, &PgOptions::default()).await.expect("open a");
    let delayed = PgOptions { commit_delay: Duration::from_millis(2), ..PgOptions::default() };
    let (b, _) = open(&db.url, &delayed).await.expect("open b");
    let stores: [Arc<dyn EventStore>; 2] = [Arc::new(a), Arc::new(b)];

    // The reader starts before the writers and follows them live from position 0.
    let reader_store = Arc::clone(&stores[0]);
    let reader = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(EVENTS as usize);
        let mut events = Box::pin(subscribe_all(reader_store, 0, AllFilter::default()));
        while (seen.len() as u64) < EVENTS {
            let e = tokio::time::timeout(Duration::from_secs(60), events.next())
                .await
                .expect("the reader keeps receiving")
                .expect("the subscription does not end")
                .expect("reads succeed");
            seen.push((e.position, e.event_id));
        }
        seen
    });

    let per_writer = EVENTS / WRITERS;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&stores[(w % 2) as usize]);
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut n = 0;
            while n < per_writer {
                // Mostly single events, sometimes a small batch.
                let size = if n % 7 == 3 { 3.min(per_writer - n) } else { 1 };
                let events: Vec<_> = (0..size).map(|i| event("Tick", n + i)).collect();
                ids.extend(events.iter().map(|e| e.event_id));
                store
                    .append(append_of(&format!("w-{w}"), ExpectedVersion::Any, events))
                    .await
                    .expect("append succeeds");
                n += size;
            }
            ids
        }));
    }
    let mut written = HashSet::new();
    for w in writers {
        written.extend(w.await.expect("writer finishes"));
    }
    let seen = reader.await.expect("reader finishes");

    assert_eq!(seen.len() as u64, EVENTS);
    for (i, (position, _)) in seen.iter().enumerate() {
        assert_eq!(*position, i as u64 + 1, "positions are dense and in order as read");
    }
    let seen_ids: HashSet<_> = seen.iter().map(|(_, id)| *id).collect();
    assert_eq!(seen_ids.len() as u64, EVENTS, "no event seen twice");
    assert_eq!(seen_ids, written, "every written event seen");
    for s in &stores {
        s.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_holding_the_append_lock_is_reported_and_appends_resume_after_it() {
    let Some(db) = TestDatabase::create().await else { return };
    let options = PgOptions {
        stall_threshold: Duration::from_millis(500),
        poll_interval: Duration::from_millis(100),
        ..PgOptions::default()
    };
    let (store, _) = open(&db.url, &options).await.expect("open");
    let store = Arc::new(store);
    let dyn_store: Arc<dyn EventStore> = store.clone();
    cairn_conformance::fixtures::append_n(&dyn_store, "before", 3).await;

    // Another session takes the append lock and sits on it, as a frozen writer would.
    let (blocker, connection) =
        tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    blocker.batch_execute("BEGIN").await.expect("begin");
    blocker
        .batch_execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '/cairn/' || 'append', 0))",
        )
        .await
        .expect("take the append lock");
    let blocker_pid: i32 =
        blocker.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);

    let waiting = {
        let s = Arc::clone(&dyn_store);
        tokio::spawn(async move { cairn_conformance::fixtures::append_n(&s, "during", 2).await })
    };
    let mut reported = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(stall) = store.stall() {
            reported = Some(stall);
            break;
        }
    }
    let stall = reported.expect("the stall is reported within 5 s");
    assert_eq!(stall.pid, blocker_pid, "the diagnostic names the blocking backend");
    assert!(stall.age_secs >= 0.5);
    assert!(stall.waiting >= 1, "the waiting append is counted: {stall:?}");
    let gauges = store.gauges();
    let gauge = |name: &str| gauges.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    assert_eq!(gauge("cairn_store_stalled"), Some(1.0));
    assert_eq!(gauge("cairn_store_stall_blocking_pid"), Some(f64::from(blocker_pid)));
    assert!(!waiting.is_finished(), "the append waits behind the lock");

    // Reads go on while appends wait.
    let all = dyn_store.read_all(0, 100, &AllFilter::default()).await.expect("read");
    assert_eq!(all.events.len(), 3);

    blocker.batch_execute("ROLLBACK").await.expect("rollback");
    let outcome = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the append resumes")
        .expect("task");
    assert_eq!(outcome.position, 5);
    let all = dyn_store.read_all(0, 100, &AllFilter::default()).await.expect("read");
    assert_eq!(all.events.iter().map(|e| e.position).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    for _ in 0..50 {
        if store.stall().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.stall().is_none(), "the stall clears");
    store.close().await;
}

/// Issue #17: a page of large events stops at the byte cap while the rows stream in (it
/// is never loaded whole), says where it stopped, and the next page goes on from there;
/// the same for a stream read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_events_stops_at_the_byte_cap_and_the_next_goes_on() {
    use cairn_conformance::fixtures::raw;
    use cairn_core::{NewEvent, StreamRead};
    let Some(db) = TestDatabase::create().await else { return };
    let (store, _) = open(&db.url, &PgOptions::default()).await.expect("open");
    // 24 events of 1 MiB: 24 MiB, over the 16 MiB page cap.
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(1024 * 1024));
    for _ in 0..4 {
        let events = (0..6).map(|_| NewEvent::new("Big", raw(&big))).collect();
        store.append(append_of("big-1", ExpectedVersion::Any, events)).await.unwrap();
    }
    let first = store.read_all(0, 1000, &AllFilter::default()).await.unwrap();
    let n = first.events.len();
    assert!((16..24).contains(&n), "the page stopped at the cap: {n} events");
    assert_eq!(first.scanned_to, first.events.last().unwrap().position, "it says where");
    let rest = store.read_all(first.scanned_to, 1000, &AllFilter::default()).await.unwrap();
    assert_eq!(n + rest.events.len(), 24, "the next page goes on");
    assert_eq!(rest.events[0].position, first.scanned_to + 1);
    let stream = store.read_stream("big-1", StreamRead::forward_from(1, 1000)).await.unwrap();
    assert!((16..24).contains(&stream.events.len()), "{}", stream.events.len());
    assert_eq!(stream.stream_version, 24);
}
