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

/// The process-manager runner handles a batch's instances concurrently: each instance's
/// events in `$all` order, other instances meanwhile, and one instance's bad event is
/// dead-lettered without holding back the others.
mod concurrency {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use async_trait::async_trait;
    use cairn_core::readmodel::{ReadModelStore, TableSpec};
    use cairn_core::{Append, EventStore, ExpectedVersion, NewEvent, RecordedEvent};
    use cairn_cqrs::Repository;
    use cairn_cqrs::process::{Instances, ProcessContext, ProcessManager, spawn_process_manager};
    use cairn_testkit::Backend;
    use serde_json::value::RawValue;
    use tokio::sync::watch;

    const NAME: &str = "slow";
    const TABLE: &str = "slow_instances";
    /// What the manager spends on every event (as if waiting for a command's answer).
    const HANDLE_TIME: Duration = Duration::from_millis(20);
    const INSTANCES: usize = 50;
    const EVENTS_PER_INSTANCE: u64 = 4;
    /// The stream whose second event the manager refuses, every time.
    const BAD: &str = "bad";
    /// Longest the manager may take to reach the head.
    const CATCH_UP: Duration = Duration::from_secs(60);

    /// Sleeps [`HANDLE_TIME`] per event and records, per instance, the stream versions in the
    /// order it was handed them.
    struct Slow {
        seen: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    }

    #[async_trait]
    impl ProcessManager for Slow {
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
            Some(event.aggregate_id.clone())
        }

        fn instances(&self) -> Instances {
            Instances::table(TABLE)
        }

        async fn handle(&self, event: &RecordedEvent, _ctx: &ProcessContext) -> Result<(), String> {
            if event.aggregate_id == BAD && event.version == 2 {
                return Err("refused: a bad event".into());
            }
            self.seen
                .lock()
                .unwrap()
                .entry(event.aggregate_id.clone())
                .or_default()
                .push(event.version);
            tokio::time::sleep(HANDLE_TIME).await;
            Ok(())
        }
    }

    /// Appends `rounds` events to every stream, round by round, so that the instances'
    /// events interleave in `$all`; answers the last position.
    async fn interleaved(store: &Arc<dyn EventStore>, streams: &[String], rounds: u64) -> u64 {
        let mut head = 0;
        for _ in 0..rounds {
            for stream in streams {
                let append = Append {
                    aggregate_id: stream.clone(),
                    aggregate_type: "Thing".into(),
                    expected: ExpectedVersion::Any,
                    events: vec![NewEvent::new(
                        "Tick",
                        RawValue::from_string("{}".into()).unwrap(),
                    )],
                    idempotency: None,
                };
                head = store.append(append).await.unwrap().position;
            }
        }
        head
    }

    fn spawn(
        stores: &cairn_testkit::Stores,
        seen: &Arc<Mutex<HashMap<String, Vec<u64>>>>,
        stop: watch::Receiver<bool>,
    ) -> cairn_cqrs::consumer::ConsumerHandle {
        spawn_process_manager(
            Repository::new(Arc::clone(&stores.events)),
            Arc::clone(&stores.readmodels),
            Arc::new(Slow { seen: Arc::clone(seen) }),
            stop,
        )
        .unwrap()
    }

    cairn_testkit::backend_tests!(
        instances_run_concurrently_and_each_instance_in_order,
        a_bad_event_is_parked_and_every_other_instance_is_handled,
    );

    async fn instances_run_concurrently_and_each_instance_in_order(backend: Backend) {
        let (stores, _place) = backend.open().await;
        let streams: Vec<String> = (0..INSTANCES).map(|i| format!("i-{i}")).collect();
        let head = interleaved(&stores.events, &streams, EVENTS_PER_INSTANCE).await;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let (_stop, stop_rx) = watch::channel(false);
        let started = Instant::now();
        let handle = spawn(&stores, &seen, stop_rx);
        handle.wait_for(head, CATCH_UP).await.expect("the manager reached the head");
        let took = started.elapsed();

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), INSTANCES, "every instance was handled");
        let in_order: Vec<u64> = (1..=EVENTS_PER_INSTANCE).collect();
        for stream in &streams {
            assert_eq!(seen[stream], in_order, "{stream}: its events once each, in order");
        }
        // One event at a time would take at least this long; concurrent instances take a
        // fraction of it. Half leaves a loaded machine plenty of room (about 8x expected).
        let sequential =
            HANDLE_TIME * u32::try_from(INSTANCES as u64 * EVENTS_PER_INSTANCE).unwrap();
        assert!(
            took < sequential / 2,
            "{took:?} for what takes {sequential:?} one event at a time: instances were not concurrent"
        );
        let rm: &Arc<dyn ReadModelStore> = &stores.readmodels;
        assert_eq!(rm.checkpoint(NAME).unwrap(), head, "one checkpoint at the batch's end");
    }

    async fn a_bad_event_is_parked_and_every_other_instance_is_handled(backend: Backend) {
        let (stores, _place) = backend.open().await;
        let mut streams: Vec<String> = (0..9).map(|i| format!("i-{i}")).collect();
        streams.insert(4, BAD.to_owned());
        let head = interleaved(&stores.events, &streams, 3).await;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let (_stop, stop_rx) = watch::channel(false);
        let handle = spawn(&stores, &seen, stop_rx);
        handle.wait_for(head, CATCH_UP).await.expect("the manager reached the head");

        let letters = stores.readmodels.dead_letters(Some(NAME)).unwrap();
        let parked: Vec<(&str, u32)> =
            letters.iter().map(|l| (l.aggregate_id.as_str(), l.attempts)).collect();
        // The bad event after its tries; the bad stream's next event parked behind it, untried.
        assert_eq!(
            parked,
            [(BAD, cairn_cqrs::consumer::EVENT_ATTEMPTS_MAX), (BAD, 0)],
            "only the bad stream's events were parked: {letters:?}"
        );
        assert!(letters[0].error.contains("a bad event"), "{letters:?}");
        let seen = seen.lock().unwrap().clone();
        for stream in streams.iter().filter(|s| *s != BAD) {
            let handled = &seen[stream];
            for version in 1..=3 {
                assert!(handled.contains(&version), "{stream} v{version} was handled: {handled:?}");
            }
        }
        assert!(
            !seen[BAD].contains(&3),
            "the event after the bad one never ran before it: {:?}",
            seen[BAD]
        );
        assert_eq!(stores.readmodels.checkpoint(NAME).unwrap(), head);
    }
}
