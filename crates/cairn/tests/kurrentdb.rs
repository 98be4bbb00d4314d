//! #20: the official `KurrentDB` client (the `kurrentdb` crate, an outside tester) drives
//! `cairn serve --grpc-listen` on both backends: appends with every expected-revision
//! kind, reads both ways, `$all` with filters, catch-up subscriptions that turn live and
//! resume, delete, tombstone, stream metadata, batch appends, authentication and TLS.
//! What it writes is seen over HTTP, by the projections and by the relay, and the other
//! way round.

mod support;

use std::time::Duration;

use kurrentdb::{
    AppendToStreamOptions, Authentication, Client, ClientSettings, DeleteStreamOptions, EventData,
    ReadAllOptions, ReadStreamOptions, StreamMetadata, StreamMetadataResult, StreamPosition,
    StreamState, SubscribeToAllOptions, SubscribeToStreamOptions, SubscriptionEvent,
    SubscriptionFilter, TombstoneStreamOptions,
};
use serde_json::{Value, json};
use support::{CAIRN, ServeProcess, free_port};

/// Longest wait for anything a test expects to happen.
const PATIENCE: Duration = Duration::from_secs(20);

/// `cairn serve` with a gRPC listener; its gRPC port.
async fn serve(
    place: &cairn_testkit::Place,
    flags: &[&str],
    env: &[(&str, &str)],
) -> (ServeProcess, u16) {
    let grpc = free_port();
    let listen = format!("127.0.0.1:{grpc}");
    let mut all = vec!["--grpc-listen", listen.as_str()];
    all.extend_from_slice(flags);
    (ServeProcess::start(CAIRN, place, &all, env).await, grpc)
}

/// A client of the gRPC listener on `port`, with `user:token` credentials if given.
fn client(port: u16, credentials: Option<&str>) -> Client {
    let user = credentials.map(|c| format!("{c}@")).unwrap_or_default();
    let settings: ClientSettings =
        format!("esdb://{user}127.0.0.1:{port}?tls=false").parse().expect("connection string");
    Client::new(settings).expect("client")
}

fn json_event(event_type: &str, data: &Value) -> EventData {
    EventData::json(event_type, data).unwrap()
}

/// Every event of `stream` as (revision, type, data).
async fn read(
    client: &Client,
    stream: &str,
    options: &ReadStreamOptions,
) -> kurrentdb::Result<Vec<(u64, String, Value)>> {
    let mut reader = client.read_stream(stream, options).await?;
    let mut out = Vec::new();
    while let Some(event) = reader.next().await? {
        let e = event.get_original_event();
        out.push((e.revision, e.event_type.clone(), serde_json::from_slice(&e.data).unwrap()));
    }
    Ok(out)
}

async fn all_events(client: &Client, options: &ReadAllOptions) -> Vec<(String, String, u64)> {
    let mut reader = client.read_all(options).await.unwrap();
    let mut out = Vec::new();
    while let Some(event) = reader.next().await.unwrap() {
        let e = event.get_original_event();
        out.push((e.stream_id().to_owned(), e.event_type.clone(), e.position.commit));
    }
    out
}

async fn next_event(sub: &mut kurrentdb::Subscription) -> SubscriptionEvent {
    tokio::time::timeout(PATIENCE, sub.next_subscription_event())
        .await
        .expect("the subscription answered")
        .expect("no subscription error")
}

cairn_testkit::backend_tests!(
    appends_with_every_expected_revision_and_reads_both_ways,
    all_filters_and_subscriptions_that_turn_live_and_resume,
    delete_tombstone_and_metadata_as_the_client_reports_them,
    tokens_as_basic_password_or_bearer_with_their_roles,
);

