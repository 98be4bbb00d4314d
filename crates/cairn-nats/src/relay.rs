//! The outbox relay: `$all` → a JetStream stream, in order, each event exactly once.
//!
//! Publishes are pipelined: up to `max_in_flight` unacknowledged, and at most one per
//! aggregate (a second event of an aggregate waits for the first one's ack), so a
//! failure can never let a later event of an aggregate overtake an earlier one. The
//! checkpoint advances only over the acknowledged prefix, and records, in the same
//! transaction, a stream sequence below every message of this relay past that prefix.
//! Every round (after a crash, a failure or a change of leader) first reads the stream
//! after that sequence to learn which positions are already there, and publishes only
//! the others: neither an outage longer than JetStream's duplicate window nor the holes
//! pipelining leaves can duplicate or skip an event. JetStream's de-duplication
//! (`Nats-Msg-Id` = event id) stays as a second line of defence. One process runs the
//! relay at a time (the read-model store's leadership, as for projections). See
//! `docs/design/relay.md`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
    context::PublishAckFuture,
    message::PublishMessage,
};
use bytes::Bytes;
use cairn_core::readmodel::{DeadLetter, Fence, ReadModelError, ReadModelStore, TableSpec};
use cairn_core::timestamp::Timestamp;
use cairn_core::{AllFilter, EventStore, RecordedEvent};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::connect::NatsConnectOptions;
use crate::subject::event_subject;

/// How the relay publishes.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The JetStream stream (created if missing).
    pub stream: String,
    /// Subjects are `<prefix>.<aggregate_type>.<aggregate_id>`.
    pub subject_prefix: String,
    /// The stream's subjects; empty means `<subject_prefix>.>`. Subjects an existing
    /// stream lacks are added at start, none removed (another deployment's, or an older
    /// module's, may still have messages there).
    pub subjects: Vec<String>,
    /// Most publishes awaiting their ack.
    pub max_in_flight: usize,
    /// Events read from `$all` per batch.
    pub batch: usize,
    /// The stream's duplicate window: how long JetStream recognises a re-published
    /// message id. Set on the stream when it is created, and on an existing stream whose
    /// window differs. Not what keeps the relay from duplicating (its resume scan is),
    /// only a second line of defence.
    pub duplicate_window: Duration,
    /// Stream replicas (3 on a three-node cluster).
    pub replicas: usize,
    /// Test hook: wait this long between the acks of a batch and its checkpoint (a kill
    /// then lands between publish and checkpoint).
    pub checkpoint_delay: Duration,
}

impl RelayConfig {
    /// The subjects the stream must hold: [`Self::subjects`], or `<subject_prefix>.>`.
    #[must_use]
    pub fn stream_subjects(&self) -> Vec<String> {
        if self.subjects.is_empty() {
            vec![format!("{}.>", self.subject_prefix)]
        } else {
            self.subjects.clone()
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            stream: "CAIRN_EVENTS".into(),
            subject_prefix: "cairn.events".into(),
            subjects: Vec::new(),
            max_in_flight: 256,
            batch: 1000,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            checkpoint_delay: Duration::ZERO,
        }
    }
}

/// Why the relay stopped a round (it retries with backoff).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// NATS refused or did not acknowledge.
    #[error("nats: {0}")]
    Nats(String),
    /// The event store or the checkpoint store failed.
    #[error("store: {0}")]
    Store(String),
}

/// What the relay has done, for metrics and the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayProgress {
    /// Every event up to this `$all` position is acknowledged by JetStream.
    pub position: u64,
    /// Events published (and acknowledged) by this process.
    pub published: u64,
    /// Whether this process runs the relay (another may lead it).
    pub leading: bool,
    /// Events this process found already in the stream when it resumed, and so did not
    /// publish again.
    pub already_published: u64,
    /// Events parked in the dead-letter queue (as last loaded or parked by this process).
    pub dead_letters: u64,
}

