//! Operator endpoints (contract §5, §6): projections and process-manager instances.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::readmodel::DeadLetterCursor;
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::consumer::{ConsumerHandle, ConsumerStatus, ControlError, LeaderInfo};
use serde::Serialize;

use crate::AppState;
use crate::consumers::{ConsumerKind, Instances};
use crate::error::ApiError;
use crate::extract::QueryMap;
use crate::leaders::{LeaderRecord, LeaderRegistry};
use crate::routes::forward::{Forwarding, path_segment};
use crate::routes::openapi::{self, ErrorBody};

/// The answer to `POST /admin/projections/{name}/rebuild`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RebuildStarted {
    /// The projection.
    name: String,
    /// `rebuilding`.
    status: &'static str,
}

/// The answer to `POST /admin/process-managers/{name}/state`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StateImported {
    /// The process manager.
    name: String,
    /// Its checkpoint now.
    checkpoint: u64,
    /// Instances saved.
    saved: u64,
}

/// The answer to `PUT /admin/schemas/{event_type}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SchemaRegistered {
    /// The event type.
    event_type: String,
    /// The version now current.
    version: u32,
}

/// One row of `GET /admin/projections`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProjectionInfo {
    /// The projection.
    name: String,
    /// The last `$all` position it has scanned (handled, ignored or parked).
    position: u64,
    /// The last position visible in `$all`.
    head_position: u64,
    /// `head_position - position`.
    lag: u64,
    /// Where it is in its life.
    status: cairn_cqrs::consumer::ConsumerStatus,
    /// Dead letters waiting.
    dlq_depth: u64,
    /// While rebuilding: how far the shadow tables are, and how fast they fill.
    rebuild: Option<cairn_cqrs::consumer::RebuildProgress>,
    /// Rebuilds this server process has swapped in since it started: a client that
    /// started one waits for this count to grow (the status alone cannot say "done").
    rebuilds_completed: u64,
    /// Rebuilds this server process has given up since it started (nothing swapped in).
    rebuilds_abandoned: u64,
    /// What follows `$all` here: `projection`, `process_manager` (paused and resumed like
    /// a projection, never rebuilt) or `relay` (the NATS outbox).
    kind: ConsumerKind,
    /// Whether this server process runs it (the others sharing its database follow its
    /// checkpoint), since when, its fence (the epoch of this process's latest term as its
    /// leader: 0 = never led it), and where its leader is reached.
    leader: ConsumerLeader,
}

/// The `leader` of a row of `GET /admin/projections`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConsumerLeader {
    /// Whether this process runs the consumer (the others sharing its database follow).
    leading: bool,
    /// When this process last became its leader (RFC 3339); `null` while it does not lead.
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    since: Option<Timestamp>,
    /// The epoch of this process's latest leadership term of the consumer (0 = never led
    /// it): the store counts terms across every process sharing the consumer and refuses a
    /// write made under an earlier term's fence.
    fence: u64,
    /// The advertised base URL (`cairn serve --advertise-url`) of the process that leads
    /// it, this one or another, as that process last published it; `null` when unknown
    /// (no leader published one yet, the leader has no advertised URL, or the partitions
    /// of a partitioned projection are led by different processes).
    #[schema(required = true)]
    url: Option<String>,
}

impl ConsumerLeader {
    fn new(info: LeaderInfo, url: Option<String>) -> Self {
        Self { leading: info.leading, since: info.since, fence: info.fence, url }
    }
}

/// What the leader registry says, for the rows of one answer.
struct Known {
    /// This process's advertised URL.
    own: Option<String>,
    /// Each consumer's published row.
    rows: BTreeMap<String, LeaderRecord>,
}

impl Known {
    /// Only this process's URL (for rows of consumers it leads).
    fn own(state: &AppState) -> Self {
        Self { own: state.leaders.advertise_url().map(str::to_owned), rows: BTreeMap::new() }
    }

    /// Every published row, read now.
    async fn load(state: &AppState) -> Self {
        Self { rows: LeaderRegistry::all(&state.readmodels).await, ..Self::own(state) }
    }

    /// The row another process published for `consumer` (one naming this process, which
    /// no longer leads it, is stale).
    fn other(&self, consumer: &str) -> Option<&LeaderRecord> {
        self.rows.get(consumer).filter(|r| r.url.is_none() || r.url != self.own)
    }
}

fn info(c: &ConsumerHandle, kind: ConsumerKind, known: &Known) -> ProjectionInfo {
    let (position, head_position) = (c.position(), c.head_position());
    // The counts are read after the progress: a rebuild shown as over is already counted.
    let (status, rebuild) = (c.status(), c.rebuild_progress());
    let leadership = c.leadership();
    let (status, url) = if leadership.leading {
        (status, known.own.clone())
    } else {
        let record = known.other(c.name());
        // The consumer's status is its leader's (paused, rebuilding there); what this
        // process says of its own following (starting, stalled, failed) stays.
        let status = match (status, record.and_then(LeaderRecord::consumer_status)) {
            (
                ConsumerStatus::Running | ConsumerStatus::Paused | ConsumerStatus::Rebuilding,
                Some(theirs),
            ) => theirs,
            (ours, _) => ours,
        };
        (status, record.and_then(|r| r.url.clone()))
    };
    ProjectionInfo {
        name: c.name().to_owned(),
        position,
        head_position,
        lag: head_position.saturating_sub(position),
        status,
        dlq_depth: c.dlq_depth(),
        rebuild,
        rebuilds_completed: c.rebuilds_completed(),
        rebuilds_abandoned: c.rebuilds_abandoned(),
        kind,
        leader: ConsumerLeader::new(leadership, url),
    }
}

