//! The connection-level limits of `cairn serve` and HTTPS, against the real binary over
//! real TCP (#17): slow headers are cut off, the connection cap refuses new connections
//! without touching open ones, a trickled body gets `408 request_timeout` while a live
//! subscription outlives the deadline, and `--tls-cert`/`--tls-key` serve HTTPS only, to
//! reqwest and to the `cairn` CLI with `--ca-file`.

mod support;

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{CAIRN, ServeProcess, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How much later than its deadline the server may act (a loaded CI machine).
const MARGIN: Duration = Duration::from_secs(5);

/// `cairn serve` on a fresh embedded store with extra flags.
async fn serve(dir: &Path, flags: &[&str]) -> ServeProcess {
    let mut args: Vec<OsString> = vec!["--data-dir".into(), dir.into()];
    args.extend(flags.iter().map(OsString::from));
    ServeProcess::start_at(CAIRN, free_port(), &args, &[]).await
}

/// One HTTP/1.1 answer read off a raw socket: status and body (by `Content-Length`).
/// `None` when the connection ends (or breaks) before a whole answer.
async fn read_answer(socket: &mut TcpStream) -> Option<(u16, String)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    Some((status, String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned()))
}

/// `GET /health/live` on an open keep-alive connection.
async fn live(socket: &mut TcpStream) -> Option<(u16, String)> {
    socket.write_all(b"GET /health/live HTTP/1.1\r\nHost: cairn\r\n\r\n").await.ok()?;
    tokio::time::timeout(MARGIN, read_answer(socket)).await.ok().flatten()
}

