//! Idempotency records: the first outcome under a key — appended or refused — is what
//! every later write under that key gets (insert-if-absent, serialised with appends).

use std::sync::Arc;

use cairn_core::ExpectedVersion::Any;
use cairn_core::timestamp::Timestamp;
use cairn_core::{
    AllFilter, AppendError, EventStore, IdempotencyKey, IdempotencyRecord, KeyOutcome, Refusal,
};

use crate::fixtures::{append_of, event};

/// Tasks in the refusal/append race (half refuse, half append).
const RACERS: usize = 16;

fn refusal(message: &str) -> Refusal {
    Refusal {
        code: "rule_violation".into(),
        message: message.into(),
        details: serde_json::json!({ "needed": 3 }),
    }
}

fn keyed(stream: &str, key: IdempotencyKey) -> cairn_core::Append {
    let mut append = append_of(stream, Any, vec![event("Tick", 1)]);
    append.idempotency = Some(key);
    append
}

async fn events_stored(store: &Arc<dyn EventStore>) -> usize {
    store.read_all(0, 1000, &AllFilter::default()).await.unwrap().events.len()
}

/// A recorded refusal is what a later keyed append gets: it stores nothing.
pub async fn recorded_refusal_answers_a_later_append(store: Arc<dyn EventStore>) {
    let key = IdempotencyKey::new("pm:e1:reserve");
    let first =
        store.record_refusal(key.clone(), "stock-1".into(), refusal("out of stock")).await.unwrap();
    let expected =
        KeyOutcome::Refused { aggregate_id: "stock-1".into(), refusal: refusal("out of stock") };
    assert_eq!(first.outcome, expected);
    // Recording again returns the first record, not a second one.
    let again =
        store.record_refusal(key.clone(), "stock-1".into(), refusal("other")).await.unwrap();
    assert_eq!(again.outcome, expected);
    match store.append(keyed("stock-1", key.clone())).await.unwrap_err() {
        AppendError::IdempotencyKeyUsed { record } => assert_eq!(record.outcome, expected),
        other => panic!("expected the refusal, got {other:?}"),
    }
    assert_eq!(events_stored(&store).await, 0);
    assert_eq!(store.idempotent_result(&key.key).await.unwrap().unwrap().outcome, expected);
}

/// A refusal recorded after a keyed append is told the append's record.
pub async fn refusal_after_an_append_returns_the_appended_record(store: Arc<dyn EventStore>) {
    let key = IdempotencyKey::new("pm:e2:reserve");
    let stored = store.append(keyed("stock-2", key.clone())).await.unwrap();
    let record =
        store.record_refusal(key.clone(), "stock-2".into(), refusal("late")).await.unwrap();
    match record.outcome {
        KeyOutcome::Appended { aggregate_id, outcome } => {
            assert_eq!(aggregate_id, "stock-2");
            assert_eq!(outcome.position, stored.position);
        }
        other @ KeyOutcome::Refused { .. } => panic!("expected the appended record, got {other:?}"),
    }
    assert!(matches!(
        store.idempotent_result(&key.key).await.unwrap().unwrap().outcome,
        KeyOutcome::Appended { .. }
    ));
}