/// Lists the projections with their positions, lag, status and dead-letter depth, then
/// the process managers and the relays in the same shape (told apart by `kind`).
#[utoipa::path(
    get,
    path = "/admin/projections",
    tag = "operations",
    responses((status = 200, description = "Every projection, process manager and relay", body = Vec<ProjectionInfo>))
)]
pub async fn projections(State(state): State<AppState>) -> Json<Vec<ProjectionInfo>> {
    let known = Known::load(&state).await;
    let mut rows: Vec<ProjectionInfo> =
        state.consumers.all().map(|(kind, c)| info(c, kind, &known)).collect();
    // Publishers (the NATS relay) follow `$all` like projections do: same row shape.
    let head_position = *state.store.head().borrow();
    for o in state.consumers.outboxes() {
        let position = o.position();
        rows.push(ProjectionInfo {
            name: o.name(),
            position,
            head_position,
            lag: head_position.saturating_sub(position),
            status: cairn_cqrs::consumer::ConsumerStatus::Running,
            dlq_depth: o.dlq_depth(),
            rebuild: None,
            rebuilds_completed: 0,
            rebuilds_abandoned: 0,
            kind: ConsumerKind::Relay,
            // A relay says only whether it publishes here; its terms are not counted, and
            // it publishes no row in the leader registry (no admin action steers it).
            leader: ConsumerLeader::new(
                LeaderInfo { leading: o.leading(), since: None, fence: 0 },
                if o.leading() { known.own.clone() } else { None },
            ),
        });
    }
    Json(rows)
}

/// Lists the instances of a process manager (for `order-fulfillment`: one per order).
#[utoipa::path(
    get,
    path = "/admin/process-managers/{name}",
    tag = "operations",
    params(
        ("name" = String, Path, description = "The process manager (`order-fulfillment`)"),
        ("status" = Option<String>, Query, description = "Only instances in this status (for `order-fulfillment`: `reserving`, `compensating`, `ready_to_ship`, `shipped`, `cancelled`)"),
        ("limit" = Option<u64>, Query, description = "At most this many (default 100, at most 1000)"),
        ("after" = Option<String>, Query, description = "Only instances with a key (for `order-fulfillment`: an order id) after this"),
    ),
    responses(
        (status = 200, description = "The instances", body = Vec<openapi::ProcessInstance>),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: no such process manager", body = ErrorBody),
        (status = 503, description = "`read_model_unavailable`", body = ErrorBody),
    )
)]
pub async fn process_manager_instances(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let (_, instances) = process_manager(&state, &name)?;
    let filters =
        query.str("status").map(|s| vec![("status".to_owned(), s.to_owned())]).unwrap_or_default();
    let (docs, _) =
        crate::query::list_documents(&state.readmodels, instances.table_name(), filters, &query)
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
const STATS_TOP_MAX: u64 = crate::catalog::TOP_KEPT as u64;
/// Longest wait for the stream catalog to catch up with the log before stream
/// statistics are answered anyway.
const STATS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Most dead letters in one `/admin/dlq` page (and the default page).
const DLQ_PAGE_MAX: usize = 1000;

/// Lists the largest streams.
#[utoipa::path(
    get,
    path = "/admin/streams/stats",
    tag = "operations",
    params(("top" = Option<u64>, Query, description = "How many streams (default 20, at most 1000)")),
    responses(
        (status = 200, description = "The largest streams, largest first", body = Vec<cairn_core::StreamStats>),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    )
)]
pub async fn stream_stats(
    State(state): State<AppState>,
    query: QueryMap,
) -> Result<Json<Vec<cairn_core::StreamStats>>, ApiError> {
    let top = query.u64("top")?.unwrap_or(STATS_TOP_DEFAULT).min(STATS_TOP_MAX) as usize;
    // Read-your-writes: the catalog is a projection, so wait (briefly) until it has seen
    // every event committed before this request.
    let head = *state.store.head().borrow();
    // Only a catalog that is moving is waited for: a paused or stalled one answers at once.
    let moving = state
        .consumers
        .projection(crate::catalog::CATALOG)
        .is_some_and(|c| matches!(c.status(), ConsumerStatus::Running | ConsumerStatus::Starting));
    if moving
        && let Some(view) = state.projection(crate::catalog::CATALOG)
        && view.wait_for(head, STATS_WAIT).await.is_err()
    {
        tracing::warn!(head, "stream statistics answered from a catalog behind the log");
    }
    let rm = Arc::clone(&state.readmodels);
    let board = tokio::task::spawn_blocking(move || {
        rm.get(crate::catalog::TOP_TABLE, crate::catalog::TOP_KEY)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ControlError::Storage(e.to_string()))?;
    let board: crate::catalog::Top = match board {
        Some(json) => serde_json::from_str(&json).map_err(|e| ApiError::internal(e.to_string()))?,
        None => crate::catalog::Top::default(),
    };
    Ok(Json(
        board
            .streams
            .into_iter()
            .take(top)
            .map(|(count, aggregate_id, aggregate_type)| cairn_core::StreamStats {
                aggregate_id,
                aggregate_type,
                event_count: count,
                latest_version: count,
            })
            .collect(),
    ))
}

/// Prometheus metrics: appends, commands, projections and process managers.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain; version=0.0.4", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let head = *state.store.head().borrow();
    metrics::gauge!("cairn_store_head_position").set(head as f64);
    for (name, value) in state.store.gauges() {
        metrics::gauge!(name).set(value);
    }
    for c in state.consumers.projections() {
        let name = c.name().to_owned();
        metrics::gauge!("cairn_projection_position", "projection" => name.clone())
            .set(c.position() as f64);
        metrics::gauge!("cairn_projection_lag", "projection" => name.clone())
            .set(c.head_position().saturating_sub(c.position()) as f64);
        metrics::gauge!("cairn_projection_dlq_depth", "projection" => name.clone())
            .set(c.dlq_depth() as f64);
        for status in ["running", "rebuilding", "paused", "stalled", "failed", "starting"] {
            let on = serde_json::to_value(c.status())
                .ok()
                .and_then(|v| v.as_str().map(|s| s == status))
                .unwrap_or(false);
            metrics::gauge!("cairn_projection_status", "projection" => name.clone(), "status" => status)
                .set(if on { 1.0 } else { 0.0 });
        }
    }
    for (_, c) in state.consumers.all() {
        leader_gauges(c);
    }
    for o in state.consumers.outboxes() {
        let (name, position) = (o.name(), o.position());
        metrics::gauge!("cairn_relay_position", "relay" => name.clone()).set(position as f64);
        metrics::gauge!("cairn_relay_lag", "relay" => name.clone())
            .set(head.saturating_sub(position) as f64);
        metrics::gauge!("cairn_relay_published_total", "relay" => name.clone())
            .set(o.published() as f64);
        metrics::gauge!("cairn_relay_dlq_depth", "relay" => name.clone()).set(o.dlq_depth() as f64);
        metrics::gauge!("cairn_relay_leading", "relay" => name).set(if o.leading() {
            1.0
        } else {
            0.0
        });
    }
    for (pm, instances) in state.consumers.process_managers() {
        process_manager_gauges(&state, pm, instances).await;
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::metrics::handle().render(),
    )
        .into_response()
}

