//! Command handling: load (events of the stream), decide, append with the loaded version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cairn_core::readmodel::ReadModelError;
use cairn_core::snapshot::{Snapshot, SnapshotStore};
use cairn_core::timestamp::Timestamp;
use cairn_core::{
    Append, AppendError, Direction, EventStore, ExpectedVersion, IdempotencyKey, IdempotencyRecord,
    KeyOutcome, NewEvent, ReadError, RecordedEvent, Refusal, StreamRead,
};
use futures_util::future::BoxFuture;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::Semaphore;

use crate::aggregate::{Aggregate, DecodeError, DomainError, DomainEvent, Existence};
use crate::metadata::CommandMetadata;

/// How many times a command is re-decided on fresh state after a concurrent write.
pub const CONFLICT_RETRIES_MAX: usize = 32;
/// Events read per page while loading an aggregate.
const LOAD_PAGE_EVENTS: usize = 10_000;

/// How a command is to be run.
#[derive(Debug, Clone, Default)]
pub struct CommandOptions {
    /// `If-Match`: the version the caller saw; a different version is a conflict, never retried.
    pub expected_version: Option<u64>,
    /// `Idempotency-Key` (already scoped): a repeated command gets the first outcome —
    /// its events' position, or its refusal — and appends nothing.
    pub idempotency: Option<IdempotencyKey>,
    /// Metadata stamped on every event.
    pub metadata: CommandMetadata,
}

/// What a command did: the answer to a command (contract §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandOutcome {
    /// The aggregate the command ran on (minted when the request named none).
    pub aggregate_id: String,
    /// Its version after the command.
    pub version: u64,
    /// `$all` position of the last event the command appended.
    pub position: u64,
}

/// Why a command did nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The aggregate does not exist.
    #[error("not found")]
    NotFound,
    /// A creating command found the aggregate already there.
    #[error("already exists at version {actual}")]
    AlreadyExists {
        /// Its current version.
        actual: u64,
    },
    /// The aggregate was at another version than `If-Match` said.
    #[error("wrong expected version: expected {expected}, the aggregate is at version {actual}")]
    WrongExpectedVersion {
        /// What the caller expected.
        expected: u64,
        /// Where it is.
        actual: u64,
    },
    /// A business rule refused it.
    #[error(transparent)]
    Rule(#[from] DomainError),
    /// The stream holds an event this aggregate cannot read (never written by Cairn's
    /// own paths, which validate appends to domain streams).
    #[error("aggregate cannot be loaded: {0}")]
    Corrupt(#[from] DecodeError),
    /// Concurrent writers kept winning; retried [`CONFLICT_RETRIES_MAX`] times.
    #[error("too much contention on this aggregate; try again")]
    Contention,
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] AppendError),
    /// Reading failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A process manager no longer leads (another process runs it now): not issued.
    #[error("this process no longer runs {0}; the command was not issued")]
    NotLeader(String),
}

/// An aggregate rebuilt from its stream.
#[derive(Debug)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// Version of the last applied event (0 = no events).
    pub version: u64,
    /// Position of the last applied event.
    pub position: u64,
    /// Timestamp of the last applied event.
    pub timestamp: Option<Timestamp>,
}

/// Up to where a temporal load goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Everything.
    End,
    /// Events with version ≤ this.
    Version(u64),
    /// Events whose timestamp is ≤ this (inclusive).
    Time(Timestamp),
}

/// Default number of events a load may replay before it takes a snapshot.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 100;
/// Background snapshots taken at once (each loads an aggregate and writes its state):
/// bulk appends to many long streams must not take every core from the commands.
pub const BACKGROUND_SNAPSHOTS_MAX: usize = 2;
/// Streams waiting for (or taking) a background snapshot; an append that would add one
/// more leaves its stream to the next load, which snapshots a long tail itself.
pub const BACKGROUND_SNAPSHOT_STREAMS_MAX: usize = 1024;
/// States a background snapshot left for the next load of their aggregate (each taken
/// by that load); when full, a new one replaces an arbitrary one.
pub const WARM_STATES_MAX: usize = 64;

