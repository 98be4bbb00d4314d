//! Consumers on the bus: a durable JetStream pull consumer that hands each message to a
//! handler and acknowledges it only after the handler's effect is committed.
//!
//! Delivery is at least once (a crash between commit and ack redelivers), so handlers
//! de-duplicate by message id (`Nats-Msg-Id`, derived from the event id) in the same
//! transaction as their effect — see `examples/order-board`. A failing message is retried
//! in place (with backoff), never skipped or reordered, so per-aggregate order holds.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::relay::RelayError;

/// One message from the bus.
#[derive(Debug, Clone)]
pub struct BusMessage {
    /// `Nats-Msg-Id`: the publisher's de-duplication id.
    pub id: String,
    /// Its subject.
    pub subject: String,
    /// The `Cairn-Event-Type` header.
    pub event_type: Option<String>,
    /// The body (JSON).
    pub payload: Bytes,
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
        let servers: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let js = jetstream::new(async_nats::connect(servers).await.map_err(nats)?);
        let stream = js.get_stream(stream).await.map_err(nats)?;
        let consumer = stream
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.to_owned()),
                    filter_subject: filter.to_owned(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
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
            let bus = Arc::new(BusMessage {
                id: header("Nats-Msg-Id").unwrap_or_default(),
                subject: message.subject.to_string(),
                event_type: header("Cairn-Event-Type"),
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