/// Whether this process leads a projection (each partition) or process manager, since
/// when (Unix seconds; 0 while it does not) and its fence.
fn leader_gauges(c: &ConsumerHandle) {
    let (name, leader) = (c.name().to_owned(), c.leadership());
    metrics::gauge!("cairn_consumer_leader", "consumer" => name.clone()).set(if leader.leading {
        1.0
    } else {
        0.0
    });
    let since = leader.since.map_or(0.0, |t| t.as_micros() as f64 / 1e6);
    metrics::gauge!("cairn_consumer_leader_since_seconds", "consumer" => name.clone()).set(since);
    metrics::gauge!("cairn_consumer_fence", "consumer" => name).set(leader.fence as f64);
}

/// A process manager's gauges: position, lag, dead letters, and its instances by status
/// (from the counters kept with the instances: one document read per scrape).
async fn process_manager_gauges(state: &AppState, pm: &ConsumerHandle, instances: &Instances) {
    let name = pm.name().to_owned();
    metrics::gauge!("cairn_process_manager_position", "process_manager" => name.clone())
        .set(pm.position() as f64);
    metrics::gauge!("cairn_process_manager_lag", "process_manager" => name.clone())
        .set(pm.head_position().saturating_sub(pm.position()) as f64);
    metrics::gauge!("cairn_process_manager_dlq_depth", "process_manager" => name.clone())
        .set(pm.dlq_depth() as f64);
    if instances.statuses().is_empty() {
        return;
    }
    let (rm, manager, table) =
        (Arc::clone(&state.readmodels), name.clone(), instances.table_name().to_owned());
    let counts = tokio::task::spawn_blocking(move || {
        if let Some(counts) = cairn_cqrs::instance_counts::read(&*rm, &manager)? {
            return Ok(Some(counts));
        }
        // No counters yet: right when there is no instance at all (one row looked at);
        // otherwise (a store from before the counters) nothing is reported until the
        // next save counts the table, rather than zeros that would be wrong.
        let query =
            cairn_core::readmodel::ListQuery { table, filters: Vec::new(), after: None, limit: 1 };
        Ok::<_, cairn_core::readmodel::ReadModelError>(
            rm.list(&query)?.is_empty().then(cairn_cqrs::instance_counts::Counts::new),
        )
    })
    .await
    .ok()
    .and_then(Result::ok)
    .flatten();
    let Some(counts) = counts else { return };
    for &status in instances.statuses() {
        let count = counts.get(status).copied().unwrap_or(0);
        metrics::gauge!("cairn_process_manager_instances", "process_manager" => name.clone(), "status" => status)
            .set(count as f64);
    }
}

