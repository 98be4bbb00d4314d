//! The saga's branches on both backends: a debit refused rejects the transfer; a credit
//! refused (closed or unknown target) refunds the debit; and a decision taken on a
//! refusal is kept on redelivery even when asking again would now succeed.

use std::sync::Arc;
use std::time::Duration;

use bank::account::{Deposit, Open};
use bank::saga::{self, SagaInstance, SagaStatus, TransferSaga};
use bank::transfer::{Request, TransferStatus};
use bank::{Account, AccountCommand, Transfer, TransferCommand};
use cairn_core::readmodel::ReadModelStore;
use cairn_cqrs::consumer::ConsumerHandle;
use cairn_cqrs::process::spawn_process_manager;
use cairn_cqrs::{CommandOptions, Repository};
use cairn_testkit::Backend;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a transfer may take to end (two shared cores, PostgreSQL).
const ENDS_WITHIN: Duration = Duration::from_secs(60);
/// How often it is checked.
const POLL: Duration = Duration::from_millis(20);

async fn command(repo: &Repository, id: &str, command: AccountCommand) {
    repo.execute::<Account>(id, &command, &CommandOptions::default()).await.unwrap();
}

async fn transfer(repo: &Repository, id: &str, from: &str, to: &str, amount_cents: i64) {
    let request = Request { from: from.into(), to: to.into(), amount_cents };
    let command = TransferCommand::Request(request);
    repo.execute::<Transfer>(id, &command, &CommandOptions::default()).await.unwrap();
}

/// Waits for the transfer to end and the saga to scan past it; its status.
async fn ended(
    repo: &Repository,
    handle: &ConsumerHandle,
    rm: &Arc<dyn ReadModelStore>,
    id: &str,
) -> (TransferStatus, SagaStatus) {
    let deadline = Instant::now() + ENDS_WITHIN;
    loop {
        let status = repo.load::<Transfer>(id).await.unwrap().state.status;
        if status.is_terminal() {
            let head = *repo.store().head().borrow();
            handle.wait_for(head, ENDS_WITHIN).await.expect("the saga caught up");
            let instance: SagaInstance =
                serde_json::from_str(&rm.get(saga::TABLE, id).unwrap().unwrap()).unwrap();
            return (status, instance.status);
        }
        assert!(Instant::now() < deadline, "{id} did not end: {status:?}");
        tokio::time::sleep(POLL).await;
    }
}

async fn balance(repo: &Repository, id: &str) -> i64 {
    repo.load::<Account>(id).await.unwrap().state.balance_cents
}

cairn_testkit::backend_tests!(every_branch_ends_and_a_refusal_is_not_asked_again);

async fn every_branch_ends_and_a_refusal_is_not_asked_again(backend: Backend) {
    let (stores, _place) = backend.open().await;
    let rm = Arc::clone(&stores.readmodels);
    let repo = Repository::new(Arc::clone(&stores.events));
    let (stop, stop_rx) = watch::channel(false);
    let handle =
        spawn_process_manager(repo.clone(), Arc::clone(&rm), Arc::new(TransferSaga), stop_rx)
            .unwrap();
    for id in ["alice", "bob", "shut"] {
        command(&repo, id, AccountCommand::Open(Open { owner: id.into() })).await;
    }
    command(&repo, "shut", AccountCommand::Close).await;
    let deposit = |amount_cents| AccountCommand::Deposit(Deposit { amount_cents, reference: None });
    command(&repo, "alice", deposit(1_000)).await;

    transfer(&repo, "t-ok", "alice", "bob", 400).await;
    assert_eq!(
        ended(&repo, &handle, &rm, "t-ok").await,
        (TransferStatus::Completed, SagaStatus::Completed)
    );
    transfer(&repo, "t-broke", "bob", "alice", 401).await;
    assert_eq!(
        ended(&repo, &handle, &rm, "t-broke").await,
        (TransferStatus::Rejected, SagaStatus::Rejected),
        "bob has 400: no overdraft"
    );
    transfer(&repo, "t-shut", "alice", "shut", 100).await;
    assert_eq!(
        ended(&repo, &handle, &rm, "t-shut").await,
        (TransferStatus::Refunded, SagaStatus::Refunded),
        "a closed target refuses the credit"
    );
    transfer(&repo, "t-ghost", "alice", "nobody", 100).await;
    assert_eq!(
        ended(&repo, &handle, &rm, "t-ghost").await,
        (TransferStatus::Refunded, SagaStatus::Refunded),
        "an unknown target refuses the credit"
    );
    assert_eq!((balance(&repo, "alice").await, balance(&repo, "bob").await), (600, 400));
    assert_eq!(balance(&repo, "shut").await, 0);

    // Now the refused debit would succeed and the unknown target exists. A redelivery of
    // the whole history must follow the decisions already taken, not ask again.
    command(&repo, "bob", deposit(10_000)).await;
    command(&repo, "nobody", AccountCommand::Open(Open { owner: "late".into() })).await;
    let head = *repo.store().head().borrow();
    stop.send(true).unwrap();
    let deadline = Instant::now() + ENDS_WITHIN;
    while handle.is_leader() || (backend == Backend::Postgres && rm.leads(saga::NAME)) {
        assert!(Instant::now() < deadline, "the saga did not stop");
        tokio::time::sleep(POLL).await;
    }
    // Writing under the saga's name needs its leadership (PostgreSQL): taken for the
    // rewind, given back for the new runner to take.
    let fence = rm.try_lead(saga::NAME).unwrap().expect("nobody else leads the saga");
    rm.transact(&fence, saga::NAME, Some(0), &mut |_| Ok(())).unwrap();
    rm.resign(saga::NAME);
    let (_stop_again, stop_rx) = watch::channel(false);
    let replay =
        spawn_process_manager(repo.clone(), Arc::clone(&rm), Arc::new(TransferSaga), stop_rx)
            .unwrap();
    replay.wait_for(head, ENDS_WITHIN).await.expect("the saga replayed the history");
    assert_eq!(*repo.store().head().borrow(), head, "the redelivery appended events");
    assert_eq!((balance(&repo, "bob").await, balance(&repo, "nobody").await), (10_400, 0));
    assert!(rm.dead_letters(None).unwrap().is_empty(), "nothing was dead-lettered");
}
