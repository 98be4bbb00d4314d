//! `/ui/tail`: the newest events of `$all`, filtered by event and aggregate type, and
//! with JavaScript the live tail (the API's own subscription, `/all/subscribe`), pausable.

use std::fmt::Write as _;

use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::{EventView, Params, failed, number, respond, text};
use crate::render::{self, Page, View};
use crate::session::Viewer;
use crate::{Shared, api};

/// Events shown when the page loads.
pub const SHOWN: usize = 50;
/// How far back the page looks for them (positions).
pub const LOOK_BACK: u64 = 1000;

#[derive(Template)]
#[template(path = "pages/tail.html")]
struct Tail {
    event_type: String,
    aggregate_type: String,
    from: u64,
    events: Vec<EventView>,
}

/// The filter part of a `$all` query.
fn filters(event_type: Option<&str>, aggregate_type: Option<&str>) -> String {
    let mut q = String::new();
    if let Some(t) = event_type {
        let _ = write!(q, "&event_type={}", render::encode(t));
    }
    if let Some(t) = aggregate_type {
        let _ = write!(q, "&aggregate_type={}", render::encode(t));
    }
    q
}

/// `GET /ui/tail?event_type=&aggregate_type=`.
pub async fn page(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    params: Params,
) -> Response {
    let (event_type, aggregate_type) =
        (text(&params, "event_type"), text(&params, "aggregate_type"));
    let head = *console.state.store.head().borrow();
    let path = format!(
        "/all?from_position={}&limit={LOOK_BACK}{}",
        head.saturating_sub(LOOK_BACK),
        filters(event_type, aggregate_type)
    );
    let answer = api::get(&console, &viewer, &path).await;
    if !answer.ok() {
        return failed(&viewer, Page::Tail, &answer);
    }
    // A filtered read may answer events past the head read above: the live stream starts
    // after the last position this page shows.
    let from = answer.body.get("next_position").and_then(Value::as_u64).unwrap_or(0).max(head);
    let mut events: Vec<EventView> = answer
        .body
        .get("events")
        .and_then(Value::as_array)
        .map(|events| events.iter().rev().take(SHOWN).map(EventView::of).collect())
        .unwrap_or_default();
    events.truncate(SHOWN);
    let body = Tail {
        event_type: event_type.unwrap_or_default().to_owned(),
        aggregate_type: aggregate_type.unwrap_or_default().to_owned(),
        from,
        events,
    };
    respond(&viewer, Page::Tail, "$all tail", &body, &View::of(&params))
}

/// `GET /ui/tail/events?from=&event_type=&aggregate_type=`: the API's subscription,
/// as the session's caller (Server-Sent Events).
pub async fn events(
    State(console): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    headers: axum::http::HeaderMap,
    params: Params,
) -> Response {
    // A reconnecting `EventSource` repeats its URL and says where it got to: resume there,
    // not from where the page first opened the stream.
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let from = resumed
        .or_else(|| number(&params, "from"))
        .unwrap_or_else(|| *console.state.store.head().borrow());
    let path = format!(
        "/all/subscribe?from_position={from}{}",
        filters(text(&params, "event_type"), text(&params, "aggregate_type"))
    );
    let response = api::stream(&console, &viewer, &path).await;
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, axum::body::Body::from_stream(unnamed(body.into_data_stream())))
}

/// The API's event stream with the event types' `event:` lines dropped: every event
/// arrives as an unnamed message (a page's `EventSource` cannot listen to every event
/// type by name). The stream's own events (`$error`) keep their names.
fn unnamed<S>(body: S) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>>
where
    S: futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send + 'static,
{
    use futures_util::StreamExt as _;
    body.scan(Vec::<u8>::new(), |pending, chunk| {
        let out = chunk.map(|bytes| {
            pending.extend_from_slice(&bytes);
            let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
                return Bytes::new();
            };
            let complete: Vec<u8> = pending.drain(..=end).collect();
            let kept: Vec<&[u8]> = complete
                .split_inclusive(|b| *b == b'\n')
                .filter(|line| !line.starts_with(b"event:") || line.starts_with(b"event: $"))
                .collect();
            Bytes::from(kept.concat())
        });
        std::future::ready(Some(out))
    })
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn event_names_are_dropped_across_chunk_boundaries() {
        let chunks = [
            "id: 1\nevent: Order",
            "Placed\ndata: {\"a\":1}\n\n",
            ": keep-alive\n\nevent: $error\ndata: {}\n\n",
        ];
        let body = futures_util::stream::iter(chunks.map(|c| Ok(Bytes::from(c))));
        let out: Vec<u8> =
            unnamed(body).map(|b| b.unwrap().to_vec()).collect::<Vec<_>>().await.concat();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id: 1\ndata: {\"a\":1}\n\n: keep-alive\n\nevent: $error\ndata: {}\n\n"
        );
    }
}
