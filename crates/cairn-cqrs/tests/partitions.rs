//! A partitioned projection on PostgreSQL: 4 partitions (by hash of aggregate id), two
//! processes sharing one database. The process leading the partitions dies mid-stream
//! (its sessions are terminated, its loops stop, its heartbeat ends); the other takes every
//! partition over and
//! the read model is exact: each aggregate's events applied once, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, TableSpec};
use cairn_core::{Append, ExpectedVersion, NewEvent, RecordedEvent};
use cairn_cqrs::consumer::{ConsumerHandle, ControlError, Partition};
use cairn_cqrs::projection::{Projection, spawn_partitioned_projection};
use serde_json::value::RawValue;
use tokio::sync::watch;

/// Records, per aggregate, the positions it applied.
struct Tracker;

impl Projection for Tracker {
    fn name(&self) -> &'static str {
        "tracker"
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: "tracker", indexed: &[] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        vec!["Tick"]
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        let mut seen: Vec<u64> = txn.load("tracker", &e.aggregate_id)?.unwrap_or_default();
        seen.push(e.position);
        txn.save("tracker", &e.aggregate_id, &seen)
    }
}

/// Appends `n` ticks round-robin over `aggregates` aggregates, `pause` apart; returns each
/// aggregate's positions in order.
async fn write_ticks(
    store: Arc<dyn cairn_core::EventStore>,
    n: u64,
    aggregates: u64,
    pause: Duration,
) -> HashMap<String, Vec<u64>> {
    let mut by_aggregate: HashMap<String, Vec<u64>> = HashMap::new();
    for i in 0..n {
        let id = format!("agg-{}", i % aggregates);
        let append = Append {
            aggregate_id: id.clone(),
            aggregate_type: "Thing".into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new("Tick", RawValue::from_string("{}".into()).unwrap())],
            idempotency: None,
        };
        let position = store.append(append).await.unwrap().position;
        by_aggregate.entry(id).or_default().push(position);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    by_aggregate
}

/// Asserts that the tracker applied exactly `expected`, per aggregate and in order.
fn assert_applied_once_in_order(
    readmodels: &Arc<dyn cairn_core::readmodel::ReadModelStore>,
    expected: &HashMap<String, Vec<u64>>,
) {
    for (id, positions) in expected {
        let applied: Vec<u64> = readmodels
            .get("tracker", id)
            .unwrap()
            .map(|j| serde_json::from_str(&j).unwrap())
            .unwrap_or_default();
        assert_eq!(&applied, positions, "{id}: every event once, in order");
    }
}

async fn caught_up(handles: &[ConsumerHandle], head: u64) {
    for h in handles {
        h.wait_for(head, Duration::from_secs(20)).await.expect("partition caught up");
    }
}

