//! The page around every page: layout, navigation, notices, error pages, the static
//! files and the security headers.

use std::collections::HashMap;

use askama::Template;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::session::Viewer;

/// The content-security policy of every console response: scripts and styles only from
/// the console's own static files (no inline script or style, so injected markup cannot
/// run), no framing, forms only to the console.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("../static/console.css");
const SCRIPT: &str = include_str!("../static/console.js");

/// The console's pages, as the navigation names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Dashboard,
    Streams,
    Tail,
    TimeTravel,
    Projections,
    DeadLetters,
    ProcessManagers,
    Schemas,
}

impl Page {
    const ALL: [Page; 8] = [
        Page::Dashboard,
        Page::Streams,
        Page::Tail,
        Page::TimeTravel,
        Page::Projections,
        Page::DeadLetters,
        Page::ProcessManagers,
        Page::Schemas,
    ];

    fn id(self) -> &'static str {
        match self {
            Page::Dashboard => "dashboard",
            Page::Streams => "streams",
            Page::Tail => "tail",
            Page::TimeTravel => "time-travel",
            Page::Projections => "projections",
            Page::DeadLetters => "dead-letters",
            Page::ProcessManagers => "process-managers",
            Page::Schemas => "schemas",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Page::Dashboard => "Dashboard",
            Page::Streams => "Streams",
            Page::Tail => "$all tail",
            Page::TimeTravel => "Time travel",
            Page::Projections => "Projections",
            Page::DeadLetters => "Dead letters",
            Page::ProcessManagers => "Process managers",
            Page::Schemas => "Schemas",
        }
    }

    fn href(self) -> String {
        match self {
            Page::Dashboard => "/ui".to_owned(),
            other => format!("/ui/{}", other.id()),
        }
    }

    /// Pages showing what only admin routes give (dead letters hold events' data and
    /// errors; instances and schemas are admin routes in the API).
    fn admin_only(self) -> bool {
        matches!(self, Page::DeadLetters | Page::ProcessManagers | Page::Schemas)
    }
}

struct NavLink {
    id: &'static str,
    label: &'static str,
    href: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "layout.html")]
struct Layout<'a> {
    title: &'a str,
    csrf: &'a str,
    links: Vec<NavLink>,
    whoami: Option<String>,
    live: u32,
    notice: Option<&'a str>,
    body: &'a str,
}

#[derive(Template)]
#[template(path = "login.html")]
struct Login<'a> {
    nonce: &'a str,
    error: Option<&'a str>,
    required: bool,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorBody<'a> {
    message: &'a str,
}

/// What a page's query says about how to render it.
#[derive(Debug, Default)]
pub struct View {
    /// Only the inner HTML of `<main>` (the live refresh asks for it).
    pub fragment: bool,
    /// The outcome of the action that led here.
    pub notice: Option<String>,
    /// Refresh every this many milliseconds (0: never).
    pub live: u32,
}

impl View {
    /// From a page's query.
    pub fn of(query: &HashMap<String, String>) -> Self {
        Self {
            fragment: query.get("fragment").is_some_and(|v| v == "1"),
            notice: query
                .get("notice")
                .filter(|n| !n.is_empty())
                .map(|n| n.chars().take(300).collect()),
            live: 0,
        }
    }

    /// Refreshed every `ms` milliseconds.
    #[must_use]
    pub fn live(mut self, ms: u32) -> Self {
        self.live = ms;
        self
    }
}

/// Renders a template, or an error page saying it could not be.
pub fn template(t: &impl Template) -> Result<String, Box<Response>> {
    t.render().map_err(|e| Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())))
}

/// A whole page (or, for the live refresh, its `<main>`): `body` inside the layout.
pub fn page(viewer: &Viewer, current: Page, title: &str, body: &str, view: &View) -> Response {
    page_with_status(viewer, current, title, body, view, StatusCode::OK)
}

fn page_with_status(
    viewer: &Viewer,
    current: Page,
    title: &str,
    body: &str,
    view: &View,
    status: StatusCode,
) -> Response {
    if view.fragment {
        let notice = view.notice.as_deref().map_or_else(String::new, |n| {
            format!("<p id=\"notice\" role=\"status\">{}</p>", escape(n))
        });
        return (status, Html(format!("{notice}{body}"))).into_response();
    }
    let links = Page::ALL
        .into_iter()
        .filter(|p| viewer.is_admin() || !p.admin_only())
        .map(|p| NavLink { id: p.id(), label: p.label(), href: p.href(), current: p == current })
        .collect();
    let layout = Layout {
        title,
        csrf: &viewer.csrf,
        links,
        whoami: Some(format!("{} ({})", viewer.name, viewer.role)),
        live: view.live,
        notice: view.notice.as_deref(),
        body,
    };
    match layout.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// An error page inside the layout (the viewer keeps the navigation).
pub fn error_for(viewer: &Viewer, current: Page, status: StatusCode, message: &str) -> Response {
    let body = ErrorBody { message }.render().unwrap_or_else(|_| escape(message));
    page_with_status(viewer, current, "Error", &body, &View::default(), status)
}

/// A bare error page (no session to show a navigation for).
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = ErrorBody { message }.render().unwrap_or_else(|_| escape(message));
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error · Cairn</title>\
         <link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/ui/static/console.css\"></head><body>\
         <main id=\"main\"><h1>{}</h1>{body}<p><a href=\"/ui\">Back to the console</a></p></main></body></html>",
        status.as_u16()
    );
    (status, Html(html)).into_response()
}

/// The login page.
pub fn login(nonce: &str, error: Option<&str>, required: bool) -> Html<String> {
    Html(Login { nonce, error, required }.render().unwrap_or_else(|e| escape(&e.to_string())))
}

/// HTML-escapes text (for the few strings built outside templates).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn encode(text: &str) -> String {
    let encoded =
        form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20");
    // `.` and `..` are path steps to a browser, not names: `/ui/streams/..` is `/ui/`.
    if !encoded.is_empty() && encoded.bytes().all(|b| b == b'.') {
        return encoded.replace('.', "%2E");
    }
    encoded
}

/// `303` back to `to` with a notice.
pub fn back(to: &str, notice: &str) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    let mut response = Redirect::to(&format!("{to}{sep}notice={}", encode(notice))).into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
}

/// `GET /ui/`: the dashboard is `/ui`.
pub async fn to_index() -> Redirect {
    Redirect::permanent("/ui")
}

/// The page of a handler that panicked (a bug, logged; the server keeps serving).
#[allow(clippy::needless_pass_by_value)] // the signature is what `CatchPanicLayer` calls
pub fn panicked(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(detail, "a console handler panicked");
    error(StatusCode::INTERNAL_SERVER_ERROR, "this page failed (a bug, logged on the server)")
}

/// An unknown console path.
pub async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such console page")
}

/// `GET /ui/static/console.css`.
pub async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLESHEET).into_response()
}

/// `GET /ui/static/console.js`.
pub async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

/// The security headers of every console response.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    // Pages show live data and carry a CSRF token: never from a cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_and_encode() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(encode("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(encode(".."), "%2E%2E");
        assert_eq!(encode("a.b"), "a.b");
    }

    #[test]
    fn views_read_fragment_and_notice() {
        let mut q = HashMap::new();
        q.insert("fragment".to_owned(), "1".to_owned());
        q.insert("notice".to_owned(), "x".repeat(500));
        let v = View::of(&q);
        assert!(v.fragment);
        assert_eq!(v.notice.unwrap().len(), 300);
    }
}
