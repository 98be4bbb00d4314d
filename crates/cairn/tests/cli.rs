//! The `cairn` operator commands against a real `cairn serve` child process: each
//! subcommand's readable and `--json` output, one-line errors with a non-zero exit, `tail`
//! resuming across a server restart, export → import round trips (SQLite → SQLite, and
//! SQLite → PostgreSQL when `CAIRN_TEST_POSTGRES_URL` is set), and progress output.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Run, Server, cairn};

async fn post(base: &str, path: &str, body: &Value, headers: &[(&str, &str)]) -> Value {
    let mut req = reqwest::Client::new().post(format!("{base}{path}")).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

async fn get(base: &str, path: &str) -> Value {
    reqwest::get(format!("{base}{path}")).await.unwrap().json().await.unwrap()
}

/// Appends `n` events to a generic `Account` stream, one request each.
async fn deposits(base: &str, stream: &str, n: u64) {
    for v in 1..=n {
        let body = json!({"expected_version": v - 1, "events": [{
            "aggregate_type": "Account", "event_type": "Deposited",
            "data": {"amount": 59.98, "n": v}, "metadata": {"user_id": "u-1", "seq": v}}]});
        post(base, &format!("/streams/{stream}"), &body, &[]).await;
    }
}

fn json_of(run: &Run) -> Value {
    assert!(run.ok, "cairn failed: {}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// An error is one line on stderr, nothing on stdout, and a non-zero exit.
fn assert_one_line_error(run: &Run, needle: &str) {
    assert!(!run.ok, "expected a failure, got: {}", run.stdout);
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr.lines().count(), 1, "not one line: {:?}", run.stderr);
    assert!(run.stderr.contains(needle), "{:?} lacks {needle:?}", run.stderr);
}

/// Every `$all` event with what an import must keep (not positions, timestamps).
async fn all_kept(base: &str) -> Vec<Value> {
    let all = get(base, "/all?limit=10000").await;
    all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            json!([
                e["event_id"],
                e["aggregate_id"],
                e["aggregate_type"],
                e["event_type"],
                e["version"],
                e["data"],
                e["metadata"]
            ])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_projections_streams_and_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let url = server.base.as_str();
    deposits(url, "acct-1", 3).await;

    let run = cairn(url, &["health"]).await;
    assert!(run.ok && run.stdout.contains("ready"), "{}", run.stdout);
    assert_eq!(json_of(&cairn(url, &["health", "--json"]).await), json!({"status": "ok"}));

    let run = cairn(url, &["projections"]).await;
    assert!(run.stdout.starts_with("NAME"), "{}", run.stdout);
    assert!(run.stdout.contains("order_summary"), "{}", run.stdout);
    let list = json_of(&cairn(url, &["projections", "list", "--json"]).await);
    assert!(list.as_array().unwrap().iter().any(|p| p["name"] == "order_summary"));

    let run = cairn(url, &["streams", "stats", "--top", "5"]).await;
    assert!(run.stdout.lines().nth(1).unwrap().starts_with("acct-1"), "{}", run.stdout);
    let stats = json_of(&cairn(url, &["streams", "stats", "--json"]).await);
    assert_eq!(stats[0]["aggregate_id"], "acct-1");
    assert_eq!(stats[0]["event_count"], 3);

    let schema = dir.path().join("paid.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","required":["amount"],"properties":{"amount":{"type":"number"}}}"#,
    )
    .unwrap();
    let schema = schema.to_str().unwrap();
    let run = cairn(url, &["schemas", "put", "Paid", schema, "--schema-version", "1"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "schema Paid version 1 registered");
    let listed = json_of(&cairn(url, &["schemas", "--json"]).await);
    assert!(
        listed.as_array().unwrap().iter().any(|s| s["event_type"] == "Paid" && s["version"] == 1)
    );
    assert!(cairn(url, &["schemas", "list"]).await.stdout.contains("Paid"));
    // A new required field is not BACKWARD compatible: refused, said in one line.
    let breaking = dir.path().join("paid2.json");
    std::fs::write(
        &breaking,
        r#"{"version":2,"schema":{"type":"object","required":["amount","currency"],"properties":{"amount":{"type":"number"},"currency":{"type":"string"}}}}"#,
    )
    .unwrap();
    let run = cairn(url, &["schemas", "put", "Paid", breaking.to_str().unwrap()]).await;
    assert_one_line_error(&run, "schema_incompatible");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_forward_backward_from_a_version_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let url = server.base.as_str();
    deposits(url, "acct-r", 5).await;

    let run = cairn(url, &["read", "acct-r"]).await;
    let versions: Vec<&str> = run.stdout.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(versions, ["v1", "v2", "v3", "v4", "v5"]);
    // Data keeps the writer's digits.
    assert!(
        run.stdout
            .lines()
            .next()
            .unwrap()
            .ends_with(r#"Account/acct-r Deposited {"amount":59.98,"n":1}"#),
        "{}",
        run.stdout
    );

    let body = json_of(
        &cairn(url, &["read", "acct-r", "--backward", "--from", "4", "--limit", "2", "--json"])
            .await,
    );
    let got: Vec<u64> =
        body["events"].as_array().unwrap().iter().map(|e| e["version"].as_u64().unwrap()).collect();
    assert_eq!(got, [4, 3]);
    let body = json_of(&cairn(url, &["read", "acct-r", "--from", "4", "--json"]).await);
    assert_eq!(body["events"].as_array().unwrap().len(), 2);
    assert_eq!(body["next_version"], Value::Null);

    assert_one_line_error(&cairn(url, &["read", "no-such-stream"]).await, "not_found");
    server.kill().await;
}

/// ~4 KB events past the stores' 16 MiB page cap: `read` follows the cut pages to the end.
async fn read_prints_a_stream_longer_than_one_page_of_bytes(backend: cairn_testkit::Backend) {
    const EVENTS: u64 = 4_800;
    const BATCH: u64 = 1_000;
    // A batch of 1,000 events of ~4 KB is ~4 MB: above the default body limit.
    const BODY_LIMIT: &str = "8388608";
    let place = backend.place().await;
    let server = Server::start_on(&place, &[("CAIRN_BODY_LIMIT_BYTES", BODY_LIMIT)]).await;
    let url = server.base.as_str();
    let pad = "x".repeat(4_000);
    let mut version = 0;
    while version < EVENTS {
        let events: Vec<Value> = (version + 1..=(version + BATCH).min(EVENTS))
            .map(|n| json!({"aggregate_type": "Ledger", "event_type": "Padded", "data": {"n": n, "pad": pad}}))
            .collect();
        post(
            url,
            "/streams/ledger-long",
            &json!({"expected_version": version, "events": events}),
            &[],
        )
        .await;
        version = (version + BATCH).min(EVENTS);
    }

    let run = cairn(url, &["read", "ledger-long"]).await;
    assert!(run.ok, "{}", run.stderr);
    let versions: Vec<&str> = run.stdout.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(versions.len() as u64, EVENTS);
    assert_eq!(versions.last(), Some(&format!("v{EVENTS}").as_str()));

    let body = json_of(&cairn(url, &["read", "ledger-long", "--json"]).await);
    let got: Vec<u64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (1..=EVENTS).collect::<Vec<_>>());
    assert_eq!(body["next_version"], Value::Null);
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_commands_and_rebuild_with_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let url = server.base.as_str();
    post(url, "/customers", &json!({"customer_id": "cust-1", "name": "A", "email": "a@x.io"}), &[])
        .await;

    assert_eq!(cairn(url, &["dlq"]).await.stdout.trim(), "(none)");
    assert_eq!(
        json_of(&cairn(url, &["dlq", "list", "--projection", "order_summary", "--json"]).await),
        json!([])
    );
    assert_one_line_error(&cairn(url, &["dlq", "retry", "42"]).await, "not_found");
    assert_one_line_error(&cairn(url, &["dlq", "discard", "42"]).await, "not_found");

    let run = cairn(url, &["projections", "rebuild", "customer_view", "--wait"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("rebuild of customer_view done"), "{}", run.stdout);
    assert!(run.stderr.contains("rebuild: customer_view rebuilt"), "{}", run.stderr);
    // Returned only once the rebuilt model was swapped in.
    let rows = get(url, "/admin/projections").await;
    let row = rows.as_array().unwrap().iter().find(|p| p["name"] == "customer_view").unwrap();
    assert_eq!(
        (row["rebuilds_completed"].clone(), row["rebuilds_abandoned"].clone()),
        (json!(1), json!(0))
    );
    let customer = get(url, "/customers/cust-1?min_position=1").await;
    assert_eq!(customer["name"], "A");
    let started =
        json_of(&cairn(url, &["projections", "rebuild", "order_summary", "--json"]).await);
    assert_eq!(started["projection"], "order_summary");
    assert_one_line_error(&cairn(url, &["projections", "rebuild", "nope"]).await, "not_found");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_with_a_non_zero_exit() {
    let url = format!("http://127.0.0.1:{}", support::free_port());
    for args in [&["health"][..], &["projections"], &["read", "x"], &["export"], &["tail"]] {
        assert_one_line_error(&cairn(&url, args).await, "cannot reach");
    }
    assert_one_line_error(&cairn("not a url", &["health"]).await, "invalid --url");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_filters_and_resumes_after_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let server = Server::start_on_port(dir.path(), port, &[]).await;
    let url = server.base.clone();
    deposits(&url, "acct-t", 2).await;
    post(
        &url,
        "/customers",
        &json!({"customer_id": "cust-t", "name": "T", "email": "t@x.io"}),
        &[],
    )
    .await;

    // Catch-up with a filter: only the Account events.
    let run = cairn(
        &url,
        &["tail", "--from", "0", "--aggregate-type", "Account", "--count", "2", "--json"],
    )
    .await;
    let events: Vec<Value> = run.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.iter().map(|e| e["version"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    let run =
        cairn(&url, &["tail", "--from", "0", "--event-type", "CustomerRegistered", "--count", "1"])
            .await;
    assert!(run.stdout.contains("Customer/cust-t CustomerRegistered"), "{}", run.stdout);

    // Live: a tail started at the head sees only what comes next, across a restart.
    let tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["tail", "--aggregate-type", "Account", "--count", "2", "--json", "--url", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    post(&url, "/streams/acct-t", &json!({"expected_version": 2, "events": [{"aggregate_type": "Account", "event_type": "Deposited", "data": {"n": 3}}]}), &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill().await;
    let server = Server::start_on_port(dir.path(), port, &[]).await;
    post(&url, "/streams/acct-t", &json!({"expected_version": 3, "events": [{"aggregate_type": "Account", "event_type": "Deposited", "data": {"n": 4}}]}), &[]).await;
    let out = tokio::time::timeout(Duration::from_secs(30), tail.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    let events: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.iter().map(|e| e["version"].as_u64().unwrap()).collect::<Vec<_>>(), [3, 4]);
    assert!(String::from_utf8(out.stderr).unwrap().contains("reconnecting"));
    server.kill().await;
}

/// Writes a source store with domain events (correlation metadata) and generic streams.
async fn fill_source(url: &str) {
    post(
        url,
        "/customers",
        &json!({"customer_id": "cust-1", "name": "A", "email": "a@x.io"}),
        &[("X-Correlation-Id", "corr-1")],
    )
    .await;
    deposits(url, "acct-a", 3).await;
    post(url, "/customers/cust-1/email", &json!({"email": "b@x.io"}), &[]).await;
    deposits(url, "acct-b", 2).await;
    post(url, "/streams/acct-a", &json!({"expected_version": 3, "events": [
        {"aggregate_type": "Account", "event_type": "Withdrawn", "data": {"amount": "0.10"}, "metadata": {"why": "fee"}},
        {"aggregate_type": "Account", "event_type": "Withdrawn", "data": {"amount": 1.10}}]}), &[]).await;
}

async fn round_trip(target: cairn_testkit::Backend) {
    let source_dir = tempfile::tempdir().unwrap();
    let source = Server::start(source_dir.path(), &[]).await;
    fill_source(&source.base).await;
    let file = source_dir.path().join("export.ndjson");
    let file = file.to_str().unwrap();
    let run = cairn(&source.base, &["export", "--out", file]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stderr.contains("9 events exported"), "{}", run.stderr);
    let lines = std::fs::read_to_string(file).unwrap();
    // The 9 events, then the process manager's state (no instances, its checkpoint).
    assert_eq!(lines.lines().count(), 10);
    let last: Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!(last["process_manager"], "order-fulfillment", "{last}");
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    for field in [
        "event_id",
        "aggregate_id",
        "aggregate_type",
        "event_type",
        "version",
        "position",
        "timestamp",
        "data",
        "metadata",
    ] {
        assert!(first.get(field).is_some(), "no {field} in {first}");
    }

    let place = target.place().await;
    let target = Server::start_on(&place, &[]).await;
    let run = cairn(&target.base, &["import", file, "--json"]).await;
    assert_eq!(json_of(&run), json!({"appended": 9, "already_present": 0}));
    assert_eq!(all_kept(&target.base).await, all_kept(&source.base).await);
    // Exact digits survive.
    let b = reqwest::get(format!("{}/streams/acct-a", target.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(b.contains(r#"{"amount":"0.10"}"#) && b.contains(r#"{"amount":59.98,"n":1}"#), "{b}");

    // Idempotent: a second run adds nothing.
    let run = cairn(&target.base, &["import", file]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stderr.contains("0 events appended, 9 already present"), "{}", run.stderr);
    assert_eq!(all_kept(&target.base).await, all_kept(&source.base).await);
    // The read models of the target followed the imported domain events.
    let head = get(&target.base, "/all?limit=10000").await["next_position"].clone();
    let customer = get(&target.base, &format!("/customers/cust-1?min_position={head}")).await;
    assert_eq!(customer["email"], "b@x.io");
    source.kill().await;
    target.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_into_sqlite_keeps_all_content() {
    round_trip(cairn_testkit::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_from_sqlite_then_import_into_postgres_keeps_all_content() {
    if cairn_testkit::Backend::Postgres.enabled() {
        round_trip(cairn_testkit::Backend::Postgres).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_of_a_partly_imported_file_appends_only_the_rest() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = Server::start(source_dir.path(), &[]).await;
    deposits(&source.base, "acct-p", 4).await;
    let full = source_dir.path().join("full.ndjson");
    let run = cairn(&source.base, &["export", "-o", full.to_str().unwrap()]).await;
    assert!(run.ok, "{}", run.stderr);
    let text = std::fs::read_to_string(&full).unwrap();
    let half = source_dir.path().join("half.ndjson");
    std::fs::write(&half, text.lines().take(2).map(|l| l.to_owned() + "\n").collect::<String>())
        .unwrap();

    let target_dir = tempfile::tempdir().unwrap();
    let target = Server::start(target_dir.path(), &[]).await;
    let run = cairn(&target.base, &["import", half.to_str().unwrap(), "--json"]).await;
    assert_eq!(json_of(&run), json!({"appended": 2, "already_present": 0}));
    // The full file's one batch holds stored and new events: imported event by event.
    let run = cairn(&target.base, &["import", full.to_str().unwrap(), "--json"]).await;
    assert_eq!(json_of(&run), json!({"appended": 2, "already_present": 2}));
    assert_eq!(all_kept(&target.base).await, all_kept(&source.base).await);
    source.kill().await;
    target.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_plain_lines_when_stdout_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    deposits(&server.base, "acct-x", 3).await;
    // To stdout: the events are all stdout holds; progress goes to stderr, as plain lines.
    let run = cairn(&server.base, &["export"]).await;
    assert!(run.ok, "{}", run.stderr);
    // 3 events and the process manager's checkpoint.
    assert_eq!(run.stdout.lines().count(), 4);
    assert!(run.stdout.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()));
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("export: 3/3 positions (100%)")), "{lines:?}");
    assert!(
        lines.last().unwrap().starts_with(
            "export: 3 events exported, up to position 3; order-fulfillment: 0 instances at checkpoint 0 in "
        ),
        "{lines:?}"
    );
    assert!(!run.stderr.contains('\u{1b}'), "terminal escapes in {:?}", run.stderr);
    // Filters: only what matches is exported.
    post(
        &server.base,
        "/customers",
        &json!({"customer_id": "cust-x", "name": "X", "email": "x@x.io"}),
        &[],
    )
    .await;
    let run = cairn(&server.base, &["export", "--aggregate-type", "Customer"]).await;
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    let run = cairn(&server.base, &["export", "--event-type", "Deposited,Nope"]).await;
    assert_eq!(run.stdout.lines().count(), 3, "{}", run.stdout);
    server.kill().await;
}

/// Under a pseudo-terminal (util-linux `script`), import draws an `indicatif` bar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_a_bar_under_a_terminal() {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        return; // no `script` here to make a pseudo-terminal
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    // Many one-event streams: one append each, long enough for the bar to draw.
    let lines: String = (1..=300)
        .map(|i| {
            json!({"event_id": uuid::Uuid::new_v4(), "aggregate_id": format!("s-{i}"), "aggregate_type": "Account",
                   "event_type": "Opened", "version": 1, "position": i, "timestamp": "2026-01-01T00:00:00.000000Z",
                   "data": {"i": i}, "metadata": {}})
            .to_string()
                + "\n"
        })
        .collect();
    let file = dir.path().join("many.ndjson");
    std::fs::write(&file, lines).unwrap();
    let command =
        format!("{} import {} --url {}", env!("CARGO_BIN_EXE_cairn"), file.display(), server.base);
    let out = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("import [00:00:0"), "no bar in {text:?}");
    assert!(text.contains("/300 events"), "no count in {text:?}");
    assert!(text.contains("import: 300 events appended, 0 already present"), "{text:?}");
    server.kill().await;
}

cairn_testkit::backend_tests!(
    pause_stops_a_projection_between_batches_and_resume_catches_up,
    read_prints_a_stream_longer_than_one_page_of_bytes,
);

async fn pause_stops_a_projection_between_batches_and_resume_catches_up(
    backend: cairn_testkit::Backend,
) {
    let place = backend.place().await;
    let server = Server::start_on(&place, &[]).await;
    let url = server.base.as_str();
    let first = post(
        url,
        "/customers",
        &json!({"customer_id": "cust-1", "name": "A", "email": "a@x.io"}),
        &[],
    )
    .await;
    get(url, &format!("/customers/cust-1?min_position={}", first["position"])).await;

    let run = cairn(url, &["projections", "pause", "customer_view"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.starts_with("customer_view paused at position"), "{}", run.stdout);
    let second = post(
        url,
        "/customers",
        &json!({"customer_id": "cust-2", "name": "B", "email": "b@x.io"}),
        &[],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = json_of(&cairn(url, &["projections", "--json"]).await);
    let row =
        rows.as_array().unwrap().iter().find(|p| p["name"] == "customer_view").unwrap().clone();
    assert_eq!(row["status"], "paused");
    assert!(row["position"].as_u64().unwrap() < second["position"].as_u64().unwrap(), "{row}");
    assert_eq!(
        rows.as_array().unwrap().iter().find(|p| p["name"] == "order_summary").unwrap()["status"],
        "running"
    );
    // A paused projection cannot be swapped: `rebuild --wait` says so instead of "done".
    let run = cairn(url, &["projections", "rebuild", "customer_view", "--wait"]).await;
    assert_one_line_error(&run, "paused");
    let rows = get(url, "/admin/projections").await;
    let row = rows.as_array().unwrap().iter().find(|p| p["name"] == "customer_view").unwrap();
    assert_eq!((row["status"].clone(), row["rebuild"].clone()), (json!("paused"), Value::Null));
    // Paused is started: the server stays ready.
    assert!(cairn(url, &["health"]).await.ok);
    let lagging = reqwest::get(format!(
        "{url}/customers/cust-2?min_position={}&wait_ms=200",
        second["position"]
    ))
    .await
    .unwrap();
    assert_eq!(lagging.status(), 504);

    let row = json_of(&cairn(url, &["projections", "resume", "customer_view", "--json"]).await);
    assert_eq!(row["name"], "customer_view");
    let customer =
        get(url, &format!("/customers/cust-2?min_position={}", second["position"])).await;
    assert_eq!(customer["name"], "B");
    let rows = json_of(&cairn(url, &["projections", "--json"]).await);
    assert_eq!(
        rows.as_array().unwrap().iter().find(|p| p["name"] == "customer_view").unwrap()["status"],
        "running"
    );
    assert_one_line_error(&cairn(url, &["projections", "pause", "nope"]).await, "not_found");
    server.kill().await;
}

/// Posts a command; its answer (asserted 2xx).
async fn command(base: &str, path: &str, body: &Value) -> Value {
    post(base, path, body, &[]).await
}

/// Waits until `GET path` answers a JSON whose `field` is `want` (the write side is
/// current at once; what waits is the process manager's work).
async fn wait_field(base: &str, path: &str, field: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = get(base, path).await;
        if v[field] == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path}: {field} never {want}: {v}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until every projection and process manager has scanned the head.
async fn wait_quiet(base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = get(base, "/admin/projections").await;
        let head = get(base, "/all?limit=10000").await["next_position"].as_u64().unwrap();
        if rows
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "running" && r["position"].as_u64() >= Some(head))
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "consumers never caught up: {rows}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Orders per state in the migrated store.
const MIGRATED_PER_STATE: usize = 6;

/// A store with orders in every state: created, ready to ship, shipped, cancelled by the
/// customer (before and after confirmation), cancelled by fulfillment for want of stock.
async fn fill_orders(url: &str) -> Vec<String> {
    for (customer, name) in [("cust-a", "A"), ("cust-b", "B")] {
        let body =
            json!({"customer_id": customer, "name": name, "email": format!("{customer}@x.io")});
        command(url, "/customers", &body).await;
    }
    command(url, "/inventory/p-ok/restock", &json!({"quantity": 1000})).await;
    let mut orders = Vec::new();
    let states = ["created", "ready", "shipped", "cancelled", "cancelled_ready", "out_of_stock"];
    for i in 0..MIGRATED_PER_STATE {
        for state in states {
            let id = format!("o-{state}-{i}");
            let product = if state == "out_of_stock" { "p-none" } else { "p-ok" };
            let customer = if i % 2 == 0 { "cust-a" } else { "cust-b" };
            let body = json!({"order_id": id, "customer_id": customer, "items": [
                {"product_id": product, "quantity": 2, "price": 10.05}]});
            command(url, "/orders", &body).await;
            let path = format!("/orders/{id}/state");
            match state {
                "created" => {}
                "cancelled" => {
                    command(url, &format!("/orders/{id}/cancel"), &json!({"reason": "changed"}))
                        .await;
                }
                _ => {
                    command(url, &format!("/orders/{id}/confirm"), &json!({})).await;
                    let want = if state == "out_of_stock" { "cancelled" } else { "ready_to_ship" };
                    wait_field(url, &path, "status", want).await;
                }
            }
            match state {
                "shipped" => {
                    let body = json!({"tracking_number": format!("T{i}"), "carrier": "ups"});
                    command(url, &format!("/orders/{id}/ship"), &body).await;
                }
                "cancelled_ready" => {
                    command(url, &format!("/orders/{id}/cancel"), &json!({"reason": "late"})).await;
                }
                _ => {}
            }
            orders.push(id);
        }
    }
    wait_quiet(url).await;
    orders
}

/// What must be equal between the source and the target: the read models (without the
/// times, which are each store's own commit times) and the fulfillment instances.
async fn business_state(url: &str, orders: &[String]) -> Value {
    let strip = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            for time in ["created_at", "confirmed_at", "shipped_at", "updated_at"] {
                o.remove(time);
            }
        }
        v
    };
    let mut summaries = Vec::new();
    let mut shipped = Vec::new();
    for id in orders {
        summaries.push(strip(get(url, &format!("/orders/{id}")).await));
        let r = reqwest::get(format!("{url}/shipped-orders/{id}")).await.unwrap();
        if r.status() == 200 {
            shipped.push(strip(r.json().await.unwrap()));
        }
    }
    let mut inventory = Vec::new();
    for p in ["p-ok", "p-none"] {
        let r = reqwest::get(format!("{url}/inventory/{p}")).await.unwrap();
        inventory.push(if r.status() == 200 { r.json().await.unwrap() } else { Value::Null });
    }
    let customers = vec![get(url, "/customers/cust-a").await, get(url, "/customers/cust-b").await];
    let instances = get(url, "/admin/process-managers/order-fulfillment?limit=1000").await;
    json!({"orders": summaries, "shipped": shipped, "inventory": inventory,
           "customers": customers, "instances": instances})
}

/// The migration of docs/deploy.md: a SQLite store with orders in every state, exported
/// and imported into a target started with its process managers paused; the business
/// state is the same, the target's fulfillment issued nothing for the history, a re-run
/// adds nothing, and the resumed fulfillment works on new orders.
async fn migrate(target: cairn_testkit::Backend) {
    let source_dir = tempfile::tempdir().unwrap();
    let source = Server::start(source_dir.path(), &[]).await;
    let orders = fill_orders(&source.base).await;
    let file = source_dir.path().join("export.ndjson");
    let run = cairn(&source.base, &["export", "-o", file.to_str().unwrap()]).await;
    assert!(run.ok, "{}", run.stderr);
    let expected = business_state(&source.base, &orders).await;
    let instances = expected["instances"].as_array().unwrap();
    for status in ["ready_to_ship", "shipped", "cancelled"] {
        assert!(instances.iter().any(|i| i["status"] == status), "no {status} instance");
    }

    let place = target.place().await;
    let target = Server::start_on_args(&place, &["--pause-process-managers"], &[]).await;
    let url = target.base.as_str();
    // An interrupted import: the first half of the events only.
    let text = std::fs::read_to_string(&file).unwrap();
    let events: Vec<&str> =
        text.lines().filter(|l| !l.starts_with("{\"process_manager\"")).collect();
    let half = source_dir.path().join("half.ndjson");
    std::fs::write(&half, events[..events.len() / 2].join("\n") + "\n").unwrap();
    let run = cairn(url, &["import", half.to_str().unwrap()]).await;
    assert!(run.ok, "{}", run.stderr);
    // Finished by running the whole file.
    let run = cairn(url, &["import", file.to_str().unwrap()]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "{} events appended, {} already present",
            events.len() - events.len() / 2,
            events.len() / 2
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("still paused"), "{}", run.stderr);
    let run = cairn(url, &["projections", "resume", "order-fulfillment"]).await;
    assert!(run.ok, "{}", run.stderr);
    wait_quiet(url).await;
    // Nothing was appended for the history: the same events, no StockReserved, no
    // out_of_stock cancellation of a ready order.
    assert_eq!(all_kept(url).await, all_kept(&source.base).await);
    assert_eq!(business_state(url, &orders).await, expected);

    // A re-run adds nothing and changes nothing.
    let run = cairn(url, &["import", file.to_str().unwrap()]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("0 events appended, {} already present", events.len())));
    wait_quiet(url).await;
    assert_eq!(all_kept(url).await, all_kept(&source.base).await);
    assert_eq!(business_state(url, &orders).await, expected);

    // The resumed process manager handles what comes next.
    command(
        url,
        "/orders",
        &json!({"order_id": "o-new", "customer_id": "cust-a",
        "items": [{"product_id": "p-ok", "quantity": 1, "price": 1}]}),
    )
    .await;
    command(url, "/orders/o-new/confirm", &json!({})).await;
    wait_field(url, "/orders/o-new/state", "status", "ready_to_ship").await;
    // Once it has moved on, a re-run keeps its newer state.
    let run = cairn(url, &["import", file.to_str().unwrap()]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stderr.contains("state kept"), "{}", run.stderr);
    wait_field(url, "/orders/o-new/state", "status", "ready_to_ship").await;
    source.kill().await;
    target.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_from_sqlite_to_sqlite_keeps_orders_and_fulfillment() {
    migrate(cairn_testkit::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_from_sqlite_to_postgres_keeps_orders_and_fulfillment() {
    if cairn_testkit::Backend::Postgres.enabled() {
        migrate(cairn_testkit::Backend::Postgres).await;
    }
}
