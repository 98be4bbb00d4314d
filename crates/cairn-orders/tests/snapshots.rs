//! Snapshots never change what an aggregate loads as: for random histories, the state
//! loaded from the latest snapshot plus the tail equals the state from a full replay (the
//! bug cqrs-es 0.5 has: events applied twice around a snapshot), and a snapshot of
//! another state shape is ignored.

use std::sync::Arc;

use cairn_core::snapshot::{MemorySnapshotStore, Snapshot, SnapshotStore};
use cairn_core::timestamp::Timestamp;
use cairn_core::{EventStore, MemoryEventStore};
use cairn_cqrs::repository::Until;
use cairn_cqrs::{Aggregate, CommandOptions, Repository};
use cairn_orders::Order;
use cairn_orders::order::{Line, OrderCommand};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn command() -> impl Strategy<Value = OrderCommand> {
    let product = prop_oneof![Just("p1"), Just("p2"), Just("p3")].prop_map(str::to_owned);
    let price =
        prop_oneof![Just("1"), Just("2.50"), Just("29.99")].prop_map(|p| p.parse().unwrap());
    prop_oneof![
        6 => (product.clone(), 1i64..4, price).prop_map(|(product_id, quantity, price)| OrderCommand::AddItem(Line { product_id, quantity, price })),
        2 => product.prop_map(|product_id| OrderCommand::RemoveItem { product_id }),
        1 => Just(OrderCommand::Confirm),
        1 => Just(OrderCommand::MarkReadyToShip),
        1 => Just(OrderCommand::CorrectTotal { corrected_total: "42.42".parse().unwrap(), reason: "fix".into() }),
    ]
}

async fn assert_same(plain: &Repository, snap: &Repository, until: Until) {
    let full = plain.load_until::<Order>("order-1", until).await.unwrap();
    let fast = snap.load_until::<Order>("order-1", until).await.unwrap();
    assert_eq!(fast.state, full.state, "state differs at {until:?}");
    assert_eq!(
        (fast.version, fast.position, fast.timestamp),
        (full.version, full.position, full.timestamp)
    );
}

#[test]
fn snapshot_plus_tail_equals_full_replay() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut runner =
        TestRunner::new(Config { cases: 128, failure_persistence: None, ..Config::default() });
    runner
        .run(&(proptest::collection::vec(command(), 1..60), 1u64..8), |(commands, every)| {
            rt.block_on(async {
                let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
                let snapshots: Arc<dyn SnapshotStore> = Arc::new(MemorySnapshotStore::default());
                let plain = Repository::new(Arc::clone(&store));
                let snap =
                    Repository::with_snapshots(Arc::clone(&store), Arc::clone(&snapshots), every);
                let create = OrderCommand::Create { customer_id: "c".into(), items: vec![] };
                snap.execute::<Order>("order-1", &create, &CommandOptions::default())
                    .await
                    .unwrap();
                for command in &commands {
                    // Commands run through the snapshotting repository (so snapshots are taken
                    // mid-history); refusals are part of a random history.
                    let _ =
                        snap.execute::<Order>("order-1", command, &CommandOptions::default()).await;
                    assert_same(&plain, &snap, Until::End).await;
                }
                let version = plain.load::<Order>("order-1").await.unwrap().version;
                for v in 1..=version {
                    assert_same(&plain, &snap, Until::Version(v)).await;
                }
                let taken = snapshots.load("order-1").unwrap();
                if version > every {
                    assert!(
                        taken.is_some(),
                        "no snapshot after {version} events with every = {every}"
                    );
                }
            });
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn a_snapshot_of_another_shape_or_type_is_ignored() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let snapshots: Arc<dyn SnapshotStore> = Arc::new(MemorySnapshotStore::default());
    let snap = Repository::with_snapshots(Arc::clone(&store), Arc::clone(&snapshots), 1000);
    let create = OrderCommand::Create { customer_id: "c".into(), items: vec![] };
    snap.execute::<Order>("order-1", &create, &CommandOptions::default()).await.unwrap();
    let forged = |snapshot_version, aggregate_type: &str| Snapshot {
        aggregate_id: "order-1".into(),
        aggregate_type: aggregate_type.into(),
        snapshot_version,
        version: 1,
        position: 1,
        timestamp: Timestamp::now(),
        // A state that is not what the events say: it must never be used.
        state: r#"{"status":"shipped","customer_id":"forged","items":[],"corrections":0}"#.into(),
    };
    for (shape, aggregate_type) in
        [(Order::SNAPSHOT_VERSION + 1, "Order"), (Order::SNAPSHOT_VERSION, "Customer")]
    {
        snapshots.save(&forged(shape, aggregate_type)).unwrap();
        let loaded = snap.load::<Order>("order-1").await.unwrap();
        assert_eq!(loaded.state.customer_id, "c", "snapshot {shape}/{aggregate_type} was used");
    }
    // The same shape and type is used (which is how the test knows the forgery would show).
    snapshots.save(&forged(Order::SNAPSHOT_VERSION, "Order")).unwrap();
    assert_eq!(snap.load::<Order>("order-1").await.unwrap().state.customer_id, "forged");
}
