//! The books balance under concurrency, on both backends: 32 transfers among 10 accounts
//! (some to closed accounts) run at once beside direct deposits and withdrawals, through
//! the real projection and process-manager runners. Once quiet, money is conserved,
//! every transfer ended, and the read model agrees with the aggregates. Then the whole
//! history is redelivered to the saga with its instances forgotten: it issues no command
//! that changes anything.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bank::account::{AccountEvent, Deposit, Open, Withdraw};
use bank::balances::{AccountBalance, Balances, LINES, StatementLine, TABLE};
use bank::saga::{self, SagaInstance, SagaStatus, TransferSaga};
use bank::transfer::{Request, TransferStatus};
use bank::{Account, AccountCommand, Transfer, TransferCommand};
use cairn_core::readmodel::{ListQuery, ReadModelStore};
use cairn_core::{EventStore, StreamRead};
use cairn_cqrs::consumer::ConsumerHandle;
use cairn_cqrs::process::spawn_process_manager;
use cairn_cqrs::projection::spawn_projection;
use cairn_cqrs::{CommandOptions, DomainEvent, Repository};
use cairn_testkit::Backend;
use tokio::sync::watch;
use tokio::time::Instant;

use common::{Rng, account};

/// Accounts in the test.
const ACCOUNTS: usize = 10;
/// The first `FUNDED` accounts get money; the others are closed at zero.
const FUNDED: usize = 8;
/// Transfers fired at once.
const TRANSFERS: usize = 32;
/// What each funded account starts with, in cents.
const INITIAL_CENTS: i64 = 100_000;
/// Largest transfer: each source sends [`TRANSFERS`] / [`FUNDED`] = 4 transfers, and
/// 4 × 24 000 + [`ATM_CENTS`] ≤ [`INITIAL_CENTS`], so no debit is refused whatever the
/// interleaving: every transfer's outcome is known in advance.
const TRANSFER_MAX_CENTS: u64 = 24_000;
/// One direct withdrawal per funded account, racing the transfers.
const ATM_CENTS: i64 = 4_000;
/// One direct deposit per funded account, racing the transfers.
const TOP_UP_CENTS: i64 = 1_000;
/// How long the system may take to become quiet (two shared cores, PostgreSQL).
const QUIET_WITHIN: Duration = Duration::from_secs(120);
/// How often quiet is checked.
const POLL: Duration = Duration::from_millis(50);

struct Planned {
    id: String,
    from: usize,
    to: usize,
    amount_cents: i64,
}

/// Sources round-robin over the funded accounts; every eighth transfer (4 in all) goes to
/// a closed account on purpose, the others to a random other account (closed ones too).
fn plan() -> Vec<Planned> {
    let mut rng = Rng(0x00c0_ffee);
    (0..TRANSFERS)
        .map(|t| {
            let from = t % FUNDED;
            let to = if t % 8 == 3 {
                FUNDED + (t / 8) % (ACCOUNTS - FUNDED)
            } else {
                let mut to = rng.below(ACCOUNTS - 1);
                if to >= from {
                    to += 1;
                }
                to
            };
            let amount_cents = 1 + (rng.next() % TRANSFER_MAX_CENTS) as i64;
            Planned { id: format!("tr-{t}"), from, to, amount_cents }
        })
        .collect()
}

fn keyed(key: String) -> CommandOptions {
    CommandOptions {
        idempotency: Some(cairn_core::IdempotencyKey::new(key)),
        ..CommandOptions::default()
    }
}

