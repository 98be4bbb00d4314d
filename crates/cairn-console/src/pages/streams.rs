//! `/ui/streams`: search the stream catalog by id, prefix or aggregate type; a stream's
//! events, paged, with their correlation and causation as links.

use std::fmt::Write as _;

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use cairn_core::readmodel::ListQuery;
use cairn_server::catalog::{STREAMS_TABLE, StreamEntry};
use serde_json::Value;

use super::{EventView, Params, blocking, failed, number, respond, text};
use crate::render::{self, Page, View};
use crate::session::Viewer;
use crate::{Shared, api};

/// Streams listed per search page.
pub const SEARCH_PAGE: usize = 50;
/// Events shown per stream page.
pub const EVENTS_PAGE: u64 = 20;

struct Found {
    id: String,
    href: String,
    aggregate_type: String,
    event_count: u64,
    latest_version: u64,
    updated_at: String,
}

impl Found {
    fn of(e: StreamEntry) -> Self {
        Self {
            href: format!("/ui/streams/{}", render::encode(&e.aggregate_id)),
            id: e.aggregate_id,
            aggregate_type: e.aggregate_type,
            event_count: e.event_count,
            latest_version: e.latest_version,
            updated_at: e.updated_at,
        }
    }
}

#[derive(Template)]
#[template(path = "pages/streams.html")]
struct Search {
    q: String,
    selected: String,
    types: Vec<String>,
    searched: bool,
    results: Vec<Found>,
    next: Option<String>,
}

/// `GET /ui/streams?q=&type=&after=`.
pub async fn search(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    params: Params,
) -> Response {
    let q = text(&params, "q").map(str::to_owned);
    let ty = text(&params, "type").map(str::to_owned);
    let after = text(&params, "after").map(str::to_owned);
    let mut types: Vec<String> = console.state.aggregates.keys().map(|t| (*t).to_owned()).collect();
    if let Some(t) = ty.as_ref().filter(|t| !types.contains(t)) {
        types.push(t.clone());
    }
    let mut results = Vec::new();
    // The exact id first, from the store itself: the catalog follows the log a moment
    // behind, and the stream just written is the one an operator looks for.
    if let (Some(id), None) = (&q, &after)
        && let Ok(Some(state)) = console.state.store.stream_state(id).await
        && ty.as_ref().is_none_or(|t| *t == state.aggregate_type)
    {
        let entry = blocking(&console.state.readmodels, {
            let id = id.clone();
            move |rm| rm.get(STREAMS_TABLE, &id)
        })
        .await
        .ok()
        .flatten()
        .and_then(|json| serde_json::from_str::<StreamEntry>(&json).ok());
        results.push(Found::of(entry.unwrap_or(StreamEntry {
            aggregate_id: id.clone(),
            aggregate_type: state.aggregate_type,
            event_count: state.version,
            latest_version: state.version,
            first_position: 0,
            last_position: 0,
            updated_at: String::new(),
            on_board: None,
        })));
    }
    let query = ListQuery {
        table: STREAMS_TABLE.to_owned(),
        filters: ty.iter().map(|t| ("aggregate_type".to_owned(), t.clone())).collect(),
        // Keys sort bytewise (SQLite; PostgreSQL with the C collation): a prefix's keys
        // follow the prefix itself.
        after: after.clone().or_else(|| q.clone()),
        limit: SEARCH_PAGE + 1,
    };
    let page = match blocking(&console.state.readmodels, move |rm| rm.list(&query)).await {
        Ok(page) => page,
        Err(e) => {
            return render::error_for(&viewer, Page::Streams, StatusCode::SERVICE_UNAVAILABLE, &e);
        }
    };
    let in_prefix = |key: &str| q.as_ref().is_none_or(|q| key.starts_with(q.as_str()));
    // More follow only when the row after this page is still in the prefix.
    let full = page.get(SEARCH_PAGE).is_some_and(|(key, _)| in_prefix(key));
    let mut last = None;
    for (key, json) in page.into_iter().take(SEARCH_PAGE) {
        if !in_prefix(&key) {
            break;
        }
        last = Some(key.clone());
        if results.iter().any(|r| r.id == key) {
            continue;
        }
        if let Ok(entry) = serde_json::from_str::<StreamEntry>(&json) {
            results.push(Found::of(entry));
        }
    }
    let next = last.filter(|_| full).map(|last| {
        let mut href = format!("/ui/streams?after={}", render::encode(&last));
        if let Some(q) = &q {
            let _ = write!(href, "&q={}", render::encode(q));
        }
        if let Some(t) = &ty {
            let _ = write!(href, "&type={}", render::encode(t));
        }
        href
    });
    let body = Search {
        searched: q.is_some() || ty.is_some() || after.is_some(),
        q: q.unwrap_or_default(),
        selected: ty.unwrap_or_default(),
        types,
        results,
        next,
    };
    respond(&viewer, Page::Streams, "Streams", &body, &View::of(&params))
}

#[derive(Template)]
#[template(path = "pages/stream.html")]
struct Stream {
    id: String,
    aggregate_type: String,
    events: Vec<EventView>,
    travel: Option<String>,
    prev: Option<String>,
    next: Option<String>,
}

/// `GET /ui/streams/{id}?from=`.
pub async fn stream(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    params: Params,
) -> Response {
    let from = number(&params, "from").unwrap_or(1).max(1);
    let path = format!("/streams/{}?from_version={from}&limit={EVENTS_PAGE}", render::encode(&id));
    let answer = api::get(&console, &viewer, &path).await;
    if !answer.ok() {
        return failed(&viewer, Page::Streams, &answer);
    }
    let events: Vec<EventView> = answer
        .body
        .get("events")
        .and_then(Value::as_array)
        .map(|events| events.iter().map(EventView::of).collect())
        .unwrap_or_default();
    let aggregate_type = events.first().map(|e| e.aggregate_type.clone()).unwrap_or_default();
    let base = format!("/ui/streams/{}", render::encode(&id));
    let next =
        answer.body.get("next_version").and_then(Value::as_u64).map(|v| format!("{base}?from={v}"));
    let prev =
        (from > 1).then(|| format!("{base}?from={}", from.saturating_sub(EVENTS_PAGE).max(1)));
    let travel = console
        .state
        .aggregate(&aggregate_type)
        .map(|_| format!("/ui/time-travel/{}", render::encode(&id)));
    let body = Stream { id, aggregate_type, events, travel, prev, next };
    respond(&viewer, Page::Streams, "Stream", &body, &View::of(&params))
}
