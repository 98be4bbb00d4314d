//! The checker: after the faults and a quiet spell, everything is judged from the log
//! (`$all`) and the answers of the running cluster, never from what the faulted processes
//! believe. Each check returns its failures as sentences, so that one run reports every
//! kind of damage with numbers instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::load::{COLD, HOT, Record};
use crate::support;

/// Every checkpoint position read from the database during a run, per consumer, in order.
#[derive(Default)]
pub struct Checkpoints {
    pub seen: Mutex<BTreeMap<String, Vec<i64>>>,
    pub samples: std::sync::atomic::AtomicUsize,
}

/// Reads the checkpoint table directly from the database every 100 ms until `stop`,
/// reconnecting across a server restart. A follower only mirrors the leader's checkpoint,
/// so the table, written by whoever leads, is the one place a regression shows.
pub async fn watch_checkpoints(url: String, out: Arc<Checkpoints>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((db, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let conn = tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            let Ok(rows) = db.query("SELECT consumer, position FROM checkpoints", &[]).await else {
                break;
            };
            {
                let mut seen = out.seen.lock().unwrap();
                for row in rows {
                    let (consumer, position): (String, i64) = (row.get(0), row.get(1));
                    let history = seen.entry(consumer).or_default();
                    if history.last() != Some(&position) {
                        history.push(position);
                    }
                }
            }
            out.samples.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        conn.abort();
    }
}

/// Every event of `$all`, in position order.
pub async fn read_all(base: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let page: Value = client
            .get(format!("{base}/all?from_position={from}&limit=10000"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return all;
        }
        from = page["next_position"].as_u64().unwrap();
        all.extend(events);
    }
}

fn correlation(e: &Value) -> Option<&str> {
    e["metadata"]["correlation_id"].as_str()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The log's own shape, and every command against it: acknowledged ones present exactly
/// once, where they were acknowledged; unacknowledged ones at most once.
pub fn commands_exactly_once(all: &[Value], record: &Record, failures: &mut Vec<String>) {
    let mut ids = BTreeSet::new();
    let mut at: HashMap<(&str, u64), &Value> = HashMap::new();
    let mut last_version: HashMap<&str, u64> = HashMap::new();
    let mut previous = 0;
    for e in all {
        let position = e["position"].as_u64().unwrap();
        if position <= previous {
            failures.push(format!("positions not increasing at {position}"));
        }
        previous = position;
        if !ids.insert(s(&e["event_id"])) {
            failures.push(format!("event id {} twice in the log", e["event_id"]));
        }
        let (agg, version) = (s(&e["aggregate_id"]), e["version"].as_u64().unwrap());
        let expected = last_version.get(agg).copied().unwrap_or(0) + 1;
        if version != expected {
            failures.push(format!("{agg}: version {version} where {expected} was due"));
        }
        last_version.insert(agg, version);
        if at.insert((agg, version), e).is_some() {
            failures.push(format!("{agg} v{version} twice in the log"));
        }
    }
    let mut by_command: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for e in all {
        if let Some(c) = correlation(e) {
            *by_command.entry((c, s(&e["aggregate_id"]), s(&e["event_type"]))).or_default() += 1;
        }
    }
    let acked = record.acked.lock().unwrap();
    let mut acked_keys = BTreeSet::new();
    for a in acked.iter() {
        acked_keys.insert(a.key.as_str());
        match at.get(&(a.aggregate_id.as_str(), a.version)) {
            None => failures.push(format!("acknowledged {} ({}) lost: {a:?}", a.event_type, a.key)),
            Some(e) => {
                if e["position"].as_u64() != Some(a.position)
                    || e["event_type"] != a.event_type
                    || correlation(e) != Some(&a.key)
                {
                    failures.push(format!("acknowledged {a:?} answered by another event: {e}"));
                }
            }
        }
        let n = by_command.get(&(a.key.as_str(), a.aggregate_id.as_str(), a.event_type)).copied();
        if n != Some(1) {
            failures.push(format!("acknowledged command {} has {} events", a.key, n.unwrap_or(0)));
        }
    }
    for sent in record.sent.lock().unwrap().iter() {
        let n = by_command
            .get(&(sent.key.as_str(), sent.aggregate_id.as_str(), sent.event_type))
            .copied()
            .unwrap_or(0);
        if n > 1 {
            failures.push(format!("command {} appended {n} times", sent.key));
        }
    }
}

/// What the log says of one order.
#[derive(Default, Debug)]
struct OrderFacts {
    lines: BTreeMap<String, i64>,
    confirmed: bool,
    ready: usize,
    shipped: bool,
    cancelled: usize,
    cancel_reason: Option<String>,
}

/// What the log says of one product.
#[derive(Default, Debug)]
struct ProductFacts {
    on_hand: i64,
    /// Live reservations: order → quantity.
    live: BTreeMap<String, i64>,
}

/// What the log says of orders and stock, after checking that the process manager's effects
/// happened at most once each, in an order that makes sense.
struct Facts {
    orders: BTreeMap<String, OrderFacts>,
    products: BTreeMap<String, ProductFacts>,
}

fn facts(all: &[Value], failures: &mut Vec<String>) -> Facts {
    let mut orders: BTreeMap<String, OrderFacts> = BTreeMap::new();
    let mut products: BTreeMap<String, ProductFacts> = BTreeMap::new();
    // (product, order) → reservation events seen, in order.
    let mut effects: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for e in all {
        let (agg, t, d) = (s(&e["aggregate_id"]).to_owned(), s(&e["event_type"]), &e["data"]);
        let qty = |v: &Value| v.as_i64().or_else(|| v.as_str().and_then(|x| x.parse().ok()));
        match t {
            "OrderCreated" => {
                let o = orders.entry(agg).or_default();
                for item in d["items"].as_array().into_iter().flatten() {
                    *o.lines.entry(s(&item["product_id"]).to_owned()).or_default() +=
                        qty(&item["quantity"]).unwrap_or(0);
                }
            }
            "ItemAdded" => {
                let o = orders.entry(agg).or_default();
                *o.lines.entry(s(&d["product_id"]).to_owned()).or_default() +=
                    qty(&d["quantity"]).unwrap_or(0);
            }
            "OrderConfirmed" => orders.entry(agg).or_default().confirmed = true,
            "OrderReadyToShip" => orders.entry(agg).or_default().ready += 1,
            "OrderShipped" => orders.entry(agg).or_default().shipped = true,
            "OrderCancelled" => {
                let o = orders.entry(agg).or_default();
                o.cancelled += 1;
                o.cancel_reason = d["reason"].as_str().map(str::to_owned);
            }
            "StockAdded" => {
                products.entry(agg).or_default().on_hand += qty(&d["quantity"]).unwrap_or(0);
            }
            "StockReserved" | "StockReleased" | "StockShipped" => {
                let order = s(&d["order_id"]).to_owned();
                let p = products.entry(agg.clone()).or_default();
                let history = effects.entry((agg.clone(), order.clone())).or_default();
                history.push(t.to_owned());
                match t {
                    "StockReserved" => {
                        p.live.insert(order, qty(&d["quantity"]).unwrap_or(0));
                    }
                    "StockShipped" => {
                        let q = p.live.remove(&order).unwrap_or(0);
                        p.on_hand -= qty(&d["quantity"]).unwrap_or(q);
                    }
                    _ => {
                        p.live.remove(&order);
                    }
                }
            }
            _ => {}
        }
    }
    for ((product, order), history) in &effects {
        let ok = matches!(
            history.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
            ["StockReserved"] | ["StockReserved", "StockReleased" | "StockShipped"]
        );
        if !ok {
            failures.push(format!(
                "{product} for {order}: {history:?} (an effect twice or out of order)"
            ));
        }
    }
    for (id, o) in &orders {
        if o.ready > 1 || o.cancelled > 1 {
            failures.push(format!(
                "{id}: {} OrderReadyToShip, {} OrderCancelled",
                o.ready, o.cancelled
            ));
        }
    }
    Facts { orders, products }
}

/// The process manager's effects, each at most once and in an order that makes sense.
pub fn effects_at_most_once(all: &[Value], failures: &mut Vec<String>) {
    let _ = facts(all, failures);
}

/// Stock and fulfillment against the log: each product's reserved stock (read model) is
/// the sum of its live reservations; a live reservation belongs to an order ready to ship;
/// every fulfillment instance is in the state its order's events justify.
#[allow(clippy::too_many_lines)] // one judgement per order, read top to bottom
pub async fn stock_and_fulfillment(
    base: &str,
    all: &[Value],
    failures: &mut Vec<String>,
) -> (usize, usize) {
    let f = facts(all, failures);
    let client = reqwest::Client::new();
    let head = all.last().map_or(0, |e| e["position"].as_u64().unwrap());
    for p in HOT.iter().chain(COLD.iter()) {
        let facts = f.products.get(*p);
        let reserved: i64 = facts.map_or(0, |x| x.live.values().sum());
        let on_hand = facts.map_or(0, |x| x.on_hand);
        let view: Value = client
            .get(format!("{base}/inventory/{p}?min_position={head}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["reserved"].as_i64() != Some(reserved) || view["on_hand"].as_i64() != Some(on_hand)
        {
            failures.push(format!(
                "{p}: read model says on_hand {} reserved {}, the log says {on_hand} and {reserved}",
                view["on_hand"], view["reserved"]
            ));
        }
        if on_hand < reserved {
            failures.push(format!("{p}: {reserved} reserved of {on_hand} on hand"));
        }
    }
    // Every instance, page by page.
    let mut instances: BTreeMap<String, Value> = BTreeMap::new();
    let mut after = String::new();
    loop {
        let page: Value = client
            .get(format!(
                "{base}/admin/process-managers/order-fulfillment?limit=1000&after={after}"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        for i in page {
            s(&i["order_id"]).clone_into(&mut after);
            instances.insert(after.clone(), i);
        }
    }
    let live_of = |order: &str| -> BTreeMap<String, i64> {
        f.products.iter().filter_map(|(p, x)| x.live.get(order).map(|q| (p.clone(), *q))).collect()
    };
    let mut shipped_lines = BTreeMap::<String, BTreeSet<String>>::new();
    for e in all.iter().filter(|e| e["event_type"] == "StockShipped") {
        shipped_lines
            .entry(s(&e["data"]["order_id"]).to_owned())
            .or_default()
            .insert(s(&e["aggregate_id"]).to_owned());
    }
    for (id, o) in &f.orders {
        let live = live_of(id);
        let expected = if !o.confirmed {
            None
        } else if o.shipped {
            Some("shipped")
        } else if o.cancelled > 0 {
            Some("cancelled")
        } else if o.ready > 0 {
            Some("ready_to_ship")
        } else {
            // Quiet, and the process manager caught up: nothing may be left half-done.
            failures.push(format!("{id}: confirmed, neither ready nor cancelled after the quiet"));
            Some("ready_to_ship")
        };
        let instance = instances.get(id);
        let status = instance.map(|i| s(&i["status"]));
        if status != expected {
            failures.push(format!(
                "{id}: fulfillment instance {status:?}, its events justify {expected:?}"
            ));
        }
        let reserved_by_instance: BTreeSet<String> = instance
            .and_then(|i| i["reserved"].as_array())
            .into_iter()
            .flatten()
            .map(|p| s(p).to_owned())
            .collect();
        if reserved_by_instance != live.keys().cloned().collect() {
            failures.push(format!(
                "{id}: instance holds {reserved_by_instance:?}, live reservations {live:?}"
            ));
        }
        match expected {
            Some("ready_to_ship") => {
                if live != o.lines {
                    failures.push(format!(
                        "{id}: ready to ship with reservations {live:?} for lines {:?}",
                        o.lines
                    ));
                }
            }
            Some("shipped") => {
                let lines: BTreeSet<String> = o.lines.keys().cloned().collect();
                if !live.is_empty() || shipped_lines.get(id) != Some(&lines) {
                    failures.push(format!("{id}: shipped, stock shipped {:?} of lines {lines:?}, still reserved {live:?}", shipped_lines.get(id)));
                }
            }
            _ => {
                if !live.is_empty() {
                    failures.push(format!("{id}: {expected:?} yet holds reservations {live:?}"));
                }
            }
        }
    }
    for id in instances.keys() {
        if !f.orders.get(id).is_some_and(|o| o.confirmed) {
            failures.push(format!("instance {id} for an order never confirmed"));
        }
    }
    let out_of_stock =
        f.orders.values().filter(|o| o.cancel_reason.as_deref() == Some("out_of_stock")).count();
    (f.orders.len(), out_of_stock)
}

/// Regressions in the recorded checkpoint histories (none allowed).
pub fn checkpoints_monotonic(cps: &Checkpoints, failures: &mut Vec<String>) -> usize {
    let seen = cps.seen.lock().unwrap();
    for (consumer, history) in seen.iter() {
        // A rebuild's shadow (`name#rebuild`) starts again at 0 by design at every rebuild;
        // the live checkpoint it is swapped into is the one that must never go back.
        if consumer.contains('#') {
            continue;
        }
        for w in history.windows(2) {
            if w[1] < w[0] {
                failures
                    .push(format!("checkpoint of {consumer} moved back from {} to {}", w[0], w[1]));
            }
        }
    }
    seen.values().map(Vec::len).sum()
}

/// Every read model equal to a fresh replay: the log exported, imported into an empty
/// embedded store (process managers paused, so that the replay is the projections' alone),
/// and every order, customer, product and shipped order compared.
pub async fn read_models_equal_a_replay(base: &str, all: &[Value], failures: &mut Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("log.ndjson");
    let file = file.to_str().unwrap();
    let run = support::cairn(base, &["export", "--out", file]).await;
    assert!(run.ok, "export: {}", run.stderr);
    let place = cairn_testkit::Backend::Sqlite.place().await;
    let replay = support::Server::start_on_args(&place, &["--pause-process-managers"], &[]).await;
    let run = support::cairn(&replay.base, &["import", file]).await;
    assert!(run.ok, "import: {}", run.stderr);
    let client = reqwest::Client::new();
    let (cluster_head, replay_head) =
        (head(&client, base).await, head(&client, &replay.base).await);
    let mut paths: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for e in all {
        let (agg, t) = (s(&e["aggregate_id"]), s(&e["aggregate_type"]));
        if seen.insert(agg.to_owned()) {
            match t {
                "Order" => paths.push(format!("/orders/{agg}")),
                "Customer" => paths.push(format!("/customers/{agg}")),
                "Inventory" => paths.push(format!("/inventory/{agg}")),
                _ => {}
            }
        }
        if e["event_type"] == "OrderShipped" {
            paths.push(format!("/shipped-orders/{agg}"));
        }
    }
    let mut differ = 0;
    for path in &paths {
        let a = get(&client, base, path, cluster_head).await;
        let b = get(&client, &replay.base, path, replay_head).await;
        if a != b {
            differ += 1;
            if differ <= 5 {
                failures.push(format!("{path}: cluster {a:?}, fresh replay {b:?}"));
            }
        }
    }
    if differ > 5 {
        failures.push(format!(
            "... {differ} of {} read-model answers differ from a fresh replay",
            paths.len()
        ));
    }
    replay.kill().await;
}

async fn head(client: &reqwest::Client, base: &str) -> u64 {
    let v: Value =
        client.get(format!("{base}/admin/projections")).send().await.unwrap().json().await.unwrap();
    v.as_array().unwrap().iter().filter_map(|p| p["head_position"].as_u64()).max().unwrap_or(0)
}

async fn get(client: &reqwest::Client, base: &str, path: &str, head: u64) -> (u16, Value) {
    let r =
        client.get(format!("{base}{path}?min_position={head}&wait_ms=30000")).send().await.unwrap();
    let status = r.status().as_u16();
    let mut v = r.json().await.unwrap_or(Value::Null);
    // An import appends with new timestamps (and positions): what a replay must reproduce
    // is everything else.
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| !k.ends_with("_at"));
    }
    (status, v)
}
