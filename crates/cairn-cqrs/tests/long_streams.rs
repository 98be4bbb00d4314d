//! Loads of streams whose bytes exceed one page: the stores cut a page at a byte budget
//! (16 MiB), and a load must follow the cut pages to the stream's end.

use std::sync::Arc;

use cairn_core::timestamp::Timestamp;
use cairn_core::{Append, EventStore, ExpectedVersion, NewEvent};
use cairn_cqrs::aggregate::{Aggregate, DomainError, DomainEvent, Existence};
use cairn_cqrs::repository::{CommandOptions, Repository, Until};
use cairn_testkit::{Backend, backend_tests};
use serde::{Deserialize, Serialize};

/// Events in the stream: ~4 KB each, so that 4,800 of them are ~19 MiB, past one page.
const EVENTS: u64 = 4_800;
/// Bytes of padding per event.
const PAD_BYTES: usize = 4_000;
/// The store API's largest append.
const BATCH: u64 = 1_000;

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

async fn fill(store: &Arc<dyn EventStore>, id: &str) {
    let pad = "x".repeat(PAD_BYTES);
    let mut n = 0;
    while n < EVENTS {
        let events = (n + 1..=(n + BATCH).min(EVENTS))
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
            idempotency_key: None,
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
    fill(&stores.events, "pad-1").await;
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

backend_tests!(a_load_follows_pages_cut_by_bytes_to_the_end);
