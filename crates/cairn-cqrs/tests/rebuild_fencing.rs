//! A rebuild belongs to its leadership term: when process A loses the projection, A's
//! rebuild is cancelled and never swaps; process B, the next leader, finds the record of
//! the interrupted rebuild and starts it over; the result equals a fresh replay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cairn_core::readmodel::{
    DocTxn, DocTxnExt, MemoryReadModels, REBUILD_SUFFIX, ReadModelError, ReadModelStore, TableSpec,
};
use cairn_core::{Append, EventStore, ExpectedVersion, MemoryEventStore, NewEvent, RecordedEvent};
use cairn_cqrs::consumer::ConsumerHandle;
use cairn_cqrs::projection::{Projection, spawn_projection};
use serde_json::value::RawValue;
use tokio::sync::watch;

/// How fast [`Counter`] applies. One per test: the tests of this file run at the same
/// time, and a shared one let a test end another's slow rebuild early.
#[derive(Default)]
struct Pace {
    /// Microseconds each event takes to apply: raised so that a rebuild is still running
    /// when its leader is deposed.
    delay_us: AtomicU64,
    /// While set, every apply waits: holds A's rebuild in the middle of a batch until B has
    /// taken the lead, however long a loaded machine takes to get there (A finishing and
    /// swapping while nobody else leads would be correct, but not what is tested here).
    hold: AtomicBool,
}

/// Counts events per stream.
struct Counter {
    pace: Arc<Pace>,
}

impl Projection for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: "counter", indexed: &[] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        vec!["Tick"]
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        while self.pace.hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let delay = self.pace.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        let count: u64 = txn.load("counter", &e.aggregate_id)?.unwrap_or(0);
        txn.save("counter", &e.aggregate_id, &(count + 1))
    }
}

async fn ticks(store: &Arc<dyn EventStore>, n: usize) -> u64 {
    let mut last = 0;
    for i in 0..n {
        let append = Append {
            aggregate_id: format!("s-{}", i % 10),
            aggregate_type: "Thing".into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new("Tick", RawValue::from_string("{}".into()).unwrap())],
            idempotency: None,
        };
        last = store.append(append).await.unwrap().position;
    }
    last
}

fn counts(rm: &Arc<dyn ReadModelStore>) -> Vec<u64> {
    (0..10)
        .map(|i| {
            serde_json::from_str(&rm.get("counter", &format!("s-{i}")).unwrap().unwrap()).unwrap()
        })
        .collect()
}

async fn until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn recorded(rm: &Arc<dyn ReadModelStore>) -> bool {
    let shadow = format!("counter{REBUILD_SUFFIX}");
    rm.checkpoints().unwrap().iter().any(|(c, _)| *c == shadow)
}

fn spawn(
    store: &Arc<dyn EventStore>,
    rm: &Arc<dyn ReadModelStore>,
    pace: &Arc<Pace>,
    stop: watch::Receiver<bool>,
) -> ConsumerHandle {
    let counter = Counter { pace: Arc::clone(pace) };
    spawn_projection(Arc::clone(store), Arc::clone(rm), Arc::new(counter), stop).unwrap()
}

