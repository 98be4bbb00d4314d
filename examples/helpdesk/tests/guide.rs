//! `docs/your-own-domain.md` tells the truth: its code is this crate's code, and the
//! walk-through it shows answers as it says, against the `helpdesk` binary, on both
//! backends.

use cairn_testkit::Backend;
use cairn_testkit::serve::ServeProcess;
use serde_json::{Value, json};

cairn_testkit::backend_tests!(the_walk_through_answers_as_the_guide_says);

const GUIDE: &str = include_str!("../../../docs/your-own-domain.md");

/// The fenced block right after the line naming `file` (`` `src/ticket.rs`: ``).
fn block_after(file: &str) -> String {
    let label = format!("`{file}`:");
    let rest = GUIDE.split_once(&label).unwrap_or_else(|| panic!("the guide shows {file}")).1;
    let body = rest.split_once("```").unwrap().1.split_once('\n').unwrap().1;
    body.split_once("```").unwrap().0.to_owned()
}

#[test]
fn the_guide_shows_this_crates_code() {
    for (file, code) in [
        ("src/ticket.rs", include_str!("../src/ticket.rs")),
        ("src/board.rs", include_str!("../src/board.rs")),
        ("src/triage.rs", include_str!("../src/triage.rs")),
        ("src/lib.rs", include_str!("../src/lib.rs")),
        ("src/main.rs", include_str!("../src/main.rs")),
    ] {
        assert_eq!(block_after(file), code, "{file} differs from the guide");
    }
    let manifest = block_after("Cargo.toml");
    for dependency in [
        "cairn-cli",
        "cairn-core",
        "cairn-cqrs",
        "cairn-server",
        "async-trait",
        "serde",
        "serde_json",
        "utoipa",
    ] {
        assert!(
            manifest.contains(&format!("\n{dependency} = ")),
            "the guide's Cargo.toml lacks {dependency}"
        );
    }
}

async fn call(
    client: &reqwest::Client,
    method: &str,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method.parse().unwrap(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn the_walk_through_answers_as_the_guide_says(backend: Backend) {
    let place = backend.place().await;
    let server = ServeProcess::start(env!("CARGO_BIN_EXE_helpdesk"), &place, &[], &[]).await;
    let (c, base) = (reqwest::Client::new(), server.base.clone());

    let (status, opened) =
        call(&c, "POST", format!("{base}/tickets"), Some(json!({"title": "printer on fire"})))
            .await;
    assert_eq!((status, &opened["version"]), (201, &json!(1)), "{opened}");
    let t = opened["aggregate_id"].as_str().unwrap().to_owned();
    assert!(t.starts_with("ticket-"), "{t}");

    let (status, row) = call(&c, "GET", format!("{base}/tickets/{t}?min_position=2"), None).await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(
        row,
        json!({"ticket_id": t, "title": "printer on fire", "assignee": "triage", "status": "open"})
    );

    let assign = c
        .post(format!("{base}/tickets/{t}/assign"))
        .header("If-Match", "2")
        .json(&json!({"to": "ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(assign.status().as_u16(), 200);
    assert_eq!(call(&c, "POST", format!("{base}/tickets/{t}/close"), None).await.0, 200);
    let (status, mut refused) = call(&c, "POST", format!("{base}/tickets/{t}/close"), None).await;
    // Every error body carries its own request id (contract §7).
    assert!(refused.as_object_mut().and_then(|o| o.remove("request_id")).is_some(), "{refused}");
    assert_eq!(
        (status, refused),
        (422, json!({"error": "rule_violation", "message": "the ticket is closed"}))
    );

    let (_, closed) =
        call(&c, "GET", format!("{base}/tickets?status=closed&min_position=4"), None).await;
    let expected =
        json!({"ticket_id": t, "title": "printer on fire", "assignee": "ada", "status": "closed"});
    assert_eq!(closed, json!({"items": [expected], "next": null}));
    let (_, state) = call(&c, "GET", format!("{base}/tickets/{t}/state?version=1"), None).await;
    assert_eq!(
        state["state"],
        json!({"title": "printer on fire", "assignee": null, "closed": false})
    );
    assert_eq!(
        (&state["aggregate_type"], &state["current_version"]),
        (&json!("Ticket"), &json!(4))
    );

    // The manager saves its instance after its command's event is visible, so the board
    // can show the assignment a moment before the manager's listing does: wait for it.
    let listed = json!([{"ticket_id": t, "status": "assigned"}]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, instances) =
            call(&c, "GET", format!("{base}/admin/process-managers/triage?status=assigned"), None)
                .await;
        if instances == listed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never listed: {instances}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, rows) = call(&c, "GET", format!("{base}/admin/projections"), None).await;
    let names: Vec<&str> =
        rows.as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["cairn_console_index", "cairn_streams", "ticket_board", "triage"]);
    let (_, doc) = call(&c, "GET", format!("{base}/openapi.json"), None).await;
    for path in [
        "/tickets",
        "/tickets/{aggregate_id}",
        "/tickets/{aggregate_id}/assign",
        "/tickets/{aggregate_id}/close",
        "/tickets/{aggregate_id}/state",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
}
