//! The dead letter queue: a projection that fails on chosen events parks them (and the
//! later events of the same aggregate behind them), other aggregates flow on, and a retry
//! or a discard releases the chain in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, ReadModelStore, TableSpec};
use cairn_core::{Append, EventStore, ExpectedVersion, MemoryEventStore, NewEvent, RecordedEvent};
use cairn_cqrs::consumer::ConsumerHandle;
use cairn_cqrs::projection::{Projection, spawn_projection};
use cairn_testkit::Backend;
use serde_json::value::RawValue;
use tokio::sync::watch;

/// Records the positions it applied per aggregate; fails on `{"fail": true}` while `failing`.
struct Flaky {
    failing: Arc<AtomicBool>,
}

impl Projection for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: "flaky", indexed: &[] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        vec!["Tick"]
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        if e.data.get().contains("fail") && self.failing.load(Ordering::SeqCst) {
            return Err(ReadModelError::Handler(format!("boom at {}", e.position)));
        }
        let mut seen: Vec<u64> = txn.load("flaky", &e.aggregate_id)?.unwrap_or_default();
        seen.push(e.position);
        txn.save("flaky", &e.aggregate_id, &seen)
    }
}

async fn tick(store: &Arc<dyn EventStore>, stream: &str, fail: bool) -> u64 {
    let data = if fail { r#"{"fail":true}"# } else { "{}" };
    let append = Append {
        aggregate_id: stream.into(),
        aggregate_type: "Thing".into(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent::new("Tick", RawValue::from_string(data.into()).unwrap())],
        idempotency: None,
    };
    store.append(append).await.unwrap().position
}

fn applied(rm: &Arc<dyn ReadModelStore>, stream: &str) -> Vec<u64> {
    rm.get("flaky", stream).unwrap().map(|j| serde_json::from_str(&j).unwrap()).unwrap_or_default()
}

async fn caught_up(handle: &ConsumerHandle, position: u64) {
    handle.wait_for(position, Duration::from_secs(10)).await.expect("projection caught up");
}

cairn_testkit::backend_tests!(
    failing_events_are_parked_in_order_and_released_by_retry_or_discard,
    dead_letters_survive_a_restart_and_keep_blocking,
    a_panicking_projection_dead_letters_the_event_and_flows_on,
);

/// Panics (as arithmetic on a user's numbers could) on `{"fail": true}` while `failing`.
struct Panicky {
    failing: Arc<AtomicBool>,
}

impl Projection for Panicky {
    fn name(&self) -> &'static str {
        "flaky"
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: "flaky", indexed: &[] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        vec!["Tick"]
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        let mut seen: Vec<u64> = txn.load("flaky", &e.aggregate_id)?.unwrap_or_default();
        seen.push(e.position);
        // Written before the panic: the rolled-back transaction must not keep it.
        txn.save("flaky", &e.aggregate_id, &seen)?;
        assert!(
            !(e.data.get().contains("fail") && self.failing.load(Ordering::SeqCst)),
            "Multiplication overflowed"
        );
        Ok(())
    }
}

