//! `docs/openapi.json` is the document `cairn serve` serves at `GET /openapi.json`
//! (pretty-printed, with a final newline): users read it without running the server, so
//! it must not drift. `CAIRN_UPDATE_OPENAPI=1 cargo test -p cairn --test openapi_doc`
//! rewrites it from the running server.

mod support;

use std::path::PathBuf;

use serde_json::Value;
use support::Server;

/// The checked-in document, from the workspace root.
fn checked_in_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

/// How the document is written to disk: two-space pretty JSON and a final newline.
fn render(doc: &Value) -> String {
    let mut text = serde_json::to_string_pretty(doc).expect("a JSON value serialises");
    text.push('\n');
    text
}

#[tokio::test]
async fn docs_openapi_json_is_what_cairn_serve_serves() {
    let dir = tempfile::tempdir().unwrap();
    let cairn = Server::start(dir.path(), &[]).await;
    let r = reqwest::get(format!("{}/openapi.json", cairn.base)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let served: Value = r.json().await.unwrap();
    cairn.kill().await;
    let served = render(&served);

    let path = checked_in_path();
    if std::env::var_os("CAIRN_UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        std::fs::write(&path, &served).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != served {
        let first = checked_in
            .lines()
            .zip(served.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| checked_in.lines().count().min(served.lines().count()));
        panic!(
            "docs/openapi.json differs from what `cairn serve` serves (first at line {}: \
             checked in {:?}, served {:?}).\nRegenerate it with \
             `CAIRN_UPDATE_OPENAPI=1 cargo test -p cairn --test openapi_doc` and commit it.",
            first + 1,
            checked_in.lines().nth(first).unwrap_or("<end of file>"),
            served.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}
