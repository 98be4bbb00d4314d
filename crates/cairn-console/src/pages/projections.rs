//! `/ui/projections`: every consumer's status, leader, position and lag, a rebuild's
//! progress; an admin rebuilds, pauses and resumes (through the API, so a consumer led by
//! another process is steered there).

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::{Params, respond};
use crate::render::{self, Page, View};
use crate::session::Viewer;
use crate::{Shared, api};

/// How often the page refreshes while open, in milliseconds (a rebuild's progress).
pub const REFRESH_MS: u32 = 1000;

struct Row {
    name: String,
    kind: String,
    status: String,
    position: u64,
    head: u64,
    lag: u64,
    dlq: u64,
    leader: String,
    progress: String,
    rebuildable: bool,
    steerable: bool,
    paused: bool,
}

#[derive(Template)]
#[template(path = "pages/projections.html")]
struct Projections {
    rows: Vec<Row>,
    admin: bool,
    csrf: String,
}

fn row(r: &Value, admin: bool) -> Row {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or_default();
    let leader = r.get("leader").cloned().unwrap_or(Value::Null);
    let leading = leader.get("leading").and_then(Value::as_bool).unwrap_or(false);
    let url = leader.get("url").and_then(Value::as_str);
    // Other processes' addresses are for admins (`/metrics` does not give them readers).
    let leader = match (leading, url) {
        (true, _) => "this process".to_owned(),
        (false, Some(url)) if admin => url.to_owned(),
        (false, Some(_)) => "another process".to_owned(),
        (false, None) => "unknown".to_owned(),
    };
    let head = n("head_position");
    let progress = match r.get("rebuild").filter(|v| !v.is_null()) {
        Some(rebuild) => {
            let at = rebuild.get("position").and_then(Value::as_u64).unwrap_or_default();
            format!("{at} / {head}")
        }
        None => "—".to_owned(),
    };
    let kind = s("kind");
    let status = s("status");
    Row {
        name: s("name"),
        rebuildable: kind == "projection",
        steerable: kind == "projection" || kind == "process_manager",
        paused: status == "paused",
        kind,
        status,
        position: n("position"),
        head,
        lag: n("lag"),
        dlq: n("dlq_depth"),
        leader,
        progress,
    }
}

/// `GET /ui/projections`.
pub async fn page(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    params: Params,
) -> Response {
    let admin = viewer.is_admin();
    let rows =
        cairn_server::consumer_rows(&console.state).await.iter().map(|r| row(r, admin)).collect();
    let body = Projections { rows, admin: viewer.is_admin(), csrf: viewer.csrf.clone() };
    respond(&viewer, Page::Projections, "Projections", &body, &View::of(&params).live(REFRESH_MS))
}

/// `POST /ui/projections/{name}/{rebuild|pause|resume}`.
pub async fn act(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    if !matches!(action.as_str(), "rebuild" | "pause" | "resume") {
        return render::error_for(
            &viewer,
            Page::Projections,
            StatusCode::NOT_FOUND,
            "no such action",
        );
    }
    let path = format!("/admin/projections/{}/{action}", render::encode(&name));
    let answer = api::call(&console, &viewer, Method::POST, &path, None).await;
    let notice = if answer.ok() {
        match action.as_str() {
            "rebuild" => format!("{name}: rebuild started"),
            "pause" => format!("{name}: paused"),
            _ => format!("{name}: resumed"),
        }
    } else {
        format!("{name}: {action} refused: {}", answer.message())
    };
    render::back("/ui/projections", &notice)
}