/// Lists dead letters of one consumer (projection or process manager) or of all, in
/// position order.
#[utoipa::path(
    get,
    path = "/admin/dlq",
    tag = "operations",
    params(
        ("projection" = Option<String>, Query, description = "Only this projection's or process manager's"),
        ("limit" = Option<u64>, Query, minimum = 1, description = "Most letters in the page (default and most: 1000)"),
        ("after" = Option<String>, Query, pattern = "^[0-9]{1,18}-[0-9]{1,18}-", description = "The cursor of the next page, from the previous page's `Link: <…>; rel=\"next\"` header (`<position>-<id>-<consumer>`)"),
    ),
    responses(
        (status = 200, description = "A page of dead letters in (consumer, position) order; when more follow, a `Link` header with `rel=\"next\"` gives the next page's URL", body = Vec<cairn_core::readmodel::DeadLetter>,
            headers(("Link" = String, description = "`</admin/dlq?…&after=…>; rel=\"next\"` when more letters follow"))),
        (status = 400, description = "`bad_request`: a malformed `limit` or `after`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such projection or process manager", body = ErrorBody),
        (status = 503, description = "`read_model_unavailable`", body = ErrorBody),
    )
)]
pub async fn dead_letters(
    State(state): State<AppState>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let consumer = match query.str("projection") {
        Some(name) => {
            let (_, consumer) = state.consumers.get(name).ok_or_else(|| {
                ApiError::not_found(format!("no projection or process manager named {name}"))
            })?;
            Some(consumer.name().to_owned())
        }
        None => None,
    };
    let limit = match query.u64("limit")? {
        Some(0) => return Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) => n.min(DLQ_PAGE_MAX as u64) as usize,
        None => DLQ_PAGE_MAX,
    };
    let after = query
        .raw("after")
        .map(|text| {
            DeadLetterCursor::decode(text).ok_or_else(|| {
                ApiError::bad_request(
                    "after must be the cursor of the previous page's Link: rel=\"next\"",
                )
            })
        })
        .transpose()?;
    let rm = Arc::clone(&state.readmodels);
    // One more than asked tells whether a next page exists.
    let mut letters = tokio::task::spawn_blocking(move || {
        rm.dead_letters_page(consumer.as_deref(), after.as_ref(), limit + 1)
    })
    .await
    .map_err(|e| ControlError::Storage(e.to_string()))?
    .map_err(|e| ControlError::Storage(e.to_string()))?;
    let more = letters.len() > limit;
    letters.truncate(limit);
    let mut response = Json(&letters).into_response();
    if more && let Some(last) = letters.last() {
        let mut next = form_urlencoded::Serializer::new(String::new());
        if let Some(name) = query.str("projection") {
            next.append_pair("projection", name);
        }
        next.append_pair("limit", &limit.to_string());
        next.append_pair("after", &DeadLetterCursor::after(last).encode());
        let link = format!("</admin/dlq?{}>; rel=\"next\"", next.finish());
        if let Ok(value) = header::HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

fn letter_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("dead letter ids are integers, got {raw:?}")))
}

async fn on_letter<F, Fut>(
    state: &AppState,
    forwarding: &Forwarding,
    id: i64,
    op: F,
) -> Result<Response, ApiError>
where
    F: Fn(cairn_cqrs::consumer::ConsumerHandle) -> Fut,
    Fut: std::future::Future<
            Output = Result<Option<cairn_cqrs::consumer::DeadLetterOutcome>, ControlError>,
        >,
{
    for (_, consumer) in state.consumers.all() {
        if !consumer.is_leader() {
            // Another process runs it (or this one has not taken it yet): only say so when
            // the letter is this consumer's.
            let letters = consumer.dead_letters().await?;
            if letters.iter().any(|l| l.id == id) {
                let refused = ControlError::NotLeader { consumer: consumer.name().to_owned() };
                return Ok(forwarding.to_leader(state, consumer.name(), refused.into()).await);
            }
            continue;
        }
        if let Some(outcome) = op(consumer.clone()).await? {
            return Ok(Json(outcome).into_response());
        }
    }
    Err(ApiError::not_found(format!("no dead letter {id}")))
}

/// Re-runs a dead letter and what is parked behind it.
#[utoipa::path(
    post,
    path = "/admin/dlq/{id}/retry",
    tag = "operations",
    params(("id" = i64, Path, description = "The dead letter")),
    responses(
        (status = 200, description = "Re-run", body = cairn_cqrs::consumer::DeadLetterOutcome),
        (status = 400, description = "`bad_request`: the id is not an integer", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dead letter", body = ErrorBody),
        (status = 409, description = "`not_leader`: another process runs its consumer and the request cannot be forwarded there (its URL is unknown, or the request carries `Cairn-Forwarded`); `leader` = its URL or `null`", body = ErrorBody),
        (status = 503, description = "`read_model_unavailable`, `consumer_busy` (the consumer held a batch for longer than 2 s; nothing was done), or `leader_unreachable` (forwarded to the process that runs its consumer, `leader`, which did not answer within 10 s)", body = ErrorBody),
    )
)]
pub async fn retry_dead_letter(
    State(state): State<AppState>,
    forwarding: Forwarding,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = letter_id(&id)?;
    on_letter(&state, &forwarding, id, |c| async move { c.retry_dead_letter(id).await }).await
}

/// Discards a dead letter; what was parked behind it flows again.
#[utoipa::path(
    delete,
    path = "/admin/dlq/{id}",
    tag = "operations",
    params(("id" = i64, Path, description = "The dead letter")),
    responses(
        (status = 200, description = "Discarded", body = cairn_cqrs::consumer::DeadLetterOutcome),
        (status = 400, description = "`bad_request`: the id is not an integer", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dead letter", body = ErrorBody),
        (status = 409, description = "`not_leader`: another process runs its consumer and the request cannot be forwarded there (its URL is unknown, or the request carries `Cairn-Forwarded`); `leader` = its URL or `null`", body = ErrorBody),
        (status = 503, description = "`read_model_unavailable`, `consumer_busy` (the consumer held a batch for longer than 2 s; nothing was done), or `leader_unreachable` (forwarded to the process that runs its consumer, `leader`, which did not answer within 10 s)", body = ErrorBody),
    )
)]
pub async fn discard_dead_letter(
    State(state): State<AppState>,
    forwarding: Forwarding,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = letter_id(&id)?;
    on_letter(&state, &forwarding, id, |c| async move { c.discard_dead_letter(id).await }).await
}

