//! `order-board`: an example service on the Cairn bus.
//!
//! It builds its own read model of orders — in its own SQLite file, never touching
//! Cairn's database — from the public integration events Cairn publishes on
//! `public.orders.*` (JetStream stream `CAIRN_PUBLIC`). Each message's effect and its id
//! commit in one transaction, so a redelivered message (a crash between commit and ack)
//! changes nothing.
//!
//! A message can also come *late*: after a crash, the messages the dead process held
//! unacknowledged are redelivered only after the bus's `ack_wait`, behind the messages
//! that followed them. So each row keeps the version of the last event applied to it
//! (`BusMessage::version`, the source event's version in its order's stream), and an
//! older message only fills what the row lacks; it never turns a status back.
//!
//! ```sh
//! cargo run -p order-board -- --nats nats://127.0.0.1:4222 --db order-board.db
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use cairn_nats::{BusConsumer, BusHandler, BusMessage, ConsumerOptions};
use clap::Parser;
use rusqlite::{Connection, params};
use serde_json::Value;

/// Follow Cairn's public order events into a local board.
#[derive(Parser, Debug)]
struct Args {
    /// NATS server(s), comma-separated.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The stream Cairn publishes integration events to.
    #[arg(long, default_value = "CAIRN_PUBLIC")]
    stream: String,
    /// This service's durable consumer name (its position survives restarts).
    #[arg(long, default_value = "order-board")]
    durable: String,
    /// The subjects to follow.
    #[arg(long, default_value = "public.orders.>")]
    subjects: String,
    /// The board's own database.
    #[arg(long, default_value = "order-board.db")]
    db: std::path::PathBuf,
    /// Seconds the bus waits for an acknowledgement before delivering a message again
    /// (when this service creates its durable consumer).
    #[arg(long, default_value_t = 30.0)]
    ack_wait_secs: f64,
}

/// Fault injection for crash tests: `ORDER_BOARD_FAULT_APPLY_DELAY_MS` slows every
/// message down, so a test can kill the process in the middle of a backlog.
fn fault_apply_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("ORDER_BOARD_FAULT_APPLY_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_millis)
    })
}

/// The board: one row per order.
struct Board {
    conn: Mutex<Connection>,
}

impl Board {
    fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS orders (
                 order_id TEXT PRIMARY KEY, customer_id TEXT, status TEXT NOT NULL,
                 total TEXT, tracking_number TEXT, updated_at TEXT NOT NULL,
                 version INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS applied (message_id TEXT PRIMARY KEY);",
        )?;
        // A board created before rows kept their version: 0 = older than any message.
        let has_version = conn
            .prepare("SELECT 1 FROM pragma_table_info('orders') WHERE name = 'version'")?
            .exists([])?;
        if !has_version {
            conn.execute_batch("ALTER TABLE orders ADD COLUMN version INTEGER NOT NULL DEFAULT 0")?;
        }
        Ok(Self { conn: Mutex::new(conn) })
    }
}

impl BusHandler for Board {
    fn handle(&self, m: &BusMessage) -> Result<(), String> {
        let event: Value = serde_json::from_slice(&m.payload).map_err(|e| e.to_string())?;
        let text = |k: &str| event[k].as_str().map(str::to_owned);
        let order_id = text("order_id").ok_or("no order_id")?;
        // Without the header (not published by Cairn's relay) a message counts as newest.
        let version = m.version.map_or(i64::MAX, |v| i64::try_from(v).unwrap_or(i64::MAX));
        if let Some(delay) = fault_apply_delay() {
            std::thread::sleep(delay);
        }
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        // Seen before: the effect is already in this database.
        let fresh = tx
            .execute("INSERT OR IGNORE INTO applied (message_id) VALUES (?1)", [&m.id])
            .map_err(|e| e.to_string())?
            == 1;
        let status = match m.event_type.as_deref() {
            Some("OrderCreatedV1") => "created",
            Some("OrderConfirmedV1") => "confirmed",
            Some("OrderShippedV1") => "shipped",
            Some("OrderCancelledV1") => "cancelled",
            _ => return tx.commit().map_err(|e| e.to_string()),
        };
        if fresh {
            // The total stays exact: the JSON number's own digits.
            let total = event.get("total").map(ToString::to_string);
            let at = text("created_at")
                .or_else(|| text("confirmed_at"))
                .or_else(|| text("shipped_at"))
                .or_else(|| text("cancelled_at"))
                .unwrap_or_default();
            // A newer fact wins; an older one (a late redelivery) only fills what is missing.
            tx.execute(
                "INSERT INTO orders (order_id, customer_id, status, total, tracking_number, updated_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (order_id) DO UPDATE SET
                     status = CASE WHEN excluded.version > orders.version
                         THEN excluded.status ELSE orders.status END,
                     customer_id = CASE WHEN excluded.version > orders.version
                         THEN coalesce(excluded.customer_id, orders.customer_id)
                         ELSE coalesce(orders.customer_id, excluded.customer_id) END,
                     total = CASE WHEN excluded.version > orders.version
                         THEN coalesce(excluded.total, orders.total)
                         ELSE coalesce(orders.total, excluded.total) END,
                     tracking_number = CASE WHEN excluded.version > orders.version
                         THEN coalesce(excluded.tracking_number, orders.tracking_number)
                         ELSE coalesce(orders.tracking_number, excluded.tracking_number) END,
                     updated_at = CASE WHEN excluded.version > orders.version
                         THEN excluded.updated_at ELSE orders.updated_at END,
                     version = max(orders.version, excluded.version)",
                params![
                    order_id,
                    text("customer_id"),
                    status,
                    total,
                    text("tracking_number"),
                    at,
                    version
                ],
            )
            .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())?;
        if fresh {
            println!("{} {order_id} -> {status}", m.event_type.as_deref().unwrap_or("?"));
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let board = Arc::new(Board::open(&args.db).context("cannot open the board's database")?);
    let options = ConsumerOptions {
        ack_wait: std::time::Duration::try_from_secs_f64(args.ack_wait_secs)
            .context("--ack-wait-secs is not a duration")?,
        ..ConsumerOptions::default()
    };
    let consumer = BusConsumer::connect_with(
        &args.nats,
        &args.stream,
        &args.durable,
        &args.subjects,
        &options,
    )
    .await
    .with_context(|| format!("cannot follow {} on {}", args.stream, args.nats))?;
    eprintln!(
        "order-board: following {} on {} into {}",
        args.subjects,
        args.stream,
        args.db.display()
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });
    consumer.run(board, stop_rx).await.context("the bus consumer stopped")?;
    Ok(())
}
