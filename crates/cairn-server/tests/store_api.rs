//! Contract §2 over HTTP: append, read a stream, read `$all`, subscribe.

mod support;

use cairn_testkit::Backend;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{TestServer, ticks};

cairn_testkit::backend_tests!(
    append_then_read_returns_the_contract_envelope,
    money_keeps_its_exact_digits,
    expected_version_forms_and_conflicts,
    concurrent_http_appends_at_one_version_one_wins,
    a_stream_keeps_its_aggregate_type,
    resending_the_same_event_ids_is_idempotent,
    reading_a_stream_pages_both_ways,
    stream_read_limit_defaults_to_100_and_caps_at_10000,
    read_all_pages_and_filters,
    subscribe_catches_up_then_goes_live_and_resumes,
    health_endpoints_report_ok,
    stream_stats_list_the_largest_streams,
);

async fn append_then_read_returns_the_contract_envelope(backend: Backend) {
    let s = TestServer::start(backend).await;
    // `OrderCreated` has the domain's registered schema, whatever the stream's aggregate type.
    let body = json!({
        "expected_version": 0,
        "events": [{
            "event_id": "0193b3c4-0000-7000-8000-000000000001",
            "aggregate_type": "Ledger",
            "event_type": "OrderCreated",
            "data": {"customer_id": "cust-456", "items": [], "total": 59.98},
            "metadata": {"correlation_id": "req-abc", "causation_id": null, "user_id": "user-001"}
        }]
    });
    let (status, appended) = s.post("/streams/order-123", &body).await;
    assert_eq!(status, 200, "{appended}");
    assert_eq!(
        appended,
        json!({"aggregate_id": "order-123", "first_version": 1, "last_version": 1, "position": 1})
    );

    let (status, page) = s.get("/streams/order-123").await;
    assert_eq!(status, 200);
    assert_eq!(page["next_version"], Value::Null);
    let e = &page["events"][0];
    assert_eq!(e["event_id"], "0193b3c4-0000-7000-8000-000000000001");
    assert_eq!(e["aggregate_id"], "order-123");
    assert_eq!(e["aggregate_type"], "Ledger");
    assert_eq!(e["event_type"], "OrderCreated");
    assert_eq!(e["version"], 1);
    assert_eq!(e["position"], 1);
    assert_eq!(e["data"], json!({"customer_id": "cust-456", "items": [], "total": 59.98}));
    assert_eq!(e["metadata"]["correlation_id"], "req-abc");
    let ts = e["timestamp"].as_str().unwrap();
    // RFC 3339, UTC, microseconds: 2026-02-23T10:00:00.123456Z
    assert_eq!(ts.len(), 27, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
}

async fn money_keeps_its_exact_digits(backend: Backend) {
    let s = TestServer::start(backend).await;
    let raw = r#"{"events":[{"aggregate_type":"Ledger","event_type":"X","data":{"total":59.98,"p":0.1,"big":1234567890.12}}]}"#;
    assert_eq!(s.post_raw("/streams/o-1", raw).await.0, 200);
    let text = s.client.get(s.url("/streams/o-1")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#""data":{"total":59.98,"p":0.1,"big":1234567890.12}"#), "{text}");
}

async fn expected_version_forms_and_conflicts(backend: Backend) {
    let s = TestServer::start(backend).await;
    assert_eq!(s.post("/streams/s-1", &ticks(json!("exists"), 1)).await.0, 409);
    assert_eq!(s.post("/streams/s-1", &ticks(json!("no_stream"), 2)).await.0, 200);
    assert_eq!(s.post("/streams/s-1", &ticks(json!("exists"), 1)).await.0, 200);
    assert_eq!(s.post("/streams/s-1", &ticks(json!(3), 2)).await.0, 200);
    assert_eq!(s.post("/streams/s-1", &ticks(json!("any"), 1)).await.1["last_version"], 6);
    let (status, err) = s.post("/streams/s-1", &ticks(json!(3), 1)).await;
    assert_eq!(status, 409);
    assert_eq!(err["error"], "wrong_expected_version");
    assert_eq!((err["expected"].clone(), err["actual"].clone()), (json!(3), json!(6)));
    assert!(err["message"].is_string());
    let (status, err) = s.post("/streams/s-2", &ticks(json!(0), 1)).await;
    assert_eq!((status, err["last_version"].clone()), (200, json!(1)));
    let (status, err) = s.post("/streams/s-3", &ticks(json!(2), 1)).await;
    assert_eq!((status, err["actual"].clone()), (409, json!(0)));
    // Missing expected_version means "any".
    let (status, ok) =
        s.post("/streams/s-1", &json!({"events": ticks(json!(0), 1)["events"]})).await;
    assert_eq!((status, ok["last_version"].clone()), (200, json!(7)));
}

async fn concurrent_http_appends_at_one_version_one_wins(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.post("/streams/race", &ticks(json!(0), 1)).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, url) = (s.client.clone(), s.url("/streams/race"));
        tasks.push(tokio::spawn(async move {
            client.post(url).json(&ticks(json!(1), 1)).send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|&&c| c == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&c| c == 409).count(), 15, "{statuses:?}");
}

async fn a_stream_keeps_its_aggregate_type(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.post("/streams/typed", &ticks(json!(0), 1)).await;
    let other = json!({"events": [{"aggregate_type": "Account", "event_type": "X", "data": {}}]});
    let (status, err) = s.post("/streams/typed", &other).await;
    assert_eq!((status, err["error"].clone()), (409, json!("aggregate_type_mismatch")));
}

async fn resending_the_same_event_ids_is_idempotent(backend: Backend) {
    let s = TestServer::start(backend).await;
    let body = json!({"expected_version": "no_stream", "events": [
        {"event_id": "6f1f6a9e-3c1d-4a57-9a0f-1d1b7c3f0a01", "aggregate_type": "Ledger", "event_type": "A", "data": {}},
        {"event_id": "6f1f6a9e-3c1d-4a57-9a0f-1d1b7c3f0a02", "aggregate_type": "Ledger", "event_type": "B", "data": {}}
    ]});
    let (s1, first) = s.post("/streams/idem", &body).await;
    s.post("/streams/other", &ticks(json!("any"), 3)).await;
    let (s2, again) = s.post("/streams/idem", &body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first, again);
    let (_, page) = s.get("/streams/idem").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let (_, all) = s.get("/all").await;
    assert_eq!(all["events"].as_array().unwrap().len(), 5);
    // The same id in another stream is a conflict, not a silent success.
    let (status, err) =
        s.post("/streams/elsewhere", &json!({"events": [body["events"][0].clone()]})).await;
    assert_eq!((status, err["error"].clone()), (409, json!("duplicate_event_id")));
}

async fn reading_a_stream_pages_both_ways(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.post("/streams/p", &ticks(json!(0), 25)).await;
    let versions = |page: &Value| -> Vec<u64> {
        page["events"].as_array().unwrap().iter().map(|e| e["version"].as_u64().unwrap()).collect()
    };
    let (_, p) = s.get("/streams/p?from_version=1&limit=10").await;
    assert_eq!(versions(&p), (1..=10).collect::<Vec<_>>());
    assert_eq!(p["next_version"], 11);
    let (_, p) = s.get("/streams/p?from_version=21&limit=10").await;
    assert_eq!(versions(&p), (21..=25).collect::<Vec<_>>());
    assert_eq!(p["next_version"], Value::Null);
    let (_, p) = s.get("/streams/p?direction=backward&limit=3").await;
    assert_eq!(versions(&p), vec![25, 24, 23]);
    assert_eq!(p["next_version"], 22);
    let (_, p) = s.get("/streams/p?direction=backward&from_version=2").await;
    assert_eq!(versions(&p), vec![2, 1]);
    assert_eq!(p["next_version"], Value::Null);
    let (_, p) = s.get("/streams/p").await;
    assert_eq!(versions(&p).len(), 25);
    let (_, p) = s.get("/streams/p?limit=999999").await;
    assert_eq!(versions(&p).len(), 25);
    let (status, err) = s.get("/streams/missing").await;
    assert_eq!((status, err["error"].clone()), (404, json!("not_found")));
    for bad in
        ["limit=-1", "limit=ten", "from_version=-3", "direction=sideways", "from_version=1.5"]
    {
        let (status, err) = s.get(&format!("/streams/p?{bad}")).await;
        assert_eq!((status, err["error"].clone()), (400, json!("bad_request")), "{bad}");
    }
}

async fn stream_read_limit_defaults_to_100_and_caps_at_10000(backend: Backend) {
    let s = TestServer::start(backend).await;
    for _ in 0..11 {
        s.post("/streams/long", &ticks(json!("any"), 1000)).await;
    }
    let (_, p) = s.get("/streams/long").await;
    assert_eq!(p["events"].as_array().unwrap().len(), 100);
    assert_eq!(p["next_version"], 101);
    let (_, p) = s.get("/streams/long?limit=20000").await;
    assert_eq!(p["events"].as_array().unwrap().len(), 10_000);
    let (_, all) = s.get("/all").await;
    assert_eq!(all["events"].as_array().unwrap().len(), 1000);
    assert_eq!(all["next_position"], 1000);
}

async fn read_all_pages_and_filters(backend: Backend) {
    let s = TestServer::start(backend).await;
    let mk = |agg: &str, types: &[&str]| json!({"events": types.iter().map(|t| json!({"aggregate_type": agg, "event_type": t, "data": {}})).collect::<Vec<_>>()});
    s.post("/streams/o-1", &mk("Ledger", &["Opened", "Credited"])).await;
    s.post("/streams/c-1", &mk("Account", &["AccountOpened"])).await;
    s.post("/streams/o-2", &mk("Ledger", &["Opened", "Closed"])).await;
    let positions = |page: &Value| -> Vec<u64> {
        page["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()).collect()
    };
    let (_, p) = s.get("/all?from_position=0&limit=2").await;
    assert_eq!((positions(&p), p["next_position"].clone()), (vec![1, 2], json!(2)));
    let (_, p) = s.get("/all?from_position=2").await;
    assert_eq!((positions(&p), p["next_position"].clone()), (vec![3, 4, 5], json!(5)));
    let (_, p) = s.get("/all?from_position=5").await;
    assert_eq!((positions(&p), p["next_position"].clone()), (vec![], json!(5)));
    let (_, p) = s.get("/all?event_type=Opened,AccountOpened").await;
    assert_eq!(positions(&p), vec![1, 3, 4]);
    let (_, p) = s.get("/all?aggregate_type=Ledger&event_type=Closed").await;
    assert_eq!(positions(&p), vec![5]);
    let (_, p) = s.get("/all?aggregate_type=Account").await;
    assert_eq!(positions(&p), vec![3]);
    assert_eq!(s.get("/all?from_position=-1").await.0, 400);
    assert_eq!(s.get("/all?limit=x").await.0, 400);
}

async fn sse_events(
    s: &TestServer,
    path: &str,
    last_event_id: Option<&str>,
    n: usize,
) -> Vec<(u64, String, Value)> {
    let mut req = s.client.get(s.url(path));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
            .await
            .expect("subscription stalled")
            .expect("stream ended")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<u64>().unwrap());
                } else if let Some(v) = line.strip_prefix("event:") {
                    v.trim().clone_into(&mut event);
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                out.push((id, event, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

async fn subscribe_catches_up_then_goes_live_and_resumes(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.post("/streams/sub", &ticks(json!(0), 3)).await;
    let writer = {
        let (client, url) = (s.client.clone(), s.url("/streams/sub"));
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            for _ in 0..3 {
                client.post(&url).json(&ticks(json!("any"), 1)).send().await.unwrap();
            }
        })
    };
    let got = sse_events(&s, "/all/subscribe?from_position=0", None, 6).await;
    writer.await.unwrap();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    assert!(got.iter().all(|(id, event, data)| event == "Tick" && data["position"] == *id));
    // Resume after position 4: Last-Event-ID wins over from_position.
    let resumed = sse_events(&s, "/all/subscribe?from_position=0", Some("4"), 2).await;
    assert_eq!(resumed.iter().map(|g| g.0).collect::<Vec<_>>(), vec![5, 6]);
    // Filters apply to subscriptions too.
    s.post("/streams/c", &json!({"events": [{"aggregate_type": "Account", "event_type": "AccountOpened", "data": {}}]})).await;
    let filtered = sse_events(&s, "/all/subscribe?aggregate_type=Account", None, 1).await;
    assert_eq!(filtered[0].0, 7);
    let r =
        s.client.get(s.url("/all/subscribe")).header("Last-Event-ID", "abc").send().await.unwrap();
    assert_eq!(r.status(), 400);
}

async fn health_endpoints_report_ok(backend: Backend) {
    let s = TestServer::start(backend).await;
    assert_eq!(s.get("/health/live").await, (200, json!({"status": "ok"})));
    // Ready once every projection and process manager has started (a few ms after boot).
    let mut ready = s.get("/health/ready").await;
    for _ in 0..100 {
        if ready.0 == 200 {
            break;
        }
        assert_eq!((ready.0, ready.1["error"].clone()), (503, json!("not_ready")), "{}", ready.1);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        ready = s.get("/health/ready").await;
    }
    assert_eq!(ready, (200, json!({"status": "ok"})));
}

async fn stream_stats_list_the_largest_streams(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.post("/streams/small", &ticks(json!("any"), 1)).await;
    s.post("/streams/big", &ticks(json!("any"), 7)).await;
    s.post("/streams/mid", &ticks(json!("any"), 3)).await;
    let (code, stats) = s.get("/admin/streams/stats?top=2").await;
    assert_eq!(code, 200);
    assert_eq!(
        stats,
        json!([
            {"aggregate_id": "big", "aggregate_type": "Ledger", "event_count": 7, "latest_version": 7},
            {"aggregate_id": "mid", "aggregate_type": "Ledger", "event_count": 3, "latest_version": 3}
        ])
    );
    assert_eq!(s.get("/admin/streams/stats?top=x").await.0, 400);
}