async fn appends_with_every_expected_revision_and_reads_both_ways(backend: cairn_testkit::Backend) {
    let place = backend.place().await;
    let (server, port) = serve(&place, &[], &[]).await;
    let c = client(port, None);
    let http = reqwest::Client::new();

    // A multi-event append to a new stream: revisions 0..=2.
    let events = (0..3).map(|i| {
        json_event("Credited", &json!({"amount": i}))
            .metadata_as_json(&json!({"$correlationId": "corr-1", "tenant": "t"}))
            .unwrap()
    });
    let first = c
        .append_to_stream(
            "acct-1",
            &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
            events.collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    assert_eq!(first.next_expected_version, 2);
    assert!(first.position.commit > 0 && first.position.commit == first.position.prepare);

    // Each expected-revision kind, and the conflict the client reports.
    let at = |state| AppendToStreamOptions::default().stream_state(state);
    c.append_to_stream(
        "acct-1",
        &at(StreamState::StreamRevision(2)),
        json_event("Debited", &json!({"amount": 1})),
    )
    .await
    .unwrap();
    c.append_to_stream(
        "acct-1",
        &at(StreamState::StreamExists),
        json_event("Debited", &json!({"amount": 2})),
    )
    .await
    .unwrap();
    let any = c
        .append_to_stream(
            "acct-1",
            &at(StreamState::Any),
            json_event("Debited", &json!({"amount": 3})),
        )
        .await
        .unwrap();
    assert_eq!(any.next_expected_version, 5);
    match c
        .append_to_stream(
            "acct-1",
            &at(StreamState::StreamRevision(1)),
            json_event("Debited", &json!({})),
        )
        .await
    {
        Err(kurrentdb::Error::WrongExpectedVersion { expected, current }) => {
            assert_eq!(expected, StreamState::StreamRevision(1));
            assert_eq!(current, kurrentdb::CurrentRevision::Current(5));
        }
        other => panic!("expected a wrong-expected-version error, got {other:?}"),
    }
    for state in [StreamState::NoStream] {
        let refused =
            c.append_to_stream("acct-1", &at(state), json_event("Debited", &json!({}))).await;
        assert!(
            matches!(refused, Err(kurrentdb::Error::WrongExpectedVersion { .. })),
            "{refused:?}"
        );
    }
    let refused = c
        .append_to_stream("acct-new", &at(StreamState::StreamExists), json_event("X", &json!({})))
        .await;
    assert!(
        matches!(
            refused,
            Err(kurrentdb::Error::WrongExpectedVersion {
                current: kurrentdb::CurrentRevision::NoStream,
                ..
            })
        ),
        "{refused:?}"
    );

    reads_both_ways(&c, &http, &server.base).await;
    across_protocols_retries_and_batches(&c, &http, &server.base).await;
    refusals_and_module_streams(&c, &http, &server.base).await;
}

/// Forwards, backwards, from a revision; metadata in both conventions.
async fn reads_both_ways(c: &Client, http: &reqwest::Client, base: &str) {
    // Forwards, backwards, from a revision.
    let forwards = read(c, "acct-1", &ReadStreamOptions::default()).await.unwrap();
    assert_eq!(forwards.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(forwards[1], (1, "Credited".to_owned(), json!({"amount": 1})));
    let backwards = read(
        c,
        "acct-1",
        &ReadStreamOptions::default().backwards().position(StreamPosition::End).max_count(2),
    )
    .await
    .unwrap();
    assert_eq!(backwards.iter().map(|e| e.0).collect::<Vec<_>>(), vec![5, 4]);
    let from_3 = read(
        c,
        "acct-1",
        &ReadStreamOptions::default().position(StreamPosition::Position(3)).max_count(2),
    )
    .await
    .unwrap();
    assert_eq!(from_3.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 4]);
    let missing = read(c, "acct-none", &ReadStreamOptions::default()).await;
    assert!(matches!(missing, Err(kurrentdb::Error::ResourceNotFound)), "{missing:?}");

    // Metadata round-trips with the protocol's names, and arrives in Cairn's.
    let mut reader =
        c.read_stream("acct-1", &ReadStreamOptions::default().max_count(1)).await.unwrap();
    let e = reader.next().await.unwrap().unwrap();
    let e = e.get_original_event();
    assert!(e.is_json);
    let custom: Value = serde_json::from_slice(&e.custom_metadata).unwrap();
    assert_eq!(custom, json!({"$correlationId": "corr-1", "tenant": "t"}));
    let page: Value =
        http.get(format!("{base}/streams/acct-1")).send().await.unwrap().json().await.unwrap();
    let stored = &page["events"][0];
    assert_eq!(stored["aggregate_type"], "untyped", "{page}");
    assert_eq!(stored["version"], 1);
    assert_eq!(stored["event_id"], e.id.to_string());
    assert_eq!(stored["metadata"]["correlation_id"], "corr-1");
}

/// Events cross between the protocols; retries and batch appends.
async fn across_protocols_retries_and_batches(c: &Client, http: &reqwest::Client, base: &str) {
    let at = |state| AppendToStreamOptions::default().stream_state(state);
    // An event appended over HTTP is read over gRPC.
    let body = json!({"events": [{"aggregate_type": "Account", "event_type": "Opened", "data": {"by": "http"}}]});
    let answer = http.post(format!("{base}/streams/acct-2")).json(&body).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let over_grpc = read(c, "acct-2", &ReadStreamOptions::default()).await.unwrap();
    assert_eq!(over_grpc, vec![(0, "Opened".to_owned(), json!({"by": "http"}))]);
    // A gRPC append to it keeps the type HTTP gave the stream.
    let more = json_event("Renamed", &json!({"by": "grpc"}));
    c.append_to_stream("acct-2", &at(StreamState::StreamRevision(0)), more).await.unwrap();
    let page: Value =
        http.get(format!("{base}/streams/acct-2")).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["events"][1]["aggregate_type"], "Account", "{page}");
    assert_eq!(page["events"][1]["event_type"], "Renamed");

    // A retried append (same event id) is recognised, not doubled.
    let id = uuid::Uuid::new_v4();
    for _ in 0..2 {
        c.append_to_stream(
            "acct-3",
            &at(StreamState::Any),
            json_event("Opened", &json!({})).id(id),
        )
        .await
        .unwrap();
    }
    assert_eq!(read(c, "acct-3", &ReadStreamOptions::default()).await.unwrap().len(), 1);

    // Batch appends (the client's BatchAppend call).
    let batch = c.batch_append(&kurrentdb::BatchAppendOptions::default()).await.unwrap();
    let written = batch
        .append_to_stream(
            "acct-4",
            StreamState::NoStream,
            vec![json_event("A", &json!({})), json_event("B", &json!({}))],
        )
        .await
        .unwrap();
    assert_eq!(written.stream_name(), "acct-4");
    assert_eq!(read(c, "acct-4", &ReadStreamOptions::default()).await.unwrap().len(), 2);
    let conflict = batch
        .append_to_stream("acct-4", StreamState::NoStream, vec![json_event("C", &json!({}))])
        .await;
    assert!(conflict.is_err(), "a batch append checks its expected revision");
}