/// The read-model table holding each relay's [`SequenceMark`], keyed by relay name.
pub const SEQUENCE_TABLE: &str = "cairn_relay_sequences";

/// Longest wait for the next message while reading the stream's tail on resume: a scan
/// that stalls fails the round (retried with backoff) instead of hanging the relay.
pub const SCAN_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the relay saves next to its `$all` checkpoint, in the same transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SequenceMark {
    /// The `$all` checkpoint this mark was written with. A checkpoint that no longer
    /// matches it (rewound by the start-up guard, or set by hand) makes the mark void.
    pub position: u64,
    /// A stream sequence below every message this relay stored for a position after
    /// `position`: the resume scan starts after it.
    pub sequence: u64,
}

/// The relay's messages found in the stream past the checkpoint on resume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    /// `$all` position → the lowest stream sequence holding it.
    pub published: BTreeMap<u64, u64>,
    /// The stream's last sequence when the scan began: everything the relay publishes
    /// from now on lands after it.
    pub last_sequence: u64,
}

impl Tail {
    /// Drops the positions the checkpoint now covers, and returns the sequence to save
    /// with checkpoint `position`: at most `high` (the highest sequence of the
    /// acknowledged prefix, or the scan's end) and below every known message past it.
    fn mark(&mut self, position: u64, high: u64) -> u64 {
        self.published = self.published.split_off(&position.saturating_add(1));
        let below_rest = self.published.values().min().map_or(u64::MAX, |s| s.saturating_sub(1));
        high.min(below_rest)
    }
}

/// One message to publish for an event.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its subject.
    pub subject: String,
    /// `Nats-Msg-Id`: what JetStream de-duplicates on (derived from the event id).
    pub id: String,
    /// Its type, as the `Cairn-Event-Type` header.
    pub event_type: String,
    /// The body.
    pub payload: Bytes,
}

/// Decides what, if anything, an event is published as.
pub type Mapper =
    Arc<dyn Fn(&RecordedEvent, &RelayConfig) -> Result<Option<Outgoing>, String> + Send + Sync>;

/// The default mapping: every event, as the store API shows it, on
/// `<prefix>.<aggregate_type>.<aggregate_id>`.
#[must_use]
pub fn all_events() -> Mapper {
    Arc::new(|e, config| {
        Ok(Some(Outgoing {
            subject: event_subject(&config.subject_prefix, &e.aggregate_type, &e.aggregate_id),
            id: e.event_id.to_string(),
            event_type: e.event_type.clone(),
            payload: payload(e).map_err(|e| e.to_string())?,
        }))
    })
}

/// The outbox relay.
pub struct Relay {
    store: Arc<dyn EventStore>,
    readmodels: Arc<dyn ReadModelStore>,
    js: jetstream::Context,
    config: RelayConfig,
    mapper: Mapper,
    progress: watch::Sender<RelayProgress>,
}

fn nats(e: impl std::fmt::Display) -> RelayError {
    RelayError::Nats(e.to_string())
}

fn store(e: impl std::fmt::Display) -> RelayError {
    RelayError::Store(e.to_string())
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, ReadModelError> + Send + 'static,
) -> Result<R, RelayError> {
    tokio::task::spawn_blocking(f).await.map_err(store)?.map_err(store)
}

/// The event as published: the store API's envelope, data and metadata byte for byte.
fn payload(e: &RecordedEvent) -> Result<Bytes, RelayError> {
    let json = serde_json::json!({
        "event_id": e.event_id,
        "aggregate_id": e.aggregate_id,
        "aggregate_type": e.aggregate_type,
        "event_type": e.event_type,
        "version": e.version,
        "position": e.position,
        "timestamp": e.timestamp.to_rfc3339(),
        "data": &e.data,
        "metadata": &e.metadata,
    });
    serde_json::to_vec(&json).map(Bytes::from).map_err(store)
}

