//! #16 end to end through the binary: an exposed address needs auth, the CLI sends its
//! token, `cairn tokens` manages tokens, and NATS commands get the same checks as HTTP.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::{CAIRN, Server, free_port};
use tokio::process::Command;

/// `cairn ARGS` against `url` with `token` in `CAIRN_TOKEN` (none: unset).
async fn cairn_as(url: &str, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(CAIRN);
    command.args(args).env("CAIRN_URL", url).env_remove("CAIRN_TOKEN").stdin(Stdio::null());
    command.env_remove("CAIRN_TOKEN_FILE");
    if let Some(token) = token {
        command.env("CAIRN_TOKEN", token);
    }
    let out = command.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_address_without_auth_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("0.0.0.0:{}", free_port());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(CAIRN)
            .args(["serve", "--listen", &listen, "--data-dir"])
            .arg(dir.path())
            .env_remove("CAIRN_ADMIN_TOKEN_FILE")
            .env_remove("CAIRN_INSECURE")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("refused at once")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("without authentication") && stderr.contains("--insecure"), "{stderr}");
    assert!(!dir.path().join("events.db").exists(), "nothing was opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_tokens_and_sends_them() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, admin, _) = cairn_as("http://127.0.0.1:1", None, &["tokens", "generate"]).await;
    assert!(ok && admin.trim().starts_with("cairn_"), "{admin}");
    let admin = admin.trim().to_owned();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{admin}\n")).unwrap();
    let data = dir.path().join("data");
    let flags = [
        "--data-dir".into(),
        data.clone().into_os_string(),
        "--admin-token-file".into(),
        file.clone().into_os_string(),
    ];
    let server = support::ServeProcess::start_at(CAIRN, free_port(), &flags, &[]).await;
    let url = server.base.as_str();
    let (ok, _, err) = cairn_as(url, None, &["projections"]).await;
    assert!(!ok && err.contains("unauthorized"), "{err}");
    let (ok, out, err) = cairn_as(url, Some(&admin), &["projections"]).await;
    assert!(ok, "{out}{err}");
    let (ok, reader, err) =
        cairn_as(url, Some(&admin), &["tokens", "create", "--name", "dash", "--role", "reader"])
            .await;
    assert!(ok, "{err}");
    let reader = reader.trim().to_owned();
    let (ok, _, err) = cairn_as(url, Some(&reader), &["projections"]).await;
    assert!(!ok && err.contains("forbidden"), "a reader is no admin: {err}");
    let (ok, _, err) = cairn_as(url, Some(&reader), &["read", "no-such-stream"]).await;
    assert!(!err.contains("unauthorized") && !err.contains("forbidden"), "{ok} {err}");
    let (_, list, _) = cairn_as(url, Some(&admin), &["tokens", "list", "--json"]).await;
    let list: Value = serde_json::from_str(&list).unwrap();
    let id = list["tokens"][0]["id"].as_str().unwrap().to_owned();
    assert!(!list.to_string().contains(&reader), "the list never shows a token");
    let (ok, _, err) = cairn_as(url, Some(&admin), &["tokens", "revoke", &id]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = cairn_as(url, Some(&reader), &["read", "no-such-stream"]).await;
    assert!(!ok && err.contains("unauthorized"), "revoked: {err}");
    // --token-file wins over CAIRN_TOKEN.
    let file_arg = file.to_str().unwrap();
    let (ok, _, err) =
        cairn_as(url, Some(&reader), &["projections", "--token-file", file_arg]).await;
    assert!(ok, "{err}");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_commands_carry_the_token_and_get_the_same_checks() {
    let Some(nats) = cairn_nats::testing::nats_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let admin = "cairn_nats-test-admin-token-0123456789abcdef";
    let file = dir.path().join("admin.token");
    std::fs::write(&file, admin).unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (public, namespace, commands) =
        (format!("CAIRN_TA_{}", id.to_uppercase()), format!("t{id}."), format!("t{id}.commands"));
    let env = [
        ("CAIRN_NATS_URL", nats.as_str()),
        ("CAIRN_NATS_PUBLIC_STREAM", public.as_str()),
        ("CAIRN_NATS_PUBLIC_NAMESPACE", namespace.as_str()),
        ("CAIRN_NATS_COMMANDS", commands.as_str()),
        ("CAIRN_ADMIN_TOKEN_FILE", file.to_str().unwrap()),
    ];
    let server = Server::start(&dir.path().join("data"), &env).await;
    let (ok, reader, err) = cairn_as(
        &server.base,
        Some(admin),
        &["tokens", "create", "--name", "viewer", "--role", "reader"],
    )
    .await;
    assert!(ok, "{err}");
    let client = async_nats::connect(&nats).await.unwrap();
    let order = json!({"order_id": "o-auth", "customer_id": "c"});
    let mut answers = Vec::new();
    for token in [None, Some(reader.trim()), Some(admin)] {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(token) = token {
            headers.insert("Authorization", format!("Bearer {token}").as_str());
        }
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            client.request_with_headers(
                format!("{commands}.create_order"),
                headers,
                order.to_string().into(),
            ),
        )
        .await
        .expect("a reply")
        .expect("request");
        let status = reply.headers.as_ref().unwrap().get("Cairn-Status").unwrap().to_string();
        let body: Value = serde_json::from_slice(&reply.payload).unwrap();
        answers.push((status, body["error"].as_str().map(str::to_owned)));
    }
    assert_eq!(
        answers,
        [
            ("401".to_owned(), Some("unauthorized".to_owned())),
            ("403".to_owned(), Some("forbidden".to_owned())),
            ("201".to_owned(), None),
        ]
    );
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(&public).await;
    server.kill().await;
}
