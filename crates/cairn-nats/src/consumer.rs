//! Consumers on the bus: a durable JetStream pull consumer that hands each message to a
//! handler and acknowledges it only after the handler's effect is committed.
//!
//! Delivery is at least once (a crash between commit and ack redelivers), so handlers
//! de-duplicate by message id (`Nats-Msg-Id`, derived from the event id) in the same
//! transaction as their effect — see `examples/order-board`. A failing message is retried
//! in place (with backoff), never skipped.
//!
//! Order is *not* kept across a consumer's crash: messages that were delivered to a dead
//! consumer and never acknowledged come again only after `ack_wait`, after the messages
//! that followed them. So every message carries where its event stands in its aggregate
//! ([`BusMessage::aggregate_id`], [`BusMessage::version`], from headers the relay sets),
//! and a handler that keeps state per aggregate stores the last version it applied and
//! ignores an older one, in the same transaction as its effect.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::relay::RelayError;

/// Header: the source event's `$all` position.
pub const POSITION_HEADER: &str = "Cairn-Position";
/// Header: the source event's aggregate (stream) id.
pub const AGGREGATE_ID_HEADER: &str = "Cairn-Aggregate-Id";
/// Header: the source event's version in its aggregate's stream.
pub const VERSION_HEADER: &str = "Cairn-Version";
/// Header: the message's type.
pub const EVENT_TYPE_HEADER: &str = "Cairn-Event-Type";

/// One message from the bus.
#[derive(Debug, Clone)]
pub struct BusMessage {
    /// `Nats-Msg-Id`: the publisher's de-duplication id.
    pub id: String,
    /// Its subject.
    pub subject: String,
    /// The `Cairn-Event-Type` header.
    pub event_type: Option<String>,
    /// The aggregate of the source event (`Cairn-Aggregate-Id`). `None` for messages not
    /// published by Cairn's relay.
    pub aggregate_id: Option<String>,
    /// The source event's version in its aggregate (`Cairn-Version`): of two messages of
    /// one aggregate, the one with the higher version is the newer fact. A redelivered
    /// message can arrive after a newer one; compare versions to refuse it.
    pub version: Option<u64>,
    /// The source event's `$all` position in the store (`Cairn-Position`).
    pub position: Option<u64>,
    /// How many times the bus has delivered this message (1 = first delivery).
    pub delivered: u64,
    /// The body (JSON).
    pub payload: Bytes,
}

/// Settings of a durable consumer.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// How long the bus waits for an acknowledgement before delivering a message again
    /// (also after the consumer died holding it).
    pub ack_wait: Duration,
    /// Credentials and TLS for the connection.
    pub nats: crate::NatsConnectOptions,
}

/// JetStream's own default: a message held by a dead consumer comes again after this.
pub const ACK_WAIT_DEFAULT: Duration = Duration::from_secs(30);

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self { ack_wait: ACK_WAIT_DEFAULT, nats: crate::NatsConnectOptions::default() }
    }
}

/// What a consumer does with each message.
pub trait BusHandler: Send + Sync + 'static {
    /// Applies one message; `Ok` only once its effect is committed. A message applied
    /// before (same id) must be a no-op.
    fn handle(&self, message: &BusMessage) -> Result<(), String>;
}

/// A durable pull consumer on one stream.
pub struct BusConsumer {
    consumer: jetstream::consumer::PullConsumer,
}

fn nats(e: impl std::fmt::Display) -> RelayError {
    RelayError::Nats(e.to_string())
}

impl BusConsumer {
    /// Connects and creates (or reuses) the durable consumer `durable` on `stream`, for
    /// the subjects matching `filter` (e.g. `public.orders.>`).
    pub async fn connect(
        url: &str,
        stream: &str,
        durable: &str,
        filter: &str,
    ) -> Result<Self, RelayError> {
        Self::connect_with(url, stream, durable, filter, &ConsumerOptions::default()).await
    }

    /// Like [`BusConsumer::connect`], with `options` for a consumer it creates (an
    /// existing durable consumer keeps the settings it was created with).
    pub async fn connect_with(
        url: &str,
        stream: &str,
        durable: &str,
        filter: &str,
        options: &ConsumerOptions,
    ) -> Result<Self, RelayError> {
        let js = jetstream::new(crate::connect(url, &options.nats).await.map_err(nats)?);
        let stream = js.get_stream(stream).await.map_err(nats)?;
        let consumer = stream
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.to_owned()),
                    filter_subject: filter.to_owned(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: options.ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(nats)?;
        Ok(Self { consumer })
    }

    /// Handles messages until `shutdown`. The handler runs on a blocking thread (it
    /// usually commits to a database).
    pub async fn run(
        self,
        handler: Arc<dyn BusHandler>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), RelayError> {
        let mut messages = self.consumer.messages().await.map_err(nats)?;
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = shutdown.changed() => return Ok(()),
            };
            let Some(message) = next else { return Ok(()) };
            let message = message.map_err(nats)?;
            let header = |name: &str| {
                message.headers.as_ref().and_then(|h| h.get(name)).map(ToString::to_string)
            };
            let number = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
            let bus = Arc::new(BusMessage {
                id: header("Nats-Msg-Id").unwrap_or_default(),
                subject: message.subject.to_string(),
                event_type: header(EVENT_TYPE_HEADER),
                aggregate_id: header(AGGREGATE_ID_HEADER),
                version: number(VERSION_HEADER),
                position: number(POSITION_HEADER),
                delivered: message.info().map_or(1, |i| u64::try_from(i.delivered).unwrap_or(1)),
                payload: message.payload.clone(),
            });
            let mut backoff = Duration::from_millis(50);
            loop {
                let (h, m) = (Arc::clone(&handler), Arc::clone(&bus));
                match tokio::task::spawn_blocking(move || h.handle(&m)).await {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => {
                        tracing::warn!(id = %bus.id, error = %e, "handler failed; retrying");
                    }
                    Err(e) => {
                        tracing::warn!(id = %bus.id, error = %e, "handler panicked; retrying");
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            message.ack().await.map_err(nats)?;
        }
    }
}
