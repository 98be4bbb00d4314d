//! #21 item 3: the operator console (`/ui`) end to end, in headless Chromium driven over
//! `WebDriver` (`chromedriver`), against `cairn serve` on the embedded store.
//!
//! Every page visit asserts the browser logged no error (a script error, a CSP violation,
//! a request answered 4xx/5xx), and every page has its form fields labelled. The tests
//! follow what an operator does: find an order's stream from its id, follow its
//! correlation chain, move the time-travel slider, retry a dead letter, rebuild a
//! projection, log in as a reader with the keyboard (and see no action). Actions without
//! the CSRF token are refused, and each page weighs at most 200 KB on an empty store.
//!
//! Screenshots of every page (1280×800) land in `target/console-screenshots/`; with
//! `CAIRN_UPDATE_SCREENSHOTS=1` the dashboard's and a stream's are copied to `docs/`,
//! beside `docs/console-screenshots.sha256`, the hash of the console's templates and
//! static files they were taken with, which a test compares (pixels are not: they hold
//! times and ids).
//!
//! Time cap: the whole file must finish within 3 minutes ([`CAP`]; it takes about 20 s).
//! The tests take turns ([`TURN`]): one server and one browser at a time on two cores.
//! Without `chromedriver` on `PATH` the browser tests say so and pass, except under
//! `CI` (set by `.ci/run`, which installs Debian's `chromium` and `chromium-driver`).

mod support;
#[path = "support/webdriver.rs"]
mod webdriver;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_core::readmodel::DeadLetter;
use cairn_core::timestamp::Timestamp;
use fantoccini::key::Key;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{CAIRN, ServeProcess};
use webdriver::{Browser, Driver, SETTLE};

/// The whole file's time cap: past it the test binary aborts (so fails).
const CAP: Duration = Duration::from_secs(180);
/// Each page's HTML plus the console's CSS and JS, on an empty store, at most.
const PAGE_WEIGHT_MAX: usize = 200 * 1024;
/// A screenshot in `docs/`, at most (1280×800 PNGs of text pages).
const DOC_PNG_MAX: u64 = 150 * 1024;
/// The order every browser test looks at.
const ORDER: &str = "order-console-1";
/// The correlation id its confirmation is sent with (and so that of everything the
/// fulfillment process manager does about it).
const CORRELATION: &str = "corr-console-1";

/// One test at a time: a browser and a server each, on a two-core machine.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts the file's watchdog (once): aborts the binary when [`CAP`] has passed.
fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(CAP);
            eprintln!("tests/console.rs took longer than its cap of {CAP:?}: aborting");
            std::process::abort();
        });
    });
}

/// A chromedriver, or `None` (said on the terminal) where there is none and this is not
/// CI: the README's `cargo test --workspace` passes on a machine without Chromium.
async fn driver() -> Option<Driver> {
    match webdriver::chromedriver() {
        Some(binary) => Some(Driver::start(&binary).await),
        None if std::env::var_os("CI").is_some() => {
            panic!("chromedriver is not installed (.ci/run installs chromium-driver)")
        }
        None => {
            eprintln!(
                "console tests skipped: no chromedriver on PATH (apt-get install chromium-driver)"
            );
            None
        }
    }
}

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `target/console-screenshots/` (under `CARGO_TARGET_DIR` when set).
fn screenshot_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    root().join(target).join("console-screenshots")
}

/// Whether this run refreshes the screenshots in `docs/`.
fn updating_screenshots() -> bool {
    std::env::var("CAIRN_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1")
}

/// SHA-256 (hex) of every file under the console's `templates/` and `static/`, in path
/// order, each as its path, its length and its bytes: what the screenshots depend on.
fn console_sources_hash() -> String {
    let console = root().join("crates/cairn-console");
    let mut files = Vec::new();
    for dir in ["templates", "static"] {
        collect_files(&console.join(dir), &mut files);
    }
    assert!(!files.is_empty(), "no templates or static files under {}", console.display());
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let relative = file.strip_prefix(&console).unwrap().to_string_lossy().replace('\\', "/");
        hasher.update(relative.as_bytes());
        hasher.update([0]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    hasher.finalize().iter().fold(String::new(), |mut hex, b| {
        write!(hex, "{b:02x}").unwrap();
        hex
    })
}

fn collect_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(&path, into);
        } else {
            into.push(path);
        }
    }
}

