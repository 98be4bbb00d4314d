//! The load: clients running whole order lifecycles (register, create, add an item,
//! confirm, then ship or cancel) over HTTP against every process in turn, a few hot
//! products with little stock among them, and a restocker. Every command carries an
//! idempotency key (so a retry after a lost answer is safe) and the same string as its
//! correlation id (so the checker finds its events in the log by it).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// Products with little stock: confirmations race for them, and some are refused.
pub const HOT: [&str; 2] = ["hot-0", "hot-1"];
/// Products that never run out.
pub const COLD: [&str; 4] = ["cold-0", "cold-1", "cold-2", "cold-3"];
pub const HOT_STOCK: u64 = 10;

/// An acknowledged (2xx) command and its answer.
#[derive(Debug, Clone)]
pub struct Ack {
    pub key: String,
    /// The event the command appends.
    pub event_type: &'static str,
    pub aggregate_id: String,
    pub version: u64,
    pub position: u64,
}

/// A command sent at least once (acknowledged or not): the log holds at most one event of it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub key: String,
    pub event_type: &'static str,
    pub aggregate_id: String,
}

#[derive(Default)]
pub struct Record {
    pub acked: Mutex<Vec<Ack>>,
    pub sent: Mutex<Vec<Sent>>,
    pub failed_attempts: AtomicUsize,
    pub refused: AtomicUsize,
}

/// The clients' shared view: where the processes are, and whether to stop.
pub struct Load {
    pub bases: Vec<String>,
    pub record: Arc<Record>,
    pub stop: Arc<AtomicBool>,
    client: reqwest::Client,
}

enum Outcome {
    Acked,
    Refused,
    GaveUp,
}

/// A small deterministic generator: no dependency for a few dice.
struct Dice(u64);
impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

