//! The one error type of the HTTP edge and its mapping to the contract's status codes.
//!
//! Every error leaves as `{"error": "<code>", "message": "<text>", ...}`; internals (SQL
//! text, file paths) are logged, not sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_core::readmodel::ReadModelError;
use cairn_core::{AppendError, ReadError};
use cairn_cqrs::CommandError;
use cairn_cqrs::consumer::ControlError;
use serde_json::{Map, Value};

/// An error on its way to becoming a JSON response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Map<String, Value>,
}

impl ApiError {
    /// An error with a status, a contract code and a human message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), extra: Map::new() }
    }

    /// `400 bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// `500 internal`: `detail` goes to the log under the request id, never to the
    /// client (it may hold storage errors, panic messages, paths).
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(request_id = crate::request_id::current().as_deref().unwrap_or("-"), detail = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the operator finds the detail in the log under request_id",
        )
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// `413 payload_too_large`.
    #[must_use]
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }

    /// `408 request_timeout`: reading the body and handling the request took longer than
    /// `deadline`. The request was abandoned where it stood: a command may or may not have
    /// taken effect, which a retry with the same `Idempotency-Key` settles.
    #[must_use]
    pub fn request_timeout(deadline: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request was not read and handled within {} s; a command may or may not have taken effect (retry it with the same Idempotency-Key)",
                deadline.as_secs()
            ),
        )
    }

    /// `400 json_too_deep`: the body nests deeper than [`crate::json_depth::JSON_DEPTH_MAX`].
    #[must_use]
    pub fn json_too_deep() -> Self {
        let max = crate::json_depth::JSON_DEPTH_MAX;
        Self::new(
            StatusCode::BAD_REQUEST,
            "json_too_deep",
            format!("the request body nests arrays and objects deeper than {max} levels"),
        )
        .with("max_depth", max)
    }

    /// Adds a field next to `error` and `message`.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The contract's error code (`wrong_expected_version`, `not_found`, ...).
    #[must_use]
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The human message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), self.code.into());
        body.insert("message".into(), self.message.into());
        body.extend(self.extra);
        if let Some(id) = crate::request_id::current() {
            body.insert("request_id".into(), id.into());
        }
        (self.status, axum::Json(Value::Object(body))).into_response()
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        let message = e.to_string();
        match e {
            AppendError::WrongExpectedVersion { expected, actual } => {
                Self::new(StatusCode::CONFLICT, "wrong_expected_version", message)
                    .with("expected", serde_json::to_value(expected).unwrap_or(Value::Null))
                    .with("actual", actual)
            }
            AppendError::AggregateTypeMismatch { actual, requested } => {
                Self::new(StatusCode::CONFLICT, "aggregate_type_mismatch", message)
                    .with("stream_aggregate_type", actual)
                    .with("requested_aggregate_type", requested)
            }
            AppendError::DuplicateEventId { event_id } => {
                Self::new(StatusCode::CONFLICT, "duplicate_event_id", message)
                    .with("event_id", event_id.to_string())
            }
            // The same code as any other reuse of an id: the client's fix is the same (a
            // new id, or the original content); the fields say where the stored one is.
            AppendError::EventChanged { event_id, aggregate_id, version } => {
                Self::new(StatusCode::CONFLICT, "duplicate_event_id", message)
                    .with("event_id", event_id.to_string())
                    .with("stored_in", aggregate_id)
                    .with("stored_version", version)
            }
            AppendError::IdempotencyKeyUsed { record } => match record.outcome {
                cairn_core::KeyOutcome::Appended { aggregate_id, outcome } => {
                    Self::new(StatusCode::CONFLICT, "idempotency_key_used", message)
                        .with("aggregate_id", aggregate_id)
                        .with("last_version", outcome.last_version)
                        .with("position", outcome.position)
                }
                cairn_core::KeyOutcome::Refused { refusal, .. } => {
                    CommandError::from_refusal(refusal).into()
                }
            },
            AppendError::IdempotencyKeyReused { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", message)
            }
            AppendError::SchemaViolation { index, event_type, schema_version, errors } => {
                let errors: Vec<serde_json::Value> = errors
                    .into_iter()
                    .map(|(pointer, message)| serde_json::json!({"pointer": pointer, "message": message}))
                    .collect();
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message)
                    .with("index", index)
                    .with("event_type", event_type)
                    .with("schema_version", schema_version)
                    .with("errors", errors)
            }
            AppendError::Invalid(m) => Self::bad_request(m),
            AppendError::StreamTombstoned { aggregate_id } => tombstoned(&aggregate_id),
            AppendError::Poisoned => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_poisoned", message)
            }
            AppendError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            other => {
                tracing::error!(error = %other, "append failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the event store is unavailable",
                )
            }
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::StreamNotFound => Self::not_found("stream not found"),
            ReadError::StreamTombstoned => {
                Self::new(StatusCode::GONE, "stream_tombstoned", "the stream is deleted for good")
            }
            ReadError::Invalid(m) => Self::bad_request(m),
            other => {
                tracing::error!(error = %other, "read failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the event store is unavailable",
                )
            }
        }
    }
}

