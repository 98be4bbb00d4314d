//! `/ui/time-travel/{id}`: a module's aggregate as it was at a version or a time (its
//! `state_json`, folded by the repository from the events up to there), a slider over
//! its versions, and the difference between two versions.

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::repository::Until;
use serde_json::Value;

use super::{Params, number, pretty, respond, text};
use crate::Shared;
use crate::diff::{Change, changes};
use crate::render::{self, Page, View};
use crate::session::Viewer;

#[derive(Template)]
#[template(path = "pages/travel_find.html")]
struct Find {
    id: String,
}

/// `GET /ui/time-travel?aggregate_id=`: which aggregate to look at.
pub async fn find(Extension(viewer): Extension<Viewer>, params: Params) -> Response {
    if let Some(id) = text(&params, "aggregate_id") {
        return Redirect::to(&format!("/ui/time-travel/{}", render::encode(id))).into_response();
    }
    respond(
        &viewer,
        Page::TimeTravel,
        "Time travel",
        &Find { id: String::new() },
        &View::of(&params),
    )
}

#[derive(Template)]
#[template(path = "pages/travel.html")]
struct Travel {
    id: String,
    action: String,
    stream_href: String,
    aggregate_type: String,
    latest: u64,
    version: u64,
    timestamp: String,
    at: String,
    state: String,
    compare: Option<u64>,
    changes: Vec<Change>,
}

/// `GET /ui/time-travel/{id}?version=&at=&compare=`.
pub async fn page(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    params: Params,
) -> Response {
    let refuse = |status: StatusCode, message: &str| {
        render::error_for(&viewer, Page::TimeTravel, status, message)
    };
    let stream = match console.state.store.stream_state(&id).await {
        Ok(Some(stream)) => stream,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, &format!("no stream {id:?}")),
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let Some(kind) = console.state.aggregate(&stream.aggregate_type).copied() else {
        return refuse(
            StatusCode::NOT_FOUND,
            &format!(
                "stream {id:?} is of aggregate type {:?}, which no module registers: \
                 only a module's aggregate has a state to show",
                stream.aggregate_type
            ),
        );
    };
    let at = text(&params, "at").map(str::to_owned);
    let until = match &at {
        Some(at) => match Timestamp::parse_rfc3339(at) {
            Ok(t) => Until::Time(t),
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    &format!("`at` is not an RFC 3339 time: {e}"),
                );
            }
        },
        None => {
            Until::Version(number(&params, "version").unwrap_or(stream.version).min(stream.version))
        }
    };
    let repository = &console.state.repository;
    let now = match kind.load_state(repository, &id, until).await {
        Ok(now) => now,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let parse = |raw: &Option<Box<serde_json::value::RawValue>>| {
        raw.as_ref()
            .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
            .unwrap_or(Value::Null)
    };
    let state = parse(&now.state);
    let compare = number(&params, "compare").map(|v| v.min(stream.version));
    let mut diff = Vec::new();
    if let Some(other) = compare {
        match kind.load_state(repository, &id, Until::Version(other)).await {
            Ok(then) => diff = changes(&parse(&then.state), &state),
            Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }
    let body = Travel {
        action: format!("/ui/time-travel/{}", render::encode(&id)),
        stream_href: format!("/ui/streams/{}", render::encode(&id)),
        id,
        aggregate_type: stream.aggregate_type,
        latest: stream.version,
        version: now.version,
        timestamp: now.timestamp.map(Timestamp::to_rfc3339).unwrap_or_default(),
        at: at.unwrap_or_default(),
        state: if state.is_null() {
            "(no state: no event up to here)".to_owned()
        } else {
            pretty(&state)
        },
        compare,
        changes: diff,
    };
    respond(&viewer, Page::TimeTravel, "Time travel", &body, &View::of(&params))
}