#[test]
fn partitions_split_the_aggregates() {
    let parts: Vec<Partition> = (0..4).map(|index| Partition { index, count: 4 }).collect();
    for id in ["a", "order-1", "o.2", "customer-ü", ""] {
        assert_eq!(parts.iter().filter(|p| p.owns(id)).count(), 1, "{id}");
    }
    let owned: Vec<usize> =
        parts.iter().map(|p| (0..1000).filter(|i| p.owns(&format!("agg-{i}"))).count()).collect();
    assert!(owned.iter().all(|&n| n > 150), "a roughly even split: {owned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_survivor_takes_every_partition_over_and_the_model_is_exact() {
    let backend = cairn_testkit::Backend::Postgres;
    if !backend.enabled() {
        return;
    }
    let place = backend.place().await;
    let a = place.open().await;
    let tracker: Arc<dyn Projection> = Arc::new(Tracker);
    let (stop_a, stop_a_rx) = watch::channel(false);
    let handles_a =
        spawn_partitioned_projection(&a.events, &a.readmodels, &tracker, 4, &stop_a_rx).unwrap();
    // Process A leads every partition before B starts.
    for h in &handles_a {
        for _ in 0..100 {
            if h.is_leader() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(h.is_leader());
    }
    let b = place.open().await;
    let (_stop_b, stop_b_rx) = watch::channel(false);
    let handles_b =
        spawn_partitioned_projection(&b.events, &b.readmodels, &tracker, 4, &stop_b_rx).unwrap();

    let writer = tokio::spawn(write_ticks(Arc::clone(&b.events), 1500, 40, Duration::ZERO));
    // A dies mid-stream: its sessions end (as with kill -9) and its loops stop.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let admin = tokio_postgres::connect(place.database_url().unwrap(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(admin.1);
    let terminated = admin
        .0
        .query(
            // The sessions holding A's leadership locks (and nothing else: B's writer may
            // hold the append lock at this moment).
            "SELECT pg_terminate_backend(pid) FROM pg_locks
             WHERE locktype = 'advisory' AND granted
               AND ((classid::bigint << 32) | objid::bigint) IN (
                   SELECT hashtextextended(current_schema() || '/cairn/lead/tracker#p' || i || 'of4', 0)
                   FROM generate_series(0, 3) AS i)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(terminated.len(), 4, "A held the four partitions' leadership sessions");
    // The rest of A's death: its loops stop and its membership heartbeat ends. (Before,
    // A's store stayed open, so B kept counting a live A: on a busy machine B's rebalance
    // ran before the catch-up ended and handed two partitions to a process that could
    // never take them — the test's A was half dead, not the takeover slow.)
    let _ = stop_a.send(true);
    a.events.close().await;
    let expected = writer.await.unwrap();
    let head = *b.events.head().borrow();
    caught_up(&handles_b, head).await;
    assert!(handles_b.iter().all(ConsumerHandle::is_leader), "B leads every partition");
    drop(handles_a);
    assert_applied_once_in_order(&b.readmodels, &expected);
    b.events.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_process_is_handed_its_fair_share_and_the_model_stays_exact() {
    let backend = cairn_testkit::Backend::Postgres;
    if !backend.enabled() {
        return;
    }
    let place = backend.place().await;
    let tracker: Arc<dyn Projection> = Arc::new(Tracker);
    let a = place.open().await;
    let (_stop_a, stop_a_rx) = watch::channel(false);
    let handles_a =
        spawn_partitioned_projection(&a.events, &a.readmodels, &tracker, 4, &stop_a_rx).unwrap();
    let leading = |hs: &[ConsumerHandle]| hs.iter().filter(|h| h.is_leader()).count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while leading(&handles_a) < 4 {
        assert!(tokio::time::Instant::now() < deadline, "A alone leads every partition");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let writer =
        tokio::spawn(write_ticks(Arc::clone(&a.events), 1200, 30, Duration::from_millis(5)));
    // B joins: A hands partitions over until each leads two.
    let b = place.open().await;
    let (_stop_b, stop_b_rx) = watch::channel(false);
    let handles_b =
        spawn_partitioned_projection(&b.events, &b.readmodels, &tracker, 4, &stop_b_rx).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (leading(&handles_a), leading(&handles_b)) != (2, 2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no fair split: A {} B {}",
            leading(&handles_a),
            leading(&handles_b)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each partition: one leader; the other process says it follows, and a command sent
    // there is refused as `NotLeader`. The fence is the store's count of the partition's
    // terms: A's is the first, and a partition A handed over is in its second, on B, while
    // A's fence still names the term it had.
    for (on_a, on_b) in handles_a.iter().zip(&handles_b) {
        let (la, lb) = (on_a.leadership(), on_b.leadership());
        assert!(la.leading != lb.leading, "{}: {la:?} {lb:?}", on_a.name());
        let (leader, follower, lf) = if la.leading { (la, on_b, lb) } else { (lb, on_a, la) };
        let term = if la.leading { 1 } else { 2 };
        assert!(leader.since.is_some() && leader.fence == term, "{leader:?}");
        assert!(lf.since.is_none(), "{lf:?}");
        assert!(matches!(follower.pause(), Err(ControlError::NotLeader { .. })));
    }
    assert_eq!(handles_a.iter().map(|h| h.leadership().fence).collect::<Vec<_>>(), [1; 4]);
    let expected = writer.await.unwrap();
    let head = *a.events.head().borrow();
    // Each partition is caught up on whichever process leads it (the other mirrors it).
    caught_up(&handles_a, head).await;
    caught_up(&handles_b, head).await;
    assert_applied_once_in_order(&a.readmodels, &expected);
}
