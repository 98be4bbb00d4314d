//! `/ui/process-managers`: each manager's instances by status; an instance's state and
//! history — the events it handled (from the console's index) and, under each, the
//! events the commands it issued for that event caused.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use cairn_core::readmodel::ListQuery;
use cairn_cqrs::process::Instances;

use super::{Params, blocking, pretty, respond, text};
use crate::Shared;
use crate::index::{HANDLED_TABLE, Handled, Link, instance_field};
use crate::render::{self, Page, View};
use crate::session::{Viewer, admin_only};

/// Instances listed per page.
pub const INSTANCES_PAGE: usize = 50;
/// Most handled events shown in an instance's history.
pub const HISTORY_MAX: usize = 200;

struct Manager {
    name: String,
    href: String,
    counts: Vec<(String, u64, String)>,
}

#[derive(Template)]
#[template(path = "pages/process_managers.html")]
struct List {
    managers: Vec<Manager>,
}

/// Each process manager's instances by status: its declared statuses first (zeros
/// included), then any other status its counts hold.
pub async fn status_counts(console: &Shared) -> Vec<(String, Vec<(String, u64)>)> {
    let mut out = Vec::new();
    for (handle, instances) in console.state.consumers.process_managers() {
        let name = handle.name().to_owned();
        let key = name.clone();
        let counts = blocking(&console.state.readmodels, move |rm| {
            cairn_cqrs::instance_counts::read(rm, &key)
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
        let declared = instances.statuses();
        let mut shown: Vec<(String, u64)> = declared
            .iter()
            .map(|s| ((*s).to_owned(), counts.get(*s).copied().unwrap_or(0)))
            .collect();
        shown.extend(
            counts
                .iter()
                .filter(|(s, _)| !declared.contains(&s.as_str()))
                .map(|(s, n)| (s.clone(), *n)),
        );
        out.push((name, shown));
    }
    out
}

/// The process manager `name`, or the page saying there is none.
fn manager_or_404<'a>(
    console: &'a Shared,
    viewer: &Viewer,
    name: &str,
) -> Result<(&'a str, Instances), Box<Response>> {
    manager(console, name).ok_or_else(|| {
        Box::new(render::error_for(
            viewer,
            Page::ProcessManagers,
            StatusCode::NOT_FOUND,
            &format!("no process manager {name:?}"),
        ))
    })
}

fn manager<'a>(console: &'a Shared, name: &str) -> Option<(&'a str, Instances)> {
    console
        .state
        .consumers
        .process_managers()
        .find(|(h, _)| h.name() == name)
        .map(|(h, i)| (h.name(), *i))
}

/// `GET /ui/process-managers`.
pub async fn list(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    params: Params,
) -> Response {
    if let Some(refused) = admin_only(&viewer, Page::ProcessManagers) {
        return refused;
    }
    let mut managers = Vec::new();
    for (name, counts) in status_counts(&console).await {
        let href = format!("/ui/process-managers/{}", render::encode(&name));
        let counts = counts
            .into_iter()
            .map(|(s, n)| {
                let link = format!("{href}?status={}", render::encode(&s));
                (s, n, link)
            })
            .collect();
        managers.push(Manager { name, href, counts });
    }
    respond(
        &viewer,
        Page::ProcessManagers,
        "Process managers",
        &List { managers },
        &View::of(&params),
    )
}

struct Instance {
    key: String,
    href: String,
    status: String,
    state: String,
}

#[derive(Template)]
#[template(path = "pages/instances.html")]
struct InstanceList {
    name: String,
    status: String,
    statuses: Vec<String>,
    instances: Vec<Instance>,
    next: Option<String>,
}

