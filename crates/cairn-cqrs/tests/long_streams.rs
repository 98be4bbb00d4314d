//! Loads of streams whose bytes exceed one page: the stores cut a page at a byte budget
//! (16 MiB), and a load must follow the cut pages to the stream's end.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, TableSpec};
use cairn_core::timestamp::Timestamp;
use cairn_core::{Append, EventStore, ExpectedVersion, NewEvent, RecordedEvent};
use cairn_cqrs::aggregate::{Aggregate, DomainError, DomainEvent, Existence};
use cairn_cqrs::projection::{Projection, spawn_projection};
use cairn_cqrs::repository::{CommandOptions, Repository, Until};
use cairn_testkit::{Backend, backend_tests};
use serde::{Deserialize, Serialize};

/// Events in the stream: ~4 KB each, so that 4,800 of them are ~19 MiB, past one page.
const EVENTS: u64 = 4_800;
/// Bytes of padding per event.
const PAD_BYTES: usize = 4_000;
/// Events and padding for a consumer's `$all` pages (2,000 events each) to be cut.
const CONSUMED_EVENTS: u64 = 2_500;
const CONSUMED_PAD_BYTES: usize = 10_000;
/// The store API's largest append.
const BATCH: u64 = 1_000;
/// Generous: the wait ends as soon as the projection is there; only a stuck one reaches it.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Padded {
    n: u64,
    pad: String,
}

#[derive(Debug, Clone)]
enum PadEvent {
    Padded(Padded),
}

cairn_cqrs::domain_events!(PadEvent { Padded });

/// Counts its events and remembers the last `n`, so a load that stopped early shows.
#[derive(Debug, Default)]
struct Pad {
    count: u64,
    last_n: u64,
}

impl Aggregate for Pad {
    const TYPE: &'static str = "Pad";
    type Event = PadEvent;
    type Command = ();

    fn apply(&mut self, event: &PadEvent) {
        let PadEvent::Padded(e) = event;
        self.count += 1;
        self.last_n = e.n;
    }

    fn handle(&self, (): &()) -> Result<Vec<PadEvent>, DomainError> {
        Ok(vec![PadEvent::Padded(Padded { n: self.last_n + 1, pad: String::new() })])
    }

    fn existence((): &()) -> Existence {
        Existence::MustExist
    }
}

/// Appends `count` events of `pad_bytes` each to `id`, in the largest batches allowed.
async fn fill(store: &Arc<dyn EventStore>, id: &str, count: u64, pad_bytes: usize) {
    let pad = "x".repeat(pad_bytes);
    let mut n = 0;
    while n < count {
        let events = (n + 1..=(n + BATCH).min(count))
            .map(|i| {
                let e = PadEvent::Padded(Padded { n: i, pad: pad.clone() });
                NewEvent::new(e.event_type(), e.to_json())
            })
            .collect::<Vec<_>>();
        let len = events.len() as u64;
        let append = Append {
            aggregate_id: id.to_owned(),
            aggregate_type: Pad::TYPE.to_owned(),
            expected: ExpectedVersion::Exact(n),
            events,
            idempotency: None,
        };
        store.append(append).await.expect("append a batch");
        n += len;
    }
}

async fn a_load_follows_pages_cut_by_bytes_to_the_end(backend: Backend) {
    if !backend.enabled() {
        return;
    }
    let (stores, _place) = backend.open().await;
    fill(&stores.events, "pad-1", EVENTS, PAD_BYTES).await;
    // Without snapshots, so every load reads the whole stream.
    let repo = Repository::new(Arc::clone(&stores.events));

    let loaded = repo.load::<Pad>("pad-1").await.unwrap();
    assert_eq!((loaded.version, loaded.state.count, loaded.state.last_n), (EVENTS, EVENTS, EVENTS));

    let near_end = EVENTS - 10;
    let loaded = repo.load_until::<Pad>("pad-1", Until::Version(near_end)).await.unwrap();
    assert_eq!((loaded.version, loaded.state.last_n), (near_end, near_end));

    let loaded = repo.load_until::<Pad>("pad-1", Until::Time(Timestamp::now())).await.unwrap();
    assert_eq!(loaded.version, EVENTS, "as of now is the whole stream");

    // A command decides on the whole stream and appends at its end (not `Contention`).
    let outcome = repo.execute::<Pad>("pad-1", &(), &CommandOptions::default()).await.unwrap();
    assert_eq!(outcome.version, EVENTS + 1);
    let loaded = repo.load::<Pad>("pad-1").await.unwrap();
    assert_eq!(loaded.state.last_n, EVENTS + 1);
}

/// Counts `Padded` events per stream.
struct PadCounter;

impl Projection for PadCounter {
    fn name(&self) -> &'static str {
        "pad_counter"
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: "pad_counter", indexed: &[] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        vec!["Padded"]
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        let count: u64 = txn.load("pad_counter", &e.aggregate_id)?.unwrap_or(0);
        txn.save("pad_counter", &e.aggregate_id, &(count + 1))
    }
}

async fn a_projection_follows_pages_cut_by_bytes_without_new_appends(backend: Backend) {
    if !backend.enabled() {
        return;
    }
    let (stores, _place) = backend.open().await;
    // A consumer reads 2,000 events a batch: ~10 KB events cut its pages at 16 MiB.
    fill(&stores.events, "pad-1", CONSUMED_EVENTS, CONSUMED_PAD_BYTES).await;
    let head = *stores.events.head().borrow();
    // Started after the appends: nothing new will wake it, so only the head can tell it
    // that a short page was not the end.
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let handle = spawn_projection(
        Arc::clone(&stores.events),
        Arc::clone(&stores.readmodels),
        Arc::new(PadCounter),
        stop_rx,
    )
    .unwrap();
    let reached = handle.wait_for(head, CATCH_UP_DEADLINE).await;
    assert_eq!(reached, Ok(head), "the projection stopped at a cut page");
    let count: u64 =
        serde_json::from_str(&stores.readmodels.get("pad_counter", "pad-1").unwrap().unwrap())
            .unwrap();
    assert_eq!(count, CONSUMED_EVENTS);
}

backend_tests!(
    a_load_follows_pages_cut_by_bytes_to_the_end,
    a_projection_follows_pages_cut_by_bytes_without_new_appends,
);
