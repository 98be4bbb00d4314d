//! Stream lifecycle (contract §2, "Stream lifecycle"): soft delete, tombstone, truncation,
//! retention metadata, and the admin's scavenge.

use axum::Json;
use axum::extract::State;
use cairn_core::ExpectedVersion;
use cairn_core::lifecycle::{ScavengeReport, StreamLifecycle, StreamMeta};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{AggregateIdPath, JsonBody, QueryMap};
use crate::routes::openapi::ErrorBody;

/// What a delete or tombstone stored: its marker event.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeleteResponse {
    /// The stream.
    aggregate_id: String,
    /// The marker's version: the stream's next append (after a soft delete) gets the one
    /// after it.
    version: u64,
    /// The marker's `$all` position.
    position: u64,
    /// Whether the stream is deleted for good.
    tombstoned: bool,
}

/// The caller may change this stream's lifecycle: the same rule as a raw append to it (a
/// module's streams are the admin's).
async fn check_writer(
    state: &AppState,
    caller: Option<&axum::Extension<crate::auth::Caller>>,
    aggregate_id: &str,
) -> Result<(), ApiError> {
    if let Some(s) = state.store.stream_state(aggregate_id).await? {
        crate::auth::middleware::check_raw_append(caller.map(|c| &c.0), state, &s.aggregate_type)?;
    }
    Ok(())
}

/// The query of `DELETE /streams/{aggregate_id}` (read by [`QueryMap`]; this documents it).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documentation only
pub struct DeleteParams {
    /// An integer, `any` (default; so is an empty value, as for every query parameter),
    /// `no_stream` or `exists`.
    #[param(pattern = "^([0-9]{1,18}|any|no_stream|exists)?$")]
    expected_version: Option<String>,
    /// `true`: delete for good (default `false`).
    tombstone: Option<bool>,
}

/// A whole number (`3` or `3.0`, contract §7) of at most [`META_VALUE_MAX`], or nothing.
fn whole_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "cairn_core::whole::deserialize")] u64);
    Ok(Option::<Whole>::deserialize(d)?.map(|w| w.0))
}

fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    cairn_core::whole::deserialize(d)
}

/// A body that must be a JSON object (serde would also take an array for a struct).
fn object_body<T: serde::de::DeserializeOwned>(
    body: serde_json::Map<String, serde_json::Value>,
) -> Result<T, ApiError> {
    serde_json::from_value(serde_json::Value::Object(body))
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn expected_param(query: &QueryMap) -> Result<ExpectedVersion, ApiError> {
    // As the document's pattern says: 1 to 18 digits, or one of the three words.
    match query.str("expected_version") {
        None | Some("any") => Ok(ExpectedVersion::Any),
        Some("no_stream") => Ok(ExpectedVersion::NoStream),
        Some("exists") => Ok(ExpectedVersion::StreamExists),
        Some(n) if (1..=18).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()) => {
            n.parse().map(ExpectedVersion::Exact).map_err(|_| ApiError::bad_request("bad number"))
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "expected_version must be 1 to 18 digits, any, no_stream or exists; got {other:?}"
        ))),
    }
}

/// Soft-deletes or tombstones a stream.
///
/// A soft delete hides every event so far: the stream reads as not found, and its next
/// append (expected version `no_stream`, `0` or `any`) starts it again at the version after
/// the delete's marker. A tombstone (`tombstone=true`) deletes it for good: every later
/// append and read is `410 stream_tombstoned`. `$all` keeps the events until a scavenge.
#[utoipa::path(
    delete,
    path = "/streams/{aggregate_id}",
    tag = "store",
    params(("aggregate_id" = String, Path, description = "The stream"), DeleteParams),
    responses(
        (status = 200, description = "Deleted", body = DeleteResponse),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: the stream does not exist or is already soft-deleted", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`", body = ErrorBody),
        (status = 410, description = "`stream_tombstoned`: already deleted for good", body = ErrorBody),
    )
)]
pub async fn delete_stream(
    State(state): State<AppState>,
    AggregateIdPath(aggregate_id): AggregateIdPath,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    query: QueryMap,
) -> Result<Json<DeleteResponse>, ApiError> {
    let expected = expected_param(&query)?;
    let tombstone = match query.str("tombstone") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "tombstone must be true or false, got {other:?}"
            )));
        }
    };
    check_writer(&state, caller.as_ref(), &aggregate_id).await?;
    let outcome = state.store.delete_stream(&aggregate_id, expected, tombstone).await?;
    Ok(Json(DeleteResponse {
        aggregate_id,
        version: outcome.last_version,
        position: outcome.position,
        tombstoned: tombstone,
    }))
}

