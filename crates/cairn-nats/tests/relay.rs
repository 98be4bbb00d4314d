//! The outbox relay against a real NATS JetStream server (`CAIRN_TEST_NATS_URL`): every
//! event arrives once, in order per aggregate; a relay that restarts from an older
//! checkpoint finds what it already published in the stream and does not publish it
//! again. Each test uses its own stream and subjects, and deletes them.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::readmodel::ReadModelStore;
use cairn_core::{Append, EventStore, ExpectedVersion, NewEvent};
use cairn_nats::{Relay, RelayConfig};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::watch;

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
        stream: format!("CAIRN_TEST_{}", id.to_uppercase()),
        subject_prefix: format!("t{id}.events"),
        max_in_flight: 64,
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

/// Appends `n` events round-robin over `streams` aggregates (ids with dots, to exercise
/// the subject escaping); returns the head position.
async fn fill(store: &Arc<dyn EventStore>, streams: usize, n: usize) -> u64 {
    let mut head = 0;
    for i in 0..n {
        let data = RawValue::from_string(format!(r#"{{"i":{i}}}"#)).unwrap();
        let append = Append {
            aggregate_id: format!("acct.{}", i % streams),
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
    tokio::time::timeout(Duration::from_secs(30), progress.wait_for(|p| p.position >= head))
        .await
        .expect("the relay catches up")
        .unwrap();
    let _ = stop.send(true);
    task.await.unwrap();
}

/// Every message of the stream, in stream order.
async fn messages(url: &str, stream: &str) -> Vec<Value> {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let mut s = js.get_stream(stream).await.unwrap();
    let count = s.info().await.unwrap().state.messages;
    let mut out = Vec::new();
    for seq in 1..=count {
        let m = s.get_raw_message(seq).await.unwrap();
        out.push(serde_json::from_slice(&m.payload).unwrap());
    }
    js.delete_stream(stream).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_in_order_per_aggregate() {
    let Some(f) = fixture() else { return };
    let head = fill(&f.store, 7, 500).await;
    let relay = Arc::new(
        Relay::connect(&f.url, Arc::clone(&f.store), Arc::clone(&f.readmodels), f.config.clone())
            .await
            .unwrap(),
    );
    run_until(Arc::clone(&relay), head).await;
    assert_eq!(relay.progress().borrow().published, 500);
    assert_eq!(f.readmodels.checkpoint(&relay.name()).unwrap(), head);

    let got = messages(&f.url, &f.config.stream).await;
    assert_eq!(got.len(), 500, "each event once");
    let positions: Vec<u64> = got.iter().map(|m| m["position"].as_u64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "$all order");
    let mut last = std::collections::HashMap::new();
    for m in &got {
        let v = m["version"].as_u64().unwrap();
        let prev = last.insert(m["aggregate_id"].as_str().unwrap().to_owned(), v);
        assert_eq!(prev.unwrap_or(0) + 1, v, "per-aggregate order");
        assert_eq!(m["data"]["i"].as_u64().unwrap(), m["position"].as_u64().unwrap() - 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_rewound_checkpoint_reads_the_stream_and_publishes_nothing_twice() {
    let Some(f) = fixture() else { return };
    let head = fill(&f.store, 5, 300).await;
    let first = Arc::new(
        Relay::connect(&f.url, Arc::clone(&f.store), Arc::clone(&f.readmodels), f.config.clone())
            .await
            .unwrap(),
    );
    run_until(Arc::clone(&first), head).await;
    // A checkpoint moved back by hand (or by the start-up guard): its sequence mark no
    // longer matches it, so the relay reads the whole stream to learn what is there.
    let fence = f.readmodels.try_lead(&first.name()).unwrap().expect("the relay ended");
    f.readmodels.transact(&fence, &first.name(), Some(120), &mut |_| Ok(())).unwrap();
    let more = fill(&f.store, 5, 50).await;
    let second = Arc::new(
        Relay::connect(&f.url, Arc::clone(&f.store), Arc::clone(&f.readmodels), f.config.clone())
            .await
            .unwrap(),
    );
    run_until(Arc::clone(&second), more).await;
    let progress = *second.progress().borrow();
    assert_eq!(progress.published, 50, "only the new events are published");
    assert_eq!(progress.already_published, 300 - 120, "121..=300 were found in the stream");
    let got = messages(&f.url, &f.config.stream).await;
    assert_eq!(got.len(), 350, "each event once");
    let ids: std::collections::HashSet<&str> =
        got.iter().map(|m| m["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 350);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_created_with_one_subject_gains_a_second_and_both_are_published() {
    let Some(f) = fixture() else { return };
    let prefix = &f.config.subject_prefix;
    let (first, second) = (format!("{prefix}.first"), format!("{prefix}.second"));
    // Each event goes to one of the two subject trees, by aggregate.
    let mapper: cairn_nats::Mapper = {
        let (first, second) = (first.clone(), second.clone());
        Arc::new(move |e, _config| {
            let tree = if e.aggregate_id.ends_with('0') { &first } else { &second };
            Ok(Some(cairn_nats::Outgoing {
                subject: format!("{tree}.{}", cairn_nats::encode_token(&e.aggregate_id)),
                id: e.event_id.to_string(),
                event_type: e.event_type.clone(),
                payload: bytes::Bytes::from(e.data.get().to_owned()),
            }))
        })
    };
    // A deployment with one module: the stream holds only the first tree.
    let one = RelayConfig { subjects: vec![format!("{first}.>")], ..f.config.clone() };
    Relay::with_mapper(
        &f.url,
        Arc::clone(&f.store),
        Arc::clone(&f.readmodels),
        one,
        Arc::clone(&mapper),
    )
    .await
    .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&f.url).await.unwrap());
    let subjects = |info: async_nats::jetstream::stream::Info| info.config.subjects;
    let mut stream = js.get_stream(&f.config.stream).await.unwrap();
    assert_eq!(subjects(stream.info().await.unwrap().clone()), [format!("{first}.>")]);

    // The second module arrives: its subjects are added, the first kept.
    let head = fill(&f.store, 2, 40).await;
    let two = RelayConfig {
        subjects: vec![format!("{first}.>"), format!("{second}.>")],
        ..f.config.clone()
    };
    let relay = Arc::new(
        Relay::with_mapper(&f.url, Arc::clone(&f.store), Arc::clone(&f.readmodels), two, mapper)
            .await
            .unwrap(),
    );
    let mut stream = js.get_stream(&f.config.stream).await.unwrap();
    assert_eq!(
        subjects(stream.info().await.unwrap().clone()),
        [format!("{first}.>"), format!("{second}.>")]
    );
    // A relay of the first deployment starting again removes nothing.
    let again = RelayConfig { subjects: vec![format!("{first}.>")], ..f.config.clone() };
    Relay::connect(&f.url, Arc::clone(&f.store), Arc::clone(&f.readmodels), again).await.unwrap();
    let mut stream = js.get_stream(&f.config.stream).await.unwrap();
    assert_eq!(subjects(stream.info().await.unwrap().clone()).len(), 2);

    run_until(Arc::clone(&relay), head).await;
    assert_eq!(relay.progress().borrow().published, 40);
    let mut s = js.get_stream(&f.config.stream).await.unwrap();
    let mut trees = std::collections::BTreeMap::new();
    for seq in 1..=s.info().await.unwrap().state.messages {
        let m = s.get_raw_message(seq).await.unwrap();
        let tree = if m.subject.starts_with(&format!("{first}.")) { "first" } else { "second" };
        *trees.entry(tree).or_insert(0) += 1;
    }
    js.delete_stream(&f.config.stream).await.unwrap();
    assert_eq!(trees, [("first", 20), ("second", 20)].into_iter().collect());
}