/// Waits until every transfer has ended and both consumers have scanned the head.
async fn wait_quiet(
    repo: &Repository,
    events: &Arc<dyn EventStore>,
    consumers: &[&ConsumerHandle],
    transfers: &[Planned],
) {
    let deadline = Instant::now() + QUIET_WITHIN;
    loop {
        let mut ended = 0;
        for t in transfers {
            let loaded = repo.load::<Transfer>(&t.id).await.unwrap();
            ended += usize::from(loaded.state.status.is_terminal());
        }
        let head = *events.head().borrow();
        let caught_up = consumers.iter().all(|c| c.position() >= head);
        if ended == transfers.len() && caught_up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not quiet within {QUIET_WITHIN:?}: {ended}/{} transfers ended, head {head}, consumers at {:?}",
            transfers.len(),
            consumers.iter().map(|c| c.position()).collect::<Vec<_>>()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Every event of a stream.
async fn stream(events: &Arc<dyn EventStore>, id: &str) -> Vec<AccountEvent> {
    let slice = events.read_stream(id, StreamRead::forward_from(1, 10_000)).await.unwrap();
    slice.events.iter().map(|e| AccountEvent::from_recorded(e).unwrap()).collect()
}

fn statement(rm: &Arc<dyn ReadModelStore>, id: &str) -> Vec<StatementLine> {
    let query = ListQuery {
        table: LINES.into(),
        filters: vec![("account_id".into(), id.into())],
        after: None,
        limit: 1000,
    };
    rm.list(&query)
        .unwrap()
        .into_iter()
        .map(|(_, json)| serde_json::from_str(&json).unwrap())
        .collect()
}

cairn_testkit::backend_tests!(thirty_two_concurrent_transfers_keep_the_books);

#[allow(clippy::too_many_lines)] // One scenario, checked end to end.
async fn thirty_two_concurrent_transfers_keep_the_books(backend: Backend) {
    let (stores, _place) = backend.open().await;
    let (events, rm) = (Arc::clone(&stores.events), Arc::clone(&stores.readmodels));
    let repo = Repository::new(Arc::clone(&events));
    let (stop, stop_rx) = watch::channel(false);
    let balances =
        spawn_projection(Arc::clone(&events), Arc::clone(&rm), Arc::new(Balances), stop_rx.clone())
            .unwrap();
    let saga_handle =
        spawn_process_manager(repo.clone(), Arc::clone(&rm), Arc::new(TransferSaga), stop_rx)
            .unwrap();

    // Ten accounts: eight funded, two closed at zero.
    let none = CommandOptions::default();
    let (mut deposited, mut withdrawn) = (0i64, 0i64);
    for i in 0..ACCOUNTS {
        let open = AccountCommand::Open(Open { owner: format!("owner-{}", i % 3) });
        repo.execute::<Account>(&account(i), &open, &none).await.unwrap();
        if i < FUNDED {
            let deposit =
                Deposit { amount_cents: INITIAL_CENTS, reference: Some("initial".into()) };
            repo.execute::<Account>(&account(i), &AccountCommand::Deposit(deposit), &none)
                .await
                .unwrap();
            deposited += INITIAL_CENTS;
        } else {
            repo.execute::<Account>(&account(i), &AccountCommand::Close, &none).await.unwrap();
        }
    }

    // Everything at once: each transfer requested twice with the same key (a retried
    // request), one withdrawal and one deposit per funded account.
    let transfers = plan();
    assert!(transfers.iter().filter(|t| t.to >= FUNDED).count() >= 4, "some go to closed accounts");
    let mut requests = tokio::task::JoinSet::new();
    for t in &transfers {
        for _ in 0..2 {
            let (repo, id) = (repo.clone(), t.id.clone());
            let command = TransferCommand::Request(Request {
                from: account(t.from),
                to: account(t.to),
                amount_cents: t.amount_cents,
            });
            requests.spawn(async move {
                let options = keyed(format!("req:{id}"));
                let outcome = repo.execute::<Transfer>(&id, &command, &options).await;
                (id, outcome.map(|o| o.version))
            });
        }
    }
    let mut direct = tokio::task::JoinSet::new();
    for i in 0..FUNDED {
        let repo = repo.clone();
        direct.spawn(async move {
            let atm = Withdraw { amount_cents: ATM_CENTS, reference: Some("atm".into()) };
            let top_up = Deposit { amount_cents: TOP_UP_CENTS, reference: None };
            let none = CommandOptions::default();
            repo.execute::<Account>(&account(i), &AccountCommand::Withdraw(atm), &none).await?;
            repo.execute::<Account>(&account(i), &AccountCommand::Deposit(top_up), &none).await
        });
    }
    let mut first: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(joined) = requests.join_next().await {
        let (id, version) = joined.unwrap();
        let version = version.unwrap_or_else(|e| panic!("request {id} refused: {e}"));
        // Both sends of one request got the same, first, outcome.
        assert_eq!(*first.entry(id).or_insert(version), version, "a retried request repeated");
    }
    while let Some(joined) = direct.join_next().await {
        joined.unwrap().expect("no direct movement is refused: the plan leaves room for it");
        withdrawn += ATM_CENTS;
        deposited += TOP_UP_CENTS;
    }

    wait_quiet(&repo, &events, &[&balances, &saga_handle], &transfers).await;

    // Every transfer ended as planned: to an open account completed, to a closed one
    // refunded; no debit was refused.
    let mut refunded = 0;
    for t in &transfers {
        let state = repo.load::<Transfer>(&t.id).await.unwrap().state;
        let expected =
            if t.to >= FUNDED { TransferStatus::Refunded } else { TransferStatus::Completed };
        assert_eq!(state.status, expected, "{} to {}", t.id, account(t.to));
        refunded += usize::from(expected == TransferStatus::Refunded);
        let instance: SagaInstance =
            serde_json::from_str(&rm.get(saga::TABLE, &t.id).unwrap().unwrap()).unwrap();
        let status = if t.to >= FUNDED { SagaStatus::Refunded } else { SagaStatus::Completed };
        assert_eq!(instance.status, status, "saga instance of {}", t.id);
    }
    assert!(refunded >= 1, "at least one transfer was refunded");

    // Money is conserved: transfers only move it.
    let mut total = 0i64;
    for i in 0..ACCOUNTS {
        let id = account(i);
        let loaded = repo.load::<Account>(&id).await.unwrap();
        let state = &loaded.state;
        assert!(state.balance_cents >= 0, "{id} overdrawn");
        total += state.balance_cents;
        // The read model agrees with the aggregate, and the statement with the balance.
        let row: AccountBalance =
            serde_json::from_str(&rm.get(TABLE, &id).unwrap().unwrap()).unwrap();
        assert_eq!(
            (row.balance_cents, row.version, row.status.as_str()),
            (state.balance_cents, loaded.version, state.status.as_str()),
            "{id}: read model vs aggregate"
        );
        let lines = statement(&rm, &id);
        assert_eq!(lines.iter().map(|l| l.amount_cents).sum::<i64>(), state.balance_cents, "{id}");
        assert!(lines.windows(2).all(|w| w[0].version < w[1].version), "{id}: lines in order");
        if let Some(last) = lines.last() {
            assert_eq!(last.balance_after_cents, state.balance_cents, "{id}: last line");
        }
    }
    assert_eq!(total, deposited - withdrawn, "money was created or lost");

    // From the streams: each transfer debited once, credited or refunded once.
    let mut movements: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for i in 0..ACCOUNTS {
        for event in stream(&events, &account(i)).await {
            let key = |r: &Option<String>| {
                r.as_deref().and_then(|r| r.strip_prefix("transfer:")).map(str::to_owned)
            };
            match event {
                AccountEvent::MoneyWithdrawn(w) => {
                    if let Some(t) = key(&w.reference) {
                        movements.entry(t).or_default().0 += 1;
                    }
                }
                AccountEvent::MoneyDeposited(d) => {
                    if let Some(t) = key(&d.reference) {
                        movements.entry(t).or_default().1 += 1;
                    }
                }
                AccountEvent::MoneyRefunded(r) => {
                    movements.entry(r.transfer_id).or_default().2 += 1;
                }
                _ => {}
            }
        }
    }
    for t in &transfers {
        let expected = if t.to >= FUNDED { (1, 0, 1) } else { (1, 1, 0) };
        assert_eq!(
            movements.get(&t.id).copied(),
            Some(expected),
            "{}: (debits, credits, refunds)",
            t.id
        );
    }
    assert!(rm.dead_letters(None).unwrap().is_empty(), "nothing was dead-lettered");

    // Redelivery: stop the saga, forget its instances and its checkpoint, and hand it the
    // whole history again. Its commands carry the same keys, so the store answers each
    // with its first outcome; the refused credits are refused again. Nothing is appended.
    let head = *events.head().borrow();
    stop.send(true).unwrap();
    let deadline = Instant::now() + QUIET_WITHIN;
    // Stopped = no longer leading, and (PostgreSQL) its lease given back, so the new
    // runner below is the only one issuing commands.
    while saga_handle.is_leader() || (backend == Backend::Postgres && rm.leads(saga::NAME)) {
        assert!(Instant::now() < deadline, "the saga did not stop");
        tokio::time::sleep(POLL).await;
    }
    // Writing under the saga's name needs its leadership (PostgreSQL): taken for the
    // rewind, given back for the new runner to take.
    let fence = rm.try_lead(saga::NAME).unwrap().expect("nobody else leads the saga");
    rm.transact(&fence, saga::NAME, Some(0), &mut |txn| {
        transfers.iter().try_for_each(|t| txn.delete(saga::TABLE, &t.id))
    })
    .unwrap();
    rm.resign(saga::NAME);
    let (_stop_again, stop_rx) = watch::channel(false);
    let replay =
        spawn_process_manager(repo.clone(), Arc::clone(&rm), Arc::new(TransferSaga), stop_rx)
            .unwrap();
    replay.wait_for(head, QUIET_WITHIN).await.expect("the saga replayed the history");
    assert_eq!(*events.head().borrow(), head, "a redelivered history appended events");
    for t in &transfers {
        let instance: SagaInstance =
            serde_json::from_str(&rm.get(saga::TABLE, &t.id).unwrap().unwrap()).unwrap();
        assert!(
            matches!(instance.status, SagaStatus::Completed | SagaStatus::Refunded),
            "{}: {:?} after redelivery",
            t.id,
            instance.status
        );
    }
    assert!(rm.dead_letters(None).unwrap().is_empty(), "nothing was dead-lettered on replay");
}
