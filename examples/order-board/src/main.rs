//! `order-board`: an example service on the Cairn bus.
//!
//! It builds its own read model of orders — in its own SQLite file, never touching
//! Cairn's database — from the public integration events Cairn publishes on
//! `public.orders.*` (JetStream stream `CAIRN_PUBLIC`). Each message's effect and its id
//! commit in one transaction, so a redelivered message (a crash between commit and ack)
//! changes nothing.
//!
//! ```sh
//! cargo run -p order-board -- --nats nats://127.0.0.1:4222 --db order-board.db
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use cairn_nats::{BusConsumer, BusHandler, BusMessage};
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
                 total TEXT, tracking_number TEXT, updated_at TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS applied (message_id TEXT PRIMARY KEY);",
        )?;
        Ok(Self { conn: Mutex::new(conn) })
    }
}

impl BusHandler for Board {
    fn handle(&self, m: &BusMessage) -> Result<(), String> {
        let event: Value = serde_json::from_slice(&m.payload).map_err(|e| e.to_string())?;
        let text = |k: &str| event[k].as_str().map(str::to_owned);
        let order_id = text("order_id").ok_or("no order_id")?;
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
            tx.execute(
                "INSERT INTO orders (order_id, customer_id, status, total, tracking_number, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (order_id) DO UPDATE SET status = excluded.status,
                     customer_id = coalesce(excluded.customer_id, orders.customer_id),
                     total = coalesce(excluded.total, orders.total),
                     tracking_number = coalesce(excluded.tracking_number, orders.tracking_number),
                     updated_at = excluded.updated_at",
                params![order_id, text("customer_id"), status, total, text("tracking_number"), at],
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
    let consumer = BusConsumer::connect(&args.nats, &args.stream, &args.durable, &args.subjects)
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