/// Rebuilds a projection from position 0.
///
/// The shadow tables fill while queries keep answering from the live ones, then are
/// swapped in atomically.
#[utoipa::path(
    post,
    path = "/admin/projections/{name}/rebuild",
    tag = "operations",
    params(("name" = String, Path, description = "The projection")),
    responses(
        (status = 202, description = "The rebuild started", body = RebuildStarted),
        (status = 404, description = "`not_found`: no such projection", body = ErrorBody),
        (status = 409, description = "`not_leader`: another process runs it and the request cannot be forwarded there (its URL is unknown, or the request carries `Cairn-Forwarded`); `leader` = its URL or `null`; or `rebuild_refused` with a `reason`: `rebuilding` (one is already running), `dead_letters` (they wait), `paused`, `stalled`, `failed`, or `partitioned` (it runs in partitions: rebuilt by a version or partition-count change at start)", body = ErrorBody),
        (status = 503, description = "`leader_unreachable`: forwarded to the process that runs it (`leader`), which did not answer within 10 s", body = ErrorBody),
    )
)]
pub async fn rebuild_projection(
    State(state): State<AppState>,
    forwarding: Forwarding,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let Some(projection) = state.consumers.projection(&name) else {
        if let Some(base) = partitioned(&state, &name) {
            return Err(ControlError::Partitioned { consumer: base.to_owned() }.into());
        }
        return Err(ApiError::not_found(format!("no projection named {name}")));
    };
    match projection.start_rebuild() {
        Ok(()) => {}
        Err(refused @ ControlError::NotLeader { .. }) => {
            return Ok(forwarding.to_leader(&state, projection.name(), refused.into()).await);
        }
        Err(refused) => return Err(refused.into()),
    }
    state.leaders.changed();
    Ok((StatusCode::ACCEPTED, Json(RebuildStarted { name, status: "rebuilding" })).into_response())
}

/// Pauses a projection or a process manager between batches (until resumed or
/// restarted; `cairn serve --pause-process-managers` starts the process managers paused).
#[utoipa::path(
    post,
    path = "/admin/projections/{name}/pause",
    tag = "operations",
    params(("name" = String, Path, description = "The projection (a partitioned one: every partition at once), one partition of it (`name#p0of4`), or a process manager")),
    responses(
        (status = 200, description = "Paused: it stops at the end of the batch in hand; its row", body = ProjectionInfo),
        (status = 404, description = "`not_found`: no such projection", body = ErrorBody),
        (status = 409, description = "`not_leader`: another process runs it and the request cannot be forwarded there (its URL is unknown, or the request carries `Cairn-Forwarded`); `leader` = its URL or `null`", body = ErrorBody),
        (status = 503, description = "`leader_unreachable`: forwarded to the process that runs it (`leader`), which did not answer within 10 s", body = ErrorBody),
    )
)]
pub async fn pause_projection(
    State(state): State<AppState>,
    forwarding: Forwarding,
    Path(name): Path<String>,
) -> Response {
    steer(&state, &forwarding, &name, Steer::Pause).await
}

/// Resumes a paused projection or process manager from its checkpoint.
#[utoipa::path(
    post,
    path = "/admin/projections/{name}/resume",
    tag = "operations",
    params(("name" = String, Path, description = "The projection (a partitioned one: every partition at once), one partition of it (`name#p0of4`), or a process manager")),
    responses(
        (status = 200, description = "Resumed; its row", body = ProjectionInfo),
        (status = 404, description = "`not_found`: no such projection", body = ErrorBody),
        (status = 409, description = "`not_leader`: another process runs it and the request cannot be forwarded there (its URL is unknown, or the request carries `Cairn-Forwarded`); `leader` = its URL or `null`", body = ErrorBody),
        (status = 503, description = "`leader_unreachable`: forwarded to the process that runs it (`leader`), which did not answer within 10 s", body = ErrorBody),
    )
)]
pub async fn resume_projection(
    State(state): State<AppState>,
    forwarding: Forwarding,
    Path(name): Path<String>,
) -> Response {
    steer(&state, &forwarding, &name, Steer::Resume).await
}

/// The partitioned projection `name` names: itself or one of its partitions.
fn partitioned<'a>(state: &AppState, name: &'a str) -> Option<&'a str> {
    let base = name.split_once("#p").map_or(name, |(base, _)| base);
    let partitions = state.consumers.partitions(base)?;
    (base == name || partitions.iter().any(|p| p.name() == name)).then_some(base)
}