/// Many writers race on one key, half refusing and half appending: exactly one outcome
/// wins, every writer is told it, and events are stored only if it is an append.
pub async fn refusals_and_appends_racing_on_one_key_agree(store: Arc<dyn EventStore>) {
    for round in 0..4 {
        let key = IdempotencyKey::new(format!("race-{round}"));
        let stream = format!("race-{round}");
        let before = events_stored(&store).await;
        let mut tasks = Vec::new();
        for i in 0..RACERS {
            let (store, key, stream) = (Arc::clone(&store), key.clone(), stream.clone());
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    let r = store.record_refusal(key, stream, refusal("no")).await.unwrap();
                    r.outcome
                } else {
                    match store.append(keyed(&stream, key)).await {
                        Ok(o) => KeyOutcome::Appended {
                            aggregate_id: stream,
                            outcome: cairn_core::AppendOutcome { deduplicated: true, ..o },
                        },
                        Err(AppendError::IdempotencyKeyUsed { record }) => record.outcome,
                        Err(e) => panic!("unexpected append error {e:?}"),
                    }
                }
            }));
        }
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        let recorded: IdempotencyRecord = store.idempotent_result(&key.key).await.unwrap().unwrap();
        for outcome in &seen {
            assert_eq!(
                outcome, &recorded.outcome,
                "round {round}: every writer sees the first outcome"
            );
        }
        let added = events_stored(&store).await - before;
        match recorded.outcome {
            KeyOutcome::Appended { .. } => assert_eq!(added, 1, "round {round}"),
            KeyOutcome::Refused { .. } => assert_eq!(added, 0, "round {round}"),
        }
    }
}

/// The same key with another fingerprint is a different request: refused, nothing stored.
pub async fn another_fingerprint_under_a_key_is_refused(store: Arc<dyn EventStore>) {
    let key = |fp: &str| IdempotencyKey {
        key: "http:fp".into(),
        fingerprint: Some(fp.into()),
        expires_at: None,
    };
    store.append(keyed("fp-1", key("a"))).await.unwrap();
    assert_eq!(
        store.append(keyed("fp-1", key("b"))).await.unwrap_err(),
        AppendError::IdempotencyKeyReused { key: "http:fp".into() }
    );
    assert_eq!(
        store.record_refusal(key("b"), "fp-1".into(), refusal("x")).await.unwrap_err(),
        AppendError::IdempotencyKeyReused { key: "http:fp".into() }
    );
    // The same fingerprint is the same request.
    assert!(matches!(
        store.append(keyed("fp-1", key("a"))).await.unwrap_err(),
        AppendError::IdempotencyKeyUsed { .. }
    ));
    let refused_key = |fp: &str| IdempotencyKey { key: "http:fp-r".into(), ..key(fp) };
    store.record_refusal(refused_key("a"), "fp-2".into(), refusal("x")).await.unwrap();
    assert_eq!(
        store.append(keyed("fp-2", refused_key("b"))).await.unwrap_err(),
        AppendError::IdempotencyKeyReused { key: "http:fp-r".into() }
    );
    assert_eq!(events_stored(&store).await, 1);
}

/// An expired record counts as absent: the key takes a new first outcome.
pub async fn an_expired_record_counts_as_absent(store: Arc<dyn EventStore>) {
    let past = Timestamp::from_micros(Timestamp::now().as_micros() - 1_000_000);
    let future = Timestamp::from_micros(Timestamp::now().as_micros() + 3_600_000_000);
    let key =
        |at| IdempotencyKey { key: "http:ttl".into(), fingerprint: None, expires_at: Some(at) };
    store.record_refusal(key(past), "ttl-1".into(), refusal("old")).await.unwrap();
    assert_eq!(store.idempotent_result("http:ttl").await.unwrap(), None);
    // A keyed append is not answered by the expired refusal: it stores.
    store.append(keyed("ttl-1", key(past))).await.unwrap();
    assert_eq!(events_stored(&store).await, 1);
    assert_eq!(store.idempotent_result("http:ttl").await.unwrap(), None);
    // A refusal after an expired append is recorded afresh.
    let record = store.record_refusal(key(future), "ttl-1".into(), refusal("new")).await.unwrap();
    assert!(
        matches!(record.outcome, KeyOutcome::Refused { ref refusal, .. } if refusal.message == "new")
    );
    assert_eq!(store.idempotent_result("http:ttl").await.unwrap(), Some(record));
    // A live record holds.
    assert!(matches!(
        store.append(keyed("ttl-1", key(future))).await.unwrap_err(),
        AppendError::IdempotencyKeyUsed { .. }
    ));
    assert_eq!(events_stored(&store).await, 1);
}
