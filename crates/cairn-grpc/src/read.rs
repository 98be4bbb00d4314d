//! `Read`: a stream or `$all`, forwards or backwards, a count of events or a
//! subscription (catch-up, then live). Every read runs in its own task and sends through
//! a bounded channel: a slow client holds only its own task, never a writer or another
//! reader.

use std::sync::Arc;

use cairn_core::store::READ_LIMIT_MAX;
use cairn_core::subscription::SUBSCRIPTION_BATCH_EVENTS;
use cairn_core::{AllFilter, Direction, EventStore, ReadError, RecordedEvent, StreamRead};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tonic::Status;

use crate::convert::{self, StreamName};
use crate::filter::EventFilter;
use crate::proto::event_store::client::Empty;
use crate::proto::event_store::client::streams::ReadResp;
use crate::proto::event_store::client::streams::read_req::options::{
    self as opts, AllOptions, StreamOptions, all_options::AllOption, stream_options::RevisionOption,
};
use crate::proto::event_store::client::streams::read_resp::{self, Content};
use crate::status;

/// Responses buffered per read before its task waits for the client.
pub const READ_CHANNEL_MESSAGES: usize = 64;
/// Largest window a backwards `$all` read scans forward at once.
const BACKWARD_WINDOW_MAX: u64 = READ_LIMIT_MAX as u64;
/// First window of a backwards `$all` read.
const BACKWARD_WINDOW_MIN: u64 = 64;

/// The sending half of a read's response stream.
pub type Sender = mpsc::Sender<Result<ReadResp, Status>>;

/// What every read needs.
#[derive(Clone)]
pub struct Reader {
    /// The store (the server's: personal data opened, lifecycle rules applied).
    pub store: Arc<dyn EventStore>,
    /// Ends live subscriptions when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Ids as strings (the client asked) or structured.
    pub uuid_as_string: bool,
}

/// Where a stream read starts.
#[derive(Debug, Clone, Copy)]
pub enum StreamFrom {
    /// The first (forwards) or only the first event (backwards).
    Start,
    /// Nothing forwards; the last event backwards.
    End,
    /// This version, inclusive (reads); after it (subscriptions).
    Version(u64),
}

impl StreamFrom {
    /// The start the options name.
    pub fn of(options: &StreamOptions) -> Self {
        match options.revision_option {
            Some(RevisionOption::Revision(r)) => Self::Version(r.saturating_add(1)),
            Some(RevisionOption::End(_)) => Self::End,
            Some(RevisionOption::Start(_)) | None => Self::Start,
        }
    }
}

/// Where a `$all` read starts.
#[derive(Debug, Clone, Copy)]
pub enum AllFrom {
    /// The first event.
    Start,
    /// The head.
    End,
    /// This position: inclusive for reads, exclusive for subscriptions.
    Position(u64),
}

impl AllFrom {
    /// The start the options name.
    pub fn of(options: &AllOptions) -> Self {
        match &options.all_option {
            Some(AllOption::Position(p)) => Self::Position(p.commit_position),
            Some(AllOption::End(_)) => Self::End,
            Some(AllOption::Start(_)) | None => Self::Start,
        }
    }
}

fn event(reader: &Reader, e: &RecordedEvent) -> ReadResp {
    ReadResp { content: Some(Content::Event(convert::read_event(e, reader.uuid_as_string))) }
}

fn not_found(stream: &str) -> ReadResp {
    ReadResp {
        content: Some(Content::StreamNotFound(read_resp::StreamNotFound {
            stream_identifier: Some(convert::identifier(stream)),
        })),
    }
}

