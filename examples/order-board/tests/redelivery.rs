//! `order-board` killed with `-9` in the middle of a backlog: the messages it held
//! unacknowledged come again after `ack_wait`, behind the ones that followed them, and the
//! board must still end with every order's status as the store has it.
//!
//! The store side is Cairn's own relay over an in-memory store, publishing the reference
//! domain's integration events (what `cairn serve --nats-url` runs). Uses the machine's
//! NATS (`CAIRN_TEST_NATS_URL`), a stream of its own. Bounded: `ack_wait` is 1 s, so the
//! redelivery comes within seconds; every wait has a deadline of at most 60 s.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::EventStore;
use cairn_core::memory::MemoryEventStore;
use cairn_cqrs::Repository;
use cairn_cqrs::repository::CommandOptions;
use cairn_orders::order::{Line, Order, OrderCommand};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Orders in the backlog (about 2.3 messages each).
const ORDERS: usize = 150;
/// The board's fault hook: milliseconds per message, so that the backlog takes seconds.
const APPLY_DELAY_MS: &str = "10";
/// Messages the first board applies before it is killed.
const APPLIED_BEFORE_KILL: usize = 30;
/// The longest any condition is waited for.
const DEADLINE: Duration = Duration::from_secs(60);

fn integration_events(namespace: String) -> cairn_nats::Mapper {
    Arc::new(move |event, _config| {
        let Some(public) =
            cairn_orders::integration::translate(event).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        Ok(Some(cairn_nats::Outgoing {
            subject: format!("{namespace}{}", public.subject),
            id: public.event_id.to_string(),
            event_type: public.event_type,
            payload: bytes::Bytes::from(public.data.get().to_owned()),
        }))
    })
}

fn board(nats: &str, stream: &str, namespace: &str, db: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_order-board"))
        .args(["--nats", nats, "--stream", stream, "--durable", "board-test"])
        .args(["--subjects", &format!("{namespace}public.orders.>")])
        .arg("--db")
        .arg(db)
        .args(["--ack-wait-secs", "1"])
        .env("ORDER_BOARD_FAULT_APPLY_DELAY_MS", APPLY_DELAY_MS)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("order-board runs")
}

async fn run(repository: &Repository, id: &str, command: OrderCommand) {
    repository
        .execute::<Order>(id, &command, &CommandOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_board_ends_with_every_order_as_the_store_has_it() {
    let Some(nats) = cairn_nats::testing::nats_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let stream = format!("CAIRN_TB_{}", id.to_uppercase());
    let namespace = format!("t{id}.");

    // The backlog: every order created, then most confirmed, then some cancelled, so that
    // one order's messages lie far apart in the stream.
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let repository = Repository::new(Arc::clone(&store));
    let order = |i: usize| format!("o-{i}");
    for i in 0..ORDERS {
        let line = Line { product_id: "p".into(), quantity: 1, price: "1.50".parse().unwrap() };
        run(
            &repository,
            &order(i),
            OrderCommand::Create { customer_id: "c".into(), items: vec![line] },
        )
        .await;
    }
    for i in (0..ORDERS).filter(|i| i % 3 != 0) {
        run(&repository, &order(i), OrderCommand::Confirm).await;
    }
    for i in (0..ORDERS).filter(|i| i % 3 == 2 || i % 5 == 0) {
        run(&repository, &order(i), OrderCommand::Cancel { reason: "changed_mind".into() }).await;
    }

    let readmodels = Arc::new(cairn_sqlite::SqliteReadModels::open(dir.path()).unwrap());
    let config = cairn_nats::RelayConfig {
        stream: stream.clone(),
        subject_prefix: format!("{namespace}public.orders"),
        ..cairn_nats::RelayConfig::default()
    };
    let relay = Arc::new(
        cairn_nats::Relay::with_mapper(
            &nats,
            Arc::clone(&store),
            readmodels,
            config,
            integration_events(namespace.clone()),
        )
        .await
        .unwrap(),
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut progress = relay.progress();
    tokio::spawn(Arc::clone(&relay).run(stop_rx));
    let head = *store.head().borrow();
    tokio::time::timeout(DEADLINE, progress.wait_for(|p| p.position >= head))
        .await
        .expect("the relay published the backlog")
        .unwrap();

    // The first board dies with messages in hand.
    let db = dir.path().join("board.db");
    let mut first = board(&nats, &stream, &namespace, &db);
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    for _ in 0..APPLIED_BEFORE_KILL {
        tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("the board applies messages")
            .unwrap()
            .expect("the board is still running");
    }
    first.start_kill().unwrap();
    first.wait().await.unwrap();

    let mut second = board(&nats, &stream, &namespace, &db);
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    let started = tokio::time::Instant::now();
    loop {
        // Everything delivered and acknowledged, the late redeliveries included.
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            js.get_consumer_from_stream("board-test", &stream).await.unwrap();
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0
        {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the board never drained its backlog: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    let _ = stop.send(true);

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut wrong = Vec::new();
    for i in 0..ORDERS {
        let loaded = repository.load::<Order>(&order(i)).await.unwrap();
        // The public facts name fewer states than the aggregate has.
        let expected = match serde_json::to_value(loaded.state.status).unwrap().as_str() {
            Some("pending") => "created".to_owned(),
            Some("ready_to_ship") => "confirmed".to_owned(),
            Some(other) => other.to_owned(),
            None => unreachable!("a status is a string"),
        };
        let on_board: String = conn
            .query_row("SELECT status FROM orders WHERE order_id = ?1", [order(i)], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{} is not on the board: {e}", order(i)));
        if expected != on_board {
            wrong.push(format!("{}: board {on_board}, store {expected}", order(i)));
        }
    }
    assert!(wrong.is_empty(), "{} orders differ: {wrong:?}", wrong.len());
    js.delete_stream(&stream).await.unwrap();
}
