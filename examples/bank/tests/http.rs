//! The bank served by its own binary (`bank serve`, built on `cairn_cli::run`), over HTTP,
//! on both backends: 32 concurrent transfers among 10 accounts, some to closed accounts,
//! beside direct withdrawals. Once quiet, money is conserved, every transfer ended, the
//! read model agrees with the aggregates and the streams, and nothing is dead-lettered —
//! also when the server is killed with `kill -9` in the middle of the load and every
//! request is sent again with its `Idempotency-Key`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn_testkit::Backend;
use cairn_testkit::serve::ServeProcess;
use serde_json::{Value, json};
use tokio::time::Instant;

use common::{Rng, account};

cairn_testkit::backend_tests!(
    thirty_two_concurrent_transfers_keep_the_books,
    a_kill_9_mid_load_loses_and_doubles_nothing,
);

/// The example's binary.
const BANK: &str = env!("CARGO_BIN_EXE_bank");
/// Accounts in the test.
const ACCOUNTS: usize = 10;
/// The first `FUNDED` accounts get money; the others are closed at zero.
const FUNDED: usize = 8;
/// Transfers fired at once.
const TRANSFERS: usize = 32;
/// What each funded account starts with: 1 000.00.
const INITIAL_CENTS: i64 = 100_000;
/// Largest transfer: 300.00 (each source sends 4, so a late one may be refused).
const TRANSFER_MAX_CENTS: u64 = 30_000;
/// One direct withdrawal per funded account, racing the transfers (may be refused).
const ATM_CENTS: i64 = 15_000;
/// How long the system may take to become quiet (two shared cores, PostgreSQL).
const QUIET_WITHIN: Duration = Duration::from_secs(120);
/// Requests answered before the crash test kills the server.
const KILL_AFTER: usize = 16;
/// In the crash test, the delay between two requests going out.
const SEND_SPACING: Duration = Duration::from_millis(10);
/// In the crash test, how many requests are first sent while the server is down.
const SENT_WHILE_DOWN: usize = 4;

/// One request of the load: a transfer or a direct withdrawal, with its key.
#[derive(Clone)]
enum Planned {
    Transfer { key: String, from: usize, to: usize, amount_cents: i64 },
    Withdraw { key: String, from: usize },
}

/// Sources round-robin over the funded accounts; every eighth transfer (4 in all) goes to
/// a closed account on purpose, the others to a random other account (closed ones too).
fn plan() -> Vec<Planned> {
    let mut rng = Rng(0x00c0_ffee);
    let mut load: Vec<Planned> = (0..TRANSFERS)
        .map(|t| {
            let from = t % FUNDED;
            let to = if t % 8 == 3 {
                FUNDED + (t / 8) % (ACCOUNTS - FUNDED)
            } else {
                let mut to = (rng.next() % (ACCOUNTS as u64 - 1)) as usize;
                if to >= from {
                    to += 1;
                }
                to
            };
            let amount_cents = 1 + (rng.next() % TRANSFER_MAX_CENTS) as i64;
            Planned::Transfer { key: format!("transfer-{t}"), from, to, amount_cents }
        })
        .collect();
    for from in 0..FUNDED {
        load.insert(from * 5, Planned::Withdraw { key: format!("atm-{from}"), from });
    }
    load
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn post(&self, path: &str, key: &str, body: Value) -> reqwest::Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    /// Every item of a paged list.
    async fn all(&self, path: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let page = self.get(&format!("{path}{sep}limit=1000")).await;
        assert!(page["next"].is_null(), "one page holds the test's rows: {path}");
        page["items"].as_array().unwrap().clone()
    }
}

/// Opens the accounts, funds the first [`FUNDED`], closes the others at zero.
async fn open_accounts(c: &Client) {
    for i in 0..ACCOUNTS {
        let (status, body) = c
            .post(
                &format!("/accounts/{}/open", account(i)),
                &format!("open-{i}"),
                json!({"owner": format!("owner {i}")}),
            )
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        let (status, body) = if i < FUNDED {
            let deposit = json!({"amount_cents": INITIAL_CENTS, "reference": "initial"});
            c.post(&format!("/accounts/{}/deposit", account(i)), &format!("fund-{i}"), deposit)
                .await
        } else {
            c.post(&format!("/accounts/{}/close", account(i)), &format!("close-{i}"), json!({}))
                .await
        }
        .unwrap();
        assert_eq!(status, 200, "{body}");
    }
}

