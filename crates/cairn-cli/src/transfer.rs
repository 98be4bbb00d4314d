//! `cairn export` and `cairn import`: a store as newline-delimited JSON, one event per line
//! in `$all` order, in the contract's event shape (§1).
//!
//! Export copies each event's JSON as the server sent it (`data` and `metadata` keep their
//! exact bytes: money keeps its digits). Import appends through the store API
//! (`POST /streams/{id}`) with the same event ids, `expected_version = version - 1` and the
//! same metadata, in file order, grouping consecutive events of one stream into one append.
//! A re-run adds nothing: an append whose events are all stored is recognised as a retry
//! by the store and answered with its first outcome. Positions and timestamps are the
//! target store's own.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::client::{Client, Conn, describe_error};
use crate::progress::Progress;

/// `cairn export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Write to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    out: Option<PathBuf>,
    /// Only these event types (repeat the flag or separate with commas). Such an export
    /// leaves gaps in streams, so `cairn import` refuses it; `--aggregate-type` keeps
    /// whole streams.
    #[arg(long = "event-type", value_name = "TYPE", value_delimiter = ',')]
    event_types: Vec<String>,
    /// Only events of this aggregate type.
    #[arg(long = "aggregate-type", value_name = "TYPE")]
    aggregate_type: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

/// `cairn import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// An NDJSON file written by `cairn export`.
    file: PathBuf,
    #[command(flatten)]
    conn: Conn,
}

/// Events per `GET /all` page.
const EXPORT_PAGE_EVENTS: u64 = 1000;
/// Most events in one import append (the server's limit per request).
const IMPORT_BATCH_EVENTS_MAX: usize = 1000;
/// Most bytes of events in one import append (well under the default 1 MiB body limit).
const IMPORT_BATCH_BYTES_MAX: usize = 256 * 1024;

/// A page of `GET /all`, each event kept as the server's bytes.
#[derive(Deserialize)]
struct AllPage {
    events: Vec<Box<RawValue>>,
    next_position: u64,
}

/// What export needs to know of an event besides its bytes.
#[derive(Deserialize)]
struct PositionOnly {
    position: u64,
}

/// `cairn export`: pages through `$all` and writes one event per line.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let head = crate::tail::head_position(&client).await.unwrap_or(0);
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let mut progress = Progress::new("export", "positions", None);
    if head > 0 {
        progress.set_total(head);
    }
    let (mut from, mut count) = (0u64, 0u64);
    loop {
        let mut query =
            vec![("from_position", from.to_string()), ("limit", EXPORT_PAGE_EVENTS.to_string())];
        if !args.event_types.is_empty() {
            query.push(("event_type", args.event_types.join(",")));
        }
        if let Some(t) = &args.aggregate_type {
            query.push(("aggregate_type", t.clone()));
        }
        let mut url = client.url(&["all"]);
        url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        let (_, body) = client.send(client.request(Method::GET, url)).await?;
        let page: AllPage =
            serde_json::from_str(&body).context("the server's `$all` page is not as expected")?;
        if page.events.is_empty() {
            break;
        }
        for event in &page.events {
            // JSON whitespace may hold line breaks only outside strings: flattening them
            // keeps one event per line without touching any value.
            let line = event.get().replace(['\n', '\r'], " ");
            writeln!(out, "{line}").context("cannot write the export")?;
            let position: PositionOnly =
                serde_json::from_str(event.get()).context("an event without a position")?;
            from = from.max(position.position);
            count += 1;
        }
        from = from.max(page.next_position);
        if head > 0 {
            progress.set_total(head.max(from));
        }
        progress.set(if head > 0 { from } else { count });
    }
    out.flush().context("cannot write the export")?;
    drop(out);
    progress.finish(&format!("{count} events exported, up to position {from}"));
    if args.conn.json {
        // stdout holds the events when there is no --out.
        let summary = serde_json::json!({"exported": count, "last_position": from});
        if args.out.is_some() { println!("{summary}") } else { eprintln!("{summary}") }
    }
    Ok(())
}

/// One line of an export, as import reads it.
#[derive(Deserialize)]
struct Line {
    event_id: String,
    aggregate_id: String,
    aggregate_type: String,
    event_type: String,
    version: u64,
    data: Box<RawValue>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
}

/// One event of an append request.
#[derive(Serialize)]
struct NewEvent<'a> {
    event_id: &'a str,
    aggregate_type: &'a str,
    event_type: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
}

/// An append request.
#[derive(Serialize)]
struct AppendRequest<'a> {
    expected_version: u64,
    events: Vec<NewEvent<'a>>,
}

/// The answer to an append.
#[derive(Deserialize)]
struct AppendAnswer {
    position: u64,
}

