//! The HTTP client behind every operator command: one base URL, JSON in and out, and
//! server errors turned into one readable line (`<code>: <message> (HTTP <status>)`).

use anyhow::{Context, anyhow};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// Connection flags shared by every operator command.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// Base URL of the running `cairn serve`.
    #[arg(long, env = "CAIRN_URL", default_value = "http://127.0.0.1:7070", global = true)]
    pub url: String,
    /// Print raw JSON (for scripts) instead of readable text.
    #[arg(long, global = true)]
    pub json: bool,
    /// A file holding the API token sent as `Authorization: Bearer <token>` (the token
    /// itself can be given in `CAIRN_TOKEN` instead; this file wins).
    #[arg(long, env = "CAIRN_TOKEN_FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// A PEM file of root certificates trusted for an `https://` `--url` besides the
    /// system's (e.g. the private CA that signed the server's certificate).
    #[arg(long, env = "CAIRN_CA_FILE", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// The environment variable holding the API token itself.
pub const TOKEN_ENV: &str = "CAIRN_TOKEN";

impl Conn {
    /// The token to send: `--token-file`'s content, else `CAIRN_TOKEN`, else none (a
    /// server without auth).
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.token_file {
            return crate::tokens::read_token_file(path).map(Some);
        }
        Ok(std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()))
    }
}

/// A client of one server.
pub struct Client {
    http: reqwest::Client,
    base: Url,
}

impl Client {
    /// A client of the server at `conn.url`.
    pub fn new(conn: &Conn) -> anyhow::Result<Self> {
        let mut base =
            Url::parse(&conn.url).with_context(|| format!("invalid --url {:?}", conn.url))?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = conn.token()? {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the API token is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder().default_headers(headers);
        if let Some(path) = &conn.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --ca-file {}", path.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-file {}: not PEM certificates", path.display()))?;
            anyhow::ensure!(
                !certificates.is_empty(),
                "--ca-file {}: no certificate in it",
                path.display()
            );
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Self { http, base })
    }

    /// The URL of `segments` (each percent-encoded as one path segment) under the base.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("an http URL has a path");
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    /// A request builder for `method` on `url`.
    pub fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    /// Sends `request`; a non-2xx answer becomes an error carrying the server's code.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<(StatusCode, String)> {
        let request = request.build().context("building the request")?;
        let target = format!("{} {}", request.method(), request.url().path());
        let response = self.http.execute(request).await.map_err(|e| {
            anyhow!("cannot reach {}: {}", self.base.as_str().trim_end_matches('/'), root_cause(&e))
        })?;
        let status = response.status();
        let body =
            response.text().await.with_context(|| format!("reading the answer to {target}"))?;
        if status.is_success() {
            Ok((status, body))
        } else {
            Err(anyhow!("{target}: {}", describe_error(status, &body)))
        }
    }

    /// `GET` of `segments` with `query`, parsed as JSON.
    pub async fn get_json(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let (_, body) = self.send(self.request(Method::GET, url)).await?;
        parse(&body)
    }

    /// `method` on `segments` with an optional JSON body; the answer parsed as JSON
    /// (`null` when it is empty).
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.request(method, self.url(segments));
        if let Some(body) = body {
            request = request.json(body);
        }
        let (_, text) = self.send(request).await?;
        if text.trim().is_empty() { Ok(Value::Null) } else { parse(&text) }
    }
}

/// Parses a JSON answer.
pub fn parse(body: &str) -> anyhow::Result<Value> {
    serde_json::from_str(body).context("the server's answer is not JSON")
}

/// One line for an error answer: the contract's `{"error", "message"}` when present.
pub fn describe_error(status: StatusCode, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let code = parsed.as_ref().and_then(|v| v.get("error")).and_then(Value::as_str);
    let message = parsed.as_ref().and_then(|v| v.get("message")).and_then(Value::as_str);
    let mut extra = String::new();
    if let Some(reasons) = parsed.as_ref().and_then(|v| v.get("reasons")).and_then(Value::as_array)
    {
        let reasons: Vec<&str> = reasons.iter().filter_map(Value::as_str).collect();
        extra = format!(" [{}]", reasons.join("; "));
    }
    match (code, message) {
        (Some(code), Some(message)) => {
            format!("{code}: {message}{extra} (HTTP {})", status.as_u16())
        }
        (Some(code), None) => format!("{code}{extra} (HTTP {})", status.as_u16()),
        _ => {
            let text =
                body.trim().lines().next().unwrap_or("").chars().take(200).collect::<String>();
            if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            }
        }
    }
}

/// The innermost cause of a transport error (e.g. "Connection refused").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
