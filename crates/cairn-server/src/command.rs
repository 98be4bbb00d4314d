//! Running a command over HTTP, for module handlers: the contract's command headers
//! (`If-Match`, `Idempotency-Key`, `X-Correlation-Id`, `X-User-Id`) applied, the outcome
//! answered as `{aggregate_id, version, position}`, errors in the contract's shape, and
//! `cairn_commands_total` / `cairn_command_duration_seconds` recorded.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_cqrs::{Aggregate, CommandMetadata, CommandOptions, Existence};
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::CommandHeaders;

/// Runs `command` on aggregate `id` of type `A`. Answers `201` when the command creates
/// the aggregate ([`Existence::MustNotExist`]), `200` otherwise. `name` labels the
/// command metrics (e.g. `ship_order`).
pub async fn run<A: Aggregate>(
    state: &AppState,
    name: &'static str,
    id: &str,
    command: A::Command,
    mut headers: CommandHeaders,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    // A key names one command on one aggregate: the same key sent with another command, or
    // to another aggregate, is a new command, never a replay of the first one's outcome
    // (which would answer for another aggregate, or accept a body it never checked). A
    // creating command's id may be minted afresh on each retry, so its name alone scopes it.
    let scope = match A::existence(&command) {
        Existence::MustNotExist => name.to_owned(),
        _ => format!("{name}:{id}"),
    };
    headers.idempotency_key = headers.idempotency_key.map(|key| format!("{scope}:{key}"));
    // A creating command is decided on the default state whenever it runs: one that this
    // state refuses is refused before its key is looked up, so a key never makes a request
    // that is invalid on its own look accepted.
    if headers.idempotency_key.is_some()
        && A::existence(&command) == Existence::MustNotExist
        && let Err(refused) = A::default().handle(&command)
    {
        let error = ApiError::from(cairn_cqrs::CommandError::from(refused));
        crate::metrics::command_done(name, "refused", started);
        return Err(error);
    }
    let result = execute::<A>(state, id, command, headers).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.status().is_client_error() => "refused",
        Err(_) => "error",
    };
    crate::metrics::command_done(name, outcome, started);
    result
}

/// [`run`] without the metrics.
pub async fn execute<A: Aggregate>(
    state: &AppState,
    id: &str,
    command: A::Command,
    headers: CommandHeaders,
) -> Result<Response, ApiError> {
    let status = match A::existence(&command) {
        Existence::MustNotExist => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let command_id = uuid::Uuid::now_v7().to_string();
    let options = CommandOptions {
        expected_version: headers.if_match,
        // Scoped so that HTTP keys can never collide with process managers' derived keys.
        idempotency_key: headers.idempotency_key.map(|k| format!("http:{k}")),
        metadata: CommandMetadata {
            correlation_id: Some(headers.correlation_id.unwrap_or_else(|| command_id.clone())),
            causation_id: Some(command_id),
            user_id: headers.user_id,
        },
    };
    let outcome = state.repository.execute::<A>(id, &command, &options).await?;
    let body = json!({
        "aggregate_id": outcome.aggregate_id,
        "version": outcome.version,
        "position": outcome.position,
    });
    Ok((status, Json(body)).into_response())
}