/// One row for a whole partitioned projection: the partitions summed up (its position is
/// the slowest partition's, its status the most pressing one).
fn partitioned_info(name: &str, partitions: &[ConsumerHandle], known: &Known) -> ProjectionInfo {
    use cairn_cqrs::consumer::ConsumerStatus as S;
    let rows: Vec<ProjectionInfo> =
        partitions.iter().map(|p| info(p, ConsumerKind::Projection, known)).collect();
    let position = rows.iter().map(|r| r.position).min().unwrap_or(0);
    let head_position = rows.iter().map(|r| r.head_position).max().unwrap_or(0);
    let rank = |s: S| match s {
        S::Failed => 0,
        S::Stalled => 1,
        S::Starting => 2,
        S::Paused => 3,
        S::Rebuilding => 4,
        S::Running => 5,
    };
    ProjectionInfo {
        name: name.to_owned(),
        position,
        head_position,
        lag: head_position.saturating_sub(position),
        status: rows.iter().map(|r| r.status).min_by_key(|s| rank(*s)).unwrap_or(S::Running),
        dlq_depth: rows.iter().map(|r| r.dlq_depth).sum(),
        rebuild: None,
        rebuilds_completed: 0,
        rebuilds_abandoned: 0,
        kind: ConsumerKind::Projection,
        leader: partitions_leader(&rows),
    }
}

/// Leadership of a partitioned projection as a whole: led here when every partition is
/// (since the last of them was taken); its fence is the highest partition's; its URL the
/// one process that leads every partition, if one does.
fn partitions_leader(rows: &[ProjectionInfo]) -> ConsumerLeader {
    let leading = !rows.is_empty() && rows.iter().all(|r| r.leader.leading);
    let first_url = rows.first().and_then(|r| r.leader.url.clone());
    let url = first_url.filter(|u| rows.iter().all(|r| r.leader.url.as_ref() == Some(u)));
    ConsumerLeader {
        leading,
        since: if leading { rows.iter().filter_map(|r| r.leader.since).max() } else { None },
        fence: rows.iter().map(|r| r.leader.fence).max().unwrap_or(0),
        url,
    }
}

/// An operator's pause or resume.
#[derive(Clone, Copy)]
enum Steer {
    Pause,
    Resume,
}

impl Steer {
    fn apply(self, consumer: &ConsumerHandle) -> Result<(), ControlError> {
        match self {
            Self::Pause => consumer.pause(),
            Self::Resume => consumer.resume(),
        }
    }

    /// Its last path segment.
    fn verb(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
        }
    }
}

/// Applies `action` to the consumer `name` and answers with its row; a consumer another
/// process leads gets the request forwarded to that process. The name of a partitioned
/// projection steers every partition (each one another process leads through that
/// process) and answers with one summed-up row.
async fn steer(state: &AppState, forwarding: &Forwarding, name: &str, action: Steer) -> Response {
    if let Some(partitions) = state.consumers.partitions(name) {
        return steer_partitions(state, forwarding, name, partitions, action).await;
    }
    let Some((kind, consumer)) = state.consumers.get(name) else {
        return ApiError::not_found(format!("no projection or process manager named {name}"))
            .into_response();
    };
    match action.apply(consumer) {
        Ok(()) => {
            state.leaders.changed();
            Json(info(consumer, kind, &Known::own(state))).into_response()
        }
        Err(refused @ ControlError::NotLeader { .. }) => {
            forwarding.to_leader(state, consumer.name(), refused.into()).await
        }
        Err(refused) => ApiError::from(refused).into_response(),
    }
}

/// [`steer`] for every partition of a partitioned projection: the ones led here at once,
/// each other one by `POST /admin/projections/<partition>/<verb>` to its own leader.
async fn steer_partitions(
    state: &AppState,
    forwarding: &Forwarding,
    name: &str,
    partitions: &[ConsumerHandle],
    action: Steer,
) -> Response {
    let mut known = Known::own(state);
    // Every partition is tried: one another process leads does not keep the others.
    let mut errors = Vec::new();
    let mut failed_forward: Option<Response> = None;
    for partition in partitions {
        let refused = match action.apply(partition) {
            Ok(()) => {
                state.leaders.changed();
                continue;
            }
            Err(refused @ ControlError::NotLeader { .. }) if !forwarding.was_forwarded() => refused,
            Err(refused) => {
                errors.push(refused);
                continue;
            }
        };
        let path =
            format!("/admin/projections/{}/{}", path_segment(partition.name()), action.verb());
        match forwarding.send(state, partition.name(), Method::POST, &path, refused.into()).await {
            Ok(answer) if answer.status.is_success() => {
                // This process shows the partition as its leader just answered.
                let row: serde_json::Value =
                    serde_json::from_slice(&answer.body).unwrap_or_default();
                let status = row["status"].as_str().unwrap_or("running").to_owned();
                let record = LeaderRecord { url: Some(answer.url), since: None, status };
                known.rows.insert(partition.name().to_owned(), record);
            }
            Ok(answer) => {
                failed_forward.get_or_insert(answer.into_response());
            }
            Err(refused) => {
                failed_forward.get_or_insert(refused.into_response());
            }
        }
    }
    if let Some(refused) = ApiError::from_control_errors(errors) {
        return refused.into_response();
    }
    if let Some(failed) = failed_forward {
        return failed;
    }
    Json(partitioned_info(name, partitions, &known)).into_response()
}

/// The process manager `name` and where its instances live; 404 when there is none.
fn process_manager<'a>(
    state: &'a AppState,
    name: &str,
) -> Result<(&'a ConsumerHandle, &'a Instances), ApiError> {
    state.consumers.process_manager(name).ok_or_else(|| {
        ApiError::not_found(format!("no projection or process manager named {name}"))
    })
}

