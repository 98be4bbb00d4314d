//! Headless Chromium for the console's end-to-end tests (`tests/console.rs`): a
//! `chromedriver` child process on a free loopback port, one browser session on it, and
//! the browser's log (console errors, failed requests, CSP violations) read after every
//! page visit.
//!
//! Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them). Run as
//! root, Chromium needs `--no-sandbox`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::support::free_port;

/// The browser window, and so every screenshot: 1280×800.
pub const WIDTH: u32 = 1280;
/// See [`WIDTH`].
pub const HEIGHT: u32 = 800;
/// Longest wait for something a page does by itself (a redirect, a live refresh).
pub const SETTLE: Duration = Duration::from_secs(20);

/// `chromedriver`, found on `PATH` (or named by `CAIRN_CHROMEDRIVER`); `None` when absent.
pub fn chromedriver() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CAIRN_CHROMEDRIVER") {
        return Some(path.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("chromedriver"))
        .find(|candidate| candidate.is_file())
}

/// A running `chromedriver`, killed with its browsers when dropped.
pub struct Driver {
    child: Child,
    /// Its process group, which its browsers join: killed whole, so that a test that
    /// fails (and never closes its session) leaves no Chromium behind.
    group: Option<u32>,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Driver {
    /// Starts `binary --port=<free port>` and waits until `GET /status` says ready.
    pub async fn start(binary: &Path) -> Self {
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..200 {
            let status = http.get(format!("{url}/status")).send().await;
            if let Ok(status) = status
                && let Ok(body) = status.json::<Value>().await
                && body["value"]["ready"] == true
            {
                let group = child.id();
                return Self { child, group, url };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("chromedriver on port {port} never said it was ready");
    }

    /// A new headless browser session on this driver.
    pub async fn browser(&self) -> Browser {
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--window-size={WIDTH},{HEIGHT}"),
            // Same pixels on every machine: no HiDPI scaling, no scroll bar fading in.
            "--force-device-scale-factor=1".to_owned(),
            "--hide-scrollbars".to_owned(),
        ];
        args.push("--lang=en-US".to_owned());
        let mut options = json!({ "args": args });
        // Debian's chromedriver looks for `chrome`; its browser is `chromium`.
        let binary = std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        if Path::new(&binary).is_file() {
            options["binary"] = json!(binary);
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), options);
        // Without it chromedriver keeps only warnings and up, and the log endpoint is off.
        capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("chromedriver starts a Chromium session");
        let session = client.session_id().await.unwrap().expect("a session id");
        let browser = Browser { client, log_url: format!("{}/session/{session}/se/log", self.url) };
        // `--window-size` is the window's, and even headless it has a frame: the page
        // (and so a screenshot) is 1280×800 once the window is larger by the frame.
        let frame = browser
            .js("return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];", vec![])
            .await;
        let frame = |i: usize| u32::try_from(frame[i].as_u64().unwrap()).unwrap();
        browser.client.set_window_size(WIDTH + frame(0), HEIGHT + frame(1)).await.unwrap();
        browser
    }

    /// Stops the driver and its browsers, and waits for the driver to be gone.
    pub async fn stop(mut self) {
        self.kill_group();
        let _ = self.child.wait().await;
    }

    fn kill_group(&mut self) {
        if let Some(group) = self.group.take() {
            // No `libc` (and no unsafe code) in tests: kill(1) signals the group.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// One entry of the browser's log.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, ...
    pub level: String,
    /// Where it came from: `network`, `console-api`, `security` (CSP), `javascript`, ...
    pub source: String,
    /// The text, with the URL it is about.
    pub message: String,
}

/// A browser session.
pub struct Browser {
    /// The `WebDriver` client (for what the helpers below do not cover).
    pub client: Client,
    /// `chromedriver`'s `POST /session/{id}/se/log`: not a W3C command, so not `fantoccini`'s.
    log_url: String,
}

impl Browser {
    /// Every log entry since the last call (chromedriver hands each entry out once).
    pub async fn log(&self) -> Vec<LogEntry> {
        let answer = reqwest::Client::new()
            .post(&self.log_url)
            .json(&json!({ "type": "browser" }))
            .send()
            .await
            .expect("chromedriver answers")
            .json::<Value>()
            .await
            .expect("a JSON log");
        let entries = answer["value"].as_array().unwrap_or_else(|| panic!("no log: {answer}"));
        entries
            .iter()
            .map(|e| LogEntry {
                level: e["level"].as_str().unwrap_or_default().to_owned(),
                source: e["source"].as_str().unwrap_or_default().to_owned(),
                message: e["message"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// Asserts the log since the last call has no `SEVERE` entry: no script error, no
    /// `console.error`, no CSP violation, no request answered 4xx/5xx or failed.
    pub async fn assert_clean(&self, what: &str) {
        let severe: Vec<LogEntry> =
            self.log().await.into_iter().filter(|e| e.level == "SEVERE").collect();
        // The browser asks for `/favicon.ico` by itself unless the page names an icon
        // (after the page's load: its entry may come with the next page's).
        let hint = if severe.iter().any(|e| e.message.contains("/favicon.ico")) {
            "\n(/favicon.ico: the page names no icon; `<link rel=\"icon\" href=\"data:,\">` does)"
        } else {
            ""
        };
        assert!(severe.is_empty(), "{what}: the browser logged errors: {severe:#?}{hint}");
    }

    /// Opens `url`, waits for it to load, and asserts the page logged no error.
    pub async fn visit(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        self.assert_clean(url).await;
    }

    /// The element matching `css`, waiting up to [`SETTLE`] for it.
    pub async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(SETTLE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
    }

    /// The element matching `css`, now.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let url = self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{url}: no {css}: {e}"))
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    /// The text of the element matching `css`, trimmed.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap().trim().to_owned()
    }

    /// The page's path and query.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Waits until the page's path (and query) satisfies `check`.
    pub async fn wait_for_path(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let path = self.path().await;
            if check(&path) {
                return path;
            }
            assert!(tokio::time::Instant::now() < deadline, "never {what}; still at {path}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// The visible form fields (`input` but hidden ones, `select`, `textarea`) that have
    /// no accessible name from a `<label>`, `aria-label` or `aria-labelledby`: their HTML.
    pub async fn unlabelled_fields(&self) -> Vec<String> {
        let found = self
            .js(
                r#"
                const unlabelled = [];
                for (const el of document.querySelectorAll("input, select, textarea")) {
                    if (el.type === "hidden" || el.getClientRects().length === 0) continue;
                    const named = (el.labels && [...el.labels].some(l => l.textContent.trim()))
                        || (el.getAttribute("aria-label") || "").trim()
                        || (el.getAttribute("aria-labelledby") || "").split(/\s+/)
                            .some(id => id && document.getElementById(id)
                                && document.getElementById(id).textContent.trim());
                    if (!named) unlabelled.push(el.outerHTML);
                }
                return unlabelled;
                "#,
                vec![],
            )
            .await;
        found.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    }

    /// A PNG of the window (1280×800), written to `path`.
    pub async fn screenshot(&self, path: &Path) -> Vec<u8> {
        // Nothing half drawn: web fonts (none expected) and layout settled.
        self.js("return document.fonts ? document.fonts.ready.then(() => true) : true;", vec![])
            .await;
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &png).unwrap();
        png
    }

    /// The value of the browser's cookie `name` (`HttpOnly` ones too).
    pub async fn cookie(&self, name: &str) -> String {
        self.client
            .get_named_cookie(name)
            .await
            .unwrap_or_else(|e| panic!("no cookie {name}: {e}"))
            .value()
            .to_owned()
    }

    /// Ends the session (and its browser).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