/// Whether the server has closed `socket` (end of file or reset), waiting until `by`.
async fn closed_by(socket: &mut TcpStream, by: Instant) -> bool {
    let mut chunk = [0u8; 1024];
    loop {
        let left = by.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // Whatever the server says before closing (a 408, say) is not the point.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stalling_in_their_headers_are_closed_and_others_are_served() {
    const STALLED: usize = 120;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--header-read-timeout-secs", "1"]).await;
    let port = server.port();
    let started = Instant::now();
    let mut stalled = Vec::with_capacity(STALLED);
    for i in 0..STALLED {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        // Half a request: the line, one header, never the blank line that ends the head.
        let half = format!("GET /health/live HTTP/1.1\r\nHost: cairn\r\nX-N: {i}");
        socket.write_all(half.as_bytes()).await.unwrap();
        stalled.push(socket);
    }
    // Meanwhile a well-behaved client is served.
    let answer = reqwest::get(format!("{}/health/live", server.base)).await.unwrap();
    assert_eq!(answer.status(), 200);
    let by = started + Duration::from_secs(1) + MARGIN;
    let mut open = 0;
    for socket in &mut stalled {
        if !closed_by(socket, by).await {
            open += 1;
        }
    }
    assert_eq!(
        open,
        0,
        "{open} of {STALLED} stalled connections still open after {:?}",
        started.elapsed()
    );
    let answer = reqwest::get(format!("{}/health/live", server.base)).await.unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_are_closed_and_open_ones_kept() {
    const CAP: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--max-connections", &CAP.to_string()]).await;
    let port = server.port();
    let mut held = Vec::new();
    // The readiness probe's connection may hold its slot a moment after it closed: a
    // connection refused meanwhile is tried again.
    let deadline = Instant::now() + MARGIN;
    while held.len() < CAP {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        // Served once: the server has accepted it and counts it.
        if live(&mut socket).await.map(|a| a.0) == Some(200) {
            held.push(socket);
        } else {
            assert!(Instant::now() < deadline, "only {} connections served", held.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The sixth: the kernel completes the TCP handshake, the server closes it unserved.
    let mut sixth = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = sixth.write_all(b"GET /health/live HTTP/1.1\r\nHost: cairn\r\n\r\n").await;
    let answer = tokio::time::timeout(MARGIN, read_answer(&mut sixth)).await;
    assert!(matches!(answer, Ok(None)), "a connection past the cap was served: {answer:?}");
    // The open ones were not dropped to make room.
    for socket in &mut held {
        assert_eq!(live(socket).await.map(|a| a.0), Some(200), "an open connection was dropped");
    }
    // One released: a new connection is served again.
    drop(held.pop());
    let deadline = Instant::now() + MARGIN;
    loop {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if live(&mut socket).await.map(|a| a.0) == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "no new connection served after one was released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickling_past_the_request_timeout_gets_408_and_a_subscription_outlives_it() {
    let dir = tempfile::tempdir().unwrap();
    // The header-read timeout as short: a subscription must outlive it too (the timer
    // runs only while a request's head is awaited, not while a response streams).
    let server =
        serve(dir.path(), &["--request-timeout-secs", "1", "--header-read-timeout-secs", "1"])
            .await;
    let port = server.port();

    // A live subscription: its headers are out before the deadline, its stream goes on.
    let mut subscription =
        reqwest::get(format!("{}/all/subscribe?from_position=0", server.base)).await.unwrap();
    assert_eq!(subscription.status(), 200);

    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    socket
        .write_all(
            b"POST /streams/slow-1 HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/json\r\nContent-Length: 200\r\nX-Request-Id: slow-body-1\r\n\r\n",
        )
        .await
        .unwrap();
    // A few bytes at a time, then nothing: the body never completes.
    for piece in [&b"{\"expected_"[..], b"version\": ", b"\"any\", "] {
        socket.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = tokio::time::timeout(Duration::from_secs(1) + MARGIN, read_answer(&mut socket))
        .await
        .expect("no answer within the request timeout and the margin")
        .expect("the connection ended without an answer");
    let elapsed = started.elapsed();
    assert_eq!(answer.0, 408, "{}", answer.1);
    let body: Value = serde_json::from_str(&answer.1).unwrap();
    assert_eq!(body["error"], "request_timeout", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert_eq!(body["request_id"], "slow-body-1", "{body}");
    assert!(elapsed >= Duration::from_millis(900), "answered before the deadline: {elapsed:?}");

    // Past both deadlines, the subscription still delivers a new event.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let append = json!({"expected_version": "any", "events": [{
        "aggregate_type": "Account", "event_type": "Deposited", "data": {"amount": 1}}]});
    let answer = reqwest::Client::new()
        .post(format!("{}/streams/after-deadline", server.base))
        .json(&append)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let mut seen = String::new();
    let found = tokio::time::timeout(MARGIN, async {
        while let Ok(Some(chunk)) = subscription.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("after-deadline") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the subscription did not deliver the event: {seen}");
}

/// A client trusting the CA in `ca` (PEM), besides the system's roots.
fn trusting(ca: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `cairn serve --listen 127.0.0.1:<port> <args>` speaking HTTPS, ready (killed on drop).
/// Started here, not through `ServeProcess`: its readiness probe speaks plain HTTP.
async fn serve_https(
    port: u16,
    args: &[OsString],
    client: &reqwest::Client,
) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(CAIRN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--log", "warn"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(answer) =
            client.get(format!("https://127.0.0.1:{port}/health/ready")).send().await
            && answer.status() == 200
        {
            return child;
        }
        assert!(child.try_wait().unwrap().is_none(), "cairn serve exited");
        assert!(Instant::now() < deadline, "cairn serve never answered over HTTPS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The TLS flags for the certificates of [`certificates`].
fn tls_args(cert: &Path, key: &Path) -> Vec<OsString> {
    vec!["--tls-cert".into(), cert.into(), "--tls-key".into(), key.into()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_server_speaks_https_only_to_clients_that_trust_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = support::certificates(dir.path());
    let port = free_port();
    let trusting = trusting(&ca);
    let mut args: Vec<OsString> = vec!["--data-dir".into(), dir.path().join("data").into()];
    args.extend(tls_args(&cert, &key));
    let mut child = serve_https(port, &args, &trusting).await;
    let https = format!("https://127.0.0.1:{port}");
    let answer = trusting.get(format!("{https}/health/live")).send().await.unwrap();
    assert_eq!(answer.status(), 200);

    // Plain HTTP on the same port gets no answer.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/health/live")).await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // Nor does a client that does not trust the CA.
    let untrusting = reqwest::get(format!("{https}/health/live")).await;
    assert!(untrusting.is_err(), "a client without the CA was answered: {untrusting:?}");

    // The CLI, with and without the CA.
    let ca_arg = ca.to_str().unwrap();
    let run = support::cairn(&https, &["streams", "stats", "--json", "--ca-file", ca_arg]).await;
    assert!(run.ok, "cairn streams stats over HTTPS failed: {}", run.stderr);
    let stats: Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(stats.is_array(), "{stats}");
    let run = support::cairn(&https, &["streams", "stats", "--json"]).await;
    assert!(!run.ok, "cairn without --ca-file trusted the private CA: {}", run.stdout);
    assert!(run.stderr.contains("cannot reach"), "{}", run.stderr);

    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Two HTTPS processes sharing PostgreSQL: an admin request sent to the one that does not
/// lead the consumer is forwarded over HTTPS (`https://<--listen>`, trusting
/// `--tls-ca-file`) to the one that does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_are_forwarded_over_https_to_the_leader() {
    const VIEW: &str = "customer_view";
    let backend = cairn_testkit::Backend::Postgres;
    if !backend.enabled() {
        eprintln!("skipped: CAIRN_TEST_POSTGRES_URL is not set");
        return;
    }
    let place = backend.place().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = support::certificates(dir.path());
    let client = trusting(&ca);
    let mut args = cairn_testkit::serve::place_args(&place);
    args.extend(tls_args(&cert, &key));
    args.extend(["--tls-ca-file".into(), ca.clone().into_os_string()]);
    let ports = [free_port(), free_port()];
    let _a = serve_https(ports[0], &args, &client).await;
    let _b = serve_https(ports[1], &args, &client).await;
    let urls = ports.map(|p| format!("https://127.0.0.1:{p}"));

    // Which one leads the view, once both agree (each reads the registry on its own).
    let row = async |url: &str| -> Value {
        let rows: Value = client
            .get(format!("{url}/admin/projections"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        rows.as_array().unwrap().iter().find(|r| r["name"] == VIEW).unwrap().clone()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (leader, follower) = loop {
        let rows = [row(&urls[0]).await, row(&urls[1]).await];
        let leading: Vec<usize> =
            (0..2).filter(|&i| rows[i]["leader"]["leading"] == true).collect();
        if let [i] = leading[..]
            && rows
                .iter()
                .all(|r| r["leader"]["url"] == urls[i].as_str() && r["status"] == "running")
        {
            break (urls[i].clone(), urls[1 - i].clone());
        }
        assert!(Instant::now() < deadline, "no settled leader: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (action, status) in [("pause", "paused"), ("resume", "running")] {
        let answer = client
            .post(format!("{follower}/admin/projections/{VIEW}/{action}"))
            .send()
            .await
            .unwrap();
        let code = answer.status();
        let handled_by = answer.headers().get("cairn-handled-by").cloned();
        let row: Value = answer.json().await.unwrap();
        assert_eq!(code, 200, "{action}: {row}");
        assert_eq!(handled_by.unwrap(), leader.as_str(), "{action}: not forwarded");
        assert_eq!(row["status"], status, "{action}: {row}");
    }
}