fn now() -> prost_types::Timestamp {
    let micros = cairn_core::timestamp::Timestamp::now().as_micros();
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn read_error(stream: &str, error: ReadError) -> Status {
    match error {
        ReadError::StreamTombstoned => status::stream_deleted(stream),
        other => status::from(other),
    }
}

/// Whether a scan should stop: its client has gone, or the server is shutting down.
fn stopped(reader: &Reader, tx: &Sender) -> bool {
    tx.is_closed() || *reader.shutdown.borrow()
}

/// Sends `message`; `false` when the client has gone (the read then stops).
async fn send(tx: &Sender, message: ReadResp) -> bool {
    tx.send(Ok(message)).await.is_ok()
}

/// Reads up to `count` events of one stream.
pub async fn stream(
    reader: Reader,
    name: StreamName,
    from: StreamFrom,
    direction: Direction,
    mut count: u64,
    tx: Sender,
) {
    let id = name.store_id();
    let mut from_version = match (from, direction) {
        (StreamFrom::Start, _) => Some(1),
        (StreamFrom::End, Direction::Backward) => None,
        // Nothing comes after the end, but a missing stream still says so.
        (StreamFrom::End, Direction::Forward) => {
            count = 0;
            None
        }
        (StreamFrom::Version(v), _) => Some(v.max(1)),
    };
    if count == 0 {
        let probe = StreamRead { from_version: None, direction: Direction::Backward, limit: 1 };
        match reader.store.read_stream(&id, probe).await {
            Ok(_) => {}
            Err(ReadError::StreamNotFound) => {
                let _ = send(&tx, not_found(&id)).await;
            }
            Err(e) => {
                let _ = tx.send(Err(read_error(&id, e))).await;
            }
        }
        return;
    }
    while count > 0 {
        let limit = count.min(READ_LIMIT_MAX as u64) as usize;
        let read = StreamRead { from_version, direction, limit };
        let slice = match reader.store.read_stream(&id, read).await {
            Ok(slice) => slice,
            Err(ReadError::StreamNotFound) => {
                let _ = send(&tx, not_found(&id)).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(read_error(&id, e))).await;
                return;
            }
        };
        for e in &slice.events {
            if !send(&tx, event(&reader, e)).await {
                return;
            }
        }
        count = count.saturating_sub(slice.events.len() as u64);
        match slice.next_version(direction) {
            Some(next) if !slice.events.is_empty() || slice.scanned_version.is_some() => {
                from_version = Some(next);
            }
            _ => return,
        }
    }
}