/// Takes a snapshot of one aggregate now (its type erased: see [`Repository::snapshot_now`]).
pub type SnapshotNow = fn(Repository, String) -> BoxFuture<'static, Result<(), CommandError>>;

/// The snapshots taken in the background after appends.
struct Background {
    /// Per stream with a snapshot under way: whether another append asked for one since
    /// it started (then it runs again: one in flight per stream, none lost).
    pending: Mutex<HashMap<String, bool>>,
    /// [`BACKGROUND_SNAPSHOTS_MAX`] permits.
    permits: Arc<Semaphore>,
    /// Per stream, the `Loaded<A>` a background snapshot just saved: the next load starts
    /// from it instead of reading and decoding the snapshot it equals (a large state costs
    /// milliseconds to decode). The log only grows, so a state at version v plus the
    /// events after v is the current state, whichever process appended them.
    warm: Mutex<HashMap<String, Box<dyn std::any::Any + Send>>>,
}

impl Background {
    fn new() -> Self {
        Self {
            pending: Mutex::default(),
            permits: Arc::new(Semaphore::new(BACKGROUND_SNAPSHOTS_MAX)),
            warm: Mutex::default(),
        }
    }
}

/// Removes a stream from [`Background::pending`] should its task end early (a panic).
struct PendingEntry {
    background: Arc<Background>,
    id: String,
    removed: bool,
}

impl PendingEntry {
    /// Whether another append asked for a snapshot since this one started; if not, the
    /// stream leaves `pending` (under the same lock: an append arriving just after starts
    /// a new task instead of being lost).
    fn again(&mut self) -> bool {
        let mut pending = self.background.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.get_mut(&self.id) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                pending.remove(&self.id);
                self.removed = true;
                false
            }
        }
    }
}

impl Drop for PendingEntry {
    fn drop(&mut self) {
        if !self.removed {
            let mut pending =
                self.background.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.remove(&self.id);
        }
    }
}

/// When a load that replayed a long tail takes a snapshot.
#[derive(Debug, Clone, Copy)]
enum TakeSnapshot {
    /// Before the load returns, when the tail was at least this long.
    Inline(u64),
    /// In the background, when the tail was at least the snapshot interval long.
    Background,
    /// Not at all (the caller saves one itself).
    Never,
}

/// Loads aggregates and runs commands against one event store.
#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn EventStore>,
    /// Where snapshots go, and how long a replayed tail may get before a new one is taken.
    snapshots: Option<(Arc<dyn SnapshotStore>, u64)>,
    background: Arc<Background>,
}