/// Sends one planned request; `Ok` holds its answer.
async fn send(c: &Client, p: &Planned) -> reqwest::Result<(u16, Value)> {
    match p {
        Planned::Transfer { key, from, to, amount_cents } => {
            let body =
                json!({"from": account(*from), "to": account(*to), "amount_cents": amount_cents});
            c.post("/transfers", key, body).await
        }
        Planned::Withdraw { key, from } => {
            let body = json!({"amount_cents": ATM_CENTS, "reference": "atm"});
            c.post(&format!("/accounts/{}/withdraw", account(*from)), key, body).await
        }
    }
}

/// Fires the whole load at once. With `kill_after`, the server is killed with `kill -9` once
/// that many requests are answered, restarted, and every request is sent again with its key.
/// Returns each request's final answer, by key.
async fn fire(
    server: &mut ServeProcess,
    kill_after: Option<usize>,
) -> BTreeMap<String, (u16, Value)> {
    let client = Arc::new(Client { http: reqwest::Client::new(), base: server.base.clone() });
    let load = plan();
    let answered = Arc::new(AtomicUsize::new(0));
    // For the crash, requests go out one every few milliseconds rather than all at once, so
    // that however fast the server answers, the kill lands with requests still to come.
    let spacing = if kill_after.is_some() { SEND_SPACING } else { Duration::ZERO };
    // In the crash run the last few requests go out only while the server is down, so the
    // kill cuts the load however the answers before it were batched (a group commit can
    // answer everything sent so far at once, leaving nothing in flight to cut).
    let late = if kill_after.is_some() { SENT_WHILE_DOWN } else { 0 };
    let (early, sent_while_down) = load.split_at(load.len() - late);
    let tasks: Vec<_> = (0u32..)
        .zip(early.iter().cloned())
        .map(|(i, p)| {
            let (client, answered) = (Arc::clone(&client), Arc::clone(&answered));
            tokio::spawn(async move {
                tokio::time::sleep(spacing * i).await;
                let answer = send(&client, &p).await;
                answered.fetch_add(usize::from(answer.is_ok()), Ordering::SeqCst);
                answer.ok()
            })
        })
        .collect();
    let mut first = BTreeMap::new();
    if let Some(n) = kill_after {
        while answered.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.kill_in_place().await;
        for p in sent_while_down {
            assert!(send(&client, p).await.is_err(), "nobody answers while the server is down");
        }
        server.relaunch().await;
    }
    for (p, task) in early.iter().zip(tasks) {
        if let Some(answer) = task.await.unwrap() {
            first.insert(key_of(p).to_owned(), answer);
        }
    }
    if kill_after.is_none() {
        assert_eq!(first.len(), load.len(), "every request is answered");
        return first;
    }
    assert!(
        first.len() >= KILL_AFTER && first.len() < load.len(),
        "the kill cut the load: {}",
        first.len()
    );
    // Everything again, with the same keys: a request that was done answers its first outcome.
    let mut last = BTreeMap::new();
    for p in &load {
        let answer = send(&client, p).await.expect("the restarted server answers");
        if let Some(before) = first.get(key_of(p)) {
            assert_eq!(&answer, before, "{}: a replayed key answers the first outcome", key_of(p));
        }
        last.insert(key_of(p).to_owned(), answer);
    }
    last
}

fn key_of(p: &Planned) -> &str {
    match p {
        Planned::Transfer { key, .. } | Planned::Withdraw { key, .. } => key,
    }
}