impl Load {
    pub fn new(bases: Vec<String>) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Arc::new(Self {
            bases,
            record: Arc::new(Record::default()),
            stop: Arc::new(AtomicBool::new(false)),
            client,
        })
    }

    /// Sends a command until it is answered definitively: retried with the same key on
    /// the next process after an error, a timeout or a 5xx/409, at most for 20 s.
    async fn command(
        &self,
        start: usize,
        path: &str,
        body: Value,
        key: &str,
        event_type: &'static str,
        aggregate_id: &str,
    ) -> Outcome {
        self.record.sent.lock().unwrap().push(Sent {
            key: key.to_owned(),
            event_type,
            aggregate_id: aggregate_id.to_owned(),
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        for attempt in 0.. {
            let base = &self.bases[(start + attempt) % self.bases.len()];
            let r = self
                .client
                .post(format!("{base}{path}"))
                .header("Idempotency-Key", key)
                .header("X-Correlation-Id", key)
                .json(&body)
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    if let Ok(v) = r.json::<Value>().await {
                        assert_eq!(v["aggregate_id"], aggregate_id, "{path}: {v}");
                        let ack = Ack {
                            key: key.to_owned(),
                            event_type,
                            aggregate_id: aggregate_id.to_owned(),
                            version: v["version"].as_u64().unwrap(),
                            position: v["position"].as_u64().unwrap(),
                        };
                        self.record.acked.lock().unwrap().push(ack);
                        return Outcome::Acked;
                    }
                }
                Ok(r)
                    if r.status().is_client_error()
                        && ![404, 408, 409, 429].contains(&r.status().as_u16()) =>
                {
                    self.record.refused.fetch_add(1, Ordering::Relaxed);
                    return Outcome::Refused;
                }
                _ => {}
            }
            self.record.failed_attempts.fetch_add(1, Ordering::Relaxed);
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Outcome::GaveUp
    }

    /// The order's write-model status (always current), from any process that answers.
    async fn status(&self, start: usize, id: &str) -> Option<String> {
        for k in 0..self.bases.len() {
            let base = &self.bases[(start + k) % self.bases.len()];
            if let Ok(r) = self.client.get(format!("{base}/orders/{id}/state")).send().await
                && let Ok(v) = r.json::<Value>().await
                && let Some(s) = v["status"].as_str()
            {
                return Some(s.to_owned());
            }
        }
        None
    }

    /// Stocks every product (before the clients start).
    pub async fn stock(&self) {
        for (k, p) in HOT.iter().chain(COLD.iter()).enumerate() {
            let quantity = if HOT.contains(p) { HOT_STOCK } else { 1_000_000 };
            let out = self
                .command(
                    k,
                    &format!("/inventory/{p}/restock"),
                    json!({ "quantity": quantity }),
                    &format!("stock-{p}"),
                    "StockAdded",
                    p,
                )
                .await;
            assert!(matches!(out, Outcome::Acked), "initial restock of {p}");
        }
    }

    /// A few units of a hot product now and then, so that refusals and successes mix.
    pub async fn restocker(self: Arc<Self>) {
        let mut n = 0;
        while !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let p = HOT[n % HOT.len()];
            let key = format!("restock-{n}");
            let _ = self
                .command(
                    n,
                    &format!("/inventory/{p}/restock"),
                    json!({"quantity": 1}),
                    &key,
                    "StockAdded",
                    p,
                )
                .await;
            n += 1;
        }
    }

    /// One client: whole order lifecycles until stopped.
    pub async fn client(self: Arc<Self>, w: usize) {
        let mut dice =
            Dice(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let customer = format!("c-{w}");
        let body = json!({"customer_id": customer, "name": format!("Client {w}"), "email": format!("c{w}@example.com")});
        if !matches!(
            self.command(
                w,
                "/customers",
                body,
                &format!("reg-{w}"),
                "CustomerRegistered",
                &customer
            )
            .await,
            Outcome::Acked
        ) {
            return;
        }
        let mut n = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let at = w + n;
            let id = format!("o-{w}-{n}");
            n += 1;
            let first = if dice.roll(2) == 0 { HOT[dice.roll(2) as usize] } else { COLD[0] };
            let quantity = if HOT.contains(&first) { 1 + dice.roll(3) } else { 1 };
            let body = json!({"order_id": id, "customer_id": customer, "items": [{"product_id": first, "quantity": quantity, "price": "2.50"}]});
            if !matches!(
                self.command(at, "/orders", body, &format!("{id}-create"), "OrderCreated", &id)
                    .await,
                Outcome::Acked
            ) {
                continue;
            }
            let second = COLD[1 + dice.roll(3) as usize];
            let body = json!({"product_id": second, "quantity": 1, "price": "1.25"});
            let _ = self
                .command(
                    at + 1,
                    &format!("/orders/{id}/items"),
                    body,
                    &format!("{id}-add"),
                    "ItemAdded",
                    &id,
                )
                .await;
            if !matches!(
                self.command(
                    at + 2,
                    &format!("/orders/{id}/confirm"),
                    json!({}),
                    &format!("{id}-confirm"),
                    "OrderConfirmed",
                    &id
                )
                .await,
                Outcome::Acked
            ) {
                continue;
            }
            // The fulfillment process reserves; a client waits a little, then gives up
            // and cancels (which a stalled process manager must also get right).
            let mut status = None;
            for _ in 0..30 {
                status = self.status(at, &id).await;
                if matches!(status.as_deref(), Some("ready_to_ship" | "cancelled")) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            match status.as_deref() {
                Some("ready_to_ship") if dice.roll(4) != 0 => {
                    let body = json!({"tracking_number": format!("t-{id}"), "carrier": "ups"});
                    let _ = self
                        .command(
                            at + 3,
                            &format!("/orders/{id}/ship"),
                            body,
                            &format!("{id}-ship"),
                            "OrderShipped",
                            &id,
                        )
                        .await;
                }
                Some("cancelled") => {}
                _ => {
                    let _ = self
                        .command(
                            at + 3,
                            &format!("/orders/{id}/cancel"),
                            json!({"reason": "changed_mind"}),
                            &format!("{id}-cancel"),
                            "OrderCancelled",
                            &id,
                        )
                        .await;
                }
            }
        }
    }
}
