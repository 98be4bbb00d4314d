//! `cairn streams delete|tombstone|truncate|meta` and `cairn scavenge`: a stream's
//! lifecycle (contract §2, "Stream lifecycle").

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::Client;

/// What `cairn streams` does to one stream's lifecycle.
#[derive(Subcommand, Debug)]
pub enum LifecycleAction {
    /// Soft-delete a stream: it reads as not found until its next append, which starts it
    /// again after the delete (`$all` keeps its events until a scavenge).
    Delete(DeleteArgs),
    /// Delete a stream for good: every later append and read is refused.
    Tombstone(DeleteArgs),
    /// Hide a stream's versions below `--before`.
    Truncate {
        /// The stream.
        stream: String,
        /// The first version that stays visible.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        before: u64,
    },
    /// Show a stream's metadata, or set it (a flag left out is unset).
    Meta(MetaArgs),
}

/// `cairn streams delete|tombstone STREAM`.
#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The stream.
    stream: String,
    /// Refuse unless the stream is at this version (`any`, `exists`, or a number).
    #[arg(long, value_name = "VERSION")]
    expected_version: Option<String>,
}

/// `cairn streams meta STREAM [--set ...]`.
#[derive(Args, Debug)]
pub struct MetaArgs {
    /// The stream.
    stream: String,
    /// Replace the metadata with the flags below (without it: only show).
    #[arg(long)]
    set: bool,
    /// Only the last N versions are visible.
    #[arg(long, requires = "set", value_parser = clap::value_parser!(u64).range(1..))]
    max_count: Option<u64>,
    /// Events older than this many seconds are hidden.
    #[arg(long, requires = "set", value_parser = clap::value_parser!(u64).range(1..))]
    max_age_s: Option<u64>,
    /// Versions below it are hidden.
    #[arg(long, requires = "set", value_parser = clap::value_parser!(u64).range(1..))]
    truncate_before: Option<u64>,
    /// Refuse unless the metadata is at this version (`meta_version` of the last show).
    #[arg(long, requires = "set")]
    expected_meta_version: Option<u64>,
}

/// Runs one lifecycle action; prints the server's answer (JSON with `json`).
pub async fn run(client: &Client, action: LifecycleAction, json: bool) -> anyhow::Result<()> {
    let (answer, summary) = match action {
        LifecycleAction::Delete(args) => delete(client, args, false).await?,
        LifecycleAction::Tombstone(args) => delete(client, args, true).await?,
        LifecycleAction::Truncate { stream, before } => {
            let body = json!({ "before": before });
            let answer =
                client.call(Method::POST, &["streams", &stream, "truncate"], Some(&body)).await?;
            let line = format!("{stream}: versions below {before} hidden");
            (answer, line)
        }
        LifecycleAction::Meta(args) => meta(client, args).await?,
    };
    if json {
        outln!("{answer}")?;
    } else {
        outln!("{summary}")?;
    }
    Ok(())
}

async fn delete(
    client: &Client,
    args: DeleteArgs,
    tombstone: bool,
) -> anyhow::Result<(Value, String)> {
    let mut url = client.url(&["streams", &args.stream]);
    if let Some(expected) = &args.expected_version {
        url.query_pairs_mut().append_pair("expected_version", expected);
    }
    if tombstone {
        url.query_pairs_mut().append_pair("tombstone", "true");
    }
    let (_, text) = client.send(client.request(Method::DELETE, url)).await?;
    let answer = crate::client::parse(&text)?;
    let what = if tombstone { "tombstoned (deleted for good)" } else { "deleted" };
    let line = format!("{}: {what} at version {}", args.stream, answer["version"]);
    Ok((answer, line))
}

async fn meta(client: &Client, args: MetaArgs) -> anyhow::Result<(Value, String)> {
    let path = ["streams", args.stream.as_str(), "metadata"];
    let answer = if args.set {
        let mut body = Map::new();
        for (name, value) in [
            ("max_count", args.max_count),
            ("max_age_s", args.max_age_s),
            ("truncate_before", args.truncate_before),
            ("expected_meta_version", args.expected_meta_version),
        ] {
            if let Some(v) = value {
                body.insert(name.into(), v.into());
            }
        }
        client.call(Method::PUT, &path, Some(&Value::Object(body))).await?
    } else {
        client.get_json(&path, &[]).await?
    };
    let field = |name: &str| match &answer["metadata"][name] {
        Value::Null => "-".to_owned(),
        v => v.to_string(),
    };
    let line = format!(
        "{}: {} at version {} (first visible {}); max_count {}, max_age_s {}, truncate_before {}; meta_version {}",
        args.stream,
        answer["state"].as_str().unwrap_or("?"),
        answer["version"],
        answer["first_visible"],
        field("max_count"),
        field("max_age_s"),
        field("truncate_before"),
        answer["meta_version"],
    );
    Ok((answer, line))
}

/// `cairn scavenge`.
#[derive(Args, Debug)]
pub struct ScavengeArgs {
    #[command(flatten)]
    conn: crate::client::Conn,
}

/// Erases for real every event that deletes, truncation and retention hide (admin).
pub async fn scavenge(args: ScavengeArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let answer = client.call(Method::POST, &["admin", "scavenge"], None).await?;
    if args.conn.json {
        outln!("{answer}")?;
    } else {
        outln!(
            "scavenged: {} events erased in {} streams (log examined up to position {})",
            answer["events_redacted"],
            answer["streams"],
            answer["scanned_to"]
        )?;
    }
    Ok(())
}
