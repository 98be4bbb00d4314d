//! An event the relay cannot make a message of (its mapper fails or panics: an upcaster
//! meeting a schema version it has no path from) is parked in the dead-letter queue, and
//! so is every later event of its aggregate (per-aggregate order); every other event is
//! published. It used to fail the relay's round forever, publishing nothing after it.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::readmodel::ReadModelStore;
use cairn_core::{Append, EventStore, ExpectedVersion, NewEvent};
use cairn_nats::{Mapper, Outgoing, Relay, RelayConfig};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::watch;

async fn append(store: &Arc<dyn EventStore>, id: &str, data: &str) -> u64 {
    let append = Append {
        aggregate_id: id.into(),
        aggregate_type: "Order".into(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent::new("OrderConfirmed", RawValue::from_string(data.into()).unwrap())],
        idempotency: None,
    };
    store.append(append).await.unwrap().position
}

fn picky(prefix: String) -> Mapper {
    Arc::new(move |e, _| {
        let data: Value = serde_json::from_str(e.data.get()).map_err(|e| e.to_string())?;
        if data["poison"] == true {
            return Err("no upcaster from schema version 0".into());
        }
        assert!(data["panic"] != true, "an upcaster that panics");
        Ok(Some(Outgoing {
            subject: format!("{prefix}.{}", e.aggregate_id),
            id: e.event_id.to_string(),
            event_type: e.event_type.clone(),
            payload: bytes::Bytes::from(e.data.get().to_owned()),
        }))
    })
}

async fn run_until(relay: &Arc<Relay>, head: u64) {
    let (stop, stop_rx) = watch::channel(false);
    let mut progress = relay.progress();
    let task = tokio::spawn(Arc::clone(relay).run(stop_rx));
    let caught_up =
        tokio::time::timeout(Duration::from_secs(20), progress.wait_for(|p| p.position >= head))
            .await
            .is_ok();
    let _ = stop.send(true);
    task.await.unwrap();
    assert!(caught_up, "the relay moves past the poison: {:?}", *relay.progress().borrow());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_a_dead_letter_and_the_relay_goes_on() {
    let Some(url) = cairn_nats::testing::nats_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(
        cairn_sqlite::SqliteEventStore::open(dir.path(), &cairn_sqlite::SqliteOptions::default())
            .unwrap(),
    );
    let readmodels: Arc<dyn ReadModelStore> =
        Arc::new(cairn_sqlite::SqliteReadModels::open(dir.path()).unwrap());
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("t{id}.public");
    let config = RelayConfig {
        stream: format!("CAIRN_TEST_DL_{}", id.to_uppercase()),
        subject_prefix: prefix.clone(),
        ..RelayConfig::default()
    };
    append(&store, "o1", r#"{"n":1}"#).await;
    let poison = append(&store, "o2", r#"{"poison":true}"#).await;
    let behind = append(&store, "o2", r#"{"n":2}"#).await;
    let panics = append(&store, "o3", r#"{"panic":true}"#).await;
    let head = append(&store, "o4", r#"{"n":4}"#).await;
    let connect = || {
        Relay::with_mapper(
            &url,
            Arc::clone(&store),
            Arc::clone(&readmodels),
            config.clone(),
            picky(prefix.clone()),
        )
    };
    let relay = Arc::new(connect().await.unwrap());
    run_until(&relay, head).await;
    assert_eq!(relay.progress().borrow().dead_letters, 3);

    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let subjects = |js: async_nats::jetstream::Context| {
        let stream = config.stream.clone();
        async move {
            let mut s = js.get_stream(&stream).await.unwrap();
            let count = s.info().await.unwrap().state.messages;
            let mut out = Vec::new();
            for seq in 1..=count {
                out.push(s.get_raw_message(seq).await.unwrap().subject.to_string());
            }
            out
        }
    };
    let published = subjects(js.clone()).await;
    assert_eq!(published, [format!("{prefix}.o1"), format!("{prefix}.o4")]);
    let letters = readmodels.dead_letters(Some(&relay.name())).unwrap();
    let at: Vec<u64> = letters.iter().map(|l| l.position).collect();
    assert_eq!(at, [poison, behind, panics], "{letters:?}");
    assert!(letters[0].error.contains("no upcaster"), "{letters:?}");
    assert!(letters[1].error.contains("held back"), "{letters:?}");
    assert!(letters[2].error.contains("panicked"), "{letters:?}");

    // A restart parks nothing twice and publishes nothing again; o2 stays held back.
    let later = append(&store, "o2", r#"{"n":3}"#).await;
    let relay = Arc::new(connect().await.unwrap());
    run_until(&relay, later).await;
    assert_eq!(relay.progress().borrow().dead_letters, 4);
    assert_eq!(readmodels.dead_letters(Some(&relay.name())).unwrap().len(), 4);
    assert_eq!(subjects(js.clone()).await.len(), 2);
    js.delete_stream(&config.stream).await.unwrap();
}
