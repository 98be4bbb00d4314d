//! Operator endpoints (contract §5, §6): projections and process-manager instances.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_cqrs::consumer::ConsumerHandle;
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::QueryMap;

/// One row of `GET /admin/projections`.
#[derive(Serialize)]
pub struct ProjectionInfo {
    name: String,
    position: u64,
    head_position: u64,
    lag: u64,
    status: cairn_cqrs::consumer::ConsumerStatus,
    dlq_depth: u64,
}

fn info(c: &ConsumerHandle) -> ProjectionInfo {
    let (position, head_position) = (c.position(), c.head_position());
    ProjectionInfo {
        name: c.name().to_owned(),
        position,
        head_position,
        lag: head_position.saturating_sub(position),
        status: c.status(),
        dlq_depth: 0,
    }
}

/// `GET /admin/projections`.
pub async fn projections(State(state): State<AppState>) -> Json<Vec<ProjectionInfo>> {
    Json(state.domain.projections.values().map(info).collect())
}

/// `GET /admin/process-managers/order-fulfillment?status=&limit=&after=`: its instances.
pub async fn fulfillment_instances(
    State(state): State<AppState>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let filters =
        query.str("status").map(|s| vec![("status".to_owned(), s.to_owned())]).unwrap_or_default();
    let (docs, _) = super::queries::list_documents(
        &state.domain.readmodels,
        cairn_orders::fulfillment::TABLE,
        filters,
        &query,
    )
    .await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!("[{}]", docs.join(",")),
    )
        .into_response())
}

/// Default and largest `top` of `GET /admin/streams/stats`.
const STATS_TOP_DEFAULT: u64 = 20;
const STATS_TOP_MAX: u64 = 1000;

/// `GET /admin/streams/stats?top=20`: the largest streams.
pub async fn stream_stats(
    State(state): State<AppState>,
    query: QueryMap,
) -> Result<Json<Vec<cairn_core::StreamStats>>, ApiError> {
    let top = query.u64("top")?.unwrap_or(STATS_TOP_DEFAULT).min(STATS_TOP_MAX) as usize;
    Ok(Json(state.store.stream_stats(top).await?))
}