impl Relay {
    /// Connects to NATS (`url`: one server, or a comma-separated list of a cluster's) and
    /// makes sure the stream exists; publishes every event.
    pub async fn connect(
        url: &str,
        store: Arc<dyn EventStore>,
        readmodels: Arc<dyn ReadModelStore>,
        config: RelayConfig,
    ) -> Result<Self, RelayError> {
        Self::with_mapper(url, store, readmodels, config, all_events()).await
    }

    /// Like [`Relay::connect`], publishing what `mapper` makes of each event (e.g. the
    /// integration events of a domain; events it maps to `None` are skipped).
    pub async fn with_mapper(
        url: &str,
        store: Arc<dyn EventStore>,
        readmodels: Arc<dyn ReadModelStore>,
        config: RelayConfig,
        mapper: Mapper,
    ) -> Result<Self, RelayError> {
        let anonymous = NatsConnectOptions::default();
        Self::with_options(url, &anonymous, store, readmodels, config, mapper).await
    }

    /// Like [`Relay::with_mapper`], authenticating and using TLS as `auth` says.
    pub async fn with_options(
        url: &str,
        auth: &NatsConnectOptions,
        store: Arc<dyn EventStore>,
        readmodels: Arc<dyn ReadModelStore>,
        config: RelayConfig,
        mapper: Mapper,
    ) -> Result<Self, RelayError> {
        // A cluster is given as a comma-separated list; the client fails over between them.
        let client = crate::connect(url, auth).await.map_err(nats)?;
        let js = jetstream::new(client);
        let subjects = config.stream_subjects();
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: config.stream.clone(),
                subjects: subjects.clone(),
                duplicate_window: config.duplicate_window,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        // An existing stream keeps its configuration; a subject it lacks (a module added to
        // a running deployment) would make every publish there fail, so it is added.
        let mut existing = stream.cached_info().config.clone();
        let missing: Vec<String> = subjects
            .into_iter()
            .filter(|s| !existing.subjects.iter().any(|held| covers(held, s)))
            .collect();
        let mut changed = false;
        if !missing.is_empty() {
            tracing::info!(stream = %config.stream, subjects = ?missing, "adding subjects to the stream");
            existing.subjects.extend(missing);
            changed = true;
        }
        // The flag is the one place the window is set: an operator changing it expects
        // the running stream to follow.
        if existing.duplicate_window != config.duplicate_window {
            tracing::info!(stream = %config.stream, from = ?existing.duplicate_window, to = ?config.duplicate_window, "changing the stream's duplicate window");
            existing.duplicate_window = config.duplicate_window;
            changed = true;
        }
        if changed {
            js.update_stream(&existing).await.map_err(nats)?;
        }
        let rm = Arc::clone(&readmodels);
        blocking(move || rm.ensure_tables(&[TableSpec { name: SEQUENCE_TABLE, indexed: &[] }]))
            .await?;
        Ok(Self {
            store,
            readmodels,
            js,
            config,
            mapper,
            progress: watch::Sender::new(RelayProgress::default()),
        })
    }

    /// The checkpoint (and leadership) name: `relay:<stream>`.
    #[must_use]
    pub fn name(&self) -> String {
        format!("relay:{}", self.config.stream)
    }

    /// Watches the relay's progress.
    #[must_use]
    pub fn progress(&self) -> watch::Receiver<RelayProgress> {
        self.progress.subscribe()
    }

