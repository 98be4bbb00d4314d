//! Prometheus metrics: counters and histograms recorded where things happen, gauges of
//! background consumers and the store filled in when `/metrics` is scraped.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use cairn_core::{
    AllFilter, AllSlice, Append, AppendError, AppendOutcome, EventStore, ReadError, StreamRead,
    StreamSlice, StreamStats,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::schemas::SchemaRegistry;

/// Latency buckets (seconds) for every `_seconds` histogram: 100 µs to 10 s.
const BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// The process-wide recorder's handle (installed once; later calls share it).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS_SECONDS)
                    .unwrap_or_else(|_| PrometheusBuilder::new())
            };
            builder().install_recorder().unwrap_or_else(|e| {
                // Another recorder owns the process (an embedding application): render ours empty.
                tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics will be empty");
                builder().build_recorder().handle()
            })
        })
        .clone()
}

/// The store as the server uses it, around any backend: every append is checked against
/// its type's registered schema, then counted and timed (schema rejections included).
pub struct ServerStore {
    inner: Arc<dyn EventStore>,
    schemas: Arc<SchemaRegistry>,
    /// Seals personal fields on append, opens them on every read (#19).
    vault: Arc<crate::vault::Vault>,
}

impl ServerStore {
    /// Wraps `inner`.
    pub fn new(
        inner: Arc<dyn EventStore>,
        schemas: Arc<SchemaRegistry>,
        vault: Arc<crate::vault::Vault>,
    ) -> Self {
        Self { inner, schemas, vault }
    }

    /// Validates, then seals the personal fields its schemas mark.
    async fn prepare(&self, append: &mut Append) -> Result<(), AppendError> {
        self.schemas.check(append)?;
        for event in &mut append.events {
            if let Some(personal) = self.schemas.personal(&event.event_type) {
                self.vault.seal(&append.aggregate_id, event, &personal).await?;
            }
        }
        Ok(())
    }
}

fn outcome_of(result: &Result<AppendOutcome, AppendError>) -> &'static str {
    match result {
        Ok(o) if o.deduplicated => "duplicate",
        Ok(_) => "ok",
        Err(AppendError::WrongExpectedVersion { .. }) => "wrong_expected_version",
        Err(AppendError::IdempotencyKeyUsed { .. }) => "idempotent_replay",
        Err(AppendError::IdempotencyKeyReused { .. }) => "idempotency_key_reused",
        Err(
            AppendError::Invalid(_)
            | AppendError::AggregateTypeMismatch { .. }
            | AppendError::DuplicateEventId { .. }
            | AppendError::EventChanged { .. },
        ) => "rejected",
        Err(_) => "error",
    }
}

#[async_trait]
impl EventStore for ServerStore {
    async fn append(&self, mut append: Append) -> Result<AppendOutcome, AppendError> {
        let events = append.events.len() as u64;
        let started = Instant::now();
        let result = match self.prepare(&mut append).await {
            Ok(()) => self.inner.append(append).await,
            Err(e) => Err(e),
        };
        let outcome = outcome_of(&result);
        metrics::counter!("cairn_appends_total", "outcome" => outcome).increment(1);
        metrics::histogram!("cairn_append_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if outcome == "ok" {
            metrics::counter!("cairn_appended_events_total").increment(events);
        }
        result
    }

    async fn read_stream_raw(
        &self,
        aggregate_id: &str,
        read: StreamRead,
    ) -> Result<StreamSlice, ReadError> {
        let mut slice = self.inner.read_stream_raw(aggregate_id, read).await?;
        self.vault.open(&mut slice.events).await;
        Ok(slice)
    }

    async fn stream_state(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<cairn_core::lifecycle::StreamState>, ReadError> {
        self.inner.stream_state(aggregate_id).await
    }

    async fn redact(&self, positions: &[u64]) -> Result<u64, AppendError> {
        self.inner.redact(positions).await
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
        filter: &AllFilter,
    ) -> Result<AllSlice, ReadError> {
        let mut slice = self.inner.read_all(from_position, limit, filter).await?;
        self.vault.open(&mut slice.events).await;
        Ok(slice)
    }

    async fn stream_version(&self, aggregate_id: &str) -> Result<u64, ReadError> {
        self.inner.stream_version(aggregate_id).await
    }

    async fn idempotent_result(
        &self,
        key: &str,
    ) -> Result<Option<cairn_core::IdempotencyRecord>, ReadError> {
        self.inner.idempotent_result(key).await
    }

    async fn record_refusal(
        &self,
        key: cairn_core::IdempotencyKey,
        aggregate_id: String,
        refusal: cairn_core::Refusal,
    ) -> Result<cairn_core::IdempotencyRecord, AppendError> {
        self.inner.record_refusal(key, aggregate_id, refusal).await
    }

    async fn stream_stats(&self, top: usize) -> Result<Vec<StreamStats>, ReadError> {
        self.inner.stream_stats(top).await
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head()
    }

    async fn check_health(&self) -> Result<(), AppendError> {
        self.inner.check_health().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    fn gauges(&self) -> Vec<(&'static str, f64)> {
        self.inner.gauges()
    }
}

/// Commands finished since the process started, whatever their outcome: the console's
/// commands/s (reading it back from the Prometheus recorder would render every metric).
static COMMANDS_DONE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Commands finished since the process started (every outcome).
#[must_use]
pub fn commands_done() -> u64 {
    COMMANDS_DONE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Records one command's outcome and latency.
pub fn command_done(command: &'static str, outcome: &'static str, started: Instant) {
    COMMANDS_DONE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    metrics::counter!("cairn_commands_total", "command" => command, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("cairn_command_duration_seconds", "command" => command)
        .record(started.elapsed().as_secs_f64());
}