/// What Cairn cannot store is refused with a reason; a module's types make a module's stream.
async fn refusals_and_module_streams(c: &Client, http: &reqwest::Client, base: &str) {
    let at = |state| AppendToStreamOptions::default().stream_state(state);
    // What Cairn cannot store is refused with a reason, and nothing is stored.
    let binary = EventData::binary("Blob", bytes::Bytes::from_static(b"\x00\x01"));
    let refused = c.append_to_stream("acct-5", &at(StreamState::Any), binary).await;
    assert!(format!("{refused:?}").contains("JSON"), "{refused:?}");
    let refused =
        c.append_to_stream("bad name", &at(StreamState::Any), json_event("X", &json!({}))).await;
    assert!(refused.is_err());
    assert!(matches!(
        read(c, "acct-5", &ReadStreamOptions::default()).await,
        Err(kurrentdb::Error::ResourceNotFound)
    ));

    // A module's event type makes the stream that module's: its rules decide, and its
    // projection sees the event.
    let bad = c
        .append_to_stream(
            "order-g1",
            &at(StreamState::NoStream),
            json_event("OrderCreated", &json!({"nope": 1})),
        )
        .await;
    assert!(bad.is_err(), "the Order aggregate's schema applies: {bad:?}");
    let created = json!({"customer_id": "cust-g", "items": [{"product_id": "p-1", "quantity": 2, "price": 5.00}], "total": 10.00});
    let ok = c
        .append_to_stream(
            "order-g1",
            &at(StreamState::NoStream),
            json_event("OrderCreated", &created),
        )
        .await
        .unwrap();
    let summary = http
        .get(format!("{}/orders/order-g1?min_position={}&wait_ms=10000", base, ok.position.commit))
        .send()
        .await
        .unwrap();
    assert_eq!(summary.status(), 200);
    let summary: Value = summary.json().await.unwrap();
    assert_eq!(summary["customer_id"], "cust-g", "{summary}");

    // The other way round: a command over HTTP, its events read and subscribed to over gRPC.
    let mut live = c
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(StreamPosition::End)
                .filter(SubscriptionFilter::on_stream_name().add_prefix("order-h1")),
        )
        .await;
    assert!(matches!(next_event(&mut live).await, SubscriptionEvent::Confirmed(_)));
    let order = json!({"order_id": "order-h1", "customer_id": "cust-h",
        "items": [{"product_id": "p-1", "quantity": 1, "price": 2.50}]});
    let created = http.post(format!("{base}/orders")).json(&order).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let over_grpc = read(c, "order-h1", &ReadStreamOptions::default()).await.unwrap();
    assert_eq!(over_grpc[0].1, "OrderCreated");
    assert_eq!(over_grpc[0].2["customer_id"], "cust-h");
    loop {
        if let SubscriptionEvent::EventAppeared(e) = next_event(&mut live).await {
            assert_eq!(e.get_original_event().event_type, "OrderCreated");
            break;
        }
    }
}