    /// Runs until `shutdown`: waits to lead, then publishes from the checkpoint; after a
    /// failure, resumes from the acknowledged prefix with backoff.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let (rm, name) = (Arc::clone(&self.readmodels), self.name());
            let Ok(Some(fence)) = blocking(move || rm.try_lead(&name)).await else {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            };
            self.progress.send_modify(|p| p.leading = true);
            match self.pump(&fence, &mut shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(relay = %self.name(), error = %e, "relay round failed; resuming from the last acknowledged event");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            if !self.readmodels.leads(&self.name()) {
                self.progress.send_modify(|p| p.leading = false);
            }
        }
    }

    /// Moves the checkpoint to `position` and its sequence mark to `sequence`, in one
    /// transaction: a crash leaves both old or both new.
    async fn save(&self, fence: &Fence, position: u64, sequence: u64) -> Result<(), RelayError> {
        let (rm, name, fence) = (Arc::clone(&self.readmodels), self.name(), fence.clone());
        let doc = serde_json::to_string(&SequenceMark { position, sequence }).map_err(store)?;
        blocking(move || {
            rm.transact(&fence, &name, Some(position), &mut |txn| {
                txn.put(SEQUENCE_TABLE, &name, &doc)
            })
        })
        .await
    }

    /// The checkpoint, and the sequence to scan after when its mark belongs to it.
    async fn load(&self) -> Result<(u64, Option<u64>), RelayError> {
        let (rm, name) = (Arc::clone(&self.readmodels), self.name());
        blocking(move || {
            let position = rm.checkpoint(&name)?;
            // A mark that cannot be read only costs a scan of the whole stream; failing
            // the round instead would stop the relay for good.
            let mark = rm.get(SEQUENCE_TABLE, &name)?.and_then(|json| {
                serde_json::from_str::<SequenceMark>(&json)
                    .inspect_err(|e| tracing::warn!(relay = %name, error = %e, "unreadable sequence mark; scanning the whole stream"))
                    .ok()
            });
            Ok((position, mark.filter(|m| m.position == position).map(|m| m.sequence)))
        })
        .await
    }

    /// Reads the stream after `after` (from its first message when `None`) and collects
    /// the positions past `position` this relay's subjects already hold. Only headers are
    /// fetched: the scan costs a few bytes a message.
    pub async fn scan_tail(&self, after: Option<u64>, position: u64) -> Result<Tail, RelayError> {
        let mut stream = self.js.get_stream(&self.config.stream).await.map_err(nats)?;
        let state = stream.info().await.map_err(nats)?.state.clone();
        let (first, last) = (state.first_sequence, state.last_sequence);
        let mut tail = Tail { published: BTreeMap::new(), last_sequence: last };
        let start = match after {
            Some(seq) if seq > last => {
                // The stream is younger than the checkpoint (deleted and created again):
                // it holds nothing the checkpoint covers, and anything of ours in it was
                // published since, so all of it is read.
                tracing::warn!(stream = %self.config.stream, checkpoint_sequence = seq, last, "the stream is behind the relay's checkpoint (recreated?): reading it whole");
                first
            }
            Some(seq) => {
                if seq.saturating_add(1) < first {
                    // Purged or aged out: what was there is gone and will be published
                    // again (once: nothing of it is left to duplicate).
                    tracing::warn!(stream = %self.config.stream, checkpoint_sequence = seq, first, "messages after the relay's checkpoint are gone from the stream");
                }
                seq.saturating_add(1).max(first)
            }
            None => first,
        };
        if state.messages == 0 || start > last {
            return Ok(tail);
        }
        let subjects = self.config.stream_subjects();
        // One filter subject is all a 2.9 server takes; with several, the scan reads
        // every subject and keeps this relay's.
        let filter_subject = match subjects.as_slice() {
            [one] => one.clone(),
            _ => String::new(),
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject,
                headers_only: true,
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(tail);
        }
        let mut messages = consumer.messages().await.map_err(nats)?;
        loop {
            let next =
                tokio::time::timeout(SCAN_IDLE_TIMEOUT, messages.next()).await.map_err(|_| {
                    RelayError::Nats(format!(
                        "reading the stream's tail stalled for {SCAN_IDLE_TIMEOUT:?}"
                    ))
                })?;
            let Some(message) = next else {
                return Err(RelayError::Nats(
                    "the stream's tail ended before its last message".into(),
                ));
            };
            let message = message.map_err(nats)?;
            let info = message.info().map_err(nats)?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let ours = subjects.iter().any(|s| covers(s, message.subject.as_str()));
            let at = message
                .headers
                .as_ref()
                .and_then(|h| h.get(crate::consumer::POSITION_HEADER))
                .and_then(|v| v.as_str().parse::<u64>().ok());
            if let Some(at) = at.filter(|&at| ours && at > position) {
                // Delivered in sequence order: the first holder is the lowest.
                tail.published.entry(at).or_insert(seq);
            }
            // Messages others publish meanwhile are past `last`: not ours to wait for.
            if seq >= last || pending == 0 {
                return Ok(tail);
            }
        }
    }

    /// Publishes from the checkpoint until shutdown (`Ok`) or a failure (`Err`, with the
    /// acknowledged prefix saved).
    async fn pump(
        &self,
        fence: &Fence,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), RelayError> {
        let (mut position, after) = self.load().await?;
        self.progress.send_modify(|p| p.position = position);
        let mut parked = self.load_parked().await?;
        let mut tail = self.scan_tail(after, position).await?;
        if !tail.published.is_empty() {
            tracing::info!(relay = %self.name(), position, count = tail.published.len(), "events past the checkpoint are already in the stream; not publishing them again");
        }
        // The highest stream sequence of the acknowledged prefix (or the scan's end).
        let mut high = tail.last_sequence;
        let mut head = self.store.head();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            head.borrow_and_update();
            let slice = self
                .store
                .read_all(position, self.config.batch, &AllFilter::default())
                .await
                .map_err(store)?;
            if !slice.events.is_empty() {
                let acked = self.publish(fence, position, &slice.events, &tail, &mut parked).await;
                high = high.max(acked.sequence);
                if let Err(e) = acked.result {
                    if acked.position > position {
                        let sequence = tail.mark(acked.position, high);
                        self.save(fence, acked.position, sequence).await?;
                        self.progress.send_modify(|p| p.position = acked.position);
                    }
                    return Err(e);
                }
            }
            if slice.scanned_to > position {
                if !self.config.checkpoint_delay.is_zero() {
                    tokio::time::sleep(self.config.checkpoint_delay).await;
                }
                position = slice.scanned_to;
                let sequence = tail.mark(position, high);
                self.save(fence, position, sequence).await?;
                self.progress.send_modify(|p| p.position = position);
            }
            // A page cut at the stores' byte cap is short but not the end.
            if slice.events.len() < self.config.batch && slice.scanned_to >= *head.borrow() {
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return Ok(()) },
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    /// Publishes `events` in order, skipping those `tail` shows already in the stream;
    /// returns the acknowledged prefix and the first failure, if any.
    async fn publish(
        &self,
        fence: &Fence,
        checkpoint: u64,
        events: &[RecordedEvent],
        tail: &Tail,
        parked: &mut Parked,
    ) -> Acked {
        let mut in_flight: VecDeque<(&str, u64, Sent)> = VecDeque::new();
        let mut busy: HashSet<&str> = HashSet::new();
        let mut acked = Acked { position: 0, sequence: 0, result: Ok(()) };
        let (mut published, mut skipped) = (0, 0);
        let result = async {
            for e in events {
                if let Some(&seq) = tail.published.get(&e.position) {
                    // Stored before the crash: counts as acknowledged once all before it are.
                    in_flight.push_back((e.aggregate_id.as_str(), e.position, Sent::Stored(seq)));
                    skipped += 1;
                    continue;
                }
                while in_flight.len() >= self.config.max_in_flight.max(1)
                    || busy.contains(e.aggregate_id.as_str())
                {
                    let Some(front) = in_flight.pop_front() else { break };
                    settle(front, &mut busy, &mut acked, &mut published).await?;
                }
                if parked.positions.contains(&e.position) {
                    // Parked before a crash: settled, not parked twice.
                    in_flight.push_back((e.aggregate_id.as_str(), e.position, Sent::Parked));
                    continue;
                }
                // Cairn's own events (lifecycle markers, metadata, scavenged events) are
                // not the outside world's business: never published.
                if cairn_core::lifecycle::is_system_type(&e.event_type) {
                    continue;
                }
                let mapped = if parked.aggregates.contains(&e.aggregate_id) {
                    Err(format!(
                        "held back: an earlier event of aggregate {} is a dead letter (per-aggregate order)",
                        e.aggregate_id
                    ))
                } else {
                    map_caught(&self.mapper, e, &self.config)
                };
                let out = match mapped {
                    Ok(Some(out)) => out,
                    Ok(None) => continue,
                    Err(error) => {
                        // What the mapper cannot make a message of now it never will (it
                        // is pure): parked at once, and the relay goes on.
                        self.park(fence, checkpoint, e, error).await?;
                        parked.add(e);
                        self.progress.send_modify(|p| p.dead_letters += 1);
                        in_flight.push_back((e.aggregate_id.as_str(), e.position, Sent::Parked));
                        continue;
                    }
                };
                let message = PublishMessage::build()
                    .payload(out.payload)
                    .message_id(out.id)
                    .header(crate::consumer::EVENT_TYPE_HEADER, out.event_type.as_str())
                    .header(crate::consumer::POSITION_HEADER, e.position.to_string().as_str())
                    .header(crate::consumer::AGGREGATE_ID_HEADER, e.aggregate_id.as_str())
                    .header(crate::consumer::VERSION_HEADER, e.version.to_string().as_str());
                let ack = self.js.send_publish(out.subject, message).await.map_err(nats)?;
                busy.insert(e.aggregate_id.as_str());
                in_flight.push_back((e.aggregate_id.as_str(), e.position, Sent::Awaiting(ack)));
            }
            while let Some(front) = in_flight.pop_front() {
                settle(front, &mut busy, &mut acked, &mut published).await?;
            }
            Ok(())
        }
        .await;
        self.progress.send_modify(|p| {
            p.published += published;
            p.already_published += skipped;
        });
        acked.result = result;
        acked
    }
}