/// Waits until this process leads the consumer (at once on the embedded store; after the
/// previous leader's session is gone on PostgreSQL).
async fn leading(handle: &ConsumerHandle) {
    for _ in 0..100 {
        if handle.is_leader() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never became the leader");
}

async fn failing_events_are_parked_in_order_and_released_by_retry_or_discard(backend: Backend) {
    let place = backend.place().await;
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let rm: Arc<dyn ReadModelStore> = place.readmodels().await;
    let failing = Arc::new(AtomicBool::new(true));
    let (_stop, stop_rx) = watch::channel(false);
    let handle = spawn_projection(
        Arc::clone(&store),
        Arc::clone(&rm),
        Arc::new(Flaky { failing: Arc::clone(&failing) }),
        stop_rx,
    )
    .unwrap();
    leading(&handle).await;

    let a1 = tick(&store, "a", false).await;
    let b1 = tick(&store, "b", true).await;
    let a2 = tick(&store, "a", false).await;
    let b2 = tick(&store, "b", false).await;
    let c1 = tick(&store, "c", false).await;
    caught_up(&handle, c1).await;

    // Other aggregates flowed on; b's later event waits behind its dead letter.
    assert_eq!(applied(&rm, "a"), vec![a1, a2]);
    assert_eq!(applied(&rm, "c"), vec![c1]);
    assert!(applied(&rm, "b").is_empty());
    let letters = handle.dead_letters().await.unwrap();
    assert_eq!(letters.iter().map(|l| l.position).collect::<Vec<_>>(), vec![b1, b2]);
    assert_eq!((letters[0].attempts, letters[0].error.contains("boom")), (3, true));
    assert!(letters[1].error.contains("parked behind"), "{}", letters[1].error);
    assert_eq!(handle.dlq_depth(), 2);

    // A retry that still fails changes nothing but the attempt count.
    let outcome = handle.retry_dead_letter(letters[0].id).await.unwrap().unwrap();
    assert_eq!(outcome.remaining, 2);
    assert_eq!(handle.dead_letters().await.unwrap()[0].attempts, 4);

    // Fixed: the retry applies the chain in order, and b flows again.
    failing.store(false, Ordering::SeqCst);
    let outcome = handle.retry_dead_letter(letters[0].id).await.unwrap().unwrap();
    assert_eq!(outcome.remaining, 0);
    assert_eq!(applied(&rm, "b"), vec![b1, b2]);
    assert_eq!(handle.dlq_depth(), 0);
    let b3 = tick(&store, "b", false).await;
    caught_up(&handle, b3).await;
    assert_eq!(applied(&rm, "b"), vec![b1, b2, b3]);

    // Discarding a dead letter drops its event and releases what waited behind it.
    failing.store(true, Ordering::SeqCst);
    let d1 = tick(&store, "d", true).await;
    let d2 = tick(&store, "d", false).await;
    caught_up(&handle, d2).await;
    let letters = handle.dead_letters().await.unwrap();
    assert_eq!(letters.iter().map(|l| l.position).collect::<Vec<_>>(), vec![d1, d2]);
    let outcome = handle.discard_dead_letter(letters[0].id).await.unwrap().unwrap();
    assert_eq!(outcome.remaining, 0);
    assert_eq!(applied(&rm, "d"), vec![d2]);
    assert!(handle.dead_letters().await.unwrap().is_empty());
    assert_eq!(handle.retry_dead_letter(letters[0].id).await.unwrap(), None);
    assert_eq!(handle.position(), d2);
}

async fn dead_letters_survive_a_restart_and_keep_blocking(backend: Backend) {
    let place = backend.place().await;
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let failing = Arc::new(AtomicBool::new(true));
    let e1;
    {
        let rm: Arc<dyn ReadModelStore> = place.readmodels().await;
        let (stop, stop_rx) = watch::channel(false);
        let handle = spawn_projection(
            Arc::clone(&store),
            rm,
            Arc::new(Flaky { failing: Arc::clone(&failing) }),
            stop_rx,
        )
        .unwrap();
        e1 = tick(&store, "e", true).await;
        caught_up(&handle, e1).await;
        let _ = stop.send(true);
    }
    failing.store(false, Ordering::SeqCst);
    let rm: Arc<dyn ReadModelStore> = place.readmodels().await;
    let (_stop, stop_rx) = watch::channel(false);
    let handle =
        spawn_projection(Arc::clone(&store), Arc::clone(&rm), Arc::new(Flaky { failing }), stop_rx)
            .unwrap();
    leading(&handle).await;
    let e2 = tick(&store, "e", false).await;
    caught_up(&handle, e2).await;
    // After the restart e is still blocked: e2 is parked, not applied before e1.
    assert!(applied(&rm, "e").is_empty());
    assert_eq!(handle.dlq_depth(), 2);
    let head = handle.dead_letters().await.unwrap()[0].id;
    handle.retry_dead_letter(head).await.unwrap();
    assert_eq!(applied(&rm, "e"), vec![e1, e2]);
}

async fn a_panicking_projection_dead_letters_the_event_and_flows_on(backend: Backend) {
    let place = backend.place().await;
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let rm: Arc<dyn ReadModelStore> = place.readmodels().await;
    let failing = Arc::new(AtomicBool::new(true));
    let (_stop, stop_rx) = watch::channel(false);
    let handle = spawn_projection(
        Arc::clone(&store),
        Arc::clone(&rm),
        Arc::new(Panicky { failing: Arc::clone(&failing) }),
        stop_rx,
    )
    .unwrap();
    leading(&handle).await;
    let a1 = tick(&store, "a", false).await;
    let p1 = tick(&store, "p", true).await;
    let a2 = tick(&store, "a", false).await;
    caught_up(&handle, a2).await;
    // Bounded tries, then the dead letter queue; the others flow on; nothing stalls.
    assert_eq!(applied(&rm, "a"), vec![a1, a2]);
    assert!(applied(&rm, "p").is_empty(), "the panicking transaction committed nothing");
    let letters = handle.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].position, letters[0].attempts), (p1, 3));
    assert!(
        letters[0].error.contains("panicked: Multiplication overflowed"),
        "{}",
        letters[0].error
    );
    assert_eq!(handle.status(), cairn_cqrs::consumer::ConsumerStatus::Running);
    // A retry that panics again answers (no hang) and keeps the letter.
    let outcome = handle.retry_dead_letter(letters[0].id).await.unwrap().unwrap();
    assert_eq!(outcome.remaining, 1);
    failing.store(false, Ordering::SeqCst);
    let outcome = handle.retry_dead_letter(letters[0].id).await.unwrap().unwrap();
    assert_eq!(outcome.remaining, 0);
    assert_eq!(applied(&rm, "p"), vec![p1]);
}