async fn all_filters_and_subscriptions_that_turn_live_and_resume(backend: cairn_testkit::Backend) {
    let place = backend.place().await;
    let (_server, port) = serve(&place, &[], &[]).await;
    let c = client(port, None);
    let any = AppendToStreamOptions::default();
    for i in 0..5 {
        c.append_to_stream(
            format!("alpha-{}", i % 2),
            &any,
            json_event("AlphaHappened", &json!({"i": i})),
        )
        .await
        .unwrap();
        c.append_to_stream(
            format!("beta-{}", i % 2),
            &any,
            json_event("BetaHappened", &json!({"i": i})),
        )
        .await
        .unwrap();
    }

    // $all both ways, and filtered on the server by stream prefix, type prefix, regex.
    let forwards = all_events(&c, &ReadAllOptions::default()).await;
    assert_eq!(forwards.len(), 10);
    assert!(forwards.windows(2).all(|w| w[0].2 < w[1].2), "in position order");
    let backwards = all_events(
        &c,
        &ReadAllOptions::default().backwards().position(StreamPosition::End).max_count(3),
    )
    .await;
    let tail: Vec<_> = forwards.iter().rev().take(3).cloned().collect();
    assert_eq!(backwards, tail);
    let from = forwards[4].2;
    let after = all_events(
        &c,
        &ReadAllOptions::default()
            .position(StreamPosition::Position(kurrentdb::Position { commit: from, prepare: from }))
            .max_count(2),
    )
    .await;
    assert_eq!(after, forwards[4..6].to_vec(), "a position read starts at that event");
    let alphas = all_events(
        &c,
        &ReadAllOptions::default()
            .filter(SubscriptionFilter::on_stream_name().add_prefix("alpha-")),
    )
    .await;
    assert_eq!(alphas.len(), 5);
    assert!(alphas.iter().all(|e| e.0.starts_with("alpha-")));
    let betas = all_events(
        &c,
        &ReadAllOptions::default().filter(SubscriptionFilter::on_event_type().add_prefix("Beta")),
    )
    .await;
    assert!(betas.len() == 5 && betas.iter().all(|e| e.1 == "BetaHappened"));
    let regex = all_events(
        &c,
        &ReadAllOptions::default().filter(SubscriptionFilter::on_stream_name().regex("^beta-1$")),
    )
    .await;
    assert_eq!(regex.len(), 2);

    stream_subscription(&c).await;
    filtered_all_subscription(&c).await;
}

