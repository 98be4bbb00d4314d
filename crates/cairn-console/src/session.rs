//! Sessions: a login with an API token, a session cookie, and the CSRF token every action
//! must carry.
//!
//! The cookie holds only a random session id; the token stays in this process's memory
//! and is authenticated again on every request, so revoking it ends its sessions at
//! once. Sessions live in the process that issued them (behind a load balancer, route a
//! console user to one process). The cookie is `HttpOnly` and `SameSite=Strict`; the
//! CSRF token (one per session, compared in constant time) is what stops a page on
//! another site from acting with it all the same.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use cairn_server::auth::{Caller, Role};
use http_body_util::BodyExt as _;
use subtle::ConstantTimeEq as _;

use crate::render::{self, Page};
use crate::{BODY_LIMIT_BYTES, Shared};

/// The session cookie.
pub const SESSION_COOKIE: &str = "cairn_session";
/// The login form's double-submit cookie (login CSRF).
pub const LOGIN_COOKIE: &str = "cairn_login";
/// A session unused this long is forgotten.
pub const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
/// Most sessions kept at once; past it the least recently used is forgotten.
pub const SESSIONS_MAX: usize = 10_000;
/// Most sessions of one token; past it its own least recently used is forgotten (so one
/// token logging in again and again cannot push everyone else's sessions out).
pub const SESSIONS_PER_TOKEN_MAX: usize = 32;
/// The form field and the header an action's CSRF token travels in.
pub const CSRF_FIELD: &str = "csrf";
const CSRF_HEADER: &str = "x-csrf-token";

/// Who is looking, as every page handler sees it.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The token's name (`local` when the server needs no token).
    pub name: String,
    /// The token's role.
    pub role: Role,
    /// The session's CSRF token (every form carries it).
    pub csrf: String,
    /// The API token, sent as `Authorization: Bearer` on the console's API calls.
    pub token: Option<String>,
}

