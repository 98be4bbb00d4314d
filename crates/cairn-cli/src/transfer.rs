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
//!
//! Process managers: their commands were issued in the source, and their effects are in
//! the exported history; the target's must not issue them again. A full export (no
//! filter) ends with each process manager's durable state — its checkpoint (read first)
//! and its instances — as lines `{"process_manager": NAME, "table", "key", "state"}` and a
//! last `{"process_manager": NAME, "checkpoint": P}`. Import pauses those process managers
//! on the target before its first append, appends the events, saves the instances with
//! the checkpoint mapped onto the target's positions (the target position of the last
//! event at or before P), and resumes the ones it paused: they go on after the imported
//! history and act only on what the source had not handled yet.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
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
    /// Only events of these aggregate types (repeat the flag or separate with commas).
    #[arg(long = "aggregate-type", value_name = "TYPE", value_delimiter = ',')]
    aggregate_types: Vec<String>,
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
    // Before the events: a checkpoint read first never covers an event the export lacks.
    let managers = if args.event_types.is_empty() && args.aggregate_types.is_empty() {
        process_manager_states(&client).await?
    } else {
        Vec::new()
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
        if !args.aggregate_types.is_empty() {
            query.push(("aggregate_type", args.aggregate_types.join(",")));
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
    for (name, checkpoint, instances) in &managers {
        for instance in instances {
            let line = StateLine {
                process_manager: name,
                table: Some(&instance.table),
                key: Some(&instance.key),
                state: Some(&instance.state),
                checkpoint: None,
            };
            let line = serde_json::to_string(&line).context("encoding an instance")?;
            writeln!(out, "{line}").context("cannot write the export")?;
        }
        let line = StateLine {
            process_manager: name,
            table: None,
            key: None,
            state: None,
            checkpoint: Some(*checkpoint),
        };
        let line = serde_json::to_string(&line).context("encoding a checkpoint")?;
        writeln!(out, "{line}").context("cannot write the export")?;
    }
    out.flush().context("cannot write the export")?;
    drop(out);
    let mut summary = format!("{count} events exported, up to position {from}");
    for (name, checkpoint, instances) in &managers {
        let _ =
            write!(summary, "; {name}: {} instances at checkpoint {checkpoint}", instances.len());
    }
    progress.finish(&summary);
    if args.conn.json {
        // stdout holds the events when there is no --out.
        let summary = serde_json::json!({"exported": count, "last_position": from});
        if args.out.is_some() { outln!("{summary}")? } else { eprintln!("{summary}") }
    }
    Ok(())
}

/// A line of a process manager's state as export writes it: `process_manager` first, so
/// that import tells these lines from events without parsing them.
#[derive(Serialize)]
struct StateLine<'a> {
    process_manager: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<u64>,
}

/// One process-manager instance; its state keeps the server's bytes (money its digits).
#[derive(Serialize, Deserialize)]
struct Instance {
    table: String,
    key: String,
    state: Box<RawValue>,
}

/// A page of `GET /admin/process-managers/{name}/state`.
#[derive(Deserialize)]
struct StatePage {
    checkpoint: u64,
    instances: Vec<Instance>,
    next: Option<String>,
}

/// A process manager's exported state: name, checkpoint, instances.
type ManagerState = (String, u64, Vec<Instance>);