/// A stream subscription: catch-up, caught up, then live, and resumed.
async fn stream_subscription(c: &Client) {
    let any = AppendToStreamOptions::default();
    // A stream subscription: catch-up, caught up, then live.
    let mut sub = c
        .subscribe_to_stream(
            "alpha-0",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    assert!(matches!(next_event(&mut sub).await, SubscriptionEvent::Confirmed(_)));
    let mut revisions = Vec::new();
    loop {
        match next_event(&mut sub).await {
            SubscriptionEvent::EventAppeared(e) => revisions.push(e.get_original_event().revision),
            SubscriptionEvent::CaughtUp(_) => break,
            _ => {}
        }
    }
    assert_eq!(revisions, vec![0, 1, 2]);
    c.append_to_stream("alpha-0", &any, json_event("AlphaHappened", &json!({"live": true})))
        .await
        .unwrap();
    let SubscriptionEvent::EventAppeared(live) = next_event(&mut sub).await else {
        panic!("live event expected")
    };
    assert_eq!(live.get_original_event().revision, 3);
    // Resumed after revision 1: revisions 2 and 3 only.
    let mut resumed = c
        .subscribe_to_stream(
            "alpha-0",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Position(1)),
        )
        .await;
    let mut again = Vec::new();
    while again.len() < 2 {
        if let SubscriptionEvent::EventAppeared(e) = next_event(&mut resumed).await {
            again.push(e.get_original_event().revision);
        }
    }
    assert_eq!(again, vec![2, 3]);
}

/// A filtered `$all` subscription: only beta events, checkpoints, live, then a resume
/// from its last checkpoint that repeats nothing before it.
async fn filtered_all_subscription(c: &Client) {
    let any = AppendToStreamOptions::default();
    // A filtered $all subscription: only beta events, checkpoints, live, then a resume
    // from its last checkpoint that repeats nothing before it.
    let filter = SubscriptionFilter::on_event_type().add_prefix("Beta").max(2);
    let mut all =
        c.subscribe_to_all(&SubscribeToAllOptions::default().filter(filter.clone())).await;
    let (mut seen, mut checkpoint, mut caught_up) = (Vec::new(), None, false);
    while !caught_up {
        match next_event(&mut all).await {
            SubscriptionEvent::EventAppeared(e) => {
                seen.push(e.get_original_event().event_type.clone());
            }
            SubscriptionEvent::Checkpoint(p) => checkpoint = Some(p),
            SubscriptionEvent::CaughtUp(_) => caught_up = true,
            _ => {}
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|t| t == "BetaHappened"));
    let checkpoint = checkpoint.expect("a filtered subscription sends checkpoints");
    c.append_to_stream("beta-9", &any, json_event("BetaHappened", &json!({"live": true})))
        .await
        .unwrap();
    loop {
        if let SubscriptionEvent::EventAppeared(e) = next_event(&mut all).await {
            assert_eq!(e.get_original_event().stream_id(), "beta-9");
            break;
        }
    }
    let mut resumed = c
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .filter(filter)
                .position(StreamPosition::Position(checkpoint)),
        )
        .await;
    let mut after_checkpoint = Vec::new();
    loop {
        match next_event(&mut resumed).await {
            SubscriptionEvent::EventAppeared(e) => {
                assert!(e.get_original_event().position.commit > checkpoint.commit);
                after_checkpoint.push(e.get_original_event().stream_id().to_owned());
            }
            SubscriptionEvent::CaughtUp(_) => break,
            _ => {}
        }
    }
    assert_eq!(after_checkpoint.last().map(String::as_str), Some("beta-9"));
}