/// `GET /ui/process-managers/{name}?status=&after=`.
pub async fn instances(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    params: Params,
) -> Response {
    if let Some(refused) = admin_only(&viewer, Page::ProcessManagers) {
        return refused;
    }
    let (name, instances) = match manager_or_404(&console, &viewer, &name) {
        Ok(found) => found,
        Err(page) => return *page,
    };
    let status = text(&params, "status").map(str::to_owned);
    let query = ListQuery {
        table: instances.table_name().to_owned(),
        filters: status
            .iter()
            .filter(|_| !instances.statuses().is_empty())
            .map(|s| ("status".to_owned(), s.clone()))
            .collect(),
        after: text(&params, "after").map(str::to_owned),
        limit: INSTANCES_PAGE + 1,
    };
    let rows = match blocking(&console.state.readmodels, move |rm| rm.list(&query)).await {
        Ok(rows) => rows,
        Err(e) => {
            return render::error_for(
                &viewer,
                Page::ProcessManagers,
                StatusCode::SERVICE_UNAVAILABLE,
                &e,
            );
        }
    };
    let full = rows.len() > INSTANCES_PAGE;
    let base = format!("/ui/process-managers/{}", render::encode(name));
    let instances_shown: Vec<Instance> = rows
        .into_iter()
        .take(INSTANCES_PAGE)
        .map(|(key, json)| {
            let doc: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            Instance {
                href: format!("{base}/instances/{}", render::encode(&key)),
                status: doc
                    .get("status")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                state: doc.to_string().chars().take(160).collect(),
                key,
            }
        })
        .collect();
    let next = instances_shown.last().filter(|_| full).map(|last| {
        let mut href = format!("{base}?after={}", render::encode(&last.key));
        if let Some(s) = &status {
            let _ = write!(href, "&status={}", render::encode(s));
        }
        href
    });
    let body = InstanceList {
        name: name.to_owned(),
        status: status.unwrap_or_default(),
        statuses: instances.statuses().iter().map(|s| (*s).to_owned()).collect(),
        instances: instances_shown,
        next,
    };
    respond(&viewer, Page::ProcessManagers, "Instances", &body, &View::of(&params))
}

struct Step {
    handled: Handled,
    stream_href: String,
    caused: Vec<(Link, String)>,
}

#[derive(Template)]
#[template(path = "pages/instance.html")]
struct InstancePage {
    name: String,
    key: String,
    list_href: String,
    state: String,
    steps: Vec<Step>,
}

/// `GET /ui/process-managers/{name}/instances/{key}`.
pub async fn instance(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path((name, key)): Path<(String, String)>,
    params: Params,
) -> Response {
    if let Some(refused) = admin_only(&viewer, Page::ProcessManagers) {
        return refused;
    }
    let (name, instances) = match manager_or_404(&console, &viewer, &name) {
        Ok(found) => found,
        Err(page) => return *page,
    };
    let (table, k) = (instances.table_name(), key.clone());
    let field = instance_field(name, &key);
    let loaded = blocking(&console.state.readmodels, move |rm| {
        let state = rm.get(table, &k)?;
        let handled = rm.list(&ListQuery {
            table: HANDLED_TABLE.to_owned(),
            filters: vec![("instance".to_owned(), field)],
            after: None,
            limit: HISTORY_MAX,
        })?;
        Ok((state, handled))
    })
    .await;
    let (state, handled) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            return render::error_for(
                &viewer,
                Page::ProcessManagers,
                StatusCode::SERVICE_UNAVAILABLE,
                &e,
            );
        }
    };
    let handled: Vec<Handled> =
        handled.into_iter().filter_map(|(_, j)| serde_json::from_str(&j).ok()).collect();
    if state.is_none() && handled.is_empty() {
        return render::error_for(
            &viewer,
            Page::ProcessManagers,
            StatusCode::NOT_FOUND,
            &format!("{name} has no instance {key:?}"),
        );
    }
    // What the handled events caused: events of their correlations whose cause is one of them.
    let ids: HashSet<&str> = handled.iter().map(|h| h.event_id.as_str()).collect();
    // A command caused by an event without a correlation id correlates by that event's id
    // (`CommandMetadata::caused_by`).
    let correlations: BTreeSet<&str> = handled
        .iter()
        .map(|h| h.correlation_id.as_deref().unwrap_or(h.event_id.as_str()))
        .collect();
    let mut caused: Vec<Link> = Vec::new();
    for c in correlations {
        if let Ok(links) = super::chain::links(&console, c).await {
            caused.extend(
                links
                    .into_iter()
                    .filter(|l| l.causation_id.as_deref().is_some_and(|k| ids.contains(k))),
            );
        }
    }
    let steps = handled
        .into_iter()
        .map(|h| {
            let mine = caused
                .iter()
                .filter(|l| l.causation_id.as_deref() == Some(h.event_id.as_str()))
                .map(|l| {
                    (
                        l.clone(),
                        format!(
                            "/ui/streams/{}?from={}",
                            render::encode(&l.aggregate_id),
                            l.version
                        ),
                    )
                })
                .collect();
            Step {
                stream_href: format!(
                    "/ui/streams/{}?from={}",
                    render::encode(&h.aggregate_id),
                    h.version
                ),
                handled: h,
                caused: mine,
            }
        })
        .collect();
    let state = state
        .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
        .map_or_else(|| "(no saved state)".to_owned(), |v| pretty(&v));
    let body = InstancePage {
        list_href: format!("/ui/process-managers/{}", render::encode(name)),
        name: name.to_owned(),
        key,
        state,
        steps,
    };
    respond(&viewer, Page::ProcessManagers, "Instance", &body, &View::of(&params))
}