/// The relay's dead letters: positions parked, and the aggregates held behind them.
#[derive(Debug, Default)]
struct Parked {
    positions: HashSet<u64>,
    aggregates: HashSet<String>,
}

impl Parked {
    fn add(&mut self, e: &RecordedEvent) {
        self.positions.insert(e.position);
        self.aggregates.insert(e.aggregate_id.clone());
    }
}

/// The mapper's message for `e`; a panic (an upcaster meeting data it never expected) is
/// an error like any other, parked instead of killing the relay's task.
fn map_caught(
    mapper: &Mapper,
    e: &RecordedEvent,
    config: &RelayConfig,
) -> Result<Option<Outgoing>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mapper(e, config))).unwrap_or_else(
        |panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(format!("the mapper panicked: {message}"))
        },
    )
}

impl Relay {
    /// The dead letters this relay parked earlier (a new leader term starts from them).
    async fn load_parked(&self) -> Result<Parked, RelayError> {
        let (rm, name) = (Arc::clone(&self.readmodels), self.name());
        let letters = blocking(move || rm.dead_letters(Some(&name))).await?;
        let mut parked = Parked::default();
        for l in &letters {
            parked.positions.insert(l.position);
            parked.aggregates.insert(l.aggregate_id.clone());
        }
        self.progress.send_modify(|p| p.dead_letters = letters.len() as u64);
        Ok(parked)
    }

