//! `--only console`: what the console costs and how fast its pages answer.
//!
//! - The console's index (`cairn_console_index`, one document per correlated event) is a
//!   projection following every append: create-order commands at 16 clients against the
//!   release binary with the console (and its index) on, and with `--no-console`, in the
//!   same run, alternately.
//! - The first-byte time of each console page (the time to the response's headers: the
//!   pages are rendered whole before the first byte) on a 1M-event store (the cached store
//!   of `--only memory`), as the admin, beside `GET /health/live` on the same server —
//!   the floor of one HTTP round trip through the same listener.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::json;

use crate::external::{CairnProcess, Storage};
use crate::report::{Table, rate};

/// Concurrent clients of the create-order scenario.
const CLIENTS: u64 = 16;
/// Requests per page for its first-byte time.
const PAGE_SAMPLES: usize = 30;
/// Longest wait for the consumers of the large store (the first run builds every read
/// model and the console's index over all of it).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(3600);
/// The pages timed (`{o}`: an order of the store).
const PAGES: &[&str] = &[
    "/ui",
    "/ui/streams?q=order-{o}",
    "/ui/streams?type=Order",
    "/ui/streams/order-{o}",
    "/ui/correlations/bench-{o}",
    "/ui/tail",
    "/ui/time-travel/order-{o}?version=2&compare=4",
    "/ui/projections",
    "/ui/dead-letters",
    "/ui/process-managers",
    "/ui/schemas",
    "/ui/schemas/OrderCreated",
];

/// Both halves, `runs` times.
pub async fn run(
    table: &mut Table,
    bin: &Path,
    dir: &Path,
    runs: usize,
    quick: bool,
) -> anyhow::Result<()> {
    let orders = if quick { 800 } else { 8_000 };
    for run in 0..runs {
        for (label, extra) in [("console on", &[][..]), ("--no-console", &["--no-console"][..])] {
            let storage =
                Storage::Sqlite(dir.join(format!("console-{run}-{}", label.replace(' ', "-"))));
            let server = CairnProcess::start_with(bin, &storage, extra).await?;
            let r = create_orders(&server, orders).await?;
            table.sample(&format!("create order, 16 clients, {label}"), "ops/s", r);
            server.stop().await?;
        }
    }
    table.ratio(
        "create order, 16 clients, console on",
        "create order, 16 clients, --no-console",
        "the console's index on appends (same binary, same run)",
    );
    let events = if quick { 100_000 } else { 1_000_000 };
    let (data, _) = crate::memory::sqlite_store(events).await?;
    let mut server = CairnProcess::start(bin, &Storage::Sqlite(data)).await?;
    eprintln!("  waiting for the consumers of the {events}-event store");
    server.wait_caught_up(CATCH_UP_TIMEOUT).await?;
    let cookie = login(&server).await?;
    let label = crate::memory::count_label(events);
    let o = 4_321 % (events / 4);
    let floor = first_bytes(&server, "/health/live", None).await?;
    table.sample(&format!("first byte GET /health/live, {label} events"), "ms", median(&floor));
    for page in PAGES {
        let path = page.replace("{o}", &o.to_string());
        let times = first_bytes(&server, &path, Some(&cookie)).await?;
        let name = format!("console first byte {page}, {label} events");
        for t in &times {
            table.sample(&name, "ms", *t);
        }
    }
    server.stop().await?;
    Ok(())
}

/// `orders` create-order commands from [`CLIENTS`] clients; commands per second.
async fn create_orders(server: &CairnProcess, orders: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let token = Arc::new(server.admin_token.clone());
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let request = {
            let token = Arc::clone(&token);
            let (client, base) = (server.client.clone(), server.base.clone());
            move |i: u64| {
                client
                    .request(Method::POST, format!("{base}/orders"))
                    .bearer_auth(token.as_str())
                    .json(&json!({
                        "customer_id": format!("cust-{}", i % 1000),
                        "items": [{"product_id": format!("prod-{}", i % 10), "quantity": 2, "price": 29.99}]
                    }))
            }
        };
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < orders {
                let r = request(i).send().await?;
                anyhow::ensure!(r.status().is_success(), "POST /orders: {}", r.status());
                i += CLIENTS;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(rate(orders, start.elapsed()))
}

/// Logs in through the console's form as the admin; the session cookie.
async fn login(server: &CairnProcess) -> anyhow::Result<String> {
    // The login answers `303` with the session cookie: not followed, or the cookie is lost.
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let page = client.get(format!("{}/ui/login", server.base)).send().await?;
    let nonce = page
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("cairn_login=")?.split(';').next().map(str::to_owned))
        .context("the login page set no cairn_login cookie")?;
    let r = client
        .post(format!("{}/ui/login", server.base))
        .header(COOKIE, format!("cairn_login={nonce}"))
        .form(&[("token", server.admin_token.as_str()), ("csrf", nonce.as_str())])
        .send()
        .await?;
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let pair = v.split(';').next()?;
            (pair.starts_with("cairn_session=") && pair.len() > "cairn_session=".len())
                .then(|| pair.to_owned())
        })
        .with_context(|| format!("the login answered {} without a session", r.status()))
}

/// [`PAGE_SAMPLES`] first-byte times of `GET path`, in milliseconds (the body is read
/// after the clock stops, then checked).
async fn first_bytes(
    server: &CairnProcess,
    path: &str,
    cookie: Option<&str>,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(PAGE_SAMPLES);
    for _ in 0..PAGE_SAMPLES {
        let mut request = server.client.get(format!("{}{path}", server.base));
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        let start = Instant::now();
        let r = request.send().await?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        let status = r.status();
        let body = r.text().await?;
        anyhow::ensure!(
            status.is_success(),
            "GET {path}: {status}: {}",
            &body[..body.len().min(300)]
        );
    }
    Ok(times)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