/// Most instances in one page of `GET /admin/process-managers/{name}/state`.
const STATE_PAGE_MAX: u64 = 1000;

/// One process-manager instance as exported and imported.
#[derive(Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct InstanceRow {
    /// The instance table.
    table: String,
    /// The instance's key (for order-fulfillment: the order id).
    key: String,
    /// Its state document.
    #[schema(value_type = Object)]
    state: Box<serde_json::value::RawValue>,
}

/// A page of a process manager's durable state.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProcessState {
    /// The process manager.
    name: String,
    /// Its stored checkpoint (read before the instances): every event up to this `$all`
    /// position has been handled, and the instances show it.
    checkpoint: u64,
    /// Instances, by key.
    instances: Vec<InstanceRow>,
    /// The `after` of the next page; `null` on the last.
    next: Option<String>,
}

fn unavailable(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "read_model_unavailable", e.to_string())
}

/// A process manager's durable state (checkpoint and instances), for `cairn export`.
#[utoipa::path(
    get,
    path = "/admin/process-managers/{name}/state",
    tag = "operations",
    params(
        ("name" = String, Path, description = "The process manager"),
        ("after" = Option<String>, Query, description = "Only instances with a key after this"),
        ("limit" = Option<u64>, Query, description = "At most this many (default and most 1000)"),
    ),
    responses(
        (status = 200, description = "Its checkpoint and a page of instances", body = ProcessState),
        (status = 404, description = "`not_found`: no such process manager", body = ErrorBody),
        (status = 503, description = "`read_model_unavailable`", body = ErrorBody),
    )
)]
pub async fn process_state(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: QueryMap,
) -> Result<Json<ProcessState>, ApiError> {
    let (pm, instances) = process_manager(&state, &name)?;
    let table = instances.table_name();
    let limit = query.u64("limit")?.unwrap_or(STATE_PAGE_MAX).clamp(1, STATE_PAGE_MAX) as usize;
    let list = cairn_core::readmodel::ListQuery {
        table: table.to_owned(),
        filters: Vec::new(),
        after: query.str("after").map(str::to_owned),
        limit,
    };
    let (rm, consumer) = (Arc::clone(&state.readmodels), pm.name().to_owned());
    // The checkpoint first: instances read later can only be newer, and a process manager
    // handles an event again safely (its commands are idempotent), never one it skipped.
    let (checkpoint, rows) = tokio::task::spawn_blocking(move || {
        Ok::<_, cairn_core::readmodel::ReadModelError>((rm.checkpoint(&consumer)?, rm.list(&list)?))
    })
    .await
    .map_err(|e| unavailable(&e))?
    .map_err(|e| unavailable(&e))?;
    let next = if rows.len() == limit { rows.last().map(|(k, _)| k.clone()) } else { None };
    let instances = rows
        .into_iter()
        .map(|(key, doc)| {
            let state =
                serde_json::value::RawValue::from_string(doc).map_err(|e| unavailable(&e))?;
            Ok(InstanceRow { table: table.to_owned(), key, state })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(ProcessState { name, checkpoint, instances, next }))
}

/// Body of `POST /admin/process-managers/{name}/state`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct ImportState {
    /// The checkpoint to set: the position, in this store, of the last event the
    /// instances have handled.
    #[serde(deserialize_with = "cairn_core::whole::deserialize")]
    checkpoint: u64,
    /// Instances to save (as they are).
    #[serde(default)]
    instances: Vec<InstanceRow>,
}

/// Saves imported instances of a paused process manager and sets its checkpoint, in one
/// transaction (`cairn import`): resumed, it goes on after `checkpoint` and issues no
/// command for the history before it.
#[utoipa::path(
    post,
    path = "/admin/process-managers/{name}/state",
    tag = "operations",
    params(("name" = String, Path, description = "The process manager")),
    request_body = ImportState,
    responses(
        (status = 200, description = "Saved", body = StateImported),
        (status = 400, description = "`bad_request`: a table not its own, a checkpoint past the head, or a malformed body", body = ErrorBody),
        (status = 404, description = "`not_found`: no such process manager", body = ErrorBody),
        (status = 409, description = "`not_paused` (pause it first), `not_leader` (another process runs it) or `checkpoint_ahead` (it has handled events past `checkpoint`)", body = ErrorBody),
        (status = 503, description = "`read_model_unavailable`, or `consumer_busy`: it is still finishing the batch in hand when it was paused; nothing was imported", body = ErrorBody),
    )
)]
pub async fn import_process_state(
    State(state): State<AppState>,
    Path(name): Path<String>,
    crate::extract::JsonBody(body): crate::extract::JsonBody<ImportState>,
) -> Result<Response, ApiError> {
    let (pm, instances) = process_manager(&state, &name)?;
    let table = instances.table_name();
    if let Some(other) = body.instances.iter().find(|i| i.table != table) {
        return Err(ApiError::bad_request(format!(
            "{name} keeps its instances in {table}, not {}",
            other.table
        )));
    }
    let head = *state.store.head().borrow();
    if body.checkpoint > head {
        return Err(ApiError::bad_request(format!(
            "checkpoint {} is past this store's head ({head}): import the events first",
            body.checkpoint
        )));
    }
    // Leading, paused, and no batch in hand: nothing runs until the import is in.
    let (_between, fence) = pm.hold_paused().await?;
    let (rm, consumer) = (Arc::clone(&state.readmodels), pm.name().to_owned());
    let current = {
        let (rm, consumer) = (Arc::clone(&rm), consumer.clone());
        tokio::task::spawn_blocking(move || rm.checkpoint(&consumer))
            .await
            .map_err(|e| unavailable(&e))?
            .map_err(|e| unavailable(&e))?
    };
    if current > body.checkpoint {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "checkpoint_ahead",
            format!(
                "{name} has handled events up to position {current}, past {}: its instances are newer than the imported ones",
                body.checkpoint
            ),
        )
        .with("checkpoint", current));
    }
    let (checkpoint, saved) = (body.checkpoint, body.instances.len());
    let spec = *instances;
    let instances = body.instances;
    tokio::task::spawn_blocking(move || {
        // Under the fence of the term that holds the manager paused: refused if this
        // process lost the manager meanwhile.
        rm.transact(&fence, &consumer, Some(checkpoint), &mut |txn| {
            for i in &instances {
                txn.put(&i.table, &i.key, i.state.get())?;
            }
            // The status counts of `/metrics` start again from what is there now.
            if !spec.statuses().is_empty() {
                cairn_cqrs::instance_counts::recount(txn, &consumer, &spec)?;
            }
            Ok(())
        })
    })
    .await
    .map_err(|e| unavailable(&e))?
    .map_err(|e| unavailable(&e))?;
    let saved = u64::try_from(saved).unwrap_or(u64::MAX);
    Ok(Json(StateImported { name, checkpoint, saved }).into_response())
}

