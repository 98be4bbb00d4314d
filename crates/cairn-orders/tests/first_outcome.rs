//! Two runners of one process-manager instance re-handling one event take the same branch.
//!
//! The fulfillment manager's commands carry keys derived from the causing event
//! (`order-fulfillment:<event id>:<step>`, what `ProcessContext::options_for` makes) and
//! its appends are not fenced by leadership. Runner 1 is refused (no stock) and cancels
//! the order; stock then arrives; runner 2 — the successor re-handling from the
//! checkpoint, or a deposed runner running late — must meet runner 1's refusal under the
//! same key and cancel too, never reserve: an order both reserved and cancelled is the
//! divergence this guards against. Run on memory, SQLite and PostgreSQL.

use std::sync::Arc;

use cairn_core::{AllFilter, EventStore, IdempotencyKey, MemoryEventStore, RecordedEvent};
use cairn_cqrs::{CommandError, CommandOptions, Repository};
use cairn_orders::fulfillment::NAME;
use cairn_orders::inventory::InventoryCommand;
use cairn_orders::order::{Line, OrderCommand};
use cairn_orders::{Inventory, Order};
use cairn_testkit::Backend;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Branch {
    Reserved,
    Compensated,
}

/// The manager's options for a step of handling `event` (as `options_for` derives them).
fn step(event: &RecordedEvent, step: &str) -> CommandOptions {
    CommandOptions {
        idempotency: Some(IdempotencyKey::new(format!("{NAME}:{}:{step}", event.event_id))),
        ..CommandOptions::default()
    }
}

/// The fulfillment manager's decision on `OrderConfirmed` for a one-line order: reserve,
/// then mark ready; on a refusal, cancel the order (`out_of_stock`).
async fn handle_confirmed(repo: &Repository, event: &RecordedEvent) -> Branch {
    let order_id = event.aggregate_id.clone();
    let reserve = InventoryCommand::Reserve { order_id: order_id.clone(), quantity: 2 };
    match repo.execute::<Inventory>("p1", &reserve, &step(event, "reserve:p1")).await {
        Ok(_) => {
            let ready = repo
                .execute::<Order>(&order_id, &OrderCommand::MarkReadyToShip, &step(event, "ready"))
                .await;
            assert!(matches!(ready, Ok(_) | Err(CommandError::Rule(_))), "{ready:?}");
            Branch::Reserved
        }
        Err(CommandError::Rule(_)) => {
            let cancel = OrderCommand::Cancel { reason: "out_of_stock".into() };
            let done = repo.execute::<Order>(&order_id, &cancel, &step(event, "cancel")).await;
            assert!(matches!(done, Ok(_) | Err(CommandError::Rule(_))), "{done:?}");
            Branch::Compensated
        }
        Err(e) => panic!("transient failure in the test: {e}"),
    }
}

/// An order for 2 of `p1`, confirmed, with 1 in stock: its `OrderConfirmed` event.
async fn confirmed_order(repo: &Repository, order_id: &str) -> RecordedEvent {
    let none = CommandOptions::default();
    repo.execute::<Inventory>("p1", &InventoryCommand::Restock { quantity: 1 }, &none)
        .await
        .unwrap();
    let line = Line { product_id: "p1".into(), quantity: 2, price: "2.50".parse().unwrap() };
    let create = OrderCommand::Create { customer_id: "c1".into(), items: vec![line] };
    repo.execute::<Order>(order_id, &create, &none).await.unwrap();
    repo.execute::<Order>(order_id, &OrderCommand::Confirm, &none).await.unwrap();
    let all = repo.store().read_all(0, 100, &AllFilter::default()).await.unwrap();
    all.events
        .into_iter()
        .find(|e| e.aggregate_id == order_id && e.event_type == "OrderConfirmed")
        .expect("the order was confirmed")
}

/// How many reservations for `order_id` and cancellations of it the log holds.
async fn reserved_and_cancelled(store: &Arc<dyn EventStore>, order_id: &str) -> (usize, usize) {
    let all = store.read_all(0, 1000, &AllFilter::default()).await.unwrap();
    let reserved = all
        .events
        .iter()
        .filter(|e| e.event_type == "StockReserved" && e.data.get().contains(order_id))
        .count();
    let cancelled = all
        .events
        .iter()
        .filter(|e| e.aggregate_id == order_id && e.event_type == "OrderCancelled")
        .count();
    (reserved, cancelled)
}

async fn a_late_runner_takes_the_first_runners_branch(store: Arc<dyn EventStore>) {
    let repo = Repository::new(Arc::clone(&store));
    let event = confirmed_order(&repo, "order-1").await;
    assert_eq!(handle_confirmed(&repo, &event).await, Branch::Compensated);
    // Stock arrives: a fresh decision would now reserve.
    repo.execute::<Inventory>(
        "p1",
        &InventoryCommand::Restock { quantity: 10 },
        &CommandOptions::default(),
    )
    .await
    .unwrap();
    // The second runner re-handles the same event: the same branch, nothing reserved.
    assert_eq!(handle_confirmed(&repo, &event).await, Branch::Compensated);
    assert_eq!(reserved_and_cancelled(&store, "order-1").await, (0, 1));
    // The refusal is replayed as it was first given.
    let replayed = repo
        .execute::<Inventory>(
            "p1",
            &InventoryCommand::Reserve { order_id: "order-1".into(), quantity: 2 },
            &step(&event, "reserve:p1"),
        )
        .await
        .unwrap_err();
    assert!(matches!(replayed, CommandError::Rule(ref r) if !r.message.is_empty()), "{replayed:?}");
}

async fn racing_runners_and_a_restock_never_diverge(store: Arc<dyn EventStore>) {
    let repo = Repository::new(Arc::clone(&store));
    for round in 0..4 {
        let order_id = format!("order-race-{round}");
        let event = confirmed_order(&repo, &order_id).await;
        let runner = |repo: Repository, event: RecordedEvent| {
            tokio::spawn(async move { handle_confirmed(&repo, &event).await })
        };
        let (a, b) = (runner(repo.clone(), event.clone()), runner(repo.clone(), event.clone()));
        let restock = {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.execute::<Inventory>(
                    "p1",
                    &InventoryCommand::Restock { quantity: 2 },
                    &CommandOptions::default(),
                )
                .await
                .unwrap();
            })
        };
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        restock.await.unwrap();
        assert_eq!(a, b, "round {round}: the runners took different branches");
        let (reserved, cancelled) = reserved_and_cancelled(&store, &order_id).await;
        match a {
            Branch::Reserved => assert_eq!((reserved, cancelled), (1, 0), "round {round}"),
            Branch::Compensated => assert_eq!((reserved, cancelled), (0, 1), "round {round}"),
        }
    }
}

async fn on_every_backend(scenario: fn(Arc<dyn EventStore>) -> futures_like::Scenario) {
    scenario(Arc::new(MemoryEventStore::new())).await;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        if !backend.enabled() {
            continue;
        }
        let (stores, _place) = backend.open().await;
        scenario(Arc::clone(&stores.events)).await;
        stores.events.close().await;
    }
}

mod futures_like {
    pub type Scenario = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_runner_takes_the_first_runners_branch_on_every_backend() {
    on_every_backend(|s| Box::pin(a_late_runner_takes_the_first_runners_branch(s))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_runners_and_a_restock_never_diverge_on_every_backend() {
    on_every_backend(|s| Box::pin(racing_runners_and_a_restock_never_diverge(s))).await;
}
