//! The relay resumes without duplicating, even after JetStream's duplicate window: a relay
//! stopped between its acks and its checkpoint, and a stream tail with holes (what
//! pipelined publishes leave when one fails), are both published exactly once. Against a
//! real NATS JetStream server (`CAIRN_TEST_NATS_URL`); each test has its own stream, with
//! a one-second duplicate window, and waits past it so that de-duplication cannot help.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use cairn_core::readmodel::ReadModelStore;
use cairn_core::{AllFilter, Append, EventStore, ExpectedVersion, NewEvent};
use cairn_nats::{Relay, RelayConfig};
use serde_json::value::RawValue;
use tokio::sync::watch;

/// The test streams' duplicate window; each test waits longer than this before resuming.
const WINDOW: Duration = Duration::from_secs(1);

struct Fixture {
    url: String,
    config: RelayConfig,
    store: Arc<dyn EventStore>,
    readmodels: Arc<dyn ReadModelStore>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Option<Fixture> {
    let url = cairn_nats::testing::nats_url()?;
    let dir = tempfile::tempdir().unwrap();
    let store =
        cairn_sqlite::SqliteEventStore::open(dir.path(), &cairn_sqlite::SqliteOptions::default())
            .unwrap();
    let readmodels = cairn_sqlite::SqliteReadModels::open(dir.path()).unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let config = RelayConfig {
        stream: format!("CAIRN_RESUME_{}", id.to_uppercase()),
        subject_prefix: format!("t{id}.events"),
        max_in_flight: 16,
        duplicate_window: WINDOW,
        ..RelayConfig::default()
    };
    Some(Fixture {
        url,
        config,
        store: Arc::new(store),
        readmodels: Arc::new(readmodels),
        _dir: dir,
    })
}

impl Fixture {
    async fn relay(&self, config: RelayConfig) -> Arc<Relay> {
        Arc::new(
            Relay::connect(
                &self.url,
                Arc::clone(&self.store),
                Arc::clone(&self.readmodels),
                config,
            )
            .await
            .unwrap(),
        )
    }

    async fn js(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(&self.url).await.unwrap())
    }

    /// How many messages of the stream hold each `$all` position (its `Cairn-Position`).
    async fn copies(&self) -> BTreeMap<u64, usize> {
        let js = self.js().await;
        let mut s = js.get_stream(&self.config.stream).await.unwrap();
        let state = s.info().await.unwrap().state.clone();
        let mut copies = BTreeMap::new();
        for seq in state.first_sequence..=state.last_sequence {
            let m = s.get_raw_message(seq).await.unwrap();
            let at: u64 = m
                .headers
                .get(cairn_nats::consumer::POSITION_HEADER)
                .unwrap()
                .as_str()
                .parse()
                .unwrap();
            *copies.entry(at).or_insert(0) += 1;
        }
        copies
    }

    async fn delete(&self) {
        let _ = self.js().await.delete_stream(&self.config.stream).await;
    }
}

