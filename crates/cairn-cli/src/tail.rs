//! `cairn tail`: follows `$all` live over Server-Sent Events (`GET /all/subscribe`), with
//! the contract's filters. When the connection drops it reconnects with `Last-Event-ID`
//! (the last position printed), so no event is lost or printed twice.

use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use reqwest::Method;

use crate::client::{Client, Conn, describe_error};

/// `cairn tail`.
#[derive(Args, Debug)]
pub struct TailArgs {
    /// Only these event types (repeat the flag or separate with commas).
    #[arg(long = "event-type", value_name = "TYPE", value_delimiter = ',')]
    event_types: Vec<String>,
    /// Only events of these aggregate types (repeat the flag or separate with commas).
    #[arg(long = "aggregate-type", value_name = "TYPE", value_delimiter = ',')]
    aggregate_types: Vec<String>,
    /// Start after this `$all` position (default: the current head, i.e. new events only;
    /// `0` replays everything first).
    #[arg(long = "from", value_name = "POSITION")]
    from_position: Option<u64>,
    /// Stop after this many events (`0`: print none and exit, as `head -n 0` does).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    #[command(flatten)]
    conn: Conn,
}

/// First and longest wait before reconnecting.
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Longest SSE line accepted (an event's JSON).
const LINE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Runs `cairn tail` until `--count` events are printed (or forever).
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    if args.count == Some(0) {
        return Ok(());
    }
    let mut last = match args.from_position {
        Some(p) => p,
        None => head_position(&client).await?,
    };
    let mut printed = 0u64;
    let mut wait = RECONNECT_FIRST;
    let mut connected_once = false;
    loop {
        let printed_before = printed;
        match follow(&client, &args, &mut last, &mut printed, &mut connected_once).await {
            Outcome::Done => return Ok(()),
            Outcome::Refused(why) => anyhow::bail!("{why}"),
            Outcome::Unwritable(e) => return Err(e.into()),
            Outcome::Dropped(why) if !connected_once => {
                anyhow::bail!("cannot reach {}: {why}", args.conn.url)
            }
            Outcome::Dropped(why) => {
                eprintln!("tail: connection lost ({why}); reconnecting after position {last}");
            }
        }
        // A connection that delivered events was healthy: start the backoff afresh.
        if printed > printed_before {
            wait = RECONNECT_FIRST;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

/// How one connection ended.
enum Outcome {
    /// `--count` events printed.
    Done,
    /// The connection failed or ended: reconnect.
    Dropped(String),
    /// The server refused the subscription: give up.
    Refused(String),
    /// Standard output failed (closed by its reader, as `| head -1` does).
    Unwritable(std::io::Error),
}

/// One connection: prints events until `--count`, or until the connection ends.
async fn follow(
    client: &Client,
    args: &TailArgs,
    last: &mut u64,
    printed: &mut u64,
    connected_once: &mut bool,
) -> Outcome {
    let mut url = client.url(&["all", "subscribe"]);
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("from_position", &last.to_string());
        if !args.event_types.is_empty() {
            query.append_pair("event_type", &args.event_types.join(","));
        }
        if !args.aggregate_types.is_empty() {
            query.append_pair("aggregate_type", &args.aggregate_types.join(","));
        }
    }
    let request = client
        .request(Method::GET, url)
        .header("accept", "text/event-stream")
        .header("last-event-id", last.to_string());
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Dropped(crate::client::root_cause(&e)),
    };
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        // A refusal (bad filter, …) is final, not a reason to reconnect.
        return Outcome::Refused(format!("GET /all/subscribe: {}", describe_error(status, &body)));
    }
    *connected_once = true;
    let mut stream = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut frame = Frame::default();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Outcome::Dropped(crate::client::root_cause(&e)),
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if let Some(data) = frame.data.take() {
                    let position = frame.id.take().and_then(|id| id.parse().ok()).or_else(|| {
                        serde_json::from_str::<PositionOnly>(&data).ok().map(|p| p.position)
                    });
                    let written = if args.conn.json {
                        outln!("{data}")
                    } else {
                        match crate::admin::event_line(&data) {
                            Ok(line) => outln!("{line}"),
                            Err(e) => return Outcome::Refused(format!("{e:#}")),
                        }
                    };
                    if let Err(e) = written {
                        return Outcome::Unwritable(e);
                    }
                    if let Some(p) = position {
                        *last = p;
                    }
                    *printed += 1;
                    if args.count.is_some_and(|c| *printed >= c) {
                        return Outcome::Done;
                    }
                }
                frame = Frame::default();
            } else {
                frame.line(line);
            }
        }
        if buffer.len() > LINE_BYTES_MAX {
            return Outcome::Refused("the server sent an event line over 16 MiB".to_owned());
        }
    }
    Outcome::Dropped("the server closed the stream".to_owned())
}

/// An event's position, when its SSE frame has no `id:`.
#[derive(serde::Deserialize)]
struct PositionOnly {
    position: u64,
}

/// The fields of one SSE event being read.
#[derive(Default)]
struct Frame {
    id: Option<String>,
    data: Option<String>,
}

impl Frame {
    fn line(&mut self, line: &str) {
        if line.starts_with(':') {
            return; // a comment (keep-alive)
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.id = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
}

/// The last position visible in `$all` (from the `cairn_store_head_position` metric).
pub async fn head_position(client: &Client) -> anyhow::Result<u64> {
    let (_, text) = client.send(client.request(Method::GET, client.url(&["metrics"]))).await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("cairn_store_head_position "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}