/// A plain HTTP client that shows redirects instead of following them.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `POST base+path` with a JSON body (and extra headers); its JSON answer, asserted 2xx.
async fn post(base: &str, path: &str, body: &Value, headers: &[(&str, &str)]) -> Value {
    let mut request = http().post(format!("{base}{path}")).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "POST {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// `GET base+path` (JSON), asserted 2xx.
async fn get(base: &str, path: &str) -> Value {
    let response = http().get(format!("{base}{path}")).send().await.unwrap();
    assert!(response.status().is_success(), "GET {path}: {}", response.status());
    response.json().await.unwrap()
}

/// The reference module's life of one order, so the pages have something to show: a
/// customer, stock, an order of two lines confirmed (the fulfillment process manager
/// reserves the stock and makes it ready to ship, under the confirmation's correlation
/// id) and shipped, and a second order left pending. The customer's position.
async fn seed(base: &str) -> u64 {
    let customer = post(
        base,
        "/customers",
        &json!({"customer_id": "cust-ada", "name": "Ada Lovelace", "email": "ada@example.com"}),
        &[],
    )
    .await;
    post(base, "/inventory/prod-lamp/restock", &json!({"quantity": 10}), &[]).await;
    post(base, "/inventory/prod-desk/restock", &json!({"quantity": 3}), &[]).await;
    let items = json!([{"product_id": "prod-lamp", "quantity": 2, "price": "29.99"}]);
    post(
        base,
        "/orders",
        &json!({"order_id": ORDER, "customer_id": "cust-ada", "items": items}),
        &[],
    )
    .await;
    let desk = json!({"product_id": "prod-desk", "quantity": 1, "price": "249.00"});
    post(base, &format!("/orders/{ORDER}/items"), &desk, &[]).await;
    post(
        base,
        &format!("/orders/{ORDER}/confirm"),
        &json!({}),
        &[("X-Correlation-Id", CORRELATION)],
    )
    .await;
    let deadline = Instant::now() + SETTLE;
    while get(base, &format!("/orders/{ORDER}/state")).await["status"] != "ready_to_ship" {
        assert!(Instant::now() < deadline, "{ORDER}: never ready to ship");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ship = json!({"tracking_number": "TRK-1", "carrier": "ups"});
    post(base, &format!("/orders/{ORDER}/ship"), &ship, &[]).await;
    let lamp = json!([{"product_id": "prod-lamp", "quantity": 1, "price": "29.99"}]);
    post(
        base,
        "/orders",
        &json!({"order_id": "order-console-2", "customer_id": "cust-ada", "items": lamp}),
        &[],
    )
    .await;
    customer["position"].as_u64().unwrap()
}

/// One browser test's world: its turn, a chromedriver and its browser, and `cairn serve`
/// on a fresh embedded store.
struct Scene {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    driver: Driver,
    browser: Browser,
    server: ServeProcess,
    place: cairn_testkit::Place,
}

impl Scene {
    /// The scene, the server started with `flags`; `None` where there is no chromedriver
    /// (see [`driver`]).
    async fn open(flags: &[&str]) -> Option<Self> {
        watchdog();
        let turn = TURN.lock().await;
        let driver = driver().await?;
        let place = cairn_testkit::Backend::Sqlite.place().await;
        let server = ServeProcess::start(CAIRN, &place, flags, &[]).await;
        let browser = driver.browser().await;
        Some(Self { _turn: turn, driver, browser, server, place })
    }

    /// The scene, its store holding [`seed`]'s orders.
    async fn seeded() -> Option<Self> {
        let scene = Self::open(&[]).await?;
        seed(&scene.server.base).await;
        Some(scene)
    }

    /// Closes the browser, stops the driver and the server.
    async fn end(self) {
        self.browser.close().await;
        self.driver.stop().await;
        self.server.kill().await;
    }
}

/// Asserts the page in `browser` is a console page as the contract has it: answered 200,
/// with the navigation, the skip link, `main#main`, and every form field labelled.
async fn assert_console_page(browser: &Browser, what: &str) {
    let status = browser
        .js("return performance.getEntriesByType('navigation')[0].responseStatus;", vec![])
        .await;
    assert_eq!(status, json!(200), "{what}: the page's status");
    for css in ["nav#nav", "#whoami", "a#skip[href='#main']", "main#main"] {
        assert_eq!(browser.count(css).await, 1, "{what}: one {css}");
    }
    let unlabelled = browser.unlabelled_fields().await;
    assert!(unlabelled.is_empty(), "{what}: fields without a label: {unlabelled:#?}");
}

/// Visits `path`, checks it (see [`assert_console_page`]), and takes its screenshot as
/// `<name>.png`; the PNG.
async fn page(browser: &Browser, base: &str, path: &str, name: &str) -> Vec<u8> {
    browser.visit(&format!("{base}{path}")).await;
    assert_console_page(browser, path).await;
    browser.screenshot(&screenshot_dir().join(format!("{name}.png"))).await
}

/// Follows the first link matching `css` and checks the page it leads to; its path.
async fn follow(browser: &Browser, css: &str, name: &str) -> String {
    let link = browser.find(css).await;
    let href = link.attr("href").await.unwrap().unwrap_or_else(|| panic!("{css}: no href"));
    link.click().await.unwrap();
    let path = browser.wait_for_path(&format!("at {href}"), |p| p == href).await;
    browser.assert_clean(&path).await;
    assert_console_page(browser, &path).await;
    browser.screenshot(&screenshot_dir().join(format!("{name}.png"))).await;
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_loads_clean_and_labelled_and_is_photographed() {
    let Some(scene) = Scene::seeded().await else { return };
    let (browser, base) = (&scene.browser, scene.server.base.as_str());

    page(browser, base, "/ui/", "dashboard").await;
    for css in
        ["#head-position", "svg#rates-chart", "svg#lag-chart", "#dlq-depth", "table#pm-statuses"]
    {
        assert_eq!(browser.count(css).await, 1, "dashboard: one {css}");
    }
    assert_eq!(browser.text("#store-health").await, "ok");
    assert_eq!(browser.text("#dlq-depth").await, "0");
    let head: u64 = browser.text("#head-position").await.parse().expect("a number");
    assert!(head >= 10, "the seeded events are counted: {head}");
    // Its live refresh (every 2 s) fetches fragments: they too must load clean.
    let live = browser.find("main[data-live]").await.attr("data-live").await.unwrap();
    assert_eq!(live.as_deref(), Some("2000"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    browser.assert_clean("the dashboard after a live refresh").await;
    assert_eq!(browser.count("svg#rates-chart").await, 1, "the refreshed dashboard");
    // Photographed again, refreshed: the rates chart has had samples to draw.
    let dashboard = browser.screenshot(&screenshot_dir().join("dashboard.png")).await;

    page(browser, base, "/ui/streams", "streams").await;
    let stream = page(browser, base, &format!("/ui/streams/{ORDER}"), "stream").await;
    page(browser, base, &format!("/ui/correlations/{CORRELATION}"), "correlation").await;
    page(browser, base, "/ui/tail", "tail").await;
    page(browser, base, "/ui/time-travel", "time-travel-find").await;
    page(browser, base, &format!("/ui/time-travel/{ORDER}"), "time-travel").await;
    page(browser, base, "/ui/projections", "projections").await;
    page(browser, base, "/ui/dead-letters", "dead-letters").await;
    page(browser, base, "/ui/process-managers", "process-managers").await;
    assert!(browser.count("tr.process-manager[data-name='order-fulfillment']").await == 1);
    follow(
        browser,
        "tr.process-manager[data-name='order-fulfillment'] a.pm-link",
        "process-manager",
    )
    .await;
    follow(browser, "tr.instance a.instance-link", "process-manager-instance").await;
    assert_eq!(browser.count("pre#instance-state").await, 1);
    assert!(browser.count("ol#history li.history-event").await >= 2, "the instance's history");
    page(browser, base, "/ui/schemas", "schemas").await;
    follow(browser, "tr.schema[data-type='OrderCreated'] a.schema-link", "schema").await;
    assert!(browser.count("pre.schema-version").await >= 1, "OrderCreated's schema");
    assert_eq!(
        browser.count("form#schema-check textarea#draft").await,
        1,
        "an admin checks drafts"
    );
    // An unknown stream is a 404 page, said as such (and only that is logged).
    browser.client.goto(&format!("{base}/ui/streams/no-such-stream")).await.unwrap();
    let status = browser
        .js("return performance.getEntriesByType('navigation')[0].responseStatus;", vec![])
        .await;
    assert_eq!(status, json!(404), "an unknown stream");
    let logged = browser.log().await;
    assert!(
        logged.iter().filter(|e| e.level == "SEVERE").all(|e| e.message.contains("no-such-stream")),
        "only the 404 itself: {logged:#?}"
    );

    for (png, name) in [(&dashboard, "dashboard"), (&stream, "stream")] {
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: a PNG");
        let (width, height) = png_size(png);
        assert_eq!((width, height), (webdriver::WIDTH, webdriver::HEIGHT), "{name}: 1280×800");
    }
    if updating_screenshots() {
        let docs = root().join("docs");
        std::fs::write(docs.join("console-dashboard.png"), &dashboard).unwrap();
        std::fs::write(docs.join("console-stream.png"), &stream).unwrap();
        std::fs::write(
            docs.join("console-screenshots.sha256"),
            format!("{}\n", console_sources_hash()),
        )
        .unwrap();
    }
    scene.end().await;
}

/// A PNG's width and height (its IHDR chunk).
fn png_size(png: &[u8]) -> (u32, u32) {
    let field = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (field(16), field(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_stream_is_found_from_its_id_and_its_correlation_chain_followed() {
    let Some(scene) = Scene::seeded().await else { return };
    let (browser, base) = (&scene.browser, scene.server.base.as_str());

    // The operator types the id and presses Enter.
    browser.visit(&format!("{base}/ui/streams")).await;
    let q = browser.find("form#stream-search input#q").await;
    q.send_keys(&format!("{ORDER}{}", Key::Enter)).await.unwrap();
    let results =
        browser.wait_for_path("the search's results", |p| p.contains("q=order-console-1")).await;
    browser.assert_clean(&results).await;
    let link =
        format!("table#stream-results tr.stream-row a.stream-link[href='/ui/streams/{ORDER}']");
    assert_eq!(browser.count(&link).await, 1, "{ORDER} among the results");
    assert!(
        browser.count("a.stream-link[href='/ui/streams/cust-ada']").await == 0,
        "only streams matching the id"
    );
    browser.find(&link).await.click().await.unwrap();
    browser.wait_for_path("on the stream's page", |p| p == format!("/ui/streams/{ORDER}")).await;
    browser.assert_clean("the stream's page").await;
    assert!(browser.text("h1").await.contains(ORDER), "{}", browser.text("h1").await);
    let types = texts(browser, "article.event .event-type").await;
    assert_eq!(
        types,
        ["OrderCreated", "ItemAdded", "OrderConfirmed", "OrderReadyToShip", "OrderShipped"],
        "the order's events in version order"
    );
    // (Shown as `v1`, ...: the contract names the element, not its wording.)
    let versions = texts(browser, "article.event .event-version").await;
    let versions: Vec<&str> = versions.iter().map(|v| v.trim_start_matches('v')).collect();
    assert_eq!(versions, ["1", "2", "3", "4", "5"]);
    let data = texts(browser, "article.event pre.event-data").await;
    assert!(
        data[1].contains("prod-desk") && data[1].contains("249"),
        "ItemAdded's data: {}",
        data[1]
    );
    assert!(browser.count("article.event pre.event-metadata").await == 5);
    assert_eq!(
        browser.find("a#time-travel-link").await.attr("href").await.unwrap().as_deref(),
        Some(format!("/ui/time-travel/{ORDER}").as_str())
    );

    // The confirmation's correlation: the order's events and the inventory's the process
    // manager caused, nested under their causes.
    let confirmed = "article.event:nth-of-type(3) a.correlation-link";
    let correlation = browser.find(confirmed).await;
    let href = correlation.attr("href").await.unwrap();
    assert_eq!(href.as_deref(), Some(format!("/ui/correlations/{CORRELATION}").as_str()));
    correlation.click().await.unwrap();
    browser
        .wait_for_path("on the correlation's page", |p| {
            p == format!("/ui/correlations/{CORRELATION}")
        })
        .await;
    browser.assert_clean("the correlation's page").await;
    let events = browser.count("ol#chain li.chain-event").await;
    assert_eq!(browser.text("#chain-count").await, events.to_string());
    let chain_types = texts(browser, "ol#chain li.chain-event .event-type").await;
    for wanted in ["OrderConfirmed", "StockReserved", "OrderReadyToShip"] {
        assert!(chain_types.iter().any(|t| t == wanted), "{wanted} in the chain: {chain_types:?}");
    }
    // Each link is to its stream, maybe at the event (`?from=<version>`).
    let streams: std::collections::BTreeSet<String> =
        attrs(browser, "ol#chain li.chain-event a.stream-link", "href")
            .await
            .into_iter()
            .map(|href| href.split('?').next().unwrap().to_owned())
            .collect();
    for wanted in [ORDER, "prod-lamp", "prod-desk"] {
        assert!(
            streams.contains(&format!("/ui/streams/{wanted}")),
            "{wanted}'s stream: {streams:?}"
        );
    }
    assert!(
        browser.count("ol#chain li.chain-event ol.caused li.chain-event").await >= 1,
        "caused events nested under their cause"
    );
    scene.end().await;
}

/// The trimmed texts of every element matching `css`, in document order.
async fn texts(browser: &Browser, css: &str) -> Vec<String> {
    let found = browser
        .js(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent.trim());",
            vec![json!(css)],
        )
        .await;
    serde_json::from_value(found).unwrap()
}

/// The attribute `name` of every element matching `css`, in document order.
async fn attrs(browser: &Browser, css: &str, name: &str) -> Vec<String> {
    let found = browser
        .js(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.getAttribute(arguments[1]));",
            vec![json!(css), json!(name)],
        )
        .await;
    serde_json::from_value(found).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_travel_slider_shows_an_earlier_state() {
    let Some(scene) = Scene::seeded().await else { return };
    let (browser, base) = (&scene.browser, scene.server.base.as_str());

    browser.visit(&format!("{base}/ui/time-travel/{ORDER}")).await;
    assert_eq!(browser.text("#state-version").await, "5", "the latest state at first");
    let latest = browser.text("pre#state").await;
    assert!(latest.contains("shipped"), "{latest}");
    let slider = browser.find("form#travel input#version[type=range][name=version]").await;
    assert_eq!(slider.attr("max").await.unwrap().as_deref(), Some("5"));
    // The keyboard moves the slider to its first version; its change submits the form.
    slider.send_keys(&Key::Home).await.unwrap();
    let path = browser.wait_for_path("at an earlier version", |p| p.contains("version=")).await;
    browser.assert_clean(&path).await;
    // The contract allows a first version of 0 (before any event) or 1.
    let min = browser.find("input#version").await.attr("min").await.unwrap().unwrap();
    assert!(min == "0" || min == "1", "the slider starts at 0 or 1: {min}");
    assert!(path.contains(&format!("version={min}")), "{path}");
    assert_eq!(browser.text("#state-version").await, min);
    let first = browser.text("pre#state").await;
    assert_ne!(first, latest, "the state changed with the version");
    assert!(!first.contains("shipped") && !first.contains("prod-desk"), "version {min}: {first}");

    // Set from script, as a mouse drag ends: one version at a time, the state follows.
    for (version, status, desk) in [(1, "pending", false), (3, "confirmed", true)] {
        browser
            .js(
                "const s = document.getElementById('version'); s.value = String(arguments[0]);
                 s.dispatchEvent(new Event('input', {bubbles: true}));
                 s.dispatchEvent(new Event('change', {bubbles: true}));",
                vec![json!(version)],
            )
            .await;
        let at = format!("version={version}");
        let path = browser.wait_for_path(&format!("at {at}"), |p| p.contains(&at)).await;
        browser.assert_clean(&path).await;
        assert_eq!(browser.text("#state-version").await, version.to_string());
        let state = browser.text("pre#state").await;
        assert!(state.contains(status) && state.contains("prod-desk") == desk, "{path}: {state}");
        let label = browser.text("output#version-label").await;
        assert!(label.contains(&version.to_string()), "{path}: the label says {label}");
    }

    // A comparison lists what changed between two versions.
    browser.visit(&format!("{base}/ui/time-travel/{ORDER}?version=5&compare=1")).await;
    let paths = texts(browser, "table#state-diff tr.diff-row .path").await;
    assert!(paths.iter().any(|p| p.contains("status")), "status differs: {paths:?}");
    scene.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_shows_new_events_live_until_paused() {
    let Some(scene) = Scene::seeded().await else { return };
    let (browser, base) = (&scene.browser, scene.server.base.as_str());
    browser.visit(&format!("{base}/ui/tail")).await;
    let status = browser.wait_for("#tail-status").await;
    let deadline = Instant::now() + SETTLE;
    while status.text().await.unwrap().trim() != "live" {
        assert!(Instant::now() < deadline, "the tail never went live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = browser.count("table#tail tbody tr.tail-row").await;
    assert!(before >= 10, "the seeded events, at load: {before}");
    // A new event arrives on its own, on top.
    let email = json!({"email": "ada@analytical.engine"});
    post(base, "/customers/cust-ada/email", &email, &[]).await;
    let deadline = Instant::now() + SETTLE;
    while browser.count("table#tail tbody tr.tail-row").await == before {
        assert!(Instant::now() < deadline, "the new event never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let newest = texts(browser, "table#tail tbody tr.tail-row .event-type").await;
    assert_eq!(newest[0], "CustomerEmailChanged", "newest first");
    // Paused: nothing more arrives.
    let pause = browser.find("button#tail-pause").await;
    assert_eq!(pause.attr("aria-pressed").await.unwrap().as_deref(), Some("false"));
    pause.click().await.unwrap();
    assert_eq!(pause.attr("aria-pressed").await.unwrap().as_deref(), Some("true"));
    assert_eq!(browser.text("#tail-status").await, "paused");
    assert_eq!(browser.text("button#tail-pause").await, "Resume");
    let shown = browser.count("table#tail tbody tr.tail-row").await;
    post(base, "/inventory/prod-lamp/restock", &json!({"quantity": 1}), &[]).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(browser.count("table#tail tbody tr.tail-row").await, shown, "paused");
    // Resumed: it carries on from where it stopped, missing nothing.
    pause.click().await.unwrap();
    let deadline = Instant::now() + SETTLE;
    while browser.count("table#tail tbody tr.tail-row").await == shown {
        assert!(Instant::now() < deadline, "the tail never resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(texts(browser, "table#tail tbody tr.tail-row .event-type").await[0], "StockAdded");
    browser.assert_clean("the tail, live").await;
    scene.end().await;
}

/// Parks a dead letter of `customer_view` at `position` (the customer's registration,
/// which it handles again harmlessly, so a retry succeeds), with the server stopped:
/// the embedded store belongs to one process at a time.
async fn forge_dead_letter(place: &cairn_testkit::Place, position: u64) {
    let readmodels = place.readmodels().await;
    tokio::task::spawn_blocking(move || {
        let fence = readmodels
            .try_lead("customer_view")
            .unwrap()
            .expect("the embedded store grants leadership");
        let checkpoint = readmodels.checkpoint("customer_view").unwrap();
        let letter = DeadLetter {
            id: 0,
            projection: "customer_view".into(),
            position,
            aggregate_id: "cust-ada".into(),
            event_type: "CustomerRegistered".into(),
            error: "forged by tests/console.rs".into(),
            attempts: 3,
            first_failed_at: Timestamp::now(),
            last_failed_at: Timestamp::now(),
        };
        readmodels.park(&fence, checkpoint, &letter).unwrap();
        readmodels.resign("customer_view");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_retried_and_a_projection_rebuilt() {
    let Some(mut scene) = Scene::open(&[]).await else { return };
    let position = seed(&scene.server.base).await;
    // Everything projected before the server stops, so the letter is the only gap.
    get(&scene.server.base, &format!("/customers/cust-ada?min_position={position}")).await;
    scene.server.kill_in_place().await;
    forge_dead_letter(&scene.place, position).await;
    scene.server.relaunch().await;
    let (browser, base) = (&scene.browser, scene.server.base.as_str());

    browser.visit(&format!("{base}/ui/")).await;
    assert_eq!(browser.text("#dlq-depth").await, "1", "the dashboard counts the letter");
    browser.visit(&format!("{base}/ui/dead-letters")).await;
    assert_eq!(browser.count("table#dead-letters tr.dead-letter").await, 1);
    assert_eq!(browser.count("p#dlq-empty").await, 0);
    let projection = browser.text("tr.dead-letter .projection").await;
    assert!(projection.starts_with("customer_view"), "{projection}");
    assert!(browser.text("tr.dead-letter .error").await.contains("forged"));
    assert_eq!(
        browser.find("tr.dead-letter a.stream-link").await.attr("href").await.unwrap().as_deref(),
        Some("/ui/streams/cust-ada")
    );
    browser.find("tr.dead-letter button.retry").await.click().await.unwrap();
    let path = browser.wait_for_path("back with a notice", |p| p.contains("notice=")).await;
    browser.assert_clean(&path).await;
    assert!(path.starts_with("/ui/dead-letters"), "{path}");
    assert!(!browser.text("p#notice[role=status]").await.is_empty());
    // The retry runs in the projection: the list empties once it has.
    let deadline = Instant::now() + SETTLE;
    while browser.count("p#dlq-empty").await == 0 {
        assert!(Instant::now() < deadline, "the dead letter never went");
        tokio::time::sleep(Duration::from_millis(200)).await;
        browser.visit(&format!("{base}/ui/dead-letters")).await;
    }
    assert_eq!(browser.count("tr.dead-letter").await, 0);
    assert_eq!(get(base, "/admin/dlq").await, json!([]));

    // A rebuild, followed on the live page (it refreshes every second) to the head.
    browser.visit(&format!("{base}/ui/projections")).await;
    let row = "tr.projection[data-name='order_summary']";
    assert_eq!(browser.count(&format!("{row} button.rebuild")).await, 1);
    browser.find(&format!("{row} button.rebuild")).await.click().await.unwrap();
    let path = browser.wait_for_path("back with a notice", |p| p.contains("notice=")).await;
    browser.assert_clean(&path).await;
    assert!(path.starts_with("/ui/projections"), "{path}");
    let deadline = Instant::now() + SETTLE;
    loop {
        let status = browser.text(&format!("{row} td.status")).await;
        let lag = browser.text(&format!("{row} td.lag")).await;
        let done = get(base, "/admin/projections").await.as_array().unwrap().iter().any(|p| {
            p["name"] == "order_summary" && p["rebuilds_completed"] == 1 && p["status"] == "running"
        });
        if done && status == "running" && lag == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuild never reached the head: {status}, lag {lag}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let progress = browser.text(&format!("{row} td.rebuild-progress")).await;
    assert!(
        progress == "—"
            || progress.split(" / ").collect::<Vec<_>>().windows(2).all(|w| w[0] == w[1]),
        "{progress}"
    );
    browser.assert_clean("the projections page, live").await;
    // Read models serve again after the swap.
    assert_eq!(get(base, &format!("/orders/{ORDER}")).await["status"], "shipped");
    scene.end().await;
}

/// The session cookie a console answer set (`name=value`), if any.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|pair| pair.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The CSRF token a page carries in `<meta name="csrf-token">`.
fn csrf_of(html: &str) -> String {
    let meta = regex::Regex::new(r#"<meta[^>]*name="csrf-token"[^>]*>"#).unwrap();
    let tag = meta.find(html).unwrap_or_else(|| panic!("no csrf meta in {html}")).as_str();
    let content = regex::Regex::new(r#"content="([^"]*)""#).unwrap();
    content.captures(tag).unwrap()[1].to_owned()
}

/// `GET base+path` with `cookie` (may be empty), following the console's own redirects
/// (`/ui/` and `/ui` are the dashboard, whichever the other leads to).
async fn fetch(base: &str, path: &str, cookie: &str) -> reqwest::Response {
    let mut path = path.to_owned();
    for _ in 0..3 {
        let mut request = http().get(format!("{base}{path}"));
        if !cookie.is_empty() {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        let response = request.send().await.unwrap();
        if !matches!(response.status().as_u16(), 301 | 302 | 307 | 308) {
            return response;
        }
        response.headers()[reqwest::header::LOCATION].to_str().unwrap().clone_into(&mut path);
    }
    panic!("GET {path}: redirected again and again");
}

/// Whether `path` is the dashboard's: `/ui/` in the contract, `/ui` as served.
fn is_dashboard(path: &str) -> bool {
    path == "/ui/" || path == "/ui"
}

/// `POST base+path` as a browser form would, with `cookie` and the form `body`.
async fn form_post(base: &str, path: &str, cookie: &str, body: &str) -> reqwest::Response {
    http()
        .post(format!("{base}{path}"))
        .header(reqwest::header::COOKIE, cookie)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(reqwest::header::ORIGIN, base)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_without_the_csrf_token_is_refused() {
    watchdog();
    let _turn = TURN.lock().await;
    let place = cairn_testkit::Backend::Sqlite.place().await;
    let server = ServeProcess::start(CAIRN, &place, &[], &[]).await;
    let base = server.base.as_str();
    // Open and on loopback: the first page gives an admin session.
    let response = http().get(format!("{base}/ui/projections")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cookie = set_cookie(&response, "cairn_session").expect("a session cookie");
    let html = response.text().await.unwrap();
    let csrf = csrf_of(&html);
    assert!(csrf.len() >= 16, "a token worth the name: {csrf}");
    assert!(html.contains(&format!(r#"name="csrf" value="{csrf}""#)), "each form carries it");
    let pause = "/ui/projections/order_summary/pause";
    for (what, body) in [
        ("no csrf field", String::new()),
        ("an empty one", "csrf=".to_owned()),
        ("a wrong one", format!("csrf={}", "A".repeat(csrf.len()))),
    ] {
        let refused = form_post(base, pause, &cookie, &body).await;
        assert_eq!(refused.status(), 403, "{what}");
        let page = refused.text().await.unwrap();
        assert!(page.contains(r#"id="error""#) && page.contains("CSRF"), "{what}: {page}");
    }
    // The session's own token from another session is no good either.
    let other = fetch(base, "/ui/", "").await;
    let other_cookie = set_cookie(&other, "cairn_session").expect("another session");
    let other_csrf = csrf_of(&other.text().await.unwrap());
    assert_ne!(other_csrf, csrf, "a token per session");
    let crossed = form_post(base, pause, &cookie, &format!("csrf={other_csrf}")).await;
    assert_eq!(crossed.status(), 403, "another session's token");
    // Nothing was paused; with the token the same request is carried out.
    let rows = get(base, "/admin/projections").await;
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "order_summary" && p["status"] == "running")
    );
    let done = form_post(base, pause, &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(done.status(), 303, "the same action with its token");
    let location = done.headers()[reqwest::header::LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with("/ui/projections") && location.contains("notice="), "{location}");
    let resumed = form_post(
        base,
        "/ui/projections/order_summary/resume",
        &other_cookie,
        &format!("csrf={other_csrf}"),
    )
    .await;
    assert_eq!(resumed.status(), 303);
    server.kill().await;
}

/// Logs in through `/ui/login` as a person does: a wrong token first (refused with a
/// reason), then `token`, each typed and sent with Enter.
async fn log_in(browser: &Browser, base: &str, token: &str) {
    browser.client.goto(&format!("{base}/ui/")).await.unwrap();
    browser.wait_for_path("sent to log in", |p| p == "/ui/login").await;
    browser.assert_clean("the login page").await;
    assert_eq!(browser.unlabelled_fields().await, Vec::<String>::new());
    assert_eq!(browser.count("form#login-form input[type=hidden][name=csrf]").await, 1);
    let field = browser.wait_for("form#login-form input#token[type=password]").await;
    field.send_keys(&format!("cairn_not-a-token{}", Key::Enter)).await.unwrap();
    let alert = browser.wait_for("p#login-error[role=alert]").await;
    assert!(!alert.text().await.unwrap().trim().is_empty());
    // The 401 page itself is the only error logged.
    let logged = browser.log().await;
    assert!(
        logged.iter().filter(|e| e.level == "SEVERE").all(|e| e.message.contains("401")),
        "only the refusal: {logged:#?}"
    );
    browser.visit(&format!("{base}/ui/login")).await;
    let field = browser.wait_for("input#token").await;
    field.send_keys(&format!("{token}{}", Key::Enter)).await.unwrap();
    browser.wait_for_path("logged in", is_dashboard).await;
    browser.assert_clean("the dashboard, after logging in").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_logs_in_with_the_keyboard_and_is_offered_no_action() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "cairn_console-test-admin-token-0123456789abcdef";
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, admin).unwrap();
    let flags = ["--admin-token-file", token_file.to_str().unwrap()];
    let Some(scene) = Scene::open(&flags).await else { return };
    let (browser, base) = (&scene.browser, scene.server.base.as_str());
    let bearer = format!("Bearer {admin}");
    let created = post(
        base,
        "/admin/tokens",
        &json!({"name": "dana", "role": "reader"}),
        &[("Authorization", &bearer)],
    )
    .await;
    let reader = created["token"].as_str().unwrap().to_owned();
    // Pages need a session: without one, the login page.
    let response = http().get(format!("{base}/ui/projections")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[reqwest::header::LOCATION], "/ui/login");

    log_in(browser, base, &reader).await;
    assert_eq!(browser.text("#whoami").await, "dana (reader)");
    for hidden in ["dead-letters", "process-managers", "schemas"] {
        assert_eq!(
            browser.count(&format!("nav#nav a[data-page='{hidden}']")).await,
            0,
            "no {hidden} link"
        );
    }
    for shown in ["dashboard", "streams", "tail", "time-travel", "projections"] {
        assert_eq!(
            browser.count(&format!("nav#nav a[data-page='{shown}']")).await,
            1,
            "the {shown} link"
        );
    }
    browser.visit(&format!("{base}/ui/projections")).await;
    assert!(browser.count("tr.projection").await >= 1, "the reader sees the projections");
    for action in
        ["button.rebuild", "button.pause", "button.resume", "button.retry", "button.discard"]
    {
        assert_eq!(browser.count(action).await, 0, "a reader has no {action}");
    }
    // Nor can it act by hand: the pages and actions are the admin's.
    let cookie = format!("cairn_session={}", browser.cookie("cairn_session").await);
    let page = http()
        .get(format!("{base}/ui/dead-letters"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 403, "the dead letters are the admin's");
    let csrf = csrf_of(&browser.client.source().await.unwrap());
    let rebuild =
        form_post(base, "/ui/projections/order_summary/rebuild", &cookie, &format!("csrf={csrf}"))
            .await;
    // Refused by the API behind the console: a 403, or back with a notice saying so.
    let status = rebuild.status();
    let location = rebuild.headers().get(reqwest::header::LOCATION).cloned();
    let location = location.map(|l| l.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(
        status == 403 || (status == 303 && location.contains("refused")),
        "a reader's rebuild: {status} {location}"
    );
    let rows = http()
        .get(format!("{base}/admin/projections"))
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let row = rows.as_array().unwrap().iter().find(|p| p["name"] == "order_summary").unwrap();
    assert_eq!(
        (row["rebuilds_completed"].clone(), row["rebuild"].clone()),
        (json!(0), Value::Null)
    );
    // Logging out ends the session.
    browser.find("form#logout-form button").await.click().await.unwrap();
    browser.wait_for_path("logged out", |p| p == "/ui/login").await;
    let after = fetch(base, "/ui/", &cookie).await;
    assert_eq!(after.status(), 303, "the old session is gone");
    scene.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_page_weighs_at_most_200_kb_on_an_empty_store() {
    watchdog();
    let _turn = TURN.lock().await;
    let place = cairn_testkit::Backend::Sqlite.place().await;
    let server = ServeProcess::start(CAIRN, &place, &[], &[]).await;
    let base = server.base.as_str();
    let client = http();
    let mut assets = 0;
    for (path, kind) in
        [("/ui/static/console.css", "text/css"), ("/ui/static/console.js", "javascript")]
    {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let content_type =
            response.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_owned();
        assert!(content_type.contains(kind), "{path}: {content_type}");
        assets += response.bytes().await.unwrap().len();
    }
    let mut cookie = String::new();
    for path in [
        "/ui/",
        "/ui/streams",
        "/ui/tail",
        "/ui/time-travel",
        "/ui/projections",
        "/ui/dead-letters",
        "/ui/process-managers",
        "/ui/schemas",
    ] {
        let response = fetch(base, path, &cookie).await;
        assert_eq!(response.status(), 200, "{path}");
        if let Some(set) = set_cookie(&response, "cairn_session") {
            cookie = set;
        }
        let csp = response.headers()["content-security-policy"].to_str().unwrap().to_owned();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        let html = response.bytes().await.unwrap().len();
        let weight = html + assets;
        assert!(weight <= PAGE_WEIGHT_MAX, "{path}: {html} B of HTML + {assets} B of CSS and JS");
    }
    server.kill().await;
}

#[test]
fn the_screenshots_in_docs_are_of_the_current_console() {
    // Updating: the browser test writes them (in whichever order the two run).
    if updating_screenshots() {
        return;
    }
    let docs = root().join("docs");
    let recorded = std::fs::read_to_string(docs.join("console-screenshots.sha256"))
        .expect("docs/console-screenshots.sha256: rerun `cargo test -p cairn --test console` with CAIRN_UPDATE_SCREENSHOTS=1");
    assert_eq!(
        recorded.trim(),
        console_sources_hash(),
        "the console's templates or static files changed since docs/console-*.png were taken: \
         rerun `CAIRN_UPDATE_SCREENSHOTS=1 cargo test -p cairn --test console` and commit them"
    );
    for name in ["console-dashboard.png", "console-stream.png"] {
        let path = docs.join(name);
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: a PNG");
        assert_eq!(png_size(&png), (webdriver::WIDTH, webdriver::HEIGHT), "{name}: 1280×800");
        assert!(
            png.len() as u64 <= DOC_PNG_MAX,
            "{name}: {} bytes (at most {DOC_PNG_MAX})",
            png.len()
        );
    }
}

/// Serves one page on a loopback port, whose script logs an error and whose image is
/// missing (404): for the harness's own test. Its URL.
async fn faulty_site() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]);
                let (status, body) = if request.starts_with("GET / ") {
                    let html = "<!doctype html><html><head><link rel=icon href='data:,'></head>\
                                <body><h1>harness</h1><img src='/missing.png' alt=''>\
                                <script>console.error('boom from the page')</script></body></html>";
                    ("200 OK", html)
                } else {
                    ("404 Not Found", "")
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_sees_console_errors_and_failed_requests() {
    watchdog();
    let _turn = TURN.lock().await;
    let Some(driver) = driver().await else { return };
    let browser = driver.browser().await;
    let url = faulty_site().await;
    browser.client.goto(&url).await.unwrap();
    let severe: Vec<_> = browser.log().await.into_iter().filter(|e| e.level == "SEVERE").collect();
    assert!(
        severe
            .iter()
            .any(|e| e.source == "console-api" && e.message.contains("boom from the page")),
        "console.error is caught: {severe:#?}"
    );
    assert!(
        severe.iter().any(|e| e.source == "network" && e.message.contains("missing.png")),
        "a 404 is caught: {severe:#?}"
    );
    assert!(browser.log().await.is_empty(), "each entry is handed out once");
    let png = browser.screenshot(&screenshot_dir().join("harness.png")).await;
    assert_eq!(png_size(&png), (webdriver::WIDTH, webdriver::HEIGHT));
    browser.close().await;
    driver.stop().await;
}