/// `410 stream_tombstoned` (contract §2, "Stream lifecycle").
fn tombstoned(aggregate_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "stream_tombstoned",
        format!("stream {aggregate_id} is deleted for good (tombstoned): it takes no more writes"),
    )
}

impl From<cairn_core::lifecycle::DeleteError> for ApiError {
    fn from(e: cairn_core::lifecycle::DeleteError) -> Self {
        use cairn_core::lifecycle::DeleteError;
        match e {
            DeleteError::StreamNotFound => Self::not_found("stream not found"),
            DeleteError::StreamTombstoned { aggregate_id } => tombstoned(&aggregate_id),
            DeleteError::WrongExpectedVersion { expected, actual } => {
                AppendError::WrongExpectedVersion { expected, actual }.into()
            }
            other => {
                tracing::error!(error = %other, "delete failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the event store is unavailable",
                )
            }
        }
    }
}

impl From<cairn_core::lifecycle::MetaError> for ApiError {
    fn from(e: cairn_core::lifecycle::MetaError) -> Self {
        use cairn_core::lifecycle::MetaError;
        let message = e.to_string();
        match e {
            MetaError::StreamNotFound => Self::not_found("stream not found"),
            MetaError::StreamTombstoned { aggregate_id } => tombstoned(&aggregate_id),
            MetaError::WrongExpectedVersion { expected, actual } => {
                Self::new(StatusCode::CONFLICT, "wrong_expected_version", message)
                    .with("expected", expected)
                    .with("actual", actual)
            }
            MetaError::Invalid(m) => Self::bad_request(m),
            other => {
                tracing::error!(error = %other, "metadata change failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the event store is unavailable",
                )
            }
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NotFound => ApiError::not_found("no such aggregate"),
            CommandError::AlreadyExists { actual } => ApiError::new(
                StatusCode::CONFLICT,
                "wrong_expected_version",
                format!("the aggregate already exists (version {actual})"),
            )
            .with("expected", 0)
            .with("actual", actual),
            CommandError::WrongExpectedVersion { expected, actual } => {
                ApiError::new(StatusCode::CONFLICT, "wrong_expected_version", e.to_string())
                    .with("expected", expected)
                    .with("actual", actual)
            }
            CommandError::Rule(rule) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rule_violation", rule.message)
            }
            CommandError::Contention => {
                ApiError::new(StatusCode::CONFLICT, "contention", e.to_string())
            }
            CommandError::Corrupt(d) => {
                tracing::error!(error = %d, "aggregate cannot be loaded");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "aggregate_unloadable",
                    "the aggregate's events cannot be read",
                )
            }
            CommandError::Store(s) => s.into(),
            CommandError::Read(r) => r.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<ReadModelError> for ApiError {
    fn from(e: ReadModelError) -> Self {
        tracing::error!(error = %e, "read model failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "read_model_unavailable",
            "the read model is unavailable",
        )
    }
}

/// The one place a refused consumer command (pause, resume, rebuild, dead-letter retry or
/// discard, state import) becomes HTTP: `409 not_leader` whatever the endpoint; the
/// rebuild refusals `409 rebuild_refused` with a `reason`; `409 not_paused` (an import); `503 consumer_busy` and
/// `503 read_model_unavailable` for what may pass on its own.
impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let message = e.to_string();
        let refused = |reason: &str| {
            ApiError::new(StatusCode::CONFLICT, "rebuild_refused", message.clone())
                .with("reason", reason)
        };
        match e {
            ControlError::NotLeader { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_leader", message)
            }
            ControlError::NotPaused { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_paused", message)
            }
            ControlError::Rebuilding { .. } => refused("rebuilding"),
            ControlError::HasDeadLetters { .. } => refused("dead_letters"),
            ControlError::Paused { .. } => refused("paused"),
            ControlError::Stalled { .. } => refused("stalled"),
            ControlError::Failed { .. } => refused("failed"),
            ControlError::ProcessManager { .. } => refused("process_manager"),
            ControlError::Partitioned { .. } => refused("partitioned"),
            ControlError::Busy { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "consumer_busy", message)
            }
            ControlError::Storage(_) => {
                tracing::error!(error = %message, "consumer storage failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "read_model_unavailable",
                    "the read model is unavailable",
                )
            }
            _ => ApiError::internal(message),
        }
    }
}