/// Waits until every transfer has ended and every consumer has caught up with the head.
async fn wait_quiet(c: &Client, transfer_ids: &[String]) {
    let deadline = Instant::now() + QUIET_WITHIN;
    loop {
        let mut ended = 0;
        for id in transfer_ids {
            let state = c.get(&format!("/transfers/{id}")).await;
            let status = state["state"]["status"].as_str().unwrap_or_default().to_owned();
            ended += usize::from(["completed", "refunded", "rejected"].contains(&status.as_str()));
        }
        let rows = c.get("/admin/projections").await;
        let caught_up = rows.as_array().unwrap().iter().all(|r| r["lag"] == 0);
        if ended == transfer_ids.len() && caught_up {
            return;
        }
        assert!(Instant::now() < deadline, "not quiet: {ended} ended, {rows}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event of a stream.
async fn stream(c: &Client, id: &str) -> Vec<Value> {
    c.get(&format!("/streams/{id}?limit=10000")).await["events"].as_array().unwrap().clone()
}

/// The books, checked from the read model, the aggregates and the streams.
async fn check_books(c: &Client, answers: &BTreeMap<String, (u16, Value)>) {
    let mut transfer_ids = Vec::new();
    let mut withdrawn = 0;
    for (key, (status, body)) in answers {
        if key.starts_with("transfer-") {
            assert_eq!(*status, 201, "{key}: {body}");
            transfer_ids.push(body["aggregate_id"].as_str().unwrap().to_owned());
        } else if *status == 200 {
            withdrawn += ATM_CENTS;
        } else {
            assert_eq!(*status, 422, "{key}: only insufficient funds refuses a withdrawal: {body}");
        }
    }
    wait_quiet(c, &transfer_ids).await;

    // Money is conserved: only HTTP deposits and withdrawals move the total.
    let rows = c.all("/accounts").await;
    assert_eq!(rows.len(), ACCOUNTS);
    let total: i64 = rows.iter().map(|r| r["balance_cents"].as_i64().unwrap()).sum();
    assert_eq!(total, FUNDED as i64 * INITIAL_CENTS - withdrawn, "{rows:?}");
    for row in &rows {
        let id = row["account_id"].as_str().unwrap();
        let balance = row["balance_cents"].as_i64().unwrap();
        assert!(balance >= 0, "{id} overdrawn: {row}");
        let state = c.get(&format!("/accounts/{id}/state")).await;
        assert_eq!(
            state["state"]["balance_cents"], row["balance_cents"],
            "{id}: read model vs aggregate"
        );
        let lines = c.all(&format!("/statement-lines?account_id={id}")).await;
        let sum: i64 = lines.iter().map(|l| l["amount_cents"].as_i64().unwrap()).sum();
        assert_eq!(sum, balance, "{id}: statement lines vs balance");
    }

    // Every transfer ended; none to a closed account completed; the streams agree.
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut streams = BTreeMap::new();
    for i in 0..ACCOUNTS {
        streams.insert(account(i), stream(c, &account(i)).await);
    }
    for id in &transfer_ids {
        let transfer = c.get(&format!("/transfers/{id}")).await["state"].clone();
        let status = transfer["status"].as_str().unwrap().to_owned();
        let (from, to) = (transfer["from"].as_str().unwrap(), transfer["to"].as_str().unwrap());
        let closed_target = to.strip_prefix("acct-").unwrap().parse::<usize>().unwrap() >= FUNDED;
        assert!(!(closed_target && status == "completed"), "{id} completed into closed {to}");
        let reference = json!(format!("transfer:{id}"));
        let debits = streams[from]
            .iter()
            .filter(|e| e["event_type"] == "MoneyWithdrawn" && e["data"]["reference"] == reference)
            .count();
        let refunds = streams[from]
            .iter()
            .filter(|e| e["event_type"] == "MoneyRefunded" && e["data"]["transfer_id"] == *id)
            .count();
        let credits = streams[to]
            .iter()
            .filter(|e| e["event_type"] == "MoneyDeposited" && e["data"]["reference"] == reference)
            .count();
        let expected = match status.as_str() {
            "completed" => (1, 0, 1),
            "refunded" => (1, 1, 0),
            "rejected" => (0, 0, 0),
            other => panic!("{id} ended {other}"),
        };
        assert_eq!((debits, refunds, credits), expected, "{id} {status}: debits, refunds, credits");
        *by_status.entry(status).or_default() += 1;
    }
    assert_eq!(by_status.values().sum::<usize>(), TRANSFERS);
    assert!(by_status.get("refunded").copied().unwrap_or(0) >= 1, "{by_status:?}");
    assert!(by_status.get("completed").copied().unwrap_or(0) >= 1, "{by_status:?}");
    let dlq = c.get("/admin/dlq").await;
    assert_eq!(dlq, json!([]), "nothing dead-lettered");
}

async fn thirty_two_concurrent_transfers_keep_the_books(backend: Backend) {
    let place = backend.place().await;
    let mut server = ServeProcess::start(BANK, &place, &[], &[]).await;
    let client = Client { http: reqwest::Client::new(), base: server.base.clone() };
    open_accounts(&client).await;
    let answers = fire(&mut server, None).await;
    check_books(&client, &answers).await;
}

async fn a_kill_9_mid_load_loses_and_doubles_nothing(backend: Backend) {
    let place = backend.place().await;
    // Slow process-manager commands, so the kill lands with sagas mid-way.
    let fault = [("CAIRN_FAULT_PM_COMMAND_DELAY_MS", "20")];
    let mut server = ServeProcess::start(BANK, &place, &[], &fault).await;
    let client = Client { http: reqwest::Client::new(), base: server.base.clone() };
    open_accounts(&client).await;
    let answers = fire(&mut server, Some(KILL_AFTER)).await;
    check_books(&client, &answers).await;
}