/// Every process manager of the source and its state (none from a server that has none
/// or does not list them).
async fn process_manager_states(client: &Client) -> anyhow::Result<Vec<ManagerState>> {
    let rows = client.get_json(&["admin", "projections"], &[]).await?;
    let managers: Vec<&Value> =
        rows.as_array().into_iter().flatten().filter(|r| r["kind"] == "process_manager").collect();
    let mut states = Vec::new();
    for row in managers {
        let name = row["name"].as_str().unwrap_or_default().to_owned();
        quiescent(&name, row)?;
        let (mut checkpoint, mut instances, mut after) = (None, Vec::new(), None::<String>);
        loop {
            let query: Vec<(&str, String)> = after.iter().map(|a| ("after", a.clone())).collect();
            let mut url = client.url(&["admin", "process-managers", &name, "state"]);
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
            let (_, body) = client
                .send(client.request(Method::GET, url))
                .await
                .with_context(|| format!("cannot export the state of {name}"))?;
            let page: StatePage = serde_json::from_str(&body)
                .with_context(|| format!("the state of {name} is not as expected"))?;
            // The first page's checkpoint: read before any instance.
            checkpoint.get_or_insert(page.checkpoint);
            instances.extend(page.instances);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let checkpoint = checkpoint.unwrap_or(0);
        // Instances read while the manager moved on may be newer than the checkpoint; the
        // target would then re-handle an event whose commands it has no record of.
        let after = client.get_json(&["admin", "projections"], &[]).await?;
        let moved = after.as_array().into_iter().flatten().find(|r| r["name"] == name.as_str());
        if moved.is_some_and(|r| r["position"] != row["position"]) {
            bail!(
                "{name} handled events while its state was exported: stop writes to the source (or pause it: cairn projections pause {name}) and export again"
            );
        }
        states.push((name, checkpoint, instances));
    }
    Ok(states)
}

/// A process manager's state travels only from a standstill: no dead letters (they would
/// be lost: the target treats everything behind the checkpoint as handled) and nothing
/// left to handle, unless it is paused.
fn quiescent(name: &str, row: &Value) -> anyhow::Result<()> {
    let depth = row["dlq_depth"].as_u64().unwrap_or(0);
    if depth > 0 {
        bail!(
            "{name} has {depth} dead letter(s): retry or discard them (cairn dlq list --projection {name}) before exporting"
        );
    }
    let lag = row["lag"].as_u64().unwrap_or(0);
    if row["status"] != "paused" && lag > 0 {
        bail!(
            "{name} is still handling events (lag {lag}): stop writes to the source and wait until its lag is 0, or pause it (cairn projections pause {name}), then export again"
        );
    }
    Ok(())
}

/// One line of an export, as import reads it.
#[derive(Deserialize)]
struct Line {
    /// The source's position (for mapping a process manager's checkpoint).
    #[serde(default)]
    position: Option<u64>,
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

/// A line of a process manager's state in an export.
#[derive(Deserialize)]
struct ManagerLine {
    process_manager: String,
    #[serde(default)]
    checkpoint: Option<u64>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    state: Option<Box<RawValue>>,
}

/// What import does for one process manager.
struct Manager {
    name: String,
    /// The source checkpoint.
    checkpoint: u64,
    instances: Vec<Instance>,
    /// The last event of the file at or before the source checkpoint: (stream, version).
    last_handled: Option<(String, u64)>,
    /// That event's position on the target, as its append answered (a deleted or
    /// scavenged stream cannot be read back to find it).
    target_checkpoint: Option<u64>,
    /// Whether this import paused it (and so resumes it).
    paused_here: bool,
}

fn is_manager_line(line: &str) -> bool {
    line.trim_start().starts_with("{\"process_manager\"")
}

/// Most bytes of instances in one state request (well under the default 1 MiB body limit).
const IMPORT_STATE_BYTES_MAX: usize = 256 * 1024;

/// Reads the process managers' state lines of an export.
fn read_managers(args: &ImportArgs) -> anyhow::Result<Vec<Manager>> {
    let file =
        File::open(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut managers: Vec<Manager> = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", args.file.display()))?;
        if !is_manager_line(&line) {
            continue;
        }
        let m: ManagerLine = serde_json::from_str(&line).with_context(|| {
            format!("{} line {}: not a process manager's state", args.file.display(), number + 1)
        })?;
        let index = if let Some(i) = managers.iter().position(|x| x.name == m.process_manager) {
            i
        } else {
            managers.push(Manager {
                name: m.process_manager.clone(),
                checkpoint: 0,
                instances: Vec::new(),
                last_handled: None,
                target_checkpoint: None,
                paused_here: false,
            });
            managers.len() - 1
        };
        let manager = &mut managers[index];
        if let Some(checkpoint) = m.checkpoint {
            manager.checkpoint = checkpoint;
        }
        if let (Some(table), Some(key), Some(state)) = (m.table, m.key, m.state) {
            manager.instances.push(Instance { table, key, state });
        }
    }
    Ok(managers)
}

/// Pauses a process manager on the target unless it is paused already (then it stays
/// paused after the import: whoever paused it resumes it).
async fn pause_manager(client: &Client, manager: &mut Manager) -> anyhow::Result<()> {
    let rows = client.get_json(&["admin", "projections"], &[]).await?;
    let row = rows.as_array().into_iter().flatten().find(|r| r["name"] == manager.name.as_str());
    let Some(row) = row else {
        bail!(
            "the target has no process manager named {}: import it into a server of the same domain",
            manager.name
        );
    };
    if row["status"] == "paused" {
        return Ok(());
    }
    client
        .call(Method::POST, &["admin", "projections", &manager.name, "pause"], None)
        .await
        .with_context(|| format!("cannot pause {} on the target", manager.name))?;
    manager.paused_here = true;
    Ok(())
}

/// Body of `POST /admin/process-managers/{name}/state`.
#[derive(Serialize)]
struct StateRequest<'a> {
    checkpoint: u64,
    instances: Vec<&'a Instance>,
}

/// Saves a process manager's instances with its checkpoint mapped onto the target;
/// `Ok(Err(position))` when the target's manager has already handled events past that
/// checkpoint (a re-run after it was resumed): its state is newer, and is kept.
async fn import_manager(client: &Client, manager: &Manager) -> anyhow::Result<Result<u64, u64>> {
    let checkpoint = match (&manager.last_handled, manager.target_checkpoint) {
        (_, Some(position)) => position,
        (None, None) => 0,
        (Some((stream, version)), None) => {
            let page = client
                .get_json(
                    &["streams", stream],
                    &[("from_version", version.to_string()), ("limit", "1".to_owned())],
                )
                .await
                .with_context(|| format!("cannot find {stream} v{version} on the target"))?;
            page["events"][0]["position"].as_u64().with_context(|| {
                format!(
                    "{stream} v{version} is not on the target: the events were not all imported"
                )
            })?
        }
    };
    let mut chunks: Vec<Vec<&Instance>> = vec![Vec::new()];
    let mut bytes = 0usize;
    for instance in &manager.instances {
        let size = instance.state.get().len() + instance.key.len() + instance.table.len();
        if bytes + size > IMPORT_STATE_BYTES_MAX && !chunks.last().is_some_and(Vec::is_empty) {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        chunks.last_mut().expect("one chunk at least").push(instance);
    }
    for chunk in chunks {
        let body = serde_json::to_string(&StateRequest { checkpoint, instances: chunk })
            .context("encoding a process manager's state")?;
        let url = client.url(&["admin", "process-managers", &manager.name, "state"]);
        let response = post_json(client, url, body).await?;
        let status = response.status();
        let text = response.text().await.context("reading a state import's answer")?;
        if status == StatusCode::CONFLICT {
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if answer["error"] == "checkpoint_ahead" {
                return Ok(Err(answer["checkpoint"].as_u64().unwrap_or(0)));
            }
        }
        if !status.is_success() {
            bail!("cannot import the state of {}: {}", manager.name, describe_error(status, &text));
        }
    }
    Ok(Ok(checkpoint))
}

/// `cairn import FILE`.
pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let open =
        || File::open(&args.file).with_context(|| format!("cannot read {}", args.file.display()));
    let total = BufReader::new(open()?)
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.trim().is_empty() && !is_manager_line(l))
        .count();
    let mut managers = read_managers(&args)?;
    // Before the first append: a running process manager would act on the history (and
    // its appends would collide with the imported streams).
    for manager in &mut managers {
        pause_manager(&client, manager).await?;
    }
    let mut progress = Progress::new("import", "events", Some(total as u64));
    let mut tally =
        Tally { head_at_start: crate::tail::head_position(&client).await?, ..Tally::default() };
    let mut batch: Vec<Line> = Vec::new();
    let mut batch_bytes = 0usize;
    for (number, line) in BufReader::new(open()?).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", args.file.display()))?;
        if line.trim().is_empty() || is_manager_line(&line) {
            continue;
        }
        let event: Line = serde_json::from_str(&line).with_context(|| {
            format!("{} line {}: not an exported event", args.file.display(), number + 1)
        })?;
        if event.version == 0 {
            bail!("{} line {}: version 0 (versions count from 1)", args.file.display(), number + 1);
        }
        for manager in &mut managers {
            if event.position.is_some_and(|p| p <= manager.checkpoint) {
                manager.last_handled = Some((event.aggregate_id.clone(), event.version));
            }
        }
        let follows = batch.last().is_some_and(|last| {
            last.aggregate_id == event.aggregate_id
                && last.version + 1 == event.version
                && batch.len() < IMPORT_BATCH_EVENTS_MAX
                && batch_bytes + line.len() <= IMPORT_BATCH_BYTES_MAX
        });
        if !follows && !batch.is_empty() {
            let n = batch.len() as u64;
            let targets = append_batch(&client, &batch, &mut tally).await?;
            map_checkpoints(&mut managers, &batch, &targets);
            progress.inc(n);
            batch.clear();
            batch_bytes = 0;
        }
        batch_bytes += line.len();
        batch.push(event);
    }
    if !batch.is_empty() {
        let n = batch.len() as u64;
        let targets = append_batch(&client, &batch, &mut tally).await?;
        map_checkpoints(&mut managers, &batch, &targets);
        progress.inc(n);
    }
    let mut summary =
        format!("{} events appended, {} already present", tally.appended, tally.already_there);
    for manager in &managers {
        match import_manager(&client, manager).await? {
            Ok(checkpoint) => {
                let _ = write!(
                    summary,
                    "; {}: {} instances, checkpoint {checkpoint}",
                    manager.name,
                    manager.instances.len()
                );
            }
            Err(ahead) => {
                let _ = write!(
                    summary,
                    "; {}: state kept (it has already handled events up to position {ahead})",
                    manager.name
                );
            }
        }
        if manager.paused_here {
            client
                .call(Method::POST, &["admin", "projections", &manager.name, "resume"], None)
                .await
                .with_context(|| format!("cannot resume {} on the target", manager.name))?;
        } else {
            let _ = write!(
                summary,
                " (still paused: `cairn projections resume {}` once the import is complete)",
                manager.name
            );
        }
    }
    progress.finish(&summary);
    if args.conn.json {
        outln!(
            "{}",
            serde_json::json!({"appended": tally.appended, "already_present": tally.already_there})
        )?;
    }
    Ok(())
}