impl ApiError {
    /// Several consumers' refusals as one answer (the partitions of one projection): the
    /// first one's code, every message. `None` when nothing was refused.
    pub fn from_control_errors(errors: Vec<ControlError>) -> Option<Self> {
        let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        let first = errors.into_iter().next()?;
        let mut error = Self::from(first);
        if error.status != StatusCode::SERVICE_UNAVAILABLE {
            error.message = message;
        }
        Some(error)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use cairn_cqrs::consumer::ControlError;

    use super::ApiError;

    #[test]
    fn control_errors_map_to_one_code_each_whatever_the_endpoint() {
        let consumer = || "c".to_owned();
        let cases = [
            (ControlError::NotLeader { consumer: consumer() }, 409, "not_leader", None),
            (
                ControlError::Rebuilding { consumer: consumer() },
                409,
                "rebuild_refused",
                Some("rebuilding"),
            ),
            (
                ControlError::HasDeadLetters { consumer: consumer() },
                409,
                "rebuild_refused",
                Some("dead_letters"),
            ),
            (ControlError::Paused { consumer: consumer() }, 409, "rebuild_refused", Some("paused")),
            (
                ControlError::Stalled { consumer: consumer() },
                409,
                "rebuild_refused",
                Some("stalled"),
            ),
            (
                ControlError::Partitioned { consumer: consumer() },
                409,
                "rebuild_refused",
                Some("partitioned"),
            ),
            (ControlError::NotPaused { consumer: consumer() }, 409, "not_paused", None),
            (ControlError::Busy { consumer: consumer() }, 503, "consumer_busy", None),
            (ControlError::Storage("disk gone".into()), 503, "read_model_unavailable", None),
        ];
        for (error, status, code, reason) in cases {
            let e = ApiError::from(error);
            assert_eq!((e.status, e.code), (StatusCode::from_u16(status).unwrap(), code));
            assert_eq!(e.extra.get("reason").and_then(|r| r.as_str()), reason, "{code}");
        }
        // The partitions of one projection: every message, the first one's code.
        let all = ApiError::from_control_errors(vec![
            ControlError::NotLeader { consumer: "p#p0of2".into() },
            ControlError::NotLeader { consumer: "p#p1of2".into() },
        ])
        .unwrap();
        assert_eq!(all.code, "not_leader");
        assert!(
            all.message.contains("p#p0of2") && all.message.contains("p#p1of2"),
            "{}",
            all.message
        );
        assert!(ApiError::from_control_errors(Vec::new()).is_none());
    }
}