/// Appends `n` events round-robin over 3 aggregates; returns the head position.
async fn fill(store: &Arc<dyn EventStore>, n: usize) -> u64 {
    let mut head = 0;
    for i in 0..n {
        let data = RawValue::from_string(format!(r#"{{"i":{i}}}"#)).unwrap();
        let append = Append {
            aggregate_id: format!("acct-{}", i % 3),
            aggregate_type: "Account".into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new("Credited", data)],
            idempotency: None,
        };
        head = store.append(append).await.unwrap().position;
    }
    head
}

async fn run_until(relay: Arc<Relay>, head: u64) {
    let (stop, stop_rx) = watch::channel(false);
    let mut progress = relay.progress();
    let task = tokio::spawn(Arc::clone(&relay).run(stop_rx));
    tokio::time::timeout(Duration::from_secs(20), progress.wait_for(|p| p.position >= head))
        .await
        .expect("the relay catches up")
        .unwrap();
    let _ = stop.send(true);
    task.await.unwrap();
}

fn exactly_once(copies: &BTreeMap<u64, usize>, head: u64) {
    let expected: BTreeMap<u64, usize> = (1..=head).map(|p| (p, 1)).collect();
    assert_eq!(copies, &expected, "every position in the stream exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_between_acks_and_checkpoint_resumes_after_the_window_without_duplicates() {
    let Some(f) = fixture() else { return };
    // A checkpoint with its sequence mark, as any running relay has.
    let first = fill(&f.store, 10).await;
    run_until(f.relay(f.config.clone()).await, first).await;

    // The next batch is published and acknowledged, then the relay dies before its
    // checkpoint (it waits a minute there; the task is dropped mid-wait).
    let head = fill(&f.store, 30).await;
    let slow = f
        .relay(RelayConfig { checkpoint_delay: Duration::from_secs(60), ..f.config.clone() })
        .await;
    let (_stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(Arc::clone(&slow).run(stop_rx));
    tokio::time::timeout(Duration::from_secs(20), async {
        while slow.progress().borrow().published < head - first {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the batch is acknowledged");
    task.abort();
    let _ = task.await;
    assert_eq!(f.readmodels.checkpoint(&slow.name()).unwrap(), first, "checkpoint not moved");

    // Past the duplicate window, JetStream would store a re-publish again.
    tokio::time::sleep(WINDOW * 2).await;
    let more = fill(&f.store, 5).await;
    let resumed = f.relay(f.config.clone()).await;
    run_until(Arc::clone(&resumed), more).await;
    exactly_once(&f.copies().await, more);
    let progress = *resumed.progress().borrow();
    assert_eq!(progress.published, more - head, "only the new events are published");
    assert_eq!(progress.already_published, head - first, "the batch was found in the stream");
    f.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holes_below_the_stream_s_last_message_are_filled_once_and_nothing_else_repeats() {
    let Some(mut f) = fixture() else { return };
    // Two subject trees: the resume scan cannot filter on the server (a 2.9 server takes
    // one filter subject) and must keep only the relay's messages itself.
    let prefix = f.config.subject_prefix.clone();
    f.config.subjects = vec![format!("{prefix}.>"), format!("{prefix}_extra.>")];
    let checkpoint = fill(&f.store, 5).await;
    run_until(f.relay(f.config.clone()).await, checkpoint).await;

    // A relay that died with pipelined publishes in flight: 6..=10 and 12 reached the
    // stream, 11 did not (its publish failed), and the checkpoint stayed at 5.
    let head = fill(&f.store, 7).await;
    assert_eq!(head, 12);
    let events = f.store.read_all(checkpoint, 100, &AllFilter::default()).await.unwrap().events;
    let js = f.js().await;
    for e in events.iter().filter(|e| e.position != 11) {
        let message = PublishMessage::build()
            .payload(bytes::Bytes::from_static(b"{}"))
            .message_id(e.event_id.to_string())
            .header(cairn_nats::consumer::POSITION_HEADER, e.position.to_string().as_str());
        let subject =
            cairn_nats::event_subject(&f.config.subject_prefix, &e.aggregate_type, &e.aggregate_id);
        js.send_publish(subject, message).await.unwrap().await.unwrap();
    }
    // Another publisher's message on a subject outside the relay's is not the relay's,
    // whatever its headers say.
    let mut stream = js.get_stream(&f.config.stream).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    let foreign = format!("{}.other", f.config.stream.to_lowercase());
    config.subjects.push(foreign.clone());
    js.update_stream(&config).await.unwrap();
    let message = PublishMessage::build()
        .payload(bytes::Bytes::from_static(b"{}"))
        .header(cairn_nats::consumer::POSITION_HEADER, "13");
    js.send_publish(foreign, message).await.unwrap().await.unwrap();

    tokio::time::sleep(WINDOW * 2).await;
    let more = fill(&f.store, 1).await;
    let resumed = f.relay(f.config.clone()).await;
    run_until(Arc::clone(&resumed), more).await;
    let mut copies = f.copies().await;
    assert_eq!(copies.get(&13), Some(&2), "the foreign 13 and the relay's");
    copies.insert(13, 1);
    exactly_once(&copies, more);
    let progress = *resumed.progress().borrow();
    assert_eq!(progress.already_published, 6, "6..=10 and 12 were in the stream");
    assert_eq!(progress.published, 2, "11 and 13 published, nothing else");
    f.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_gets_what_follows_the_checkpoint_and_nothing_twice() {
    let Some(f) = fixture() else { return };
    let checkpoint = fill(&f.store, 8).await;
    run_until(f.relay(f.config.clone()).await, checkpoint).await;
    // The stream is deleted and created again: its sequences restart below the mark.
    f.delete().await;
    let head = fill(&f.store, 4).await;
    let resumed = f.relay(f.config.clone()).await;
    run_until(Arc::clone(&resumed), head).await;
    assert_eq!(resumed.progress().borrow().published, head - checkpoint);
    let copies = f.copies().await;
    let expected: BTreeMap<u64, usize> = (checkpoint + 1..=head).map(|p| (p, 1)).collect();
    assert_eq!(copies, expected, "what the old stream had is not in the new one");
    f.delete().await;
}
