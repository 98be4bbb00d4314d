//! The outbox relay: `$all` → a JetStream stream, in order, exactly once after dedup.
//!
//! Publishes are pipelined: up to `max_in_flight` unacknowledged, and at most one per
//! aggregate (a second event of an aggregate waits for the first one's ack), so a
//! failure can never let a later event of an aggregate overtake an earlier one. The
//! checkpoint advances only over the acknowledged prefix; after any failure the relay
//! resumes from there, and JetStream drops what it already has (`Nats-Msg-Id` = event
//! id, within the stream's duplicate window). One process runs the relay at a time
//! (the read-model store's leadership, as for projections).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use cairn_core::readmodel::{ReadModelError, ReadModelStore};
use cairn_core::{AllFilter, EventStore, RecordedEvent};
use tokio::sync::watch;

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
    /// The stream's duplicate window: how long a re-publish is recognised.
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
        // A cluster is given as a comma-separated list; the client fails over between them.
        let servers: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let client = async_nats::connect(servers).await.map_err(nats)?;
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
        if !missing.is_empty() {
            tracing::info!(stream = %config.stream, subjects = ?missing, "adding subjects to the stream");
            existing.subjects.extend(missing);
            js.update_stream(&existing).await.map_err(nats)?;
        }
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
            if !matches!(blocking(move || rm.try_lead(&name)).await, Ok(true)) {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            self.progress.send_modify(|p| p.leading = true);
            match self.pump(&mut shutdown).await {
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

    async fn save(&self, position: u64) -> Result<(), RelayError> {
        let (rm, name) = (Arc::clone(&self.readmodels), self.name());
        blocking(move || rm.transact(&name, Some(position), &mut |_| Ok(()))).await
    }

    /// Publishes from the checkpoint until shutdown (`Ok`) or a failure (`Err`, with the
    /// acknowledged prefix saved).
    async fn pump(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), RelayError> {
        let (rm, name) = (Arc::clone(&self.readmodels), self.name());
        let mut position = blocking(move || rm.checkpoint(&name)).await?;
        self.progress.send_modify(|p| p.position = position);
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
                let (acked_to, result) = self.publish(&slice.events).await;
                if let Err(e) = result {
                    if acked_to > position {
                        self.save(acked_to).await?;
                        self.progress.send_modify(|p| p.position = acked_to);
                    }
                    return Err(e);
                }
            }
            if slice.scanned_to > position {
                if !self.config.checkpoint_delay.is_zero() {
                    tokio::time::sleep(self.config.checkpoint_delay).await;
                }
                position = slice.scanned_to;
                self.save(position).await?;
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

    /// Publishes `events` in order; returns the acknowledged prefix's last position and
    /// the first failure, if any.
    async fn publish(&self, events: &[RecordedEvent]) -> (u64, Result<(), RelayError>) {
        let mut in_flight: VecDeque<(&str, u64, PublishAckFuture)> = VecDeque::new();
        let mut busy: HashSet<&str> = HashSet::new();
        let mut acked_to = 0;
        let mut published = 0;
        let result = async {
            for e in events {
                while in_flight.len() >= self.config.max_in_flight.max(1)
                    || busy.contains(e.aggregate_id.as_str())
                {
                    let Some((aggregate, at, ack)) = in_flight.pop_front() else { break };
                    ack.await.map_err(nats)?;
                    busy.remove(aggregate);
                    acked_to = at;
                    published += 1;
                }
                let Some(out) = (self.mapper)(e, &self.config).map_err(RelayError::Store)? else {
                    continue;
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
                in_flight.push_back((e.aggregate_id.as_str(), e.position, ack));
            }
            while let Some((_, at, ack)) = in_flight.pop_front() {
                ack.await.map_err(nats)?;
                acked_to = at;
                published += 1;
            }
            Ok(())
        }
        .await;
        self.progress.send_modify(|p| p.published += published);
        (acked_to, result)
    }
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
