//! Every event the bank emits, domain and public, validates against its JSON Schema; the
//! schema tables list exactly the event types; the translator publishes only the public
//! facts, with deterministic ids.

use bank::account::{Deposit, Open, Refund, Withdraw};
use bank::integration::{PUBLIC_EVENT_TYPES, translate};
use bank::schemas::{EVENTS, PUBLIC};
use bank::transfer::Request;
use bank::{Account, AccountCommand, AccountEvent, Transfer, TransferCommand, TransferEvent};
use cairn_core::RecordedEvent;
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::integration::public_event_id;
use cairn_cqrs::{Aggregate, DomainEvent};
use serde_json::Value;
use serde_json::value::RawValue;

fn validator(table: &[(&str, &[&str])], event_type: &str) -> jsonschema::Validator {
    let (_, versions) = table
        .iter()
        .find(|(t, _)| *t == event_type)
        .unwrap_or_else(|| panic!("no schema for {event_type}"));
    let schema: Value = serde_json::from_str(versions.last().unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn assert_valid(table: &[(&str, &[&str])], event_type: &str, data: &str) {
    let instance: Value = serde_json::from_str(data).unwrap();
    let validator = validator(table, event_type);
    let errors: Vec<String> = validator.iter_errors(&instance).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{event_type} {data}: {errors:?}");
}

/// Runs commands on an aggregate, keeping every event it emits.
fn emitted<A: Aggregate>(commands: &[A::Command]) -> Vec<A::Event> {
    let (mut state, mut all) = (A::default(), Vec::new());
    for command in commands {
        for event in state.handle(command).expect("the sample commands are accepted") {
            state.apply(&event);
            all.push(event);
        }
    }
    all
}

fn account_events() -> Vec<AccountEvent> {
    let deposit = |amount_cents, reference: Option<&str>| {
        AccountCommand::Deposit(Deposit { amount_cents, reference: reference.map(Into::into) })
    };
    let withdraw = |amount_cents, reference: Option<&str>| {
        AccountCommand::Withdraw(Withdraw { amount_cents, reference: reference.map(Into::into) })
    };
    emitted::<Account>(&[
        AccountCommand::Open(Open { owner: "ada".into() }),
        deposit(500, None),
        deposit(1, Some("salary")),
        withdraw(400, Some("transfer:t-1")),
        withdraw(101, None),
        AccountCommand::Close,
        AccountCommand::Refund(Refund { transfer_id: "t-1".into(), amount_cents: 400 }),
    ])
}

fn transfer_events() -> Vec<TransferEvent> {
    let request =
        || TransferCommand::Request(Request { from: "a".into(), to: "b".into(), amount_cents: 7 });
    let mut events =
        emitted::<Transfer>(&[request(), TransferCommand::MarkDebited, TransferCommand::Complete]);
    events.extend(emitted::<Transfer>(&[
        request(),
        TransferCommand::MarkDebited,
        TransferCommand::Refund { reason: "b: the account is closed".into() },
    ]));
    events.extend(emitted::<Transfer>(&[
        request(),
        TransferCommand::Reject { reason: "a: insufficient funds".into() },
    ]));
    events
}

#[test]
fn the_schema_tables_list_exactly_the_event_types() {
    let mut domain: Vec<&str> =
        AccountEvent::EVENT_TYPES.iter().chain(TransferEvent::EVENT_TYPES).copied().collect();
    let mut listed: Vec<&str> = EVENTS.iter().map(|(t, _)| *t).collect();
    domain.sort_unstable();
    listed.sort_unstable();
    assert_eq!(domain, listed);
    let public: Vec<&str> = PUBLIC.iter().map(|(t, _)| *t).collect();
    assert_eq!(public, PUBLIC_EVENT_TYPES);
}

#[test]
fn every_emitted_domain_event_validates_and_bad_data_does_not() {
    let account = account_events();
    let transfer = transfer_events();
    let mut seen: Vec<&str> = account.iter().map(DomainEvent::event_type).collect();
    seen.extend(transfer.iter().map(DomainEvent::event_type));
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), EVENTS.len(), "the samples cover every event type");
    for event in &account {
        assert_valid(EVENTS, event.event_type(), event.to_json().get());
    }
    for event in &transfer {
        assert_valid(EVENTS, event.event_type(), event.to_json().get());
    }
    let bad = serde_json::json!({ "amount_cents": 0 });
    assert!(!validator(EVENTS, "MoneyWithdrawn").is_valid(&bad), "amounts are at least 1");
}

fn recorded(aggregate_type: &str, id: &str, event_type: &str, data: &str) -> RecordedEvent {
    RecordedEvent {
        event_id: cairn_core::store::new_event_id(),
        aggregate_id: id.into(),
        aggregate_type: aggregate_type.into(),
        event_type: event_type.into(),
        version: 1,
        position: 1,
        timestamp: Timestamp::now(),
        data: RawValue::from_string(data.into()).unwrap(),
        metadata: RawValue::from_string("{}".into()).unwrap(),
    }
}

#[test]
fn the_translator_publishes_the_public_facts_only() {
    let mut published = Vec::new();
    for event in account_events() {
        let stored = recorded("Account", "acct-1", event.event_type(), event.to_json().get());
        published.extend(translate(&stored).unwrap().map(|p| (stored.event_id, p)));
    }
    for event in transfer_events() {
        let stored = recorded("Transfer", "t-1", event.event_type(), event.to_json().get());
        published.extend(translate(&stored).unwrap().map(|p| (stored.event_id, p)));
    }
    let types: Vec<&str> = published.iter().map(|(_, p)| p.event_type.as_str()).collect();
    assert_eq!(types, ["AccountOpenedV1", "TransferCompletedV1", "TransferRefundedV1"]);
    for (source, public) in &published {
        assert_valid(PUBLIC, &public.event_type, public.data.get());
        assert_eq!(public.event_id, public_event_id(*source, &public.event_type));
        assert!(public.subject.starts_with("public.bank."), "{}", public.subject);
    }
    let completed: Value = serde_json::from_str(published[1].1.data.get()).unwrap();
    assert_eq!(
        completed,
        serde_json::json!({ "transfer_id": "t-1", "from": "a", "to": "b", "amount_cents": 7 })
    );
    // Another context's event of the same type name is not the bank's.
    let foreign = recorded("Ledger", "x", "AccountOpened", r#"{"owner":"x"}"#);
    assert!(translate(&foreign).unwrap().is_none());
}