/// Counts of an import.
#[derive(Default)]
struct Tally {
    /// The store's head before the first append.
    head_at_start: u64,
    appended: u64,
    already_there: u64,
}

/// `cairn import FILE`.
pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let open =
        || File::open(&args.file).with_context(|| format!("cannot read {}", args.file.display()));
    let total = BufReader::new(open()?)
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.trim().is_empty())
        .count();
    let mut progress = Progress::new("import", "events", Some(total as u64));
    let mut tally =
        Tally { head_at_start: crate::tail::head_position(&client).await?, ..Tally::default() };
    let mut batch: Vec<Line> = Vec::new();
    let mut batch_bytes = 0usize;
    for (number, line) in BufReader::new(open()?).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", args.file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Line = serde_json::from_str(&line).with_context(|| {
            format!("{} line {}: not an exported event", args.file.display(), number + 1)
        })?;
        if event.version == 0 {
            bail!("{} line {}: version 0 (versions count from 1)", args.file.display(), number + 1);
        }
        let follows = batch.last().is_some_and(|last| {
            last.aggregate_id == event.aggregate_id
                && last.version + 1 == event.version
                && batch.len() < IMPORT_BATCH_EVENTS_MAX
                && batch_bytes + line.len() <= IMPORT_BATCH_BYTES_MAX
        });
        if !follows && !batch.is_empty() {
            let n = batch.len() as u64;
            append_batch(&client, &batch, &mut tally).await?;
            progress.inc(n);
            batch.clear();
            batch_bytes = 0;
        }
        batch_bytes += line.len();
        batch.push(event);
    }
    if !batch.is_empty() {
        let n = batch.len() as u64;
        append_batch(&client, &batch, &mut tally).await?;
        progress.inc(n);
    }
    progress.finish(&format!(
        "{} events appended, {} already present",
        tally.appended, tally.already_there
    ));
    if args.conn.json {
        println!(
            "{}",
            serde_json::json!({"appended": tally.appended, "already_present": tally.already_there})
        );
    }
    Ok(())
}

/// Appends consecutive events of one stream; when some (not all) are already stored, goes
/// event by event so each is either recognised as a retry or appended.
async fn append_batch(client: &Client, batch: &[Line], tally: &mut Tally) -> anyhow::Result<()> {
    match append(client, batch).await? {
        Ok(answer) => {
            count(batch, &answer, tally);
            Ok(())
        }
        Err(_) if batch.len() > 1 => {
            for event in batch {
                let one = std::slice::from_ref(event);
                match append(client, one).await? {
                    Ok(answer) => count(one, &answer, tally),
                    Err(why) => bail!("{}", refusal(event, &why)),
                }
            }
            Ok(())
        }
        Err(why) => bail!("{}", refusal(&batch[0], &why)),
    }
}

fn refusal(event: &Line, why: &str) -> String {
    format!("event {} ({} v{}) refused: {why}", event.event_id, event.aggregate_id, event.version)
}

/// Counts a stored batch: its events were already there when the store answered with a
/// position the store had reached before the import began (a recognised retry answers
/// with the original outcome), and appended now otherwise.
fn count(batch: &[Line], answer: &AppendAnswer, tally: &mut Tally) {
    let n = batch.len() as u64;
    if answer.position <= tally.head_at_start {
        tally.already_there += n;
    } else {
        tally.appended += n;
    }
}

/// One append: `Ok(Ok(answer))` when stored (or recognised as a retry), `Ok(Err(why))`
/// when the store refused it with a `409`, `Err` for anything else.
async fn append(client: &Client, batch: &[Line]) -> anyhow::Result<Result<AppendAnswer, String>> {
    let first = &batch[0];
    let request = AppendRequest {
        expected_version: first.version - 1,
        events: batch
            .iter()
            .map(|e| NewEvent {
                event_id: &e.event_id,
                aggregate_type: &e.aggregate_type,
                event_type: &e.event_type,
                data: &e.data,
                metadata: e.metadata.as_deref(),
            })
            .collect(),
    };
    let body = serde_json::to_string(&request).context("encoding an append")?;
    let url = client.url(&["streams", &first.aggregate_id]);
    let response = client
        .request(Method::POST, url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot reach the server: {}", crate::client::root_cause(&e))
        })?;
    let status = response.status();
    let text = response.text().await.context("reading an append's answer")?;
    if status.is_success() {
        let answer: AppendAnswer =
            serde_json::from_str(&text).context("an append's answer is not as expected")?;
        Ok(Ok(answer))
    } else if status == StatusCode::CONFLICT {
        Ok(Err(describe_error(status, &text)))
    } else {
        bail!("{}", refusal(first, &describe_error(status, &text)))
    }
}
