//! `cairn serve --nats-url`: the outbox relay inside the server. Killed with `-9` between
//! publish and checkpoint, the restarted server finds in the stream what it published
//! past its checkpoint and does not publish it again: every event is in the stream
//! exactly once, in order per aggregate. Uses the machine's NATS (`CAIRN_TEST_NATS_URL`), its own stream.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};

mod support;

async fn relay_row(client: &reqwest::Client, base: &str, name: &str) -> Option<Value> {
    let rows: Value =
        client.get(format!("{base}/admin/projections")).send().await.ok()?.json().await.ok()?;
    rows.as_array()?.iter().find(|r| r["name"] == name).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_publish_and_checkpoint_loses_and_duplicates_nothing() {
    let Some(nats) = cairn_nats::testing::nats_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let stream = format!("CAIRN_T_{}", id.to_uppercase());
    let prefix = format!("t{id}.events");
    let public = format!("CAIRN_TP_{}", id.to_uppercase());
    let namespace = format!("t{id}.");
    let env = [
        ("CAIRN_NATS_URL", nats.as_str()),
        ("CAIRN_NATS_INTERNAL", "true"),
        ("CAIRN_NATS_STREAM", stream.as_str()),
        ("CAIRN_NATS_SUBJECT_PREFIX", prefix.as_str()),
        ("CAIRN_NATS_PUBLIC_STREAM", public.as_str()),
        ("CAIRN_NATS_PUBLIC_NAMESPACE", namespace.as_str()),
        // Every batch waits 2 s between its acks and its checkpoint.
        ("CAIRN_FAULT_RELAY_CHECKPOINT_DELAY_MS", "2000"),
    ];
    let server = support::Server::start(dir.path(), &env).await;
    let client = reqwest::Client::new();
    for i in 0..60 {
        let body = json!({"events": [{"aggregate_type": "Account", "event_type": "Credited", "data": {"i": i}}]});
        let r = client
            .post(format!("{}/streams/acct.{}", server.base, i % 4))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Published and acknowledged, checkpoint not yet written: kill now.
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = js.get_stream(&stream).await.unwrap();
        if s.info().await.unwrap().state.messages >= 60 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay never published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill().await;

    // Restart without the delay; write a few more.
    let env = [
        ("CAIRN_NATS_URL", nats.as_str()),
        ("CAIRN_NATS_INTERNAL", "true"),
        ("CAIRN_NATS_STREAM", stream.as_str()),
        ("CAIRN_NATS_SUBJECT_PREFIX", prefix.as_str()),
        ("CAIRN_NATS_PUBLIC_STREAM", public.as_str()),
        ("CAIRN_NATS_PUBLIC_NAMESPACE", namespace.as_str()),
    ];
    let server = support::Server::start(dir.path(), &env).await;
    for i in 60..80 {
        let body = json!({"events": [{"aggregate_type": "Account", "event_type": "Credited", "data": {"i": i}}]});
        client
            .post(format!("{}/streams/acct.{}", server.base, i % 4))
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    let name = format!("relay:{stream}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let row = relay_row(&client, &server.base, &name).await;
        if row.as_ref().is_some_and(|r| r["position"] == 80) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "relay never caught up: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics =
        client.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    let republished: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("cairn_relay_published_total")
                && l.contains(&format!("\"relay:{stream}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("relay metric");
    // Only 20 events are new since the kill: the rest were found in the stream's tail.
    assert!(
        (republished - 20.0).abs() < 0.5,
        "the restarted relay published only the new events: {republished}"
    );

    let mut s = js.get_stream(&stream).await.unwrap();
    let count = s.info().await.unwrap().state.messages;
    assert_eq!(count, 80, "exactly once after dedup");
    let mut versions = std::collections::HashMap::new();
    for seq in 1..=count {
        let m = s.get_raw_message(seq).await.unwrap();
        let e: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(e["position"], seq, "$all order");
        let v = e["version"].as_u64().unwrap();
        let prev = versions.insert(e["aggregate_id"].as_str().unwrap().to_owned(), v);
        assert_eq!(prev.unwrap_or(0) + 1, v, "per-aggregate order");
        assert!(m.subject.starts_with(&format!("{prefix}.Account.acct%2E")), "{}", m.subject);
    }
    js.delete_stream(&stream).await.unwrap();
    js.delete_stream(&public).await.unwrap();
    server.kill().await;
}

/// Collects what a bus consumer receives.
struct Collect(std::sync::Mutex<Vec<cairn_nats::BusMessage>>);

impl cairn_nats::BusHandler for Collect {
    fn handle(&self, message: &cairn_nats::BusMessage) -> Result<(), String> {
        let mut seen = self.0.lock().unwrap();
        // De-duplicate by message id, as a real handler does in its transaction.
        if !seen.iter().any(|m| m.id == message.id) {
            seen.push(message.clone());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_s_integration_events_reach_a_bus_consumer_and_internal_ones_do_not() {
    let Some(nats) = cairn_nats::testing::nats_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let public = format!("CAIRN_TP_{}", id.to_uppercase());
    let namespace = format!("t{id}.");
    let env = [
        ("CAIRN_NATS_URL", nats.as_str()),
        ("CAIRN_NATS_PUBLIC_STREAM", public.as_str()),
        ("CAIRN_NATS_PUBLIC_NAMESPACE", namespace.as_str()),
    ];
    let server = support::Server::start(dir.path(), &env).await;
    let client = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let (client, base) = (client.clone(), server.base.clone());
        async move {
            let r = client.post(format!("{base}{path}")).json(&body).send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
        }
    };
    // Stock on the shelf, so that the fulfillment process manager does not cancel the order.
    for p in ["p", "q"] {
        post(format!("/inventory/{p}/restock"), json!({"quantity": 10})).await;
    }
    post("/orders".into(), json!({"order_id": "o-1", "customer_id": "c-1", "items": [{"product_id": "p", "quantity": 2, "price": 10.10}]})).await;
    post("/orders/o-1/items".into(), json!({"product_id": "q", "quantity": 1, "price": 0.05}))
        .await;
    post("/orders/o-1/confirm".into(), json!({})).await;

    let consumer = cairn_nats::BusConsumer::connect(
        &nats,
        &public,
        "test-board",
        &format!("{namespace}public.orders.>"),
    )
    .await
    .unwrap();
    let seen = Arc::new(Collect(std::sync::Mutex::new(Vec::new())));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(consumer.run(seen.clone(), stop_rx));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.0.lock().unwrap().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "integration events never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
    let seen = seen.0.lock().unwrap().clone();
    let types: Vec<_> = seen.iter().map(|m| m.event_type.clone().unwrap_or_default()).collect();
    assert_eq!(types, vec!["OrderCreatedV1", "OrderConfirmedV1"], "public events only, in order");
    assert_eq!(seen[1].subject, format!("{namespace}public.orders.confirmed.v1"));
    let confirmed: Value = serde_json::from_slice(&seen[1].payload).unwrap();
    assert_eq!(confirmed["order_id"], "o-1");
    assert_eq!(confirmed["total"].to_string(), "20.25", "money exact");
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    js.delete_stream(&public).await.unwrap();
    server.kill().await;
}

/// One command over NATS: its `Cairn-Status` and JSON body.
async fn command_request(
    client: async_nats::Client,
    subject: String,
    body: Value,
    key: Option<&'static str>,
) -> (u16, Value) {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(k) = key {
        headers.insert("Idempotency-Key", k);
    }
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request_with_headers(subject, headers, body.to_string().into()),
    )
    .await
    .expect("a reply")
    .expect("request");
    let status: u16 =
        reply.headers.as_ref().unwrap().get("Cairn-Status").unwrap().as_str().parse().unwrap();
    (status, serde_json::from_slice::<Value>(&reply.payload).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_arrive_over_nats_request_reply_with_http_semantics() {
    let Some(nats) = cairn_nats::testing::nats_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (public, namespace, commands) =
        (format!("CAIRN_TP_{}", id.to_uppercase()), format!("t{id}."), format!("t{id}.commands"));
    let env = [
        ("CAIRN_NATS_URL", nats.as_str()),
        ("CAIRN_NATS_PUBLIC_STREAM", public.as_str()),
        ("CAIRN_NATS_PUBLIC_NAMESPACE", namespace.as_str()),
        ("CAIRN_NATS_COMMANDS", commands.as_str()),
    ];
    let server = support::Server::start(dir.path(), &env).await;
    let client = async_nats::connect(&nats).await.unwrap();
    let request = |subject: String, body: Value, key: Option<&'static str>| {
        command_request(client.clone(), subject, body, key)
    };
    let order = json!({"order_id": "o.n-1", "customer_id": "c", "items": [{"product_id": "p", "quantity": 1, "price": 5}]});
    let (status, created) =
        request(format!("{commands}.create_order"), order.clone(), Some("k-1")).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["aggregate_id"], "o.n-1");
    // The same idempotency key answers the first outcome and appends nothing.
    let (status, again) = request(format!("{commands}.create_order"), order, Some("k-1")).await;
    assert_eq!((status, &again), (201, &created));
    // The id goes in the subject, escaped (the `.` would split the subject).
    let (status, added) = request(
        format!("{commands}.add_item.{}", cairn_nats::encode_token("o.n-1")),
        json!({"product_id": "q", "quantity": 2, "price": "1.50"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["version"], 2);
    // The same error codes as HTTP.
    let (status, err) = request(
        format!("{commands}.add_item.missing"),
        json!({"product_id": "q", "quantity": 1, "price": 1}),
        None,
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (404, Some("not_found")), "{err}");
    let (status, err) =
        request(format!("{commands}.create_order"), json!({"customer_id": 7}), None).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error"].is_string() && err["message"].is_string());
    // Every HTTP command has its subject: remove_item's two path parameters are two tokens.
    let (status, removed) = request(
        format!("{commands}.remove_item.{}.q", cairn_nats::encode_token("o.n-1")),
        json!({}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["version"], 3);
    let (status, err) = request(
        format!("{commands}.remove_item.{}", cairn_nats::encode_token("o.n-1")),
        json!({}),
        None,
    )
    .await;
    assert_eq!(status, 404, "{err}");
    assert!(err["message"].as_str().unwrap().contains("remove_item.<aggregate_id>.<product_id>"));
    // A decoded id is one path segment: `o.n-1/cancel?` pasted raw would make
    // `/orders/o.n-1/cancel?/confirm` and cancel the order; escaped, it is an id (invalid).
    let (status, err) = request(
        format!("{commands}.confirm_order.{}", cairn_nats::encode_token("o.n-1/cancel?")),
        json!({"reason": "attack"}),
        None,
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (400, Some("bad_request")), "{err}");
    // An unknown command's error lists the valid ones.
    let (status, err) = request(format!("{commands}.launch_rocket"), json!({}), None).await;
    assert_eq!((status, err["error"].as_str()), (404, Some("not_found")));
    let message = err["message"].as_str().unwrap();
    for shape in [
        "create_order",
        "add_item.<aggregate_id>",
        "remove_item.<aggregate_id>.<product_id>",
        "ship_order.<aggregate_id>",
    ] {
        assert!(message.contains(&format!("{commands}.{shape}")), "{message}");
    }
    // And HTTP sees the same order.
    let http: Value = reqwest::get(format!("{}/orders/o.n-1/events", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(http["events"].as_array().map_or(0, Vec::len), 3, "{http}");
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(&public).await;
    server.kill().await;
}

/// Commands over NATS are hardened: replies go only to inboxes (a caller cannot make the
/// server publish on `public.orders.*`), a decoded id follows the HTTP rules (`o1%2Fship`
/// is refused), and the queue group is the operator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reply_only_to_inboxes_check_ids_and_use_the_configured_queue_group() {
    let Some(nats) = cairn_nats::testing::nats_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (public, namespace, commands, group) = (
        format!("CAIRN_TP_{}", id.to_uppercase()),
        format!("t{id}."),
        format!("t{id}.commands"),
        format!("g{id}"),
    );
    let env = [
        ("CAIRN_NATS_URL", nats.as_str()),
        ("CAIRN_NATS_PUBLIC_STREAM", public.as_str()),
        ("CAIRN_NATS_PUBLIC_NAMESPACE", namespace.as_str()),
        ("CAIRN_NATS_COMMANDS", commands.as_str()),
        ("CAIRN_NATS_QUEUE_GROUP", group.as_str()),
    ];
    let server = support::Server::start(dir.path(), &env).await;
    let client = async_nats::connect(&nats).await.unwrap();
    let order = json!({"order_id": "o1", "customer_id": "c", "items": [{"product_id": "p", "quantity": 1, "price": 5}]});
    let (status, created) =
        command_request(client.clone(), format!("{commands}.create_order"), order, None).await;
    assert_eq!(status, 201, "{created}");

    // A reply subject outside `_INBOX.`: nothing is published there, and nothing done.
    let target = format!("t{id}.public.orders.hijack");
    let mut watch = client.subscribe(target.clone()).await.unwrap();
    client.flush().await.unwrap();
    client
        .publish_with_reply(
            format!("{commands}.create_order"),
            target,
            json!({"order_id": "o2", "customer_id": "c", "items": [{"product_id": "p", "quantity": 1, "price": 5}]})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    let published = tokio::time::timeout(Duration::from_secs(2), watch.next()).await;
    assert!(published.is_err(), "the server published on a caller-chosen subject");
    let http = reqwest::Client::new();
    let o2 = http.get(format!("{}/streams/o2", server.base)).send().await.unwrap();
    assert_eq!(o2.status(), 404, "a refused request does nothing");

    // `o1%2Fship` decodes to `o1/ship`: refused like the same id in an HTTP path.
    let (status, err) = command_request(
        client.clone(),
        format!("{commands}.confirm_order.o1%2Fship"),
        json!({}),
        None,
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (400, Some("bad_request")), "{err}");
    let (_, page) = {
        let r = http.get(format!("{}/streams/o1", server.base)).send().await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "nothing ran on o1: {page}");

    // The configured queue group takes the commands: a member of the old fixed group
    // `cairn` is a separate group and does not steal them.
    let mut thief = client.queue_subscribe(format!("{commands}.>"), "cairn".into()).await.unwrap();
    client.flush().await.unwrap();
    let mut answered = 0;
    for i in 0..6 {
        let (status, _) = command_request(
            client.clone(),
            format!("{commands}.create_order"),
            json!({"order_id": format!("q{i}"), "customer_id": "c", "items": [{"product_id": "p", "quantity": 1, "price": 5}]}),
            None,
        )
        .await;
        answered += usize::from(status == 201);
    }
    assert_eq!(answered, 6, "the server's own group served every request");
    // The thief, in another group, sees copies; in the server's group it would have
    // taken some. Joining the configured group is what a deployment controls.
    assert!(tokio::time::timeout(Duration::from_secs(1), thief.next()).await.is_ok());
    drop(server);
}