/// A stream's lifecycle: its metadata (retention, truncation), whether it is deleted, its
/// version and the first version a read returns. Answers for a deleted, tombstoned or
/// never-written stream too.
#[utoipa::path(
    get,
    path = "/streams/{aggregate_id}/metadata",
    tag = "store",
    params(("aggregate_id" = String, Path, description = "The stream")),
    responses(
        (status = 200, description = "The stream's lifecycle", body = StreamLifecycle),
        (status = 400, description = "`bad_request`: a malformed stream id", body = ErrorBody),
    )
)]
pub async fn get_metadata(
    State(state): State<AppState>,
    AggregateIdPath(aggregate_id): AggregateIdPath,
) -> Result<Json<StreamLifecycle>, ApiError> {
    Ok(Json(state.store.stream_lifecycle(&aggregate_id).await?))
}

/// Body of `PUT /streams/{aggregate_id}/metadata`: the whole metadata (a field left out is
/// unset).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataBody {
    /// Versions below it are hidden.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    #[serde(default, deserialize_with = "whole_opt")]
    truncate_before: Option<u64>,
    /// Only the last this many versions are visible.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    #[serde(default, deserialize_with = "whole_opt")]
    max_count: Option<u64>,
    /// Events older than this many seconds are hidden.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    #[serde(default, deserialize_with = "whole_opt")]
    max_age_s: Option<u64>,
    /// The metadata version this change expects (`meta_version` of the GET; 0 = never
    /// set); absent: no check.
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    #[serde(default, deserialize_with = "whole_opt")]
    expected_meta_version: Option<u64>,
}