async fn delete_tombstone_and_metadata_as_the_client_reports_them(backend: cairn_testkit::Backend) {
    let place = backend.place().await;
    let (server, port) = serve(&place, &[], &[]).await;
    let c = client(port, None);
    let http = reqwest::Client::new();
    let any = AppendToStreamOptions::default();
    for s in ["doc-1", "doc-2", "doc-3"] {
        for i in 0..4 {
            c.append_to_stream(s, &any, json_event("Edited", &json!({"i": i}))).await.unwrap();
        }
    }

    // Soft delete: not found, then a new append starts it again.
    let wrong = c
        .delete_stream(
            "doc-1",
            &DeleteStreamOptions::default().stream_state(StreamState::StreamRevision(1)),
        )
        .await;
    assert!(wrong.is_err(), "a delete checks its expected revision");
    let deleted = c
        .delete_stream(
            "doc-1",
            &DeleteStreamOptions::default().stream_state(StreamState::StreamRevision(3)),
        )
        .await
        .unwrap();
    assert!(deleted.is_some_and(|p| p.commit > 0));
    assert!(matches!(
        read(&c, "doc-1", &ReadStreamOptions::default()).await,
        Err(kurrentdb::Error::ResourceNotFound)
    ));
    c.append_to_stream(
        "doc-1",
        &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
        json_event("Edited", &json!({"again": true})),
    )
    .await
    .unwrap();
    let back = read(&c, "doc-1", &ReadStreamOptions::default()).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].2, json!({"again": true}));

    // Metadata: set through $$doc-2, applied by the lifecycle rules, read back.
    let meta = StreamMetadata::builder().max_count(2).build();
    c.set_stream_metadata("doc-2", &any, &meta).await.unwrap();
    let StreamMetadataResult::Success(read_back) = c
        .get_stream_metadata(
            "doc-2",
            &ReadStreamOptions::default().backwards().position(StreamPosition::End),
        )
        .await
        .unwrap()
    else {
        panic!("metadata expected");
    };
    assert_eq!(read_back.metadata().max_count, Some(2));
    let visible = read(&c, "doc-2", &ReadStreamOptions::default()).await.unwrap();
    assert_eq!(visible.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2, 3]);
    let lifecycle: Value = http
        .get(format!("{}/streams/doc-2/metadata", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(lifecycle["metadata"]["max_count"], 2, "{lifecycle}");
    let refused = c
        .set_stream_metadata(
            "doc-2",
            &any,
            &StreamMetadata::builder().acl(kurrentdb::Acl::UserStream).build(),
        )
        .await;
    assert!(refused.is_err(), "an ACL is refused, not dropped");
    let truncated = StreamMetadata::builder().truncate_before(1).build();
    c.set_stream_metadata("doc-3", &any, &truncated).await.unwrap();
    let visible = read(&c, "doc-3", &ReadStreamOptions::default()).await.unwrap();
    assert_eq!(visible.first().map(|e| e.0), Some(1), "$tb 1 hides revision 0");

    // Tombstone: deleted for good, as the client reports it.
    c.tombstone_stream("doc-3", &TombstoneStreamOptions::default()).await.unwrap();
    assert!(matches!(
        read(&c, "doc-3", &ReadStreamOptions::default()).await,
        Err(kurrentdb::Error::ResourceDeleted)
    ));
    let append = c.append_to_stream("doc-3", &any, json_event("Edited", &json!({}))).await;
    assert!(matches!(append, Err(kurrentdb::Error::ResourceDeleted)), "{append:?}");
    let page = http.get(format!("{}/streams/doc-3", server.base)).send().await.unwrap();
    assert_eq!(page.status(), 410);
}

async fn tokens_as_basic_password_or_bearer_with_their_roles(backend: cairn_testkit::Backend) {
    let dir = tempfile::tempdir().unwrap();
    let admin = "cairn_grpc-test-admin-token-0123456789abcdefghijkl";
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, admin).unwrap();
    let place = backend.place().await;
    let token_flag = token_file.to_str().unwrap();
    let (server, port) = serve(&place, &["--admin-token-file", token_flag], &[]).await;
    let http = reqwest::Client::new();
    let reader: Value = http
        .post(format!("{}/admin/tokens", server.base))
        .bearer_auth(admin)
        .json(&json!({"name": "grpc-reader", "role": "reader"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reader = reader["token"].as_str().expect("a token").to_owned();

    let anonymous = client(port, None);
    let denied = anonymous
        .append_to_stream("s-1", &AppendToStreamOptions::default(), json_event("X", &json!({})))
        .await;
    assert!(matches!(denied, Err(kurrentdb::Error::AccessDenied)), "{denied:?}");

    let as_admin = client(port, Some(&format!("admin:{admin}")));
    as_admin
        .append_to_stream("s-1", &AppendToStreamOptions::default(), json_event("X", &json!({})))
        .await
        .unwrap();

    let as_reader = client(port, Some(&format!("anyone:{reader}")));
    assert_eq!(read(&as_reader, "s-1", &ReadStreamOptions::default()).await.unwrap().len(), 1);
    let denied = as_reader
        .append_to_stream("s-1", &AppendToStreamOptions::default(), json_event("X", &json!({})))
        .await;
    assert!(
        matches!(denied, Err(kurrentdb::Error::AccessDenied)),
        "a reader cannot append: {denied:?}"
    );

    // A bearer token per call overrides the connection's user.
    let per_call =
        ReadStreamOptions::default().authenticated(Authentication::bearer(reader.clone()));
    assert_eq!(read(&anonymous, "s-1", &per_call).await.unwrap().len(), 1);
    let wrong =
        ReadStreamOptions::default().authenticated(Authentication::bearer("cairn_not-a-token"));
    assert!(matches!(read(&anonymous, "s-1", &wrong).await, Err(kurrentdb::Error::AccessDenied)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_grpc_address_without_auth_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(CAIRN)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--grpc-listen", &format!("0.0.0.0:{}", free_port()), "--data-dir"])
            .arg(dir.path())
            .env_remove("CAIRN_ADMIN_TOKEN_FILE")
            .env_remove("CAIRN_INSECURE")
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("refused at once")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("without authentication"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_grpc_reach_the_relay() {
    let Some(nats) = cairn_nats::testing::nats_url() else { return };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let stream = format!("CAIRN_G_{}", id.to_uppercase());
    let prefix = format!("g{id}.events");
    let public = format!("CAIRN_GP_{}", id.to_uppercase());
    let namespace = format!("g{id}.");
    let env = [
        ("CAIRN_NATS_URL", nats.as_str()),
        ("CAIRN_NATS_INTERNAL", "true"),
        ("CAIRN_NATS_STREAM", stream.as_str()),
        ("CAIRN_NATS_SUBJECT_PREFIX", prefix.as_str()),
        ("CAIRN_NATS_PUBLIC_STREAM", public.as_str()),
        ("CAIRN_NATS_PUBLIC_NAMESPACE", namespace.as_str()),
    ];
    let place = cairn_testkit::Backend::Sqlite.place().await;
    let (_server, port) = serve(&place, &[], &env).await;
    let event_id = uuid::Uuid::new_v4();
    client(port, None)
        .append_to_stream(
            "acct-9",
            &AppendToStreamOptions::default(),
            json_event("Credited", &json!({"n": 1})).id(event_id),
        )
        .await
        .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let message = loop {
        if let Ok(s) = js.get_stream(&stream).await
            && let Ok(m) = s.get_raw_message(1).await
        {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never published the gRPC append"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let published: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(published["event_id"], event_id.to_string(), "{published}");
    assert_eq!(published["aggregate_id"], "acct-9");
    let _ = js.delete_stream(&stream).await;
    let _ = js.delete_stream(&public).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_takes_the_https_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = support::certificates(dir.path());
    let grpc = free_port();
    let _child = tokio::process::Command::new(CAIRN)
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--log", "warn"])
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc}"), "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let settings: ClientSettings =
        format!("esdb://localhost:{grpc}?tls=true&tlsCaFile={}", ca.display()).parse().unwrap();
    let c = Client::new(settings).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match c
            .append_to_stream(
                "tls-1",
                &AppendToStreamOptions::default(),
                json_event("Sealed", &json!({})),
            )
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "no TLS gRPC answer: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read(&c, "tls-1", &ReadStreamOptions::default()).await.unwrap().len(), 1);
    // The same port refuses plain text: it speaks TLS only.
    let plain = client(grpc, None);
    let refused =
        tokio::time::timeout(PATIENCE, read(&plain, "tls-1", &ReadStreamOptions::default())).await;
    assert!(!matches!(refused, Ok(Ok(_))), "plain text must not be served");
}