/// Reads up to `count` events of `$all` that pass `filter`.
pub async fn all(
    reader: Reader,
    from: AllFrom,
    direction: Direction,
    filter: Option<EventFilter>,
    count: u64,
    tx: Sender,
) {
    let result = match direction {
        Direction::Forward => all_forward(&reader, from, filter.as_ref(), count, &tx).await,
        Direction::Backward => all_backward(&reader, from, filter.as_ref(), count, &tx).await,
    };
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

async fn all_forward(
    reader: &Reader,
    from: AllFrom,
    filter: Option<&EventFilter>,
    mut count: u64,
    tx: &Sender,
) -> Result<(), Status> {
    let mut after = match from {
        AllFrom::Start => 0,
        AllFrom::End => return Ok(()),
        AllFrom::Position(p) => p.saturating_sub(1),
    };
    while count > 0 {
        let limit = if filter.is_some() {
            READ_LIMIT_MAX
        } else {
            count.min(READ_LIMIT_MAX as u64) as usize
        };
        let slice = reader
            .store
            .read_all(after, limit, &AllFilter::default())
            .await
            .map_err(status::from)?;
        if slice.events.is_empty() {
            return Ok(());
        }
        for e in &slice.events {
            after = e.position;
            if filter.is_none_or(|f| f.matches(e)) {
                if !send(tx, event(reader, e)).await {
                    return Ok(());
                }
                count -= 1;
                if count == 0 {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Backwards through `$all`: forward reads of growing windows below the last position
/// reached, each sent in reverse (the store reads `$all` forward only).
async fn all_backward(
    reader: &Reader,
    from: AllFrom,
    filter: Option<&EventFilter>,
    mut count: u64,
    tx: &Sender,
) -> Result<(), Status> {
    // Every event with position ≤ `upper` not yet sent.
    // Nothing lies past the head: a far position starts there, not 10⁴ empty windows
    // away from it.
    let head = *reader.store.head().borrow();
    let mut upper = match from {
        AllFrom::Start => 0,
        AllFrom::End => head,
        AllFrom::Position(p) => p.min(head),
    };
    let mut window = BACKWARD_WINDOW_MIN;
    while count > 0 && upper > 0 {
        if stopped(reader, tx) {
            return Ok(());
        }
        let lower = upper.saturating_sub(window);
        let mut found = Vec::new();
        let mut after = lower;
        'window: loop {
            let slice = reader
                .store
                .read_all(after, READ_LIMIT_MAX, &AllFilter::default())
                .await
                .map_err(status::from)?;
            if slice.events.is_empty() {
                break;
            }
            for e in slice.events {
                if e.position > upper {
                    break 'window;
                }
                after = e.position;
                if filter.is_none_or(|f| f.matches(&e)) {
                    found.push(e);
                }
            }
        }
        for e in found.iter().rev() {
            if !send(tx, event(reader, e)).await {
                return Ok(());
            }
            count -= 1;
            if count == 0 {
                return Ok(());
            }
        }
        upper = lower;
        window = (window * 2).min(BACKWARD_WINDOW_MAX);
    }
    Ok(())
}

fn confirmation() -> ReadResp {
    ReadResp {
        content: Some(Content::Confirmation(read_resp::SubscriptionConfirmation {
            subscription_id: uuid::Uuid::new_v4().to_string(),
        })),
    }
}

/// Waits for the next commit; `false` when the subscription should end (the client
/// went away, the server is shutting down, the store closed). A subscription the server
/// ends gets `Unavailable`: ended without an error, the official clients would read
/// from the finished call forever.
async fn wait_for_commit(
    head: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
    tx: &Sender,
) -> bool {
    if *shutdown.borrow() {
        end_unavailable(tx).await;
        return false;
    }
    let ended = tokio::select! {
        changed = head.changed() => changed.is_err(),
        _ = shutdown.changed() => true,
        () = tx.closed() => return false,
    };
    if ended {
        end_unavailable(tx).await;
    }
    !ended
}

async fn end_unavailable(tx: &Sender) {
    let _ = tx.send(Err(Status::unavailable("the server is shutting down; resubscribe"))).await;
}

/// A subscription to one stream: every event after `from`, then each new one.
pub async fn subscribe_stream(
    mut reader: Reader,
    name: StreamName,
    from: StreamFrom,
    tx: Sender,
    _permit: OwnedSemaphorePermit,
) {
    let id = name.store_id();
    // Where it starts is fixed before it is confirmed: an event committed after the
    // client saw the confirmation is never taken for "before the end".
    let mut head = reader.store.head();
    let mut next = match from {
        StreamFrom::Start => 1,
        StreamFrom::Version(v) => v.saturating_add(1),
        StreamFrom::End => match reader.store.stream_version(&id).await {
            Ok(v) => v + 1,
            Err(e) => {
                let _ = tx.send(Err(read_error(&id, e))).await;
                return;
            }
        },
    };
    if !send(&tx, confirmation()).await {
        return;
    }
    let mut caught_up = false;
    loop {
        if *reader.shutdown.borrow() {
            end_unavailable(&tx).await;
            return;
        }
        head.borrow_and_update();
        let read = StreamRead::forward_from(next, SUBSCRIPTION_BATCH_EVENTS);
        let (events, advanced) = match reader.store.read_stream(&id, read).await {
            Ok(slice) => {
                let advanced = slice
                    .next_version(Direction::Forward)
                    .filter(|_| !slice.events.is_empty() || slice.scanned_version.is_some());
                (slice.events, advanced)
            }
            // Not written yet, or soft-deleted: the next append is what it waits for.
            Err(ReadError::StreamNotFound) => (Vec::new(), None),
            Err(e) => {
                let _ = tx.send(Err(read_error(&id, e))).await;
                return;
            }
        };
        for e in &events {
            next = e.version + 1;
            if !send(&tx, event(&reader, e)).await {
                return;
            }
        }
        // A page can end short of the head (the byte cap, events hidden by age): only a
        // read that reaches the head means caught up.
        if let Some(advanced) = advanced {
            next = next.max(advanced);
            continue;
        }
        // The last revision delivered or skipped; none for a stream with no event yet.
        let revision = next.checked_sub(2).map(|r| r as i64);
        if !caught_up && !send(&tx, caught_up_message(revision, None)).await {
            return;
        }
        caught_up = true;
        if !wait_for_commit(&mut head, &mut reader.shutdown, &tx).await {
            return;
        }
    }
}

/// `CaughtUp`, with the last revision or position reached when there is one.
fn caught_up_message(stream_revision: Option<i64>, position: Option<u64>) -> ReadResp {
    let position =
        position.map(|p| read_resp::Position { commit_position: p, prepare_position: p });
    ReadResp {
        content: Some(Content::CaughtUp(read_resp::CaughtUp {
            timestamp: Some(now()),
            stream_revision,
            position,
        })),
    }
}

fn checkpoint(position: u64) -> ReadResp {
    ReadResp {
        content: Some(Content::Checkpoint(read_resp::Checkpoint {
            commit_position: position,
            prepare_position: position,
            timestamp: Some(now()),
        })),
    }
}

/// A subscription to `$all`: every event after `from` that passes `filter`, then each
/// new one; a filtered one sends a checkpoint every `checkpoint_interval` events scanned
/// and when it catches up, so a client can resume without rescanning what it skipped.
pub async fn subscribe_all(
    mut reader: Reader,
    from: AllFrom,
    filter: Option<EventFilter>,
    tx: Sender,
    _permit: OwnedSemaphorePermit,
) {
    // Where it starts is fixed before it is confirmed (see `subscribe_stream`).
    let mut head = reader.store.head();
    let mut after = match from {
        AllFrom::Start => 0,
        AllFrom::End => *head.borrow(),
        AllFrom::Position(p) => p,
    };
    if !send(&tx, confirmation()).await {
        return;
    }
    let mut scanned_since_checkpoint = 0u64;
    let mut checkpointed = after;
    let mut caught_up = false;
    loop {
        // Checked per page too: a subscription replaying a long log ends at shutdown
        // without waiting to reach the head.
        if *reader.shutdown.borrow() {
            end_unavailable(&tx).await;
            return;
        }
        head.borrow_and_update();
        let slice = match reader
            .store
            .read_all(after, SUBSCRIPTION_BATCH_EVENTS, &AllFilter::default())
            .await
        {
            Ok(slice) => slice,
            Err(e) => {
                let _ = tx.send(Err(status::from(e))).await;
                return;
            }
        };
        // Only an empty read means caught up: a page can end short of the head (the byte
        // cap).
        let more = !slice.events.is_empty();
        for e in &slice.events {
            after = e.position;
            if filter.as_ref().is_none_or(|f| f.matches(e)) && !send(&tx, event(&reader, e)).await {
                return;
            }
            if let Some(f) = &filter {
                scanned_since_checkpoint += 1;
                if scanned_since_checkpoint >= f.checkpoint_interval {
                    scanned_since_checkpoint = 0;
                    checkpointed = after;
                    if !send(&tx, checkpoint(after)).await {
                        return;
                    }
                }
            }
        }
        if more {
            continue;
        }
        if filter.is_some() && checkpointed != after {
            scanned_since_checkpoint = 0;
            checkpointed = after;
            if !send(&tx, checkpoint(after)).await {
                return;
            }
        }
        if !caught_up && !send(&tx, caught_up_message(None, (after > 0).then_some(after))).await {
            return;
        }
        caught_up = true;
        if !wait_for_commit(&mut head, &mut reader.shutdown, &tx).await {
            return;
        }
    }
}

/// Whether the options ask for ids as strings.
pub fn uuid_as_string(options: opts::UuidOption) -> bool {
    matches!(options.content, Some(opts::uuid_option::Content::String(Empty {})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::event_store::client::streams::read_req::options::filter_options::{
        Expression, Filter,
    };
    use crate::proto::event_store::client::streams::read_req::options::{
        FilterOption, FilterOptions,
    };
    use cairn_core::{Append, ExpectedVersion, MemoryEventStore, NewEvent};

    /// A store of `n` events over three streams (`s-0`, `s-1`, `s-2`, round robin).
    async fn store(n: u64) -> Arc<dyn EventStore> {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        for i in 0..n {
            let data = serde_json::value::to_raw_value(&serde_json::json!({"i": i})).unwrap();
            store
                .append(Append {
                    aggregate_id: format!("s-{}", i % 3),
                    aggregate_type: "t".into(),
                    expected: ExpectedVersion::Any,
                    events: vec![NewEvent::new("E", data)],
                    idempotency: None,
                })
                .await
                .unwrap();
        }
        store
    }

    /// The positions a read sends, in order.
    async fn positions(
        store: Arc<dyn EventStore>,
        from: AllFrom,
        direction: Direction,
        filter: Option<EventFilter>,
        count: u64,
    ) -> Vec<u64> {
        let (_stop, shutdown) = watch::channel(false);
        let reader = Reader { store, shutdown, uuid_as_string: true };
        let (tx, mut rx) = mpsc::channel(READ_CHANNEL_MESSAGES);
        tokio::spawn(all(reader, from, direction, filter, count, tx));
        let mut out = Vec::new();
        while let Some(message) = rx.recv().await {
            match message.unwrap().content {
                Some(Content::Event(e)) => out.push(e.event.unwrap().commit_position),
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    }

    fn on_stream(prefix: &str) -> Option<EventFilter> {
        let options = FilterOption::Filter(FilterOptions {
            filter: Some(Filter::StreamIdentifier(Expression {
                regex: String::new(),
                prefix: vec![prefix.into()],
            })),
            window: None,
            checkpoint_interval_multiplier: 1,
        });
        EventFilter::from_options(Some(&options)).unwrap()
    }

    #[tokio::test]
    async fn backwards_reads_cross_their_growing_windows_without_gaps() {
        let store = store(700).await;
        let all: Vec<u64> = (1..=700).rev().collect();
        let got = positions(store.clone(), AllFrom::End, Direction::Backward, None, 650).await;
        assert_eq!(got, all[..650].to_vec());
        let s1: Vec<u64> = all.iter().copied().filter(|p| (p - 1) % 3 == 1).collect();
        let got =
            positions(store.clone(), AllFrom::End, Direction::Backward, on_stream("s-1"), 1000)
                .await;
        assert_eq!(got, s1, "every s-1 event, newest first, none twice");
        let got = positions(store, AllFrom::Position(100), Direction::Backward, None, 3).await;
        assert_eq!(got, vec![100, 99, 98], "a backwards read includes its position");
    }

    #[tokio::test]
    async fn forward_reads_start_at_their_position_and_stop_at_their_count() {
        let store = store(50).await;
        let got =
            positions(store.clone(), AllFrom::Position(10), Direction::Forward, None, 3).await;
        assert_eq!(got, vec![10, 11, 12]);
        let got = positions(store.clone(), AllFrom::End, Direction::Forward, None, 3).await;
        assert!(got.is_empty(), "forwards from the end reads nothing");
        let got = positions(store, AllFrom::Start, Direction::Forward, on_stream("s-2"), 4).await;
        assert_eq!(got, vec![3, 6, 9, 12]);
    }

    fn permit() -> OwnedSemaphorePermit {
        Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap()
    }

    /// What a subscription sends until it is caught up: event positions, then `true`
    /// if it said so.
    async fn until_caught_up(rx: &mut mpsc::Receiver<Result<ReadResp, Status>>) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            match rx.recv().await.expect("open").unwrap().content {
                Some(Content::Event(e)) => out.push(e.event.unwrap().commit_position),
                Some(Content::CaughtUp(_)) => return out,
                Some(Content::Confirmation(_) | Content::Checkpoint(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn subscriptions_cross_pages_then_turn_live_then_end_at_shutdown() {
        let store = store(1_200).await;
        let (stop, shutdown) = watch::channel(false);
        let reader = Reader { store: store.clone(), shutdown, uuid_as_string: true };

        let (tx, mut all_rx) = mpsc::channel(READ_CHANNEL_MESSAGES);
        tokio::spawn(subscribe_all(reader.clone(), AllFrom::Start, None, tx, permit()));
        let caught_up = until_caught_up(&mut all_rx).await;
        assert_eq!(caught_up, (1..=1_200).collect::<Vec<u64>>(), "three pages, no gap");

        let (tx, mut stream_rx) = mpsc::channel(READ_CHANNEL_MESSAGES);
        let name = StreamName::Stream("s-0".into());
        tokio::spawn(subscribe_stream(reader, name, StreamFrom::Version(1), tx, permit()));
        let caught_up = until_caught_up(&mut stream_rx).await;
        let expected: Vec<u64> = (1..=1_200).filter(|p| (p - 1) % 3 == 0).skip(1).collect();
        assert_eq!(caught_up, expected, "after revision 0: every later s-0 event");

        let data = serde_json::value::to_raw_value(&serde_json::json!({})).unwrap();
        let append = Append {
            aggregate_id: "s-0".into(),
            aggregate_type: "t".into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new("E", data)],
            idempotency: None,
        };
        store.append(append).await.unwrap();
        for rx in [&mut all_rx, &mut stream_rx] {
            match rx.recv().await.unwrap().unwrap().content {
                Some(Content::Event(e)) => assert_eq!(e.event.unwrap().commit_position, 1_201),
                other => panic!("live event expected, got {other:?}"),
            }
        }

        stop.send(true).unwrap();
        for rx in [&mut all_rx, &mut stream_rx] {
            let end = rx.recv().await.expect("an answer at shutdown");
            assert_eq!(end.unwrap_err().code(), tonic::Code::Unavailable);
            assert!(rx.recv().await.is_none(), "then the call ends");
        }
    }
}
