//! `/ui/schemas`: each event type's schema versions, the difference between two, and a
//! compatibility check of a draft before it is registered.

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::{Params, number, pretty, respond};
use crate::Shared;
use crate::diff::{Change, changes};
use crate::render::{self, Page, View};
use crate::session::{Viewer, admin_only};

struct TypeRow {
    event_type: String,
    href: String,
    versions: String,
    current: u32,
}

#[derive(Template)]
#[template(path = "pages/schemas.html")]
struct List {
    types: Vec<TypeRow>,
}

/// `GET /ui/schemas`.
pub async fn list(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    params: Params,
) -> Response {
    if let Some(refused) = admin_only(&viewer, Page::Schemas) {
        return refused;
    }
    let types = console
        .state
        .schemas
        .list()
        .iter()
        .map(|s| {
            let event_type = s["event_type"].as_str().unwrap_or_default().to_owned();
            let versions = s["versions"]
                .as_array()
                .map(|v| v.iter().map(Value::to_string).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            TypeRow {
                href: format!("/ui/schemas/{}", render::encode(&event_type)),
                event_type,
                versions,
                current: s["version"].as_u64().unwrap_or_default() as u32,
            }
        })
        .collect();
    respond(&viewer, Page::Schemas, "Schemas", &List { types }, &View::of(&params))
}

struct Version {
    version: u32,
    schema: String,
}

#[derive(Template)]
#[template(path = "pages/schema.html")]
struct Detail {
    event_type: String,
    check_action: String,
    versions: Vec<Version>,
    a: u32,
    b: u32,
    changes: Vec<Change>,
    csrf: String,
    draft: String,
    checked: bool,
    reasons: Vec<String>,
}

fn detail(
    console: &Shared,
    viewer: &Viewer,
    event_type: String,
    params: &std::collections::HashMap<String, String>,
    check: Option<(String, Vec<String>)>,
) -> Response {
    let history = console.state.schemas.history(&event_type);
    if history.is_empty() {
        return render::error_for(
            viewer,
            Page::Schemas,
            StatusCode::NOT_FOUND,
            &format!("no schema for {event_type:?}"),
        );
    }
    let latest = history.last().map_or(1, |h| h.0);
    let pick = |name: &str, default: u32| {
        number(params, name)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| (1..=latest).contains(v))
            .unwrap_or(default)
    };
    let (a, b) = (pick("a", latest.saturating_sub(1).max(1)), pick("b", latest));
    let find = |v: u32| history.iter().find(|h| h.0 == v).map_or(Value::Null, |h| h.1.clone());
    let diff = changes(&find(a), &find(b));
    let (draft, reasons, checked) = match check {
        Some((draft, reasons)) => (draft, reasons, true),
        None => (history.last().map(|h| pretty(&h.1)).unwrap_or_default(), Vec::new(), false),
    };
    let body = Detail {
        check_action: format!("/ui/schemas/{}/check", render::encode(&event_type)),
        event_type,
        versions: history.iter().map(|(v, s)| Version { version: *v, schema: pretty(s) }).collect(),
        a,
        b,
        changes: diff,
        csrf: viewer.csrf.clone(),
        draft,
        checked,
        reasons,
    };
    respond(viewer, Page::Schemas, "Schema", &body, &View::of(params))
}

/// `GET /ui/schemas/{event_type}?a=&b=`.
fn detail_page(
    console: &Shared,
    viewer: &Viewer,
    event_type: String,
    params: &std::collections::HashMap<String, String>,
) -> Response {
    if let Some(refused) = admin_only(viewer, Page::Schemas) {
        return refused;
    }
    detail(console, viewer, event_type, params, None)
}

/// `GET /ui/schemas/{event_type}`.
pub async fn detail_route(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path(event_type): Path<String>,
    params: Params,
) -> Response {
    detail_page(&console, &viewer, event_type, &params)
}

/// The check form's fields.
#[derive(serde::Deserialize)]
pub struct Draft {
    draft: String,
}

/// `POST /ui/schemas/{event_type}/check`: would this draft be accepted as the next
/// version? Registers nothing.
pub async fn check(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path(event_type): Path<String>,
    axum::Form(form): axum::Form<Draft>,
) -> Response {
    if let Some(refused) = admin_only(&viewer, Page::Schemas) {
        return refused;
    }
    let reasons = match serde_json::from_str::<Value>(&form.draft) {
        Ok(draft) => console.state.schemas.check_draft(&event_type, &draft),
        Err(e) => vec![format!("the draft is not JSON: {e}")],
    };
    detail(
        &console,
        &viewer,
        event_type,
        &std::collections::HashMap::new(),
        Some((form.draft, reasons)),
    )
}
