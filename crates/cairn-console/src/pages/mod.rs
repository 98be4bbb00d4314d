//! The console's pages, one module per page.

pub mod chain;
pub mod dashboard;
pub mod dead_letters;
pub mod process_managers;
pub mod projections;
pub mod schemas;
pub mod streams;
pub mod tail;
pub mod travel;

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::Response;
use cairn_core::readmodel::{ReadModelError, ReadModelStore};
use serde_json::Value;

use crate::render::{self, Page, View};
use crate::session::Viewer;

/// A page's query parameters.
pub type Params = Query<HashMap<String, String>>;

/// Renders `body` as the page `current`.
pub fn respond(
    viewer: &Viewer,
    current: Page,
    title: &str,
    body: &impl Template,
    view: &View,
) -> Response {
    match render::template(body) {
        Ok(html) => render::page(viewer, current, title, &html, view),
        Err(response) => *response,
    }
}

/// JSON for people: indented.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// A read-model call off the async threads.
pub async fn blocking<T: Send + 'static>(
    readmodels: &Arc<dyn ReadModelStore>,
    f: impl FnOnce(&dyn ReadModelStore) -> Result<T, ReadModelError> + Send + 'static,
) -> Result<T, String> {
    let rm = Arc::clone(readmodels);
    tokio::task::spawn_blocking(move || f(rm.as_ref()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// A non-negative integer parameter.
pub fn number(params: &HashMap<String, String>, name: &str) -> Option<u64> {
    params.get(name).and_then(|v| v.trim().parse().ok())
}

/// A non-empty text parameter.
pub fn text<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// An event as the pages show it.
pub struct EventView {
    pub event_id: String,
    pub aggregate_id: String,
    pub aggregate_type: String,
    pub stream_href: String,
    pub event_type: String,
    pub version: u64,
    pub position: u64,
    pub timestamp: String,
    pub data: String,
    pub metadata: String,
    pub correlation: Option<(String, String)>,
    pub causation: Option<(String, String)>,
}

impl EventView {
    /// From an event as the API answers it (contract §1).
    pub fn of(e: &Value) -> Self {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let n = |k: &str| e.get(k).and_then(Value::as_u64).unwrap_or_default();
        let meta = e.get("metadata").cloned().unwrap_or(Value::Null);
        let correlation =
            meta.get("correlation_id").and_then(Value::as_str).filter(|c| !c.is_empty());
        let causation = meta.get("causation_id").and_then(Value::as_str).filter(|c| !c.is_empty());
        let aggregate_id = s("aggregate_id");
        Self {
            event_id: s("event_id"),
            stream_href: format!("/ui/streams/{}", render::encode(&aggregate_id)),
            aggregate_id,
            aggregate_type: s("aggregate_type"),
            event_type: s("event_type"),
            version: n("version"),
            position: n("position"),
            timestamp: s("timestamp"),
            data: pretty(e.get("data").unwrap_or(&Value::Null)),
            metadata: pretty(&meta),
            correlation: correlation
                .map(|c| (c.to_owned(), format!("/ui/correlations/{}", render::encode(c)))),
            // The cause is another event of the same chain (or the command that opened it).
            causation: causation.zip(correlation).map(|(k, c)| {
                (
                    k.to_owned(),
                    format!("/ui/correlations/{}#event-{}", render::encode(c), render::encode(k)),
                )
            }),
        }
    }
}

/// The answer for a failed API call shown as a page.
pub fn failed(viewer: &Viewer, page: Page, answer: &crate::api::Answer) -> Response {
    let status = if answer.status.is_success() { StatusCode::BAD_GATEWAY } else { answer.status };
    render::error_for(viewer, page, status, &answer.message())
}
