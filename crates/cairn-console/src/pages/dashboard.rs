//! `/ui/`: rates, head, each consumer's lag, dead letters, process-manager instances by
//! status and the store's health; refreshed every two seconds.

use askama::Template;
use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::{Params, respond};
use crate::render::{Page, View};
use crate::session::Viewer;
use crate::{Shared, svg};

/// How often the dashboard refreshes, in milliseconds.
pub const REFRESH_MS: u32 = 2000;

struct ManagerRow {
    name: String,
    counts: Vec<(String, u64)>,
}

#[derive(Template)]
#[template(path = "pages/dashboard.html")]
struct Dashboard {
    head: u64,
    events_now: String,
    commands_now: String,
    dlq: u64,
    health: String,
    healthy: bool,
    readiness: String,
    rates_svg: String,
    lag_svg: String,
    managers: Vec<ManagerRow>,
}

/// `GET /ui/`.
pub async fn page(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    params: Params,
) -> Response {
    let state = &console.state;
    let head = *state.store.head().borrow();
    let rows = cairn_server::consumer_rows(state).await;
    let lags: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                r.get("lag").and_then(Value::as_u64).unwrap_or_default(),
            )
        })
        .collect();
    let dlq = rows.iter().filter_map(|r| r.get("dlq_depth").and_then(Value::as_u64)).sum();
    let managers = super::process_managers::status_counts(&console)
        .await
        .into_iter()
        .map(|(name, counts)| ManagerRow { name, counts })
        .collect();
    let (health, healthy) = match state.store.check_health().await {
        Ok(()) => ("ok".to_owned(), true),
        Err(e) => (format!("unreachable: {e}"), false),
    };
    let readiness = state.consumers.readiness();
    let series = console.rates.series(Some((head, cairn_server::metrics::commands_done())));
    let last = series.last().copied();
    let body = Dashboard {
        head,
        events_now: format!("{:.1}", last.map_or(0.0, |r| r.events)),
        commands_now: format!("{:.1}", last.map_or(0.0, |r| r.commands)),
        dlq,
        health,
        healthy: healthy && readiness.is_ready(),
        readiness: readiness.message(),
        rates_svg: svg::rates(&series),
        lag_svg: svg::lag(&lags),
        managers,
    };
    respond(&viewer, Page::Dashboard, "Dashboard", &body, &View::of(&params).live(REFRESH_MS))
}