/// How process A loses the projection in the middle of its rebuild.
enum Deposal {
    /// A hands it over (rebalancing): A resigns, B takes it.
    HandOver,
    /// PostgreSQL: A's leadership session is killed under it (`pg_terminate_backend`).
    Terminate(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposed_leaders_rebuild_is_cancelled_and_the_next_leader_starts_it_over() {
    let a_rm = MemoryReadModels::new();
    let b_rm: Arc<dyn ReadModelStore> = Arc::new(a_rm.another_process());
    deposed_mid_rebuild(Arc::new(a_rm), b_rm, Deposal::HandOver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_a_killed_leaders_rebuild_never_swaps_and_the_next_leader_starts_it_over() {
    let backend = cairn_testkit::Backend::Postgres;
    if !backend.enabled() {
        return;
    }
    let place = backend.place().await;
    let url = place.database_url().expect("a database").to_owned();
    let (a_rm, b_rm) = (place.readmodels().await, place.readmodels().await);
    deposed_mid_rebuild(a_rm, b_rm, Deposal::Terminate(url)).await;
}

/// Kills every session holding this schema's leadership lock of `counter`.
async fn terminate_leader(url: &str) -> usize {
    let (admin, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
               AND ((classid::bigint << 32) | objid::bigint)
                   = hashtextextended(current_schema() || '/cairn/lead/counter', 0)",
            &[],
        )
        .await
        .unwrap()
        .len()
}

async fn deposed_mid_rebuild(
    a_rm: Arc<dyn ReadModelStore>,
    b_rm: Arc<dyn ReadModelStore>,
    deposal: Deposal,
) {
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let head = ticks(&store, 3000).await;
    let (_stop, stop_rx) = watch::channel(false);
    let pace = Arc::new(Pace::default());
    let a = spawn(&store, &a_rm, &pace, stop_rx.clone());
    a.wait_for(head, Duration::from_secs(10)).await.unwrap();
    assert!(a.is_leader());
    let b = spawn(&store, &b_rm, &pace, stop_rx);
    assert_eq!(counts(&a_rm), vec![300; 10]);

    // A rebuild on A, slow enough (about a second per 2000-event batch) to be deposed
    // in the middle of it.
    pace.delay_us.store(500, Ordering::SeqCst);
    a.start_rebuild().unwrap();
    until("A's rebuild is recorded", Duration::from_secs(5), || recorded(&a_rm)).await;
    match deposal {
        Deposal::HandOver => {
            // A hand-over is taken between batches, so A's batch cannot be held (B would
            // never lead): it is made slow instead, several seconds a batch, far longer
            // than a loaded machine takes to hand over.
            pace.delay_us.store(2000, Ordering::SeqCst);
            a.hand_over(Duration::from_secs(30));
        }
        Deposal::Terminate(url) => {
            // A's rebuild waits in the middle of a batch until B leads, however slowly a
            // loaded machine gets there (finishing and swapping while nobody else leads
            // would be correct, but not what is tested here).
            pace.hold.store(true, Ordering::SeqCst);
            assert_eq!(terminate_leader(&url).await, 1, "A's leadership session");
        }
    }
    until("B leads", Duration::from_secs(15), || b.is_leader()).await;
    pace.hold.store(false, Ordering::SeqCst);
    // What A did instead, read when the wait fails.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while a.rebuilds_cancelled() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: A's rebuild is cancelled once (A: cancelled {}, completed {}, abandoned {}, leader {})",
            a.rebuilds_cancelled(),
            a.rebuilds_completed(),
            a.rebuilds_abandoned(),
            a.is_leader()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a.rebuild_progress().is_none(), "A runs no rebuild any more");

    // B finds the interrupted rebuild and starts it over, from an emptied shadow.
    pace.delay_us.store(0, Ordering::SeqCst);
    let more = ticks(&store, 500).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.rebuilds_completed() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: B's rebuild is swapped in (B: completed {}, cancelled {}, abandoned {}, progress {:?}, status {:?}, leader {}; recorded {})",
            b.rebuilds_completed(),
            b.rebuilds_cancelled(),
            b.rebuilds_abandoned(),
            b.rebuild_progress(),
            b.status(),
            b.is_leader(),
            recorded(&b_rm),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.wait_for(more, Duration::from_secs(10)).await.unwrap();
    // A killed session is noticed at the next write at the latest (refused: its fence
    // is stale); A's rebuild noticed it at its own next write.
    until("A knows it was deposed", Duration::from_secs(10), || !a.is_leader()).await;
    assert_eq!(counts(&b_rm), vec![350; 10], "what a fresh replay gives: each event once");
    assert!(!recorded(&b_rm), "no rebuild is under way any more");
    assert_eq!(a.rebuilds_completed(), 0, "A never swapped");
    assert_eq!(b.rebuilds_abandoned(), 0);
    // Long after, A's cancelled rebuild has still swapped nothing in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((a.rebuilds_completed(), b.rebuilds_completed()), (0, 1));
    assert_eq!(counts(&a_rm), vec![350; 10]);
}
