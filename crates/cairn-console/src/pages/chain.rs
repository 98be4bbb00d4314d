//! `/ui/correlations/{id}`: a correlation chain — every event one request caused, across
//! aggregates and process managers, each under the event that caused it.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use cairn_core::readmodel::ListQuery;

use super::{Params, blocking, respond};
use crate::Shared;
use crate::index::{LINKS_TABLE, Link};
use crate::render::{self, Page, View, escape};
use crate::session::Viewer;

/// Most events of one chain shown.
pub const CHAIN_MAX: usize = 1000;

/// Every indexed event of correlation `id`, in log order (at most [`CHAIN_MAX`]).
pub async fn links(console: &Shared, id: &str) -> Result<Vec<Link>, String> {
    let query = ListQuery {
        table: LINKS_TABLE.to_owned(),
        filters: vec![("correlation_id".to_owned(), id.to_owned())],
        after: None,
        limit: CHAIN_MAX,
    };
    let rows = blocking(&console.state.readmodels, move |rm| rm.list(&query)).await?;
    Ok(rows.into_iter().filter_map(|(_, json)| serde_json::from_str(&json).ok()).collect())
}

/// The chain as nested lists: each event under its cause (events whose cause is not in
/// the chain — the command — are its roots).
pub fn tree(links: &[Link]) -> String {
    let ids: HashSet<&str> = links.iter().map(|l| l.event_id.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&Link>> = BTreeMap::new();
    let mut roots = Vec::new();
    for link in links {
        match link.causation_id.as_deref().filter(|c| ids.contains(c) && *c != link.event_id) {
            Some(cause) => children.entry(cause).or_default().push(link),
            None => roots.push(link),
        }
    }
    let mut html = String::from("<ol id=\"chain\">");
    let mut seen = HashSet::new();
    for root in roots {
        item(root, &children, &mut seen, &mut html);
    }
    // Events of a malformed chain (caused by their own descendant) have no root: shown
    // at the top, once each.
    for link in links {
        item(link, &children, &mut seen, &mut html);
    }
    html.push_str("</ol>");
    html
}

fn item<'a>(
    link: &'a Link,
    children: &BTreeMap<&str, Vec<&'a Link>>,
    seen: &mut HashSet<&'a str>,
    html: &mut String,
) {
    // A malformed chain (an event caused by its own descendant) must not loop.
    if !seen.insert(&link.event_id) {
        return;
    }
    let _ = write!(
        html,
        "<li class=\"chain-event\" id=\"event-{id}\"><a class=\"stream-link\" href=\"/ui/streams/{href}?from={version}\">{stream}</a> \
         <span class=\"event-version\">v{version}</span> <span class=\"event-type\">{ty}</span> \
         <span class=\"small\">{aggregate_type} · position {position}</span>",
        id = escape(&link.event_id),
        href = render::encode(&link.aggregate_id),
        stream = escape(&link.aggregate_id),
        version = link.version,
        ty = escape(&link.event_type),
        aggregate_type = escape(&link.aggregate_type),
        position = link.position,
    );
    if let Some(caused) = children.get(link.event_id.as_str())
        && caused.iter().any(|c| !seen.contains(c.event_id.as_str()))
    {
        html.push_str("<ol class=\"caused\">");
        for child in caused {
            item(child, children, seen, html);
        }
        html.push_str("</ol>");
    }
    html.push_str("</li>");
}

#[derive(Template)]
#[template(path = "pages/chain.html")]
struct Chain {
    id: String,
    count: usize,
    streams: usize,
    tree: String,
    capped: bool,
}

/// `GET /ui/correlations/{id}`.
pub async fn page(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    params: Params,
) -> Response {
    let links = match links(&console, &id).await {
        Ok(links) => links,
        Err(e) => {
            return render::error_for(&viewer, Page::Streams, StatusCode::SERVICE_UNAVAILABLE, &e);
        }
    };
    if links.is_empty() {
        return render::error_for(
            &viewer,
            Page::Streams,
            StatusCode::NOT_FOUND,
            &format!(
                "no event carries correlation id {id:?} (or the index has not reached it yet)"
            ),
        );
    }
    let streams = links.iter().map(|l| l.aggregate_id.as_str()).collect::<HashSet<_>>().len();
    let body = Chain {
        count: links.len(),
        streams,
        tree: tree(&links),
        capped: links.len() == CHAIN_MAX,
        id,
    };
    respond(&viewer, Page::Streams, "Correlation chain", &body, &View::of(&params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(id: &str, cause: Option<&str>, stream: &str) -> Link {
        Link {
            position: 1,
            event_id: id.to_owned(),
            aggregate_id: stream.to_owned(),
            aggregate_type: "T".to_owned(),
            event_type: "E".to_owned(),
            version: 1,
            correlation_id: "c".to_owned(),
            causation_id: cause.map(str::to_owned),
        }
    }

    #[test]
    fn events_nest_under_their_cause_and_cycles_end() {
        let links = [
            link("a", Some("cmd"), "order-1"),
            link("b", Some("a"), "stock-1"),
            link("c", Some("b"), "order-1"),
            link("x", Some("y"), "s"),
            link("y", Some("x"), "s"),
        ];
        let html = tree(&links);
        assert!(html.contains("id=\"event-a\""));
        let a = html.find("event-a").unwrap();
        let b = html.find("event-b").unwrap();
        let c = html.find("event-c").unwrap();
        assert!(a < b && b < c);
        // a, b, and x (whose y was not shown yet); y's x is not shown again.
        assert_eq!(html.matches("class=\"caused\"").count(), 3);
        // A cycle has no root: its events are shown once each, and nothing loops.
        assert_eq!(html.matches("id=\"event-x\"").count(), 1);
        assert_eq!(html.matches("id=\"event-y\"").count(), 1);
    }

    #[test]
    fn names_are_escaped() {
        let html = tree(&[link("<i>", None, "<b>")]);
        assert!(!html.contains("<b>"));
        assert!(html.contains("&lt;b&gt;"));
    }
}