    /// Parks `event` under the relay's name, leaving the checkpoint at `checkpoint` (the
    /// saved one: events before it in this batch may not be acknowledged yet).
    async fn park(
        &self,
        fence: &Fence,
        checkpoint: u64,
        event: &RecordedEvent,
        error: String,
    ) -> Result<(), RelayError> {
        tracing::error!(relay = %self.name(), position = event.position, aggregate_id = %event.aggregate_id, event_type = %event.event_type, %error, "event parked in the dead-letter queue; the relay goes on");
        let now = Timestamp::now();
        let letter = DeadLetter {
            id: 0,
            projection: self.name(),
            position: event.position,
            aggregate_id: event.aggregate_id.clone(),
            event_type: event.event_type.clone(),
            error,
            attempts: 1,
            first_failed_at: now,
            last_failed_at: now,
        };
        let (rm, fence) = (Arc::clone(&self.readmodels), fence.clone());
        blocking(move || rm.park(&fence, checkpoint, &letter)).await.map(|_| ())
    }
}

/// An event of the in-flight queue.
enum Sent {
    /// Published; its ack is awaited.
    Awaiting(PublishAckFuture),
    /// Found in the stream on resume, at this sequence: not published again.
    Stored(u64),
    /// In the dead-letter queue: never published by the relay's loop.
    Parked,
}

