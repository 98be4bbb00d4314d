//! The process-manager runner: what a manager's `instance_key` disowns never reaches it,
//! and its checkpoint still moves over it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::readmodel::{ReadModelStore, TableSpec};
use cairn_core::{Append, EventStore, ExpectedVersion, NewEvent, RecordedEvent};
use cairn_cqrs::Repository;
use cairn_cqrs::process::{Instances, ProcessContext, ProcessManager, spawn_process_manager};
use cairn_testkit::Backend;
use serde_json::value::RawValue;
use tokio::sync::watch;

const NAME: &str = "echo";
const TABLE: &str = "echo_instances";

/// Claims every `Tick` except those of streams named `skip-…`; saves one document per
/// instance and counts how often it was called.
struct Echo {
    handled: Arc<AtomicUsize>,
}

#[async_trait]
impl ProcessManager for Echo {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: TABLE, indexed: &["status"] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        vec!["Tick"]
    }

    fn instance_key(&self, event: &RecordedEvent) -> Option<String> {
        (!event.aggregate_id.starts_with("skip-")).then(|| event.aggregate_id.clone())
    }

    fn instances(&self) -> Instances {
        Instances::table(TABLE).by_status(&["seen"])
    }

    async fn handle(&self, event: &RecordedEvent, ctx: &ProcessContext) -> Result<(), String> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        let state = serde_json::json!({ "status": "seen", "position": event.position });
        ctx.save(TABLE, &event.aggregate_id, state).await
    }
}

async fn tick(store: &Arc<dyn EventStore>, stream: &str) -> u64 {
    let append = Append {
        aggregate_id: stream.into(),
        aggregate_type: "Thing".into(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent::new("Tick", RawValue::from_string("{}".into()).unwrap())],
        idempotency: None,
    };
    store.append(append).await.unwrap().position
}

cairn_testkit::backend_tests!(a_none_instance_key_skips_the_event_and_moves_the_checkpoint);

async fn a_none_instance_key_skips_the_event_and_moves_the_checkpoint(backend: Backend) {
    let (stores, _place) = backend.open().await;
    let rm: Arc<dyn ReadModelStore> = Arc::clone(&stores.readmodels);
    for stream in ["a-1", "skip-1", "a-2"] {
        tick(&stores.events, stream).await;
    }
    // The last event is a skipped one: only a checkpoint moved over it reaches the head.
    let head = tick(&stores.events, "skip-2").await;
    let handled = Arc::new(AtomicUsize::new(0));
    let (_stop, stop_rx) = watch::channel(false);
    let handle = spawn_process_manager(
        Repository::new(Arc::clone(&stores.events)),
        Arc::clone(&rm),
        Arc::new(Echo { handled: Arc::clone(&handled) }),
        stop_rx,
    )
    .unwrap();
    handle.wait_for(head, Duration::from_secs(10)).await.expect("the manager reached the head");
    assert_eq!(handled.load(Ordering::SeqCst), 2, "only the claimed events were handled");
    for claimed in ["a-1", "a-2"] {
        assert!(rm.get(TABLE, claimed).unwrap().is_some(), "{claimed} has an instance");
    }
    for skipped in ["skip-1", "skip-2"] {
        assert_eq!(rm.get(TABLE, skipped).unwrap(), None, "{skipped} has no instance");
    }
    // Durable, not only published: a restart resumes after the skipped tail.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rm.checkpoint(NAME).unwrap() < head {
        assert!(tokio::time::Instant::now() < deadline, "the stored checkpoint never moved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rm.checkpoint(NAME).unwrap(), head);
    assert!(rm.dead_letters(Some(NAME)).unwrap().is_empty(), "nothing was parked");
}
