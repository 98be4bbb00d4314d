//! Operator commands over HTTP (contract §2 reads, §6 operations): `health`,
//! `projections`, `dlq`, `streams` (statistics; the lifecycle is in [`crate::lifecycle`]),
//! `read` and `schemas`. Each prints a readable table or
//! lines by default, and the server's JSON with `--json`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::client::{Client, Conn};
use crate::progress::Progress;

/// `cairn health`.
#[derive(Args, Debug)]
pub struct HealthArgs {
    #[command(flatten)]
    conn: Conn,
}

/// `cairn projections`.
#[derive(Args, Debug)]
pub struct ProjectionsArgs {
    #[command(subcommand)]
    action: Option<ProjectionsAction>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
enum ProjectionsAction {
    /// List projections with position, head, lag, status and dead-letter depth (the default).
    List,
    /// Pause a projection between batches, until resumed or restarted.
    Pause {
        /// The projection, e.g. `order_summary`.
        name: String,
    },
    /// Resume a paused projection from its checkpoint.
    Resume {
        /// The projection, e.g. `order_summary`.
        name: String,
    },
    /// Rebuild a projection from position 0 while queries keep answering.
    Rebuild {
        /// The projection, e.g. `order_summary`.
        name: String,
        /// Wait until the rebuild is swapped in, showing its progress.
        #[arg(long)]
        wait: bool,
    },
}

/// `cairn dlq`.
#[derive(Args, Debug)]
pub struct DlqArgs {
    #[command(subcommand)]
    action: Option<DlqAction>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
enum DlqAction {
    /// List dead letters (the default).
    List {
        /// Only those of this projection or process manager.
        #[arg(long)]
        projection: Option<String>,
    },
    /// Re-run a dead letter and the events parked behind it.
    Retry {
        /// The dead letter's id.
        id: String,
    },
    /// Discard a dead letter; the events parked behind it flow again.
    Discard {
        /// The dead letter's id.
        id: String,
    },
}

/// `cairn streams`.
#[derive(Args, Debug)]
pub struct StreamsArgs {
    #[command(subcommand)]
    action: StreamsAction,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
enum StreamsAction {
    /// The largest streams, largest first.
    Stats {
        /// How many streams (1 to 1000).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
        top: u64,
    },
    #[command(flatten)]
    Lifecycle(crate::lifecycle::LifecycleAction),
}

/// `cairn read`.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// The stream (aggregate id), e.g. `order-123`.
    stream: String,
    /// Read from the end towards the start.
    #[arg(long)]
    backward: bool,
    /// First version to read (default: 1, or the last one with `--backward`).
    #[arg(long = "from", value_name = "VERSION")]
    from_version: Option<u64>,
    /// Read at most this many events (default: the whole stream).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    #[command(flatten)]
    conn: Conn,
}

/// `cairn schemas`.
#[derive(Args, Debug)]
pub struct SchemasArgs {
    #[command(subcommand)]
    action: Option<SchemasAction>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
enum SchemasAction {
    /// List registered event types with their current schema version (the default).
    List,
    /// Register a new version of an event type's JSON Schema (BACKWARD compatible).
    Put {
        /// The event type, e.g. `PaymentReceived`.
        event_type: String,
        /// A JSON file: `{"version": N, "schema": {...}}`, or a bare schema with `--version`.
        file: PathBuf,
        /// The version, when FILE holds a bare JSON Schema.
        #[arg(long = "schema-version", value_name = "N")]
        version: Option<u64>,
    },
}

/// Largest page of a stream read (the server's cap).
const STREAM_PAGE_MAX: u64 = 10_000;
/// Pause between two looks at a rebuild's progress.
const REBUILD_POLL: Duration = Duration::from_millis(200);

/// `cairn health`: is the server ready?
pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let body = client.get_json(&["health", "ready"], &[]).await?;
    if args.conn.json {
        outln!("{body}")?;
    } else {
        let status = body.get("status").and_then(Value::as_str).unwrap_or("ok");
        outln!("{}: ready ({status})", args.conn.url)?;
    }
    Ok(())
}

/// `cairn projections [list|rebuild NAME]`.
pub async fn projections(args: ProjectionsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    match args.action.unwrap_or(ProjectionsAction::List) {
        ProjectionsAction::List => {
            let body = client.get_json(&["admin", "projections"], &[]).await?;
            if args.conn.json {
                outln!("{body}")?;
                return Ok(());
            }
            let rows = array(&body)?
                .iter()
                .map(|p| {
                    vec![
                        text(&p["name"]),
                        text(&p["status"]),
                        text(&p["position"]),
                        text(&p["head_position"]),
                        text(&p["lag"]),
                        text(&p["dlq_depth"]),
                    ]
                })
                .collect();
            print_table(&["NAME", "STATUS", "POSITION", "HEAD", "LAG", "DLQ"], rows)?;
        }
        ProjectionsAction::Pause { name } => {
            let row =
                client.call(Method::POST, &["admin", "projections", &name, "pause"], None).await?;
            report_done(
                args.conn.json,
                &row,
                &format!("{name} paused at position {}", text(&row["position"])),
            )?;
        }
        ProjectionsAction::Resume { name } => {
            let row =
                client.call(Method::POST, &["admin", "projections", &name, "resume"], None).await?;
            report_done(
                args.conn.json,
                &row,
                &format!("{name} resumed from position {}", text(&row["position"])),
            )?;
        }
        ProjectionsAction::Rebuild { name, wait } => {
            // Taken before the start: the rebuild is done when this count has grown.
            let before = if wait {
                Some(rebuild_counts(&projection_row(&client, &name).await?)?)
            } else {
                None
            };
            client.call(Method::POST, &["admin", "projections", &name, "rebuild"], None).await?;
            if !wait {
                if args.conn.json {
                    outln!("{}", serde_json::json!({"projection": name, "rebuild": "started"}))?;
                } else {
                    outln!("rebuild of {name} started (watch it with `cairn projections`)")?;
                }
                return Ok(());
            }
            let Some(before) = before else { return Ok(()) };
            let info = wait_for_rebuild(&client, &name, before).await?;
            if args.conn.json {
                outln!("{info}")?;
            } else {
                outln!(
                    "rebuild of {name} done: position {}, status {}",
                    text(&info["position"]),
                    text(&info["status"])
                )?;
            }
        }
    }
    Ok(())
}

/// `name`'s row of `GET /admin/projections`.
async fn projection_row(client: &Client, name: &str) -> anyhow::Result<Value> {
    let body = client.get_json(&["admin", "projections"], &[]).await?;
    array(&body)?
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .with_context(|| format!("no projection named {name}"))
}

/// Rebuilds a projection's server has (completed, abandoned).
fn rebuild_counts(row: &Value) -> anyhow::Result<(u64, u64)> {
    match (row["rebuilds_completed"].as_u64(), row["rebuilds_abandoned"].as_u64()) {
        (Some(completed), Some(abandoned)) => Ok((completed, abandoned)),
        _ => bail!("the server does not report rebuild completion (an older cairn?); cannot wait"),
    }
}

/// Polls `GET /admin/projections` until the server has swapped `name`'s rebuild in (its
/// completed count grew past `before`); returns its row. Fails at once when the
/// projection is paused, stalled or failed, or when the rebuild ended without a swap: a
/// wait that could only end by an operator's hand is not a wait for "done".
async fn wait_for_rebuild(
    client: &Client,
    name: &str,
    before: (u64, u64),
) -> anyhow::Result<Value> {
    let mut progress = Progress::new("rebuild", "positions", None);
    loop {
        let info = projection_row(client, name).await?;
        let (completed, abandoned) = rebuild_counts(&info)?;
        if completed > before.0 {
            progress.set(info["position"].as_u64().unwrap_or(0));
            progress.finish(&format!("{name} rebuilt, at position {}", text(&info["position"])));
            return Ok(info);
        }
        if abandoned > before.1 {
            bail!(
                "the rebuild of {name} was abandoned, nothing swapped in (the server's log says why)"
            );
        }
        match info["status"].as_str() {
            Some("paused") => bail!(
                "{name} is paused: its rebuild cannot be swapped in until `cairn projections resume {name}`"
            ),
            Some("stalled") => bail!(
                "{name} is stalled (its storage keeps failing): its rebuild is not swapped in"
            ),
            Some("failed") => bail!("{name} failed: its rebuild is not swapped in"),
            _ if info["rebuild"].is_null() && info["status"] != "rebuilding" => {
                // Neither running nor counted: another process took the projection over.
                bail!(
                    "the rebuild of {name} ended without being swapped in here (did another cairn process take the projection over?)"
                );
            }
            _ => {
                if let Some(head) = info["head_position"].as_u64() {
                    progress.set_total(head);
                }
                progress.set(info["rebuild"]["position"].as_u64().unwrap_or(0));
            }
        }
        tokio::time::sleep(REBUILD_POLL).await;
    }
}

/// `cairn dlq [list|retry ID|discard ID]`.
pub async fn dlq(args: DlqArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    match args.action.unwrap_or(DlqAction::List { projection: None }) {
        DlqAction::List { projection } => {
            let query: Vec<(&str, String)> =
                projection.into_iter().map(|p| ("projection", p)).collect();
            let body = client.get_json(&["admin", "dlq"], &query).await?;
            if args.conn.json {
                outln!("{body}")?;
                return Ok(());
            }
            let rows = array(&body)?
                .iter()
                .map(|d| {
                    vec![
                        text(&d["id"]),
                        text(&d["projection"]),
                        text(&d["position"]),
                        text(&d["aggregate_id"]),
                        text(&d["event_type"]),
                        text(&d["attempts"]),
                        text(&d["error"]),
                    ]
                })
                .collect();
            print_table(
                &["ID", "PROJECTION", "POSITION", "AGGREGATE", "EVENT_TYPE", "ATTEMPTS", "ERROR"],
                rows,
            )?;
        }
        DlqAction::Retry { id } => {
            let body = client.call(Method::POST, &["admin", "dlq", &id, "retry"], None).await?;
            report_done(args.conn.json, &body, &format!("dead letter {id} retried"))?;
        }
        DlqAction::Discard { id } => {
            let body = client.call(Method::DELETE, &["admin", "dlq", &id], None).await?;
            report_done(args.conn.json, &body, &format!("dead letter {id} discarded"))?;
        }
    }
    Ok(())
}

/// `cairn streams stats`.
pub async fn streams(args: StreamsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let top = match args.action {
        StreamsAction::Stats { top } => top,
        StreamsAction::Lifecycle(action) => {
            return crate::lifecycle::run(&client, action, args.conn.json).await;
        }
    };
    let body = client.get_json(&["admin", "streams", "stats"], &[("top", top.to_string())]).await?;
    if args.conn.json {
        outln!("{body}")?;
        return Ok(());
    }
    let rows = array(&body)?
        .iter()
        .map(|s| {
            vec![
                text(&s["aggregate_id"]),
                text(&s["aggregate_type"]),
                text(&s["event_count"]),
                text(&s["latest_version"]),
            ]
        })
        .collect();
    print_table(&["STREAM", "TYPE", "EVENTS", "VERSION"], rows)?;
    Ok(())
}

/// A page of a stream read, each event kept as the server's bytes.
#[derive(Deserialize)]
struct StreamPage {
    events: Vec<Box<RawValue>>,
    next_version: Option<u64>,
}

/// `cairn read STREAM`: pages through the stream (all of it unless `--limit`).
pub async fn read(args: ReadArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let direction = if args.backward { "backward" } else { "forward" };
    let mut from = args.from_version;
    let mut left = args.limit;
    let mut events: Vec<Box<RawValue>> = Vec::new();
    let mut next_version = None;
    loop {
        let page = left.unwrap_or(STREAM_PAGE_MAX).min(STREAM_PAGE_MAX);
        if page == 0 {
            break;
        }
        let mut query = vec![("direction", direction.to_owned()), ("limit", page.to_string())];
        if let Some(from) = from {
            query.push(("from_version", from.to_string()));
        }
        let mut url = client.url(&["streams", &args.stream]);
        url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        let (_, body) = client.send(client.request(Method::GET, url)).await?;
        let page: StreamPage =
            serde_json::from_str(&body).context("the server's stream page is not as expected")?;
        let got = page.events.len() as u64;
        if !args.conn.json {
            for event in &page.events {
                outln!("{}", event_line(event.get())?)?;
            }
        }
        events.extend(page.events);
        next_version = page.next_version;
        left = left.map(|l| l.saturating_sub(got));
        match next_version {
            Some(next) if got > 0 => from = Some(next),
            _ => break,
        }
    }
    if args.conn.json {
        let events: Vec<&str> = events.iter().map(|e| e.get()).collect();
        let next = next_version.map_or_else(|| "null".to_owned(), |v| v.to_string());
        outln!("{{\"events\":[{}],\"next_version\":{next}}}", events.join(","))?;
    }
    Ok(())
}

/// `cairn schemas [list|put EVENT_TYPE FILE]`.
pub async fn schemas(args: SchemasArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    match args.action.unwrap_or(SchemasAction::List) {
        SchemasAction::List => {
            let body = client.get_json(&["admin", "schemas"], &[]).await?;
            if args.conn.json {
                outln!("{body}")?;
                return Ok(());
            }
            let rows = array(&body)?
                .iter()
                .map(|s| {
                    let versions: Vec<String> = s["versions"]
                        .as_array()
                        .map(|v| v.iter().map(text).collect())
                        .unwrap_or_default();
                    vec![text(&s["event_type"]), text(&s["version"]), versions.join(",")]
                })
                .collect();
            print_table(&["EVENT_TYPE", "VERSION", "VERSIONS"], rows)?;
        }
        SchemasAction::Put { event_type, file, version } => {
            let content = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let parsed: Value = serde_json::from_str(&content)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let body = match version {
                Some(version) => serde_json::json!({"version": version, "schema": parsed}),
                None if parsed.get("version").is_some() && parsed.get("schema").is_some() => parsed,
                None => bail!(
                    "{} is not {{\"version\": N, \"schema\": {{...}}}}; give the version of a bare schema with --schema-version N",
                    file.display()
                ),
            };
            let answer =
                client.call(Method::PUT, &["admin", "schemas", &event_type], Some(&body)).await?;
            report_done(
                args.conn.json,
                &answer,
                &format!("schema {event_type} version {} registered", text(&body["version"])),
            )?;
        }
    }
    Ok(())
}

/// The fields of an event a readable line shows; `data` keeps the server's bytes.
#[derive(Deserialize)]
struct EventView<'a> {
    aggregate_id: &'a str,
    aggregate_type: &'a str,
    event_type: &'a str,
    version: u64,
    position: u64,
    timestamp: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// One readable line for an event: `v3 @42 2026-...Z Order/order-1 ItemAdded {...}`.
pub fn event_line(event: &str) -> anyhow::Result<String> {
    let e: EventView = serde_json::from_str(event)
        .context("the server sent an event not in the contract's shape")?;
    Ok(format!(
        "v{} @{} {} {}/{} {} {}",
        e.version,
        e.position,
        e.timestamp,
        e.aggregate_type,
        e.aggregate_id,
        e.event_type,
        e.data.get().replace(['\n', '\r'], " ")
    ))
}

fn report_done(json: bool, body: &Value, line: &str) -> std::io::Result<()> {
    if json {
        outln!("{}", if body.is_null() { serde_json::json!({"ok": true}) } else { body.clone() })?;
    } else {
        outln!("{line}")?;
    }
    Ok(())
}

pub(crate) fn array(body: &Value) -> anyhow::Result<&Vec<Value>> {
    body.as_array().context("the server's answer is not a JSON array")
}

/// A JSON value as table text: strings without quotes, `null` as `-`.
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints left-aligned columns (or a note when there are no rows).
pub(crate) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) -> std::io::Result<()> {
    if rows.is_empty() {
        return outln!("(none)");
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        outln!("{}", padded.join("  ").trim_end())
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect())?;
    for row in rows {
        line(row)?;
    }
    Ok(())
}