/// Notes, for each process manager, the target position of the last event it had handled
/// on the source (`targets[i]` is where `batch[i]` is on the target).
fn map_checkpoints(managers: &mut [Manager], batch: &[Line], targets: &[u64]) {
    for (event, &target) in batch.iter().zip(targets) {
        for manager in managers.iter_mut() {
            if event.position.is_some_and(|p| p <= manager.checkpoint) {
                manager.target_checkpoint = Some(target);
            }
        }
    }
}

/// Appends consecutive events of one stream; when some (not all) are already stored, goes
/// event by event so each is either recognised as a retry or appended. Returns each event's
/// position on the target.
async fn append_batch(
    client: &Client,
    batch: &[Line],
    tally: &mut Tally,
) -> anyhow::Result<Vec<u64>> {
    // An append answers its last event's position; the others precede it, one apart.
    let positions =
        |last: u64, n: usize| (0..n as u64).map(|i| last + 1 + i - n as u64).collect::<Vec<_>>();
    match append(client, batch).await? {
        Ok(answer) => {
            count(batch, &answer, tally);
            Ok(positions(answer.position, batch.len()))
        }
        Err(_) if batch.len() > 1 => {
            let mut targets = Vec::with_capacity(batch.len());
            for event in batch {
                let one = std::slice::from_ref(event);
                match append(client, one).await? {
                    Ok(answer) => {
                        count(one, &answer, tally);
                        targets.push(answer.position);
                    }
                    Err(why) => bail!("{}", refusal(event, &why)),
                }
            }
            Ok(targets)
        }
        Err(why) => bail!("{}", refusal(&batch[0], &why)),
    }
}

fn refusal(event: &Line, why: &str) -> String {
    let hint = if why.starts_with("wrong_expected_version") {
        format!(
            " — stream {} on the target holds other events at that version: something else \
             wrote to it (a process manager left running during an import?); the import \
             stopped there and nothing later was sent",
            event.aggregate_id
        )
    } else {
        String::new()
    };
    format!(
        "event {} ({} v{}) refused: {why}{hint}",
        event.event_id, event.aggregate_id, event.version
    )
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
    let response = post_json(client, url, body).await?;
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

/// POSTs a JSON body; only an unreachable server is an error here (statuses are the
/// caller's to read).
async fn post_json(
    client: &Client,
    url: reqwest::Url,
    body: String,
) -> anyhow::Result<reqwest::Response> {
    client
        .request(Method::POST, url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the server: {}", crate::client::root_cause(&e)))
}