/// Lists the current schema of every registered event type.
#[utoipa::path(
    get,
    path = "/admin/schemas",
    tag = "operations",
    responses((status = 200, description = "Every registered event type, by name", body = Vec<openapi::RegisteredSchema>))
)]
pub async fn schemas(State(state): State<AppState>) -> Json<Vec<serde_json::Value>> {
    Json(state.schemas.list())
}

/// Body of `PUT /admin/schemas/{event_type}`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct PutSchema {
    /// The next version (the current one + 1; 1 for a new type).
    #[serde(deserialize_with = "cairn_core::whole::deserialize")]
    version: u32,
    /// A JSON Schema of the events' `data`.
    #[schema(value_type = Object)]
    schema: serde_json::Value,
}

/// Registers the next version of an event type's JSON Schema.
///
/// Compatibility mode BACKWARD: every event valid under the previous version must stay
/// valid. Registering the current version again with the same schema is a no-op.
#[utoipa::path(
    put,
    path = "/admin/schemas/{event_type}",
    tag = "operations",
    params(("event_type" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,100}$", min_length = 1, max_length = 100, description = "The event type")),
    request_body = PutSchema,
    responses(
        (status = 200, description = "Registered (or already registered)", body = SchemaRegistered),
        (status = 400, description = "`bad_request`: not a valid JSON Schema, or a malformed body", body = ErrorBody),
        (status = 409, description = "`version_conflict` (not the next version) or `schema_incompatible` (with `reasons`: at most 20, each at most 300 characters)", body = ErrorBody),
        (status = 413, description = "`schema_too_large`: the schema is over 64 KiB as JSON", body = ErrorBody),
        (status = 422, description = "`too_many_schemas`: the type has 100 versions, or 1000 types have a schema", body = ErrorBody),
    )
)]
pub async fn put_schema(
    State(state): State<AppState>,
    Path(event_type): Path<String>,
    crate::extract::JsonBody(body): crate::extract::JsonBody<PutSchema>,
) -> Result<Response, ApiError> {
    cairn_core::id::validate_type_name("event_type", &event_type)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let size = body.schema.to_string().len();
    if size > crate::schemas::SCHEMA_BYTES_MAX {
        let max = crate::schemas::SCHEMA_BYTES_MAX;
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "schema_too_large",
            format!("the schema is {size} bytes as JSON; the most accepted is {max}"),
        )
        .with("max_bytes", max));
    }
    let unsatisfiable = crate::schema_first::check(&state, &event_type, &body.schema).await?;
    if !unsatisfiable.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "schema_incompatible",
            "the schema refuses events of this type already stored (or every event)",
        )
        .with("reasons", unsatisfiable));
    }
    let registry = Arc::clone(&state.schemas);
    let (event_type2, schema) = (event_type.clone(), body.schema);
    let version = body.version;
    let result =
        tokio::task::spawn_blocking(move || registry.register(&event_type2, version, schema))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
    match result {
        Ok(()) => Ok(Json(SchemaRegistered { event_type, version }).into_response()),
        Err(crate::schemas::RegisterError::Invalid(m)) => {
            Err(ApiError::bad_request(format!("not a valid JSON Schema: {m}")))
        }
        Err(
            e @ (crate::schemas::RegisterError::TooManyVersions { .. }
            | crate::schemas::RegisterError::TooManyTypes { .. }),
        ) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "too_many_schemas", e.to_string()))
        }
        Err(crate::schemas::RegisterError::Version { expected }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "version_conflict",
            format!("the next version of {event_type}'s schema is {expected}"),
        )
        .with("expected", expected)),
        Err(crate::schemas::RegisterError::Incompatible(reasons)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "schema_incompatible",
            "the new version is not BACKWARD compatible with the current one",
        )
        .with("reasons", reasons)),
        Err(crate::schemas::RegisterError::Storage(e)) => Err(e.into()),
    }
}
