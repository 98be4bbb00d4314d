//! `cairn serve` against a NATS server that demands a token: with `--nats-token-file`
//! (here its variable, `CAIRN_NATS_TOKEN_FILE`) the relay publishes and commands over NATS
//! are answered; both go through the same authenticated connection options.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

mod support;

/// A private token-protected `nats-server`; killed on drop.
struct TokenNats {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TokenNats {
    fn start(token: &str) -> Option<Self> {
        if Command::new("nats-server").arg("--version").output().is_err() {
            eprintln!("*** SKIPPED: no nats-server on PATH ***");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("server.conf");
        std::fs::write(&conf, format!("authorization {{ token: \"{token}\" }}\n")).unwrap();
        let port = support::free_port();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-sd")
            .arg(dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs");
        let server = Self { child, port, dir };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not listen on {port}");
    }
}

impl Drop for TokenNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_token_file_relays_events_and_answers_commands() {
    let Some(nats) = TokenNats::start("s3cret-t0ken") else { return };
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let token_file = nats.dir.path().join("token");
    std::fs::write(&token_file, "s3cret-t0ken\n").unwrap();
    let token_file = token_file.display().to_string();
    let data = tempfile::tempdir().unwrap();
    let env = [
        ("CAIRN_NATS_URL", url.as_str()),
        ("CAIRN_NATS_INTERNAL", "true"),
        ("CAIRN_NATS_TOKEN_FILE", token_file.as_str()),
    ];
    let server = support::Server::start(data.path(), &env).await;
    let http = reqwest::Client::new();
    let body = json!({"events": [{"aggregate_type": "Account", "event_type": "Credited", "data": {"i": 1}}]});
    let r = http.post(format!("{}/streams/acct-1", server.base)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let options = cairn_nats::NatsConnectOptions {
        token_file: Some(token_file.clone().into()),
        ..cairn_nats::NatsConnectOptions::default()
    };
    let client = cairn_nats::connect(&url, &options).await.expect("connect with the token");
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let messages = match js.get_stream("CAIRN_EVENTS").await {
            Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        };
        if messages >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Commands over NATS: the server's subscription authenticated too.
    let order = json!({"order_id": "o-auth", "customer_id": "c", "items": [{"product_id": "p", "quantity": 1, "price": 5}]});
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request("cairn.commands.create_order", order.to_string().into()),
    )
    .await
    .expect("a reply")
    .expect("request");
    let status = reply.headers.as_ref().unwrap().get("Cairn-Status").unwrap().as_str().to_owned();
    let created: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(status, "201", "{created}");
}
