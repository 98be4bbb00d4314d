//! The operator's console (#21): `cairn serve` serves it at `/ui`.
//!
//! Server-rendered pages (compile-time templates) over the server's state, with a little
//! JavaScript where a page is live (the dashboard and projections refresh, the `$all`
//! tail follows SSE). Every read-only page works without JavaScript.
//!
//! Who sees what is the API's rule: a session holds the caller's API token (in the
//! server's memory, never in the cookie), every page re-authenticates it, and every
//! action goes through the server's own API router as that caller — forwarding to the
//! leading process and the route's permission included. What the console adds is the
//! session cookie, the CSRF token every action carries, a content-security policy, and
//! one index ([`index`]) for correlation chains and process-manager histories.

mod api;
mod diff;
pub mod index;
mod pages;
mod rates;
mod render;
mod session;
mod svg;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use cairn_server::AppState;

pub use index::module;

/// Largest request body the console accepts (a login, an action, a draft schema).
pub const BODY_LIMIT_BYTES: usize = 256 * 1024;

/// Settings of the console.
#[derive(Debug, Clone, Default)]
pub struct ConsoleConfig {
    /// Mark the session cookie `Secure` (the server speaks HTTPS, `--tls-cert`).
    pub secure_cookies: bool,
}

/// What every console handler reaches.
pub(crate) struct Console {
    /// The server's state (store, read models, consumers, auth settings).
    pub state: AppState,
    /// The server's API router: actions are API calls made as the session's caller.
    pub api: Router,
    pub sessions: session::Sessions,
    pub rates: rates::Rates,
    pub config: ConsoleConfig,
}

type Shared = Arc<Console>;

/// The console's routes under `/ui`, to be merged beside the API's `api` router (whose
/// routes it calls for actions). Starts the dashboard's rate sampler (it stops with the
/// server's shutdown signal).
pub fn router(api: Router, state: AppState, config: ConsoleConfig) -> Router {
    let rates = rates::Rates::default();
    rates::spawn_sampler(rates.clone(), state.clone());
    let console =
        Arc::new(Console { state, api, sessions: session::Sessions::default(), rates, config });
    let pages = Router::new()
        .route("/", get(pages::dashboard::page))
        .route("/streams", get(pages::streams::search))
        .route("/streams/{id}", get(pages::streams::stream))
        .route("/correlations/{id}", get(pages::chain::page))
        .route("/tail", get(pages::tail::page))
        .route("/tail/events", get(pages::tail::events))
        .route("/time-travel", get(pages::travel::find))
        .route("/time-travel/{id}", get(pages::travel::page))
        .route("/projections", get(pages::projections::page))
        .route("/projections/{name}/{action}", post(pages::projections::act))
        .route("/dead-letters", get(pages::dead_letters::page))
        .route("/dead-letters/{id}/{action}", post(pages::dead_letters::act))
        .route("/process-managers", get(pages::process_managers::list))
        .route("/process-managers/{name}", get(pages::process_managers::instances))
        .route("/process-managers/{name}/instances/{key}", get(pages::process_managers::instance))
        .route("/schemas", get(pages::schemas::list))
        .route("/schemas/{event_type}", get(pages::schemas::detail_route))
        .route("/schemas/{event_type}/check", post(pages::schemas::check))
        .route("/logout", post(session::logout))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&console), session::layer));
    let open = Router::new()
        .route("/login", get(session::login_page).post(session::login))
        .route("/static/console.css", get(render::stylesheet))
        .route("/static/console.js", get(render::script));
    let ui = pages
        .merge(open)
        .fallback(render::not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        // A handler panic is a bug; the operator still gets a page and the server goes on.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(render::panicked))
        .layer(axum::middleware::from_fn(render::security_headers))
        .with_state(console);
    // `/ui` is the dashboard; `/ui/` (how people type it) leads there.
    Router::new().route("/ui/", get(render::to_index)).nest("/ui", ui)
}