/// Sets a stream's retention and truncation.
///
/// They hide events from stream reads and aggregate loads, computed at read time:
/// changing them back shows the events again until a scavenge.
#[utoipa::path(
    put,
    path = "/streams/{aggregate_id}/metadata",
    tag = "store",
    params(("aggregate_id" = String, Path, description = "The stream")),
    request_body = MetadataBody,
    responses(
        (status = 200, description = "Set", body = StreamLifecycle),
        (status = 400, description = "`bad_request`: a malformed body or a value of 0", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`: the metadata is at another version", body = ErrorBody),
        (status = 410, description = "`stream_tombstoned`", body = ErrorBody),
    )
)]
pub async fn put_metadata(
    State(state): State<AppState>,
    AggregateIdPath(aggregate_id): AggregateIdPath,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    JsonBody(body): JsonBody<serde_json::Map<String, serde_json::Value>>,
) -> Result<Json<StreamLifecycle>, ApiError> {
    let body: MetadataBody = object_body(body)?;
    check_writer(&state, caller.as_ref(), &aggregate_id).await?;
    let meta = StreamMeta {
        truncate_before: body.truncate_before,
        max_count: body.max_count,
        max_age_s: body.max_age_s,
    };
    state.store.set_stream_meta(&aggregate_id, body.expected_meta_version, meta).await?;
    Ok(Json(state.store.stream_lifecycle(&aggregate_id).await?))
}

/// Body of `POST /streams/{aggregate_id}/truncate`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TruncateBody {
    /// Versions below it are hidden (the stream's version does not change).
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    #[serde(deserialize_with = "whole")]
    before: u64,
}

/// Hides a stream's versions below `before` (its `truncate_before`, other metadata kept).
#[utoipa::path(
    post,
    path = "/streams/{aggregate_id}/truncate",
    tag = "store",
    params(("aggregate_id" = String, Path, description = "The stream")),
    request_body = TruncateBody,
    responses(
        (status = 200, description = "Truncated", body = StreamLifecycle),
        (status = 400, description = "`bad_request`: a malformed body or `before` of 0", body = ErrorBody),
        (status = 404, description = "`not_found`: the stream does not exist or is soft-deleted", body = ErrorBody),
        (status = 410, description = "`stream_tombstoned`", body = ErrorBody),
    )
)]
pub async fn truncate(
    State(state): State<AppState>,
    AggregateIdPath(aggregate_id): AggregateIdPath,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    JsonBody(body): JsonBody<serde_json::Map<String, serde_json::Value>>,
) -> Result<Json<StreamLifecycle>, ApiError> {
    let body: TruncateBody = object_body(body)?;
    if body.before == 0 || body.before > cairn_core::lifecycle::META_VALUE_MAX {
        return Err(ApiError::bad_request(format!(
            "before must be from 1 to {}",
            cairn_core::lifecycle::META_VALUE_MAX
        )));
    }
    check_writer(&state, caller.as_ref(), &aggregate_id).await?;
    state.store.truncate_stream(&aggregate_id, body.before).await?;
    Ok(Json(state.store.stream_lifecycle(&aggregate_id).await?))
}

/// Erases, for real, every event the lifecycle rules hide now: each becomes a
/// `$scavenged` event (data and metadata `{}`) at its place; its id, stream, version,
/// position and timestamp stay, so `$all` keeps every position and no reader skips one.
/// Projections rebuilt afterwards do not see the erased events. Safe to run again.
#[utoipa::path(
    post,
    path = "/admin/scavenge",
    tag = "admin",
    responses(
        (status = 200, description = "Done", body = ScavengeReport),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    )
)]
pub async fn scavenge(State(state): State<AppState>) -> Result<Json<ScavengeReport>, ApiError> {
    state.store.scavenge().await.map(Json).map_err(|e| {
        tracing::error!(error = %e, "scavenge failed");
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the scavenge stopped (what it erased stays erased; run it again to go on)",
        )
    })
}

/// What erasing a subject did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErasedSubject {
    /// The subject.
    subject: String,
    /// Always `true`: its personal fields read as erased from now on.
    erased: bool,
}

/// Erases a subject's personal data (crypto-shredding): deletes its key, so every field
/// its events' schemas mark personal reads as erased (`"[erased]"` for a string) on every
/// read path — stream reads, `$all`, subscriptions, exports, aggregates, projections
/// (rebuilt or fed from then on), the relay's later messages — and in every copy of the
/// log, backups included. Processes sharing the store stop opening them within 5 s.
/// Cannot be undone.
#[utoipa::path(
    delete,
    path = "/admin/subjects/{subject}",
    tag = "admin",
    params(("subject" = String, Path, description = "The subject (by default the aggregate id its events belong to)")),
    responses(
        (status = 200, description = "Erased", body = ErasedSubject),
        (status = 404, description = "`not_found`: no key for this subject (never had personal data, or already erased)", body = ErrorBody),
    )
)]
pub async fn erase_subject(
    State(state): State<AppState>,
    axum::extract::Path(subject): axum::extract::Path<String>,
) -> Result<Json<ErasedSubject>, ApiError> {
    if subject.is_empty() || subject.len() > 256 {
        return Err(ApiError::bad_request("a subject has 1 to 256 bytes"));
    }
    // The aggregate named by the subject (the default subject) keeps its state in a
    // snapshot and in memory: both go, and the next load folds the erased events.
    state.repository.forget(&subject).await?;
    if state.vault.erase(&subject).await? {
        tracing::warn!(subject = %subject, "subject erased: its key is deleted");
        Ok(Json(ErasedSubject { subject, erased: true }))
    } else {
        Err(ApiError::not_found(format!("no key for subject {subject:?}")))
    }
}