/// The acknowledged prefix of a batch.
struct Acked {
    /// Every event up to this position is in the stream (0: none of the batch).
    position: u64,
    /// The highest stream sequence among them.
    sequence: u64,
    /// The first failure.
    result: Result<(), RelayError>,
}

/// Waits for the oldest in-flight publish and extends the acknowledged prefix over it.
async fn settle<'a>(
    (aggregate, at, sent): (&'a str, u64, Sent),
    busy: &mut HashSet<&'a str>,
    acked: &mut Acked,
    published: &mut u64,
) -> Result<(), RelayError> {
    let sequence = match sent {
        Sent::Awaiting(ack) => {
            let sequence = ack.await.map_err(nats)?.sequence;
            busy.remove(aggregate);
            *published += 1;
            sequence
        }
        Sent::Stored(sequence) => sequence,
        Sent::Parked => 0,
    };
    acked.position = at;
    acked.sequence = acked.sequence.max(sequence);
    Ok(())
}

/// Whether stream subject `held` already takes every subject of `wanted` (both filters):
/// adding an overlapping subject would be refused by the server.
fn covers(held: &str, wanted: &str) -> bool {
    let (mut held, mut wanted) = (held.split('.'), wanted.split('.'));
    loop {
        match (held.next(), wanted.next()) {
            (Some(">"), Some(_)) | (None, None) => return true,
            (Some(h), Some(w)) if h == w || (h == "*" && w != ">") => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod subject_tests {
    use super::covers;

    #[test]
    fn a_wider_stream_subject_covers_a_module_prefix() {
        assert!(covers("public.>", "public.bank.>"));
        assert!(covers("public.bank.>", "public.bank.>"));
        assert!(covers("*.bank.>", "public.bank.>"));
        assert!(!covers("public.orders.>", "public.bank.>"));
        assert!(!covers("public.*", "public.bank.>"));
        assert!(!covers("public.bank.>", "public.>"));
    }
}

#[cfg(test)]
mod mark_tests {
    use super::Tail;

    fn tail(entries: &[(u64, u64)], last_sequence: u64) -> Tail {
        Tail { published: entries.iter().copied().collect(), last_sequence }
    }

    #[test]
    fn the_mark_stays_below_every_known_message_past_the_checkpoint() {
        // The stream held 12 at 21 and 14 at 23 (13 a hole); this round stored 11 at 24
        // and 13 at 25. A checkpoint at 13 must keep 14 (at 23) after its mark.
        let mut t = tail(&[(12, 21), (14, 23)], 23);
        assert_eq!(t.mark(13, 25), 22);
        assert_eq!(t.published.keys().copied().collect::<Vec<_>>(), [14]);
        // Once 14 is covered too, the prefix's highest sequence is the mark.
        assert_eq!(t.mark(14, 25), 25);
        assert!(t.published.is_empty());
    }

    #[test]
    fn with_nothing_past_the_checkpoint_the_mark_is_the_highest_sequence() {
        let mut t = tail(&[(3, 7)], 9);
        assert_eq!(t.mark(3, 9), 9);
        assert_eq!(tail(&[], 0).mark(u64::MAX, 0), 0);
        // A message at sequence 1 past the checkpoint: the mark is 0 (scan everything).
        assert_eq!(tail(&[(5, 1)], 4).mark(4, 4), 0);
    }
}