impl Viewer {
    /// Whether the viewer may use admin routes (and so sees their pages and buttons).
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

struct Session {
    /// The token's id (`Caller::id`).
    caller: String,
    token: Option<String>,
    csrf: String,
    name: String,
    role: Role,
    last_seen: Instant,
}

/// Every open session of this process.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding it leaves only sessions behind: still usable.
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session for `caller`; answers its id.
    fn open(&self, token: Option<String>, caller: &Caller) -> Option<String> {
        let id = random()?;
        let csrf = random()?;
        let mut open = self.lock();
        let now = Instant::now();
        open.retain(|_, s| now.duration_since(s.last_seen) < SESSION_IDLE);
        loop {
            let own = open.iter().filter(|(_, s)| s.caller == caller.id);
            if own.clone().count() < SESSIONS_PER_TOKEN_MAX {
                break;
            }
            let oldest = own.min_by_key(|(_, s)| s.last_seen).map(|(k, _)| k.clone())?;
            open.remove(&oldest);
        }
        while open.len() >= SESSIONS_MAX {
            let oldest = open.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| k.clone())?;
            open.remove(&oldest);
        }
        open.insert(
            id.clone(),
            Session {
                caller: caller.id.clone(),
                token,
                csrf,
                name: caller.name.clone(),
                role: caller.role,
                last_seen: now,
            },
        );
        Some(id)
    }

    fn touch(&self, id: &str) -> Option<(Option<String>, String, String, Role)> {
        let mut open = self.lock();
        let session = open.get_mut(id)?;
        if session.last_seen.elapsed() >= SESSION_IDLE {
            open.remove(id);
            return None;
        }
        session.last_seen = Instant::now();
        Some((session.token.clone(), session.csrf.clone(), session.name.clone(), session.role))
    }

    fn update(&self, id: &str, caller: &Caller) {
        if let Some(session) = self.lock().get_mut(id) {
            session.role = caller.role;
            session.name.clone_from(&caller.name);
        }
    }

    fn close(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// 32 random bytes from the OS, base64url.
fn random() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(console: &Shared, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let secure = if console.config.secure_cookies { "; Secure" } else { "" };
    let age = max_age.map_or_else(String::new, |s| format!("; Max-Age={s}"));
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/ui; HttpOnly; SameSite=Strict{secure}{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("cairn_session=; Path=/ui"))
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The anonymous caller of a server that needs no token: everything is open to it.
fn local() -> Caller {
    Caller { id: "local".to_owned(), name: "local".to_owned(), role: Role::Admin, prefixes: vec![] }
}

/// Every page and action but the login: resolves the session (or sends to the login),
/// re-authenticates its token, and refuses an action whose CSRF token is missing or wrong.
pub async fn layer(State(console): State<Shared>, request: Request, next: Next) -> Response {
    let required = console.state.config.auth.required;
    let session = cookie(request.headers(), SESSION_COOKIE).map(str::to_owned);
    let known = session.as_deref().and_then(|id| console.sessions.touch(id).map(|s| (id, s)));
    let (viewer, new_cookie) = match known {
        Some((id, (token, csrf, name, role))) => {
            let (name, role) = match &token {
                Some(t) if required => {
                    match cairn_server::auth::authenticate(&console.state, t).await {
                        Ok(Some(caller)) => {
                            console.sessions.update(id, &caller);
                            (caller.name, caller.role)
                        }
                        Ok(None) => {
                            console.sessions.close(id);
                            return to_login(&request);
                        }
                        Err(e) => {
                            return render::error(StatusCode::SERVICE_UNAVAILABLE, e.message());
                        }
                    }
                }
                _ => (name, role),
            };
            (Viewer { name, role, csrf, token }, None)
        }
        None if !required => {
            let caller = local();
            let Some(id) = console.sessions.open(None, &caller) else {
                return render::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no randomness for a session",
                );
            };
            let Some((_, csrf, _, _)) = console.sessions.touch(&id) else {
                return render::error(StatusCode::SERVICE_UNAVAILABLE, "the session was dropped");
            };
            let viewer = Viewer { name: caller.name, role: caller.role, csrf, token: None };
            (viewer, Some(set_cookie(&console, SESSION_COOKIE, &id, None)))
        }
        None => return to_login(&request),
    };
    let request = if request.method() == Method::GET || request.method() == Method::HEAD {
        request
    } else {
        match checked(request, &viewer.csrf).await {
            Ok(request) => request,
            Err(response) => return response,
        }
    };
    let mut request = request;
    request.extensions_mut().insert(viewer);
    let mut response = next.run(request).await;
    if let Some(cookie) = new_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Where a request without a session goes: a page to the login, anything else a `401`.
fn to_login(request: &Request) -> Response {
    if request.method() == Method::GET
        && request
            .headers()
            .get(header::ACCEPT)
            .is_none_or(|a| a.to_str().is_ok_and(|a| a.contains("text/html") || a.contains("*/*")))
    {
        Redirect::to("/ui/login").into_response()
    } else {
        render::error(StatusCode::UNAUTHORIZED, "log in first: /ui/login")
    }
}

/// The request, its body read once, if it carries the session's CSRF token (header or
/// form field); else a `403`.
async fn checked(request: Request, csrf: &str) -> Result<Request, Response> {
    let refuse = |why: &str| render::error(StatusCode::FORBIDDEN, why);
    let (parts, body) = request.into_parts();
    let bytes = match http_body_util::Limited::new(body, BODY_LIMIT_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(render::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("a console request body is at most {BODY_LIMIT_BYTES} bytes"),
            ));
        }
    };
    let header = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let field =
        form_urlencoded::parse(&bytes).find(|(k, _)| k == CSRF_FIELD).map(|(_, v)| v.into_owned());
    match header.or(field) {
        None => Err(refuse("this action carries no CSRF token: reload the page and try again")),
        Some(sent) if !same(&sent, csrf) => {
            Err(refuse("this action's CSRF token is wrong: reload the page and try again"))
        }
        Some(_) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
    }
}

/// The login form's fields.
#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    csrf: String,
}

/// `GET /ui/login`.
pub async fn login_page(State(console): State<Shared>) -> Response {
    login_form(&console, StatusCode::OK, None)
}

