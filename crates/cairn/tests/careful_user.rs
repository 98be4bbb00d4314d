//! What a careful user of the CLI meets (issue #14), each against a real `cairn serve`:
//! an import line that changes a stored event is a conflict, not "already present"; a
//! closed pipe ends a command quietly; `--aggregate-type A,B` is a list, over HTTP too;
//! zero means zero; a resumed projection answers `running`; the log has no colour codes
//! when it is not a terminal.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::{CAIRN, Server, cairn};

async fn append(base: &str, stream: &str, aggregate_type: &str, n: u64) {
    let events: Vec<Value> = (1..=n)
        .map(|i| json!({"aggregate_type": aggregate_type, "event_type": "Tick", "data": {"i": i}}))
        .collect();
    let r = reqwest::Client::new()
        .post(format!("{base}/streams/{stream}"))
        .json(&json!({"events": events}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_line_that_changes_a_stored_event_is_a_conflict_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    append(&server.base, "acct-1", "Account", 3).await;
    let file = dir.path().join("export.ndjson");
    let run = cairn(&server.base, &["export", "-o", file.to_str().unwrap()]).await;
    assert!(run.ok, "{}", run.stderr);

    // The same file again: every event already present, exit 0.
    let run = cairn(&server.base, &["import", file.to_str().unwrap(), "--json"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap()["already_present"], 3);

    // The second event's data changed: refused, naming it, and the store keeps its data.
    let text = std::fs::read_to_string(&file).unwrap();
    // Events first, then other records (process-manager states): change only line 2.
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut second: Value = serde_json::from_str(&lines[1]).unwrap();
    second["data"] = json!({"i": 99});
    let changed_id = second["event_id"].as_str().unwrap().to_owned();
    lines[1] = second.to_string();
    let changed = dir.path().join("changed.ndjson");
    std::fs::write(&changed, lines.join("\n") + "\n").unwrap();
    let run = cairn(&server.base, &["import", changed.to_str().unwrap()]).await;
    assert!(!run.ok, "a changed event was accepted: {}", run.stdout);
    assert!(run.stderr.contains(&changed_id), "{}", run.stderr);
    assert!(run.stderr.contains("duplicate_event_id"), "{}", run.stderr);
    let stored: Value = reqwest::get(format!("{}/streams/acct-1", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["events"][1]["data"], json!({"i": 2}));

    // Over the store API: the same ids at the same place with other data is a 409.
    let body = json!({"expected_version": 1, "events": [
        {"event_id": changed_id, "aggregate_type": "Account", "event_type": "Tick", "data": {"i": 99}}]});
    let r = reqwest::Client::new()
        .post(format!("{}/streams/acct-1", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"], "duplicate_event_id");
    assert_eq!(
        (err["event_id"].as_str(), err["stored_version"].as_u64()),
        (Some(changed_id.as_str()), Some(2))
    );
    server.kill().await;
}

/// Runs `cairn ARGS`, reads one line of its output and closes the pipe, as `| head -1`
/// does; the command must end quietly with success.
fn first_line_then_close(url: &str, args: &[&str]) -> (String, std::process::Output) {
    let mut child = std::process::Command::new(CAIRN)
        .args(args)
        .env("CAIRN_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // The reader is dropped here: the pipe is closed while the command still writes.
    let output = child.wait_with_output().unwrap();
    (line, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_read_export_and_tail_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    // Far more than a pipe buffer holds, so the writer meets the closed pipe.
    let pad = "x".repeat(2000);
    for _ in 0..4 {
        let events: Vec<Value> = (0..500)
            .map(|i| json!({"aggregate_type": "Account", "event_type": "Tick", "data": {"i": i, "pad": pad}}))
            .collect();
        let r = reqwest::Client::new()
            .post(format!("{}/streams/big-1", server.base))
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let url = server.base.clone();
    let runs = tokio::task::spawn_blocking(move || {
        [vec!["read", "big-1"], vec!["export"], vec!["tail", "--from", "0", "--json"]]
            .map(|args| (args.join(" "), first_line_then_close(&url, &args)))
    })
    .await
    .unwrap();
    for (what, (line, output)) in runs {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!line.is_empty(), "{what}: printed nothing");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{what}: {stderr}"
        );
        assert!(output.status.success(), "{what}: {:?} {stderr}", output.status);
    }
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_type_takes_a_list_in_the_cli_and_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    append(&server.base, "acct-1", "Account", 2).await;
    append(&server.base, "led-1", "Ledger", 3).await;
    append(&server.base, "other-1", "Other", 1).await;
    let all: Value = reqwest::get(format!("{}/all?aggregate_type=Account,Ledger", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["events"].as_array().unwrap().len(), 5, "{all}");

    let run = cairn(&server.base, &["export", "--aggregate-type", "Account,Ledger"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 5, "{}", run.stdout);
    let run = cairn(
        &server.base,
        &["export", "--aggregate-type", "Account", "--aggregate-type", "Other"],
    )
    .await;
    assert_eq!(run.stdout.lines().count(), 3, "{}", run.stdout);
    let tail = tokio::time::timeout(
        Duration::from_secs(20),
        cairn(
            &server.base,
            &["tail", "--from", "0", "--aggregate-type", "Ledger,Other", "--count", "4", "--json"],
        ),
    )
    .await
    .expect("tail with a list of aggregate types ends after --count events");
    let types: Vec<String> = tail
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["aggregate_type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(types, ["Ledger", "Ledger", "Ledger", "Other"]);
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_means_zero_or_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    append(&server.base, "acct-1", "Account", 2).await;
    let run = tokio::time::timeout(
        Duration::from_secs(10),
        cairn(&server.base, &["tail", "--from", "0", "--count", "0"]),
    )
    .await
    .expect("tail --count 0 returns at once");
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout, "", "tail --count 0 printed events");
    let run = cairn(&server.base, &["streams", "stats", "--top", "0"]).await;
    assert!(!run.ok, "--top 0 was accepted: {}", run.stdout);
    assert!(run.stderr.contains("--top"), "{}", run.stderr);
    let run = cairn(&server.base, &["streams", "stats", "--top", "1"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 2, "a header and one stream: {}", run.stdout);
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_projection_answers_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    for _ in 0..5 {
        let run = cairn(&server.base, &["projections", "pause", "customer_view", "--json"]).await;
        assert!(run.ok, "{}", run.stderr);
        // Wait until the loop itself reports the pause.
        for _ in 0..100 {
            let rows: Value = reqwest::get(format!("{}/admin/projections", server.base))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let row =
                rows.as_array().unwrap().iter().find(|r| r["name"] == "customer_view").cloned();
            if row.is_some_and(|r| r["status"] == "paused") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let run = cairn(&server.base, &["projections", "resume", "customer_view", "--json"]).await;
        assert!(run.ok, "{}", run.stderr);
        let row: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(row["status"], "running", "{row}");
    }
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_has_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let port = support::free_port();
    let mut child = tokio::process::Command::new(CAIRN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--log", "info", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/health/ready");
    let mut ready = false;
    for _ in 0..400 {
        if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "cairn serve did not become ready");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO"), "no log lines: {text}");
    assert!(!text.contains('\u{1b}'), "ANSI escape codes in a log file: {text}");
}
