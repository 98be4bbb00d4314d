//! Zero-downtime rebuilds: a new version of a projection is rebuilt at start beside the
//! old read model and swapped in; the result equals a build from scratch.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, ReadModelStore, TableSpec};
use cairn_core::{Append, EventStore, ExpectedVersion, MemoryEventStore, NewEvent, RecordedEvent};
use cairn_cqrs::consumer::{ConsumerStatus, ControlError};
use cairn_cqrs::projection::{Projection, spawn_projection};
use serde_json::value::RawValue;
use tokio::sync::watch;

/// Counts events per stream, each weighing as much as the projection's version, so a
/// model built by version 2 differs from one only continued by it.
struct Counter {
    version: u32,
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

    fn version(&self) -> u32 {
        self.version
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        let (_, count): (u32, u64) =
            txn.load("counter", &e.aggregate_id)?.unwrap_or((self.version, 0));
        txn.save("counter", &e.aggregate_id, &(self.version, count + u64::from(self.version)))
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

fn counts(rm: &Arc<dyn ReadModelStore>) -> Vec<(u32, u64)> {
    (0..10)
        .map(|i| {
            serde_json::from_str(&rm.get("counter", &format!("s-{i}")).unwrap().unwrap()).unwrap()
        })
        .collect()
}

cairn_testkit::backend_tests!(a_new_projection_version_is_rebuilt_at_start_and_swapped_in);

async fn a_new_projection_version_is_rebuilt_at_start_and_swapped_in(
    backend: cairn_testkit::Backend,
) {
    let place = backend.place().await;
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let head = ticks(&store, 5000).await;
    {
        let rm: Arc<dyn ReadModelStore> = place.readmodels().await;
        let (stop, stop_rx) = watch::channel(false);
        let v1 = spawn_projection(
            Arc::clone(&store),
            Arc::clone(&rm),
            Arc::new(Counter { version: 1 }),
            stop_rx,
        )
        .unwrap();
        v1.wait_for(head, Duration::from_secs(10)).await.unwrap();
        assert!(counts(&rm).iter().all(|&(v, n)| (v, n) == (1, 500)));
        let _ = stop.send(true);
    }
    // Version 2 starts: the old model keeps answering while the new one is built.
    let rm: Arc<dyn ReadModelStore> = place.readmodels().await;
    let (_stop, stop_rx) = watch::channel(false);
    let v2 = spawn_projection(
        Arc::clone(&store),
        Arc::clone(&rm),
        Arc::new(Counter { version: 2 }),
        stop_rx,
    )
    .unwrap();
    let head = ticks(&store, 500).await; // writes keep coming during the rebuild
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while v2.rebuild_progress().is_some() || v2.status() == ConsumerStatus::Rebuilding {
        assert!(tokio::time::Instant::now() < deadline, "rebuild never finished");
        let during = counts(&rm);
        assert!(during.iter().all(|&(v, _)| v == 1 || v == 2));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    v2.wait_for(head, Duration::from_secs(10)).await.unwrap();
    // Every document was rebuilt by version 2 and counts every event exactly once
    // (continuing the old model instead would give 500 + 50 * 2 = 600).
    assert_eq!(counts(&rm), vec![(2, 1100); 10]);
    assert_eq!(rm.projection_version("counter").unwrap(), Some(2));
    // A manual rebuild of the same version gives the same model.
    v2.start_rebuild().unwrap();
    assert!(
        matches!(v2.start_rebuild(), Err(ControlError::Rebuilding { .. })),
        "a second rebuild must be refused while one runs"
    );
    while v2.rebuild_progress().is_some() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(counts(&rm), vec![(2, 1100); 10]);
    // The start-up rebuild and the manual one, both swapped in.
    assert_eq!((v2.rebuilds_completed(), v2.rebuilds_abandoned()), (2, 0));
    // A paused projection is not rebuilt: its swap would wait for an operator's resume.
    v2.pause().unwrap();
    let refused = v2.start_rebuild().unwrap_err();
    assert!(matches!(refused, ControlError::Paused { .. }), "{refused}");
    assert!(v2.rebuild_progress().is_none());
    v2.resume().unwrap();
}
