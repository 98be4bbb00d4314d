//! `/ui/dead-letters`: each parked event with its error; retry and discard (through the
//! API, so the process running its consumer does it).

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::{EventView, Params, failed, respond};
use crate::render::{self, Page, View};
use crate::session::{Viewer, admin_only};
use crate::{Shared, api};

/// Dead letters shown on one page (each with its event).
pub const PAGE_SIZE: usize = 50;

struct Letter {
    id: String,
    projection: String,
    position: u64,
    error: String,
    attempts: u64,
    last_failed_at: String,
    event: Option<EventView>,
    aggregate_id: String,
    stream_href: String,
    event_type: String,
}

#[derive(Template)]
#[template(path = "pages/dead_letters.html")]
struct DeadLetters {
    letters: Vec<Letter>,
    csrf: String,
    /// The page is full: more letters follow (retry or discard these to see them).
    more: bool,
}

/// `GET /ui/dead-letters`.
pub async fn page(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    params: Params,
) -> Response {
    if let Some(refused) = admin_only(&viewer, Page::DeadLetters) {
        return refused;
    }
    let path = format!("/admin/dlq?limit={PAGE_SIZE}");
    let answer = api::get(&console, &viewer, &path).await;
    if !answer.ok() {
        return failed(&viewer, Page::DeadLetters, &answer);
    }
    let rows = answer.body.as_array().cloned().unwrap_or_default();
    let mut letters = Vec::with_capacity(rows.len());
    for r in &rows {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or_default();
        let position = n("position");
        // The parked event itself, as the store API reads it.
        let read = api::get(
            &console,
            &viewer,
            &format!("/all?from_position={}&limit=1", position.saturating_sub(1)),
        )
        .await;
        let event = read
            .body
            .get("events")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
            .filter(|e| e.get("position").and_then(Value::as_u64) == Some(position))
            .map(EventView::of);
        let id = r
            .get("id")
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default();
        let aggregate_id = s("aggregate_id");
        letters.push(Letter {
            id,
            projection: s("projection"),
            position,
            error: s("error"),
            attempts: n("attempts"),
            last_failed_at: s("last_failed_at"),
            event,
            stream_href: format!("/ui/streams/{}", render::encode(&aggregate_id)),
            aggregate_id,
            event_type: s("event_type"),
        });
    }
    let more = rows.len() == PAGE_SIZE;
    let body = DeadLetters { letters, csrf: viewer.csrf.clone(), more };
    respond(&viewer, Page::DeadLetters, "Dead letters", &body, &View::of(&params))
}

/// `POST /ui/dead-letters/{id}/{retry|discard}`.
pub async fn act(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let method = match action.as_str() {
        "retry" => Method::POST,
        "discard" => Method::DELETE,
        _ => {
            return render::error_for(
                &viewer,
                Page::DeadLetters,
                StatusCode::NOT_FOUND,
                "no such action",
            );
        }
    };
    let path = match action.as_str() {
        "retry" => format!("/admin/dlq/{}/retry", render::encode(&id)),
        _ => format!("/admin/dlq/{}", render::encode(&id)),
    };
    let answer = api::call(&console, &viewer, method, &path, None).await;
    let notice = if answer.ok() {
        if action == "retry" {
            let outcome = answer.body.get("outcome").and_then(Value::as_str).unwrap_or("done");
            format!("dead letter {id}: retried ({outcome})")
        } else {
            format!("dead letter {id}: discarded")
        }
    } else {
        format!("dead letter {id}: {action} refused: {}", answer.message())
    };
    render::back("/ui/dead-letters", &notice)
}