impl Repository {
    /// A repository over `store`, without snapshots.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store, snapshots: None, background: Arc::new(Background::new()) }
    }

    /// A repository that loads from the latest snapshot plus the tail, and takes a new
    /// snapshot whenever a load replays `every` events or more (whatever appended them).
    pub fn with_snapshots(
        store: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        every: u64,
    ) -> Self {
        Self {
            store,
            snapshots: Some((snapshots, every.max(1))),
            background: Arc::new(Background::new()),
        }
    }

    /// Called after `id`'s stream got versions `first_version..=last_version` (whoever
    /// appended them): when the append crossed a multiple of the snapshot interval, a
    /// snapshot is taken in the background, so that the next command loads a snapshot and
    /// a short tail instead of replaying what a bulk append wrote. Crossing a multiple
    /// bounds the tail a load replays to about one interval plus one append, without
    /// reading the last snapshot on every append. At most one per stream is under way
    /// (an append meanwhile has it run once more), and [`BACKGROUND_SNAPSHOTS_MAX`] in all.
    pub fn snapshot_after_append(
        &self,
        id: &str,
        first_version: u64,
        last_version: u64,
        snapshot: SnapshotNow,
    ) {
        let Some((_, every)) = &self.snapshots else { return };
        if first_version.saturating_sub(1) / every == last_version / every {
            return;
        }
        self.spawn_snapshot(id, snapshot);
    }

    /// Takes a snapshot of `id` in the background (see [`Repository::snapshot_after_append`]).
    fn spawn_snapshot(&self, id: &str, snapshot: SnapshotNow) {
        if self.snapshots.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        {
            let mut pending =
                self.background.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(again) = pending.get_mut(id) {
                *again = true;
                return;
            }
            if pending.len() >= BACKGROUND_SNAPSHOT_STREAMS_MAX {
                tracing::debug!(
                    aggregate = id,
                    "background snapshots full; the next load takes it"
                );
                return;
            }
            pending.insert(id.to_owned(), false);
        }
        let mut entry = PendingEntry {
            background: Arc::clone(&self.background),
            id: id.to_owned(),
            removed: false,
        };
        let repo = self.clone();
        runtime.spawn(async move {
            let permits = Arc::clone(&repo.background.permits);
            let Ok(_permit) = permits.acquire_owned().await else { return };
            loop {
                if let Err(e) = snapshot(repo.clone(), entry.id.clone()).await {
                    // A lost snapshot only costs a longer replay next time.
                    tracing::warn!(aggregate = %entry.id, error = %e, "background snapshot not taken");
                }
                if !entry.again() {
                    return;
                }
            }
        });
    }

    /// Loads `id` (latest snapshot + tail) and saves a snapshot of it unless the tail was
    /// empty: what a background snapshot does.
    pub async fn snapshot_now<A: Aggregate>(&self, id: &str) -> Result<(), CommandError> {
        let (loaded, replayed) =
            self.load_counted::<A>(id, Until::End, true, TakeSnapshot::Never).await?;
        let snapshot = if replayed > 0 { Self::snapshot_of_loaded(id, &loaded) } else { None };
        // Left for the next load before the (slower) save: a command arriving meanwhile
        // already starts from it.
        self.put_warm(id, loaded);
        if let Some(snapshot) = snapshot {
            self.save_snapshot(id, snapshot).await;
        }
        Ok(())
    }

    /// Forgets what this repository keeps of aggregate `id` besides its events: its warm
    /// state and its snapshot (its subject was erased, and both hold what the events said).
    pub async fn forget(&self, id: &str) -> Result<(), ReadModelError> {
        self.background.warm.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
        if let Some((snapshots, _)) = &self.snapshots {
            let (snapshots, id) = (Arc::clone(snapshots), id.to_owned());
            tokio::task::spawn_blocking(move || snapshots.forget(&id))
                .await
                .map_err(|e| ReadModelError::Storage(e.to_string()))??;
        }
        Ok(())
    }

    fn put_warm<A: Aggregate>(&self, id: &str, loaded: Loaded<A>) {
        let mut warm = self.background.warm.lock().unwrap_or_else(PoisonError::into_inner);
        if warm.len() >= WARM_STATES_MAX
            && !warm.contains_key(id)
            && let Some(evicted) = warm.keys().next().cloned()
        {
            warm.remove(&evicted);
        }
        warm.insert(id.to_owned(), Box::new(loaded));
    }

    /// The state a background snapshot left for `id`, if any (and of type `A`).
    fn take_warm<A: Aggregate>(&self, id: &str) -> Option<Loaded<A>> {
        let mut warm = self.background.warm.lock().unwrap_or_else(PoisonError::into_inner);
        let state = warm.remove(id)?;
        state.downcast::<Loaded<A>>().ok().map(|b| *b)
    }

    /// The latest usable snapshot for a load up to `until`: same aggregate type, same
    /// state shape, not past `until`, and readable. Anything else is ignored.
    async fn usable_snapshot<A: Aggregate>(&self, id: &str, until: Until) -> Option<Loaded<A>> {
        let (snapshots, _) = self.snapshots.as_ref()?;
        let (snapshots, key) = (Arc::clone(snapshots), id.to_owned());
        let snapshot = match tokio::task::spawn_blocking(move || snapshots.load(&key)).await {
            Ok(Ok(Some(s))) => s,
            Ok(Err(e)) => {
                tracing::warn!(aggregate = id, error = %e, "snapshot unreadable; replaying all events");
                return None;
            }
            Ok(Ok(None)) | Err(_) => return None,
        };
        let fits = match until {
            Until::End => true,
            Until::Version(v) => snapshot.version <= v,
            Until::Time(t) => snapshot.timestamp <= t,
        };
        if !fits
            || snapshot.aggregate_type != A::TYPE
            || snapshot.snapshot_version != A::SNAPSHOT_VERSION
        {
            return None;
        }
        Some(Loaded {
            state: A::from_snapshot(&snapshot.state)?,
            version: snapshot.version,
            position: snapshot.position,
            timestamp: Some(snapshot.timestamp),
        })
    }

    /// Saves a snapshot of `loaded` when the tail replayed to reach it was `at_least` long.
    async fn maybe_snapshot<A: Aggregate>(
        &self,
        id: &str,
        loaded: &Loaded<A>,
        replayed: u64,
        at_least: u64,
    ) {
        if replayed < at_least.max(1) {
            return;
        }
        if let Some(snapshot) = Self::snapshot_of_loaded(id, loaded) {
            self.save_snapshot(id, snapshot).await;
        }
    }

    /// The snapshot of `loaded`, if it has events and `A` takes snapshots.
    fn snapshot_of_loaded<A: Aggregate>(id: &str, loaded: &Loaded<A>) -> Option<Snapshot> {
        Some(Snapshot {
            aggregate_id: id.to_owned(),
            aggregate_type: A::TYPE.to_owned(),
            snapshot_version: A::SNAPSHOT_VERSION,
            version: loaded.version,
            position: loaded.position,
            timestamp: loaded.timestamp?,
            state: loaded.state.to_snapshot()?,
        })
    }

    async fn save_snapshot(&self, id: &str, snapshot: Snapshot) {
        let Some((snapshots, _)) = &self.snapshots else { return };
        let snapshots = Arc::clone(snapshots);
        match tokio::task::spawn_blocking(move || snapshots.save(&snapshot)).await {
            Ok(Ok(())) => {}
            // A lost snapshot only costs a longer replay next time.
            Ok(Err(e)) => tracing::warn!(aggregate = id, error = %e, "snapshot not saved"),
            Err(e) => tracing::warn!(aggregate = id, error = %e, "snapshot not saved"),
        }
    }

    /// The store behind it.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Rebuilds the aggregate from its whole stream (a missing stream is the default state, version 0).
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>, CommandError> {
        self.load_until(id, Until::End).await
    }

    /// Rebuilds the aggregate from the events up to `until` (latest usable snapshot + tail).
    pub async fn load_until<A: Aggregate>(
        &self,
        id: &str,
        until: Until,
    ) -> Result<Loaded<A>, CommandError> {
        self.load_from::<A>(id, until, true, TakeSnapshot::Inline(self.snapshot_every())).await
    }

    /// How long a replayed tail may get before a load takes a snapshot.
    fn snapshot_every(&self) -> u64 {
        self.snapshots.as_ref().map_or(u64::MAX, |(_, every)| *every)
    }

    /// Loads `id` up to `until`; a load to the end that replayed a long tail takes a
    /// snapshot as `take` says.
    async fn load_from<A: Aggregate>(
        &self,
        id: &str,
        until: Until,
        use_snapshot: bool,
        take: TakeSnapshot,
    ) -> Result<Loaded<A>, CommandError> {
        self.load_counted(id, until, use_snapshot, take).await.map(|(loaded, _)| loaded)
    }

    /// [`Repository::load_from`], with the number of events replayed after the snapshot.
    async fn load_counted<A: Aggregate>(
        &self,
        id: &str,
        until: Until,
        use_snapshot: bool,
        take: TakeSnapshot,
    ) -> Result<(Loaded<A>, u64), CommandError> {
        let snapshot = match (use_snapshot, until) {
            (false, _) => None,
            (true, Until::End) => match self.take_warm::<A>(id) {
                Some(warm) => Some(warm),
                None => self.usable_snapshot::<A>(id, until).await,
            },
            (true, _) => self.usable_snapshot::<A>(id, until).await,
        };
        let from_snapshot = snapshot.is_some();
        let mut loaded = snapshot.unwrap_or(Loaded {
            state: A::default(),
            version: 0,
            position: 0,
            timestamp: None,
        });
        let mut replayed = 0u64;
        let mut first_page = true;
        let mut from = loaded.version + 1;
        loop {
            let read = StreamRead::forward_from(from, LOAD_PAGE_EVENTS);
            let slice = match self.store.read_stream(id, read).await {
                Ok(slice) => slice,
                // Never written, or soft-deleted: a new aggregate (its first append is
                // checked against "no stream").
                Err(ReadError::StreamNotFound) if !from_snapshot || !first_page => {
                    return Ok((loaded, replayed));
                }
                Err(ReadError::StreamNotFound) => {
                    return Box::pin(self.load_counted(id, until, false, take)).await;
                }
                Err(ReadError::StreamTombstoned) => {
                    return Err(CommandError::Store(AppendError::StreamTombstoned {
                        aggregate_id: id.to_owned(),
                    }));
                }
                Err(e) => return Err(e.into()),
            };
            // A snapshot folds every event up to its version, hidden ones too: it is no
            // use once truncation or a delete hides versions it holds, nor while the
            // visible window moves (retention by count or age).
            if first_page
                && from_snapshot
                && (slice.moving || slice.first_visible > loaded.version + 1)
            {
                return Box::pin(self.load_counted(id, until, false, take)).await;
            }
            first_page = false;
            if slice.aggregate_type != A::TYPE {
                return Err(CommandError::Store(AppendError::AggregateTypeMismatch {
                    actual: slice.aggregate_type,
                    requested: A::TYPE.to_owned(),
                }));
            }
            // A page may stop short of the limit (the stores cap its bytes), so the end is
            // where the stream's version says, never where a page happens to stop.
            // Pages go on after what a page examined, hidden events included.
            let next = slice.next_version(Direction::Forward);
            let more = next.is_some();
            from = next.unwrap_or(from);
            // A page is folded in one `apply_all`, so that an aggregate can fold a long
            // run in one pass.
            let mut events = Vec::with_capacity(slice.events.len());
            let mut last = None;
            let mut reached_until = false;
            for e in &slice.events {
                let past = match until {
                    Until::End => false,
                    Until::Version(v) => e.version > v,
                    Until::Time(t) => e.timestamp > t,
                };
                if past {
                    reached_until = true;
                    break;
                }
                events.push(A::Event::from_recorded(e)?);
                last = Some(e);
            }
            loaded.state.apply_all(&events);
            if let Some(e) = last {
                loaded.version = e.version;
                loaded.position = e.position;
                loaded.timestamp = Some(e.timestamp);
            }
            replayed += events.len() as u64;
            if reached_until {
                return Ok((loaded, replayed));
            }
            if !more {
                if until == Until::End {
                    // The stream's version even when its last events are hidden
                    // (truncated, expired): the next append is checked against it.
                    loaded.version = loaded.version.max(slice.stream_version);
                    match take {
                        TakeSnapshot::Inline(at_least) => {
                            self.maybe_snapshot(id, &loaded, replayed, at_least).await;
                        }
                        TakeSnapshot::Background if replayed >= self.snapshot_every() => {
                            self.spawn_snapshot(id, snapshot_of::<A>);
                        }
                        TakeSnapshot::Background | TakeSnapshot::Never => {}
                    }
                }
                return Ok((loaded, replayed));
            }
        }
    }

    /// Runs a command: decide on the current state and append with optimistic concurrency.
    ///
    /// With `expected_version` a conflict is returned; without it the command is re-decided
    /// on fresh state (bounded). With an idempotency key, a repeat returns the first outcome.
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: &A::Command,
        options: &CommandOptions,
    ) -> Result<CommandOutcome, CommandError> {
        for attempt in 0..CONFLICT_RETRIES_MAX {
            if attempt > 0 {
                // Jittered back-off so that writers that collided do not collide again.
                let jitter_us =
                    (uuid::Uuid::new_v4().as_u128() % 1000) as u64 * attempt.min(10) as u64;
                tokio::time::sleep(std::time::Duration::from_micros(jitter_us)).await;
            }
            // Checked on every attempt, not only the first: when the writer that beat us
            // was this very command (the same key, sent twice at once), deciding again on
            // the state it produced would refuse or repeat it (e.g. reserve stock twice).
            if let Some(key) = &options.idempotency
                && let Some(record) = self.store.idempotent_result(&key.key).await?
            {
                return replay(record, key);
            }
            // A creating command expects no stream at all: no snapshot to look for.
            let use_snapshot = A::existence(command) != Existence::MustNotExist;
            // The command does not wait for a snapshot of a long tail: it is taken beside it.
            let loaded =
                self.load_from::<A>(id, Until::End, use_snapshot, TakeSnapshot::Background).await?;
            let refusal = if let Some(expected) = options.expected_version
                && expected != loaded.version
            {
                Some(CommandError::WrongExpectedVersion { expected, actual: loaded.version })
            } else {
                match (A::existence(command), loaded.version) {
                    (Existence::MustExist, 0) => Some(CommandError::NotFound),
                    (Existence::MustNotExist, v) if v > 0 => {
                        Some(CommandError::AlreadyExists { actual: v })
                    }
                    _ => None,
                }
            };
            let decided = match refusal {
                Some(e) => Err(e),
                None => loaded.state.handle(command).map_err(CommandError::from),
            };
            let events = match decided {
                Ok(events) => events,
                Err(refused) => return self.refuse(id, options, refused).await,
            };
            if events.is_empty() {
                return Ok(CommandOutcome {
                    aggregate_id: id.to_owned(),
                    version: loaded.version,
                    position: loaded.position,
                });
            }
            // Every event carries the schema version it is written in, so that readers
            // know which upcasters to run when the event type evolves.
            let metadata_of = |e: &A::Event| {
                let mut m = serde_json::to_value(&options.metadata).unwrap_or_default();
                if let Some(obj) = m.as_object_mut() {
                    obj.insert(
                        "schema_version".into(),
                        A::Event::schema_version(e.event_type()).into(),
                    );
                }
                serde_json::value::to_raw_value(&m).unwrap_or_default()
            };
            let append = Append {
                aggregate_id: id.to_owned(),
                aggregate_type: A::TYPE.to_owned(),
                expected: ExpectedVersion::Exact(loaded.version),
                events: events
                    .iter()
                    .map(|e| NewEvent {
                        metadata: metadata_of(e),
                        ..NewEvent::new(e.event_type(), e.to_json())
                    })
                    .collect(),
                idempotency: options.idempotency.clone(),
            };
            match self.store.append(append).await {
                Ok(o) => {
                    self.snapshot_after_append(
                        id,
                        o.first_version,
                        o.last_version,
                        snapshot_of::<A>,
                    );
                    return Ok(CommandOutcome {
                        aggregate_id: id.to_owned(),
                        version: o.last_version,
                        position: o.position,
                    });
                }
                Err(AppendError::WrongExpectedVersion { actual, .. }) => {
                    if options.expected_version.is_some() {
                        let refused =
                            CommandError::WrongExpectedVersion { expected: loaded.version, actual };
                        return self.refuse(id, options, refused).await;
                    }
                    // Someone else wrote first: decide again on what they wrote.
                }
                Err(AppendError::IdempotencyKeyUsed { record }) => {
                    return match &options.idempotency {
                        Some(key) => replay(*record, key),
                        None => Err(AppendError::IdempotencyKeyUsed { record }.into()),
                    };
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::Contention)
    }
}

impl Repository {
    /// Ends a keyed command with a deterministic refusal: the refusal is recorded under its
    /// key (insert-if-absent) and the record that is first is the answer. That is this
    /// refusal, unless the same key already holds an outcome — e.g. this very command
    /// committed between the key check and the load (a retried request, or two runners of
    /// a process manager), and the state now refuses what it already holds ("stock is
    /// already reserved for this order"); then the first outcome is the answer, not the
    /// refusal. Either way every later execution of the key gets the same outcome, so two
    /// runners re-handling one event take the same branch.
    ///
    /// Transient failures (contention, storage, reads, leadership) are never recorded:
    /// they say nothing about the command, and a retry may succeed.
    async fn refuse(
        &self,
        id: &str,
        options: &CommandOptions,
        refused: CommandError,
    ) -> Result<CommandOutcome, CommandError> {
        let Some(key) = &options.idempotency else { return Err(refused) };
        let Some(refusal) = refused.as_refusal() else { return Err(refused) };
        let record = self.store.record_refusal(key.clone(), id.to_owned(), refusal).await?;
        replay(record, key)
    }
}

/// The answer a repeat of a keyed command gets from its record: the first outcome, or
/// `IdempotencyKeyReused` when the record was made by a different request.
fn replay(record: IdempotencyRecord, key: &IdempotencyKey) -> Result<CommandOutcome, CommandError> {
    if record.key.fingerprint != key.fingerprint {
        return Err(CommandError::Store(record.clash(key)));
    }
    match record.outcome {
        KeyOutcome::Appended { aggregate_id, outcome } => Ok(CommandOutcome {
            aggregate_id,
            version: outcome.last_version,
            position: outcome.position,
        }),
        KeyOutcome::Refused { refusal, .. } => Err(CommandError::from_refusal(refusal)),
    }
}

/// Codes of the refusals a keyed command records.
mod refusal_code {
    pub const RULE: &str = "rule_violation";
    pub const NOT_FOUND: &str = "not_found";
    pub const ALREADY_EXISTS: &str = "already_exists";
    pub const WRONG_EXPECTED_VERSION: &str = "wrong_expected_version";
}

impl CommandError {
    /// The recordable form of a deterministic refusal — one the same command on the same
    /// history would get again; `None` for transient failures, which are never recorded.
    #[must_use]
    pub fn as_refusal(&self) -> Option<Refusal> {
        let (code, details) = match self {
            Self::Rule(_) => (refusal_code::RULE, serde_json::Value::Null),
            Self::NotFound => (refusal_code::NOT_FOUND, serde_json::Value::Null),
            Self::AlreadyExists { actual } => {
                (refusal_code::ALREADY_EXISTS, serde_json::json!({ "actual": actual }))
            }
            Self::WrongExpectedVersion { expected, actual } => (
                refusal_code::WRONG_EXPECTED_VERSION,
                serde_json::json!({ "expected": expected, "actual": actual }),
            ),
            _ => return None,
        };
        let message = match self {
            Self::Rule(rule) => rule.message.clone(),
            other => other.to_string(),
        };
        Some(Refusal { code: code.to_owned(), message, details })
    }

    /// The refusal a recorded [`Refusal`] stands for, as the first execution returned it.
    #[must_use]
    pub fn from_refusal(refusal: Refusal) -> Self {
        let number = |field: &str| refusal.details.get(field).and_then(serde_json::Value::as_u64);
        match refusal.code.as_str() {
            refusal_code::NOT_FOUND => Self::NotFound,
            refusal_code::ALREADY_EXISTS => {
                Self::AlreadyExists { actual: number("actual").unwrap_or_default() }
            }
            refusal_code::WRONG_EXPECTED_VERSION => Self::WrongExpectedVersion {
                expected: number("expected").unwrap_or_default(),
                actual: number("actual").unwrap_or_default(),
            },
            // A rule, or a code this build does not know: its message is the answer.
            _ => Self::Rule(DomainError::rule(refusal.message)),
        }
    }
}

/// [`Repository::snapshot_now`] of `A`, as a [`SnapshotNow`].
#[must_use]
pub fn snapshot_of<A: Aggregate>(
    repo: Repository,
    id: String,
) -> BoxFuture<'static, Result<(), CommandError>> {
    Box::pin(async move { repo.snapshot_now::<A>(&id).await })
}

/// Decodes and applies one stored event.
pub fn apply_recorded<A: Aggregate>(
    loaded: &mut Loaded<A>,
    e: &RecordedEvent,
) -> Result<(), DecodeError> {
    let event = A::Event::from_recorded(e)?;
    loaded.state.apply(&event);
    loaded.version = e.version;
    loaded.position = e.position;
    loaded.timestamp = Some(e.timestamp);
    Ok(())
}