fn login_form(console: &Shared, status: StatusCode, error: Option<&str>) -> Response {
    let Some(nonce) = random() else {
        return render::error(StatusCode::SERVICE_UNAVAILABLE, "no randomness for a login form");
    };
    let body = render::login(&nonce, error, console.state.config.auth.required);
    let mut response = (status, body).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(console, LOGIN_COOKIE, &nonce, Some(SESSION_IDLE.as_secs())),
    );
    response
}

/// `POST /ui/login`: the token is checked like an API call's; a good one opens a session.
pub async fn login(
    State(console): State<Shared>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let nonce = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if nonce.is_empty() || !same(nonce, &form.csrf) {
        return render::error(
            StatusCode::FORBIDDEN,
            "the login form's CSRF token is missing or wrong: reload the login page",
        );
    }
    let token = form.token.trim();
    let caller = if console.state.config.auth.required {
        match cairn_server::auth::authenticate(&console.state, token).await {
            Ok(Some(caller)) => caller,
            Ok(None) => {
                return login_form(
                    &console,
                    StatusCode::UNAUTHORIZED,
                    Some("unknown or revoked token"),
                );
            }
            Err(e) => return render::error(StatusCode::SERVICE_UNAVAILABLE, e.message()),
        }
    } else {
        local()
    };
    let token = console.state.config.auth.required.then(|| token.to_owned());
    let Some(id) = console.sessions.open(token, &caller) else {
        return render::error(StatusCode::SERVICE_UNAVAILABLE, "no randomness for a session");
    };
    let mut response = Redirect::to("/ui").into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, set_cookie(&console, SESSION_COOKIE, &id, None));
    headers.append(header::SET_COOKIE, set_cookie(&console, LOGIN_COOKIE, "", Some(0)));
    response
}

/// `POST /ui/logout`.
pub async fn logout(State(console): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        console.sessions.close(id);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(&console, SESSION_COOKIE, "", Some(0)));
    response
}

/// A page for an admin route's data, shown to someone else: what it needs, not the data.
pub fn admin_only(viewer: &Viewer, page: Page) -> Option<Response> {
    (!viewer.is_admin()).then(|| {
        render::error_for(
            viewer,
            page,
            StatusCode::FORBIDDEN,
            &format!("the {} role cannot see this page: it needs an admin token", viewer.role),
        )
    })
}

/// Shares a sessions table between tests.
#[cfg(test)]
pub(crate) fn caller(role: Role) -> Caller {
    Caller { id: "t".to_owned(), name: "t".to_owned(), role, prefixes: vec![] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; cairn_session=xyz; b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn sessions_are_capped_and_closed() {
        let sessions = Sessions::default();
        let id = sessions.open(Some("t".to_owned()), &caller(Role::Reader)).unwrap();
        assert_eq!(sessions.touch(&id).unwrap().3, Role::Reader);
        sessions.close(&id);
        assert!(sessions.touch(&id).is_none());
        assert!(sessions.touch("made-up").is_none());
    }

    #[test]
    fn one_token_cannot_push_out_the_others_sessions() {
        let sessions = Sessions::default();
        let admin = sessions.open(None, &caller(Role::Admin)).unwrap();
        let mut flood = Caller { id: "flood".to_owned(), ..caller(Role::Reader) };
        let mut last = String::new();
        for _ in 0..(SESSIONS_PER_TOKEN_MAX * 3) {
            flood.name = "flood".to_owned();
            last = sessions.open(None, &flood).unwrap();
        }
        assert!(sessions.touch(&admin).is_some(), "the admin's session survives");
        assert!(sessions.touch(&last).is_some());
        let kept = sessions.lock().values().filter(|s| s.caller == "flood").count();
        assert_eq!(kept, SESSIONS_PER_TOKEN_MAX);
    }

    #[test]
    fn csrf_comparison_needs_the_whole_token() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }

    #[test]
    fn shared_state_is_send() {
        fn send<T: Send + Sync>() {}
        send::<Sessions>();
    }
}
