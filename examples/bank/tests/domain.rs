//! The aggregates' rules, driven like the repository drives them: random command
//! sequences never overdraw, and the books of one account always balance.

use bank::account::AccountStatus;
use bank::account::{Deposit, Open, Refund, Withdraw};
use bank::transfer::Request;
use bank::{Account, AccountCommand, Transfer, TransferCommand};
use cairn_cqrs::{Aggregate, DomainEvent, Existence};
use proptest::prelude::*;

/// Decides `command` on `state` (at `version` events) like `Repository::execute`:
/// `None` when refused (existence rule or `handle` error), else its events, after
/// checking that each event survives the JSON round trip the store makes it take.
fn decide<A>(state: &A, version: u64, command: &A::Command) -> Option<Vec<A::Event>>
where
    A: Aggregate + Clone + PartialEq + std::fmt::Debug,
    A::Event: PartialEq,
{
    let before = state.clone();
    let result = state.handle(command);
    assert_eq!(*state, before, "handle changed the state");
    let allowed = !matches!(
        (A::existence(command), version),
        (Existence::MustExist, 0) | (Existence::MustNotExist, 1..)
    );
    let events = result.ok().filter(|_| allowed)?;
    for event in &events {
        let decoded = A::Event::from_json(event.event_type(), event.to_json().get())
            .expect("an event decodes from its own JSON");
        assert_eq!(&decoded, event, "event JSON round trip");
    }
    Some(events)
}

/// Amounts from tiny to past the limit, and a few invalid ones.
fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 1..50_000i64,
        1 => Just(bank::rules::AMOUNT_MAX_CENTS),
        1 => prop_oneof![Just(0i64), Just(-5), Just(i64::MAX), Just(i64::MIN)],
    ]
}

fn account_command() -> impl Strategy<Value = AccountCommand> {
    prop_oneof![
        1 => prop_oneof![Just("ada".to_owned()), Just(String::new())]
            .prop_map(|owner| AccountCommand::Open(Open { owner })),
        5 => amount().prop_map(|amount_cents| {
            AccountCommand::Deposit(Deposit { amount_cents, reference: None })
        }),
        5 => amount().prop_map(|amount_cents| {
            AccountCommand::Withdraw(Withdraw { amount_cents, reference: Some("atm".into()) })
        }),
        2 => amount().prop_map(|amount_cents| {
            AccountCommand::Refund(Refund { transfer_id: "t-1".into(), amount_cents })
        }),
        1 => Just(AccountCommand::Close),
    ]
}

/// Mostly sequences that start by opening the account, sometimes ones that do not.
fn account_commands() -> impl Strategy<Value = Vec<AccountCommand>> {
    prop_oneof![
        4 => proptest::collection::vec(account_command(), 0..40).prop_map(|mut commands| {
            commands.insert(0, AccountCommand::Open(Open { owner: "ada".into() }));
            commands
        }),
        1 => proptest::collection::vec(account_command(), 0..40),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The balance is never negative; it always equals deposits + refunds − withdrawals
    /// (of the accepted commands, counted here independently of the aggregate); a
    /// closed account takes refunds only.
    #[test]
    fn an_account_never_overdraws_and_its_books_balance(commands in account_commands()) {
        let (mut account, mut version) = (Account::default(), 0u64);
        let (mut deposited, mut withdrawn, mut refunded) = (0i128, 0i128, 0i128);
        for command in &commands {
            let was_closed = account.status == AccountStatus::Closed;
            let Some(events) = decide(&account, version, command) else { continue };
            if was_closed {
                prop_assert!(matches!(command, AccountCommand::Refund(_)), "closed took {command:?}");
            }
            match command {
                AccountCommand::Deposit(d) => deposited += i128::from(d.amount_cents),
                AccountCommand::Withdraw(w) => withdrawn += i128::from(w.amount_cents),
                AccountCommand::Refund(r) => refunded += i128::from(r.amount_cents),
                AccountCommand::Close => prop_assert_eq!(account.balance_cents, 0),
                AccountCommand::Open(_) => {}
            }
            for event in &events {
                account.apply(event);
                version += 1;
            }
            prop_assert!(account.balance_cents >= 0, "overdrawn: {account:?}");
            prop_assert_eq!(i128::from(account.balance_cents), deposited + refunded - withdrawn);
            prop_assert_eq!(
                account.balance_cents,
                account.deposited_cents + account.refunded_cents - account.withdrawn_cents
            );
        }
    }
}

/// Drives a transfer through `commands`, returning the accepted ones' count.
fn run_transfer(commands: &[TransferCommand]) -> (Transfer, usize) {
    let (mut transfer, mut version, mut accepted) = (Transfer::default(), 0u64, 0);
    for command in commands {
        if let Some(events) = decide(&transfer, version, command) {
            accepted += 1;
            for event in &events {
                transfer.apply(event);
                version += 1;
            }
        }
    }
    (transfer, accepted)
}

fn request(from: &str, to: &str, amount_cents: i64) -> TransferCommand {
    TransferCommand::Request(Request { from: from.into(), to: to.into(), amount_cents })
}

#[test]
fn a_transfer_moves_through_its_states_once() {
    use bank::transfer::TransferStatus;
    let complete = [request("a", "b", 5), TransferCommand::MarkDebited, TransferCommand::Complete];
    assert_eq!(run_transfer(&complete).0.status, TransferStatus::Completed);
    // Every transition is accepted once, from its one state.
    let twice = [
        request("a", "b", 5),
        TransferCommand::MarkDebited,
        TransferCommand::MarkDebited,
        TransferCommand::Refund { reason: "closed".into() },
        TransferCommand::Complete,
        TransferCommand::Reject { reason: "late".into() },
    ];
    let (refunded, accepted) = run_transfer(&twice);
    assert_eq!((refunded.status, accepted), (TransferStatus::Refunded, 3));
    let rejected = [request("a", "b", 5), TransferCommand::Reject { reason: "funds".into() }];
    assert_eq!(run_transfer(&rejected).0.status, TransferStatus::Rejected);
    // Refused requests: to itself, nothing, a bad id; a transition before any request.
    for bad in [request("a", "a", 5), request("a", "b", 0), request("a b", "c", 5)] {
        assert_eq!(run_transfer(&[bad]).1, 0);
    }
    assert_eq!(run_transfer(&[TransferCommand::Complete]).1, 0);
}

#[test]
fn every_status_the_saga_stores_is_listed() {
    use bank::saga::{STATUSES, SagaStatus};
    let stored: Vec<String> = [
        SagaStatus::Debiting,
        SagaStatus::Crediting,
        SagaStatus::Refunding,
        SagaStatus::Completed,
        SagaStatus::Refunded,
        SagaStatus::Rejected,
    ]
    .iter()
    .map(|s| serde_json::to_value(s).unwrap().as_str().unwrap().to_owned())
    .collect();
    assert_eq!(stored, STATUSES);
}
