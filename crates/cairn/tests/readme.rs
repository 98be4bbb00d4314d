//! The README's walkthroughs, run word for word against a real `cairn serve`.
//!
//! Every ```` ```sh ```` block of the sections named in [`SECTIONS`] is split into
//! commands (a `\` at the end of a line, or an open quote, continues a command; `#` outside
//! quotes starts a comment) and each command is run in README order on one fresh server,
//! `localhost:7070` / `http://127.0.0.1:7070` standing for that server and
//! `http://127.0.0.1:7071` for a second, empty one on the embedded store (the target of
//! `cairn import`):
//!
//! - `curl`: `-s`, `-N`, `-X METHOD`, `-H 'name: value'`, `-d 'body'` and one URL, sent
//!   with `reqwest`; piped into `grep -E 'regex'` and `head -c N` filters;
//! - `cairn ARGS`: the `cairn` binary with `--url` pointing at the server (unless the
//!   command names one), in a scratch directory;
//! - `echo 'text' > file`: writes the file in that scratch directory.
//!
//! Anything else — another program, another curl flag, another filter — fails the test:
//! an example the test cannot run is an example nobody checks.
//!
//! What a command is shown to answer is checked:
//!
//! - a comment that starts with `{`, `[` or `"` (a JSON value, or `"field":value, ...`
//!   members of an object), optionally after an HTTP status (`# 409 {...}`), either
//!   after the command on its line or on the lines right after it: the answer must be
//!   JSON holding every shown field with the shown value; `...` (bare, or as a string)
//!   stands for anything, and an array ending in `...` for any further elements;
//! - `#> text` lines right after a command: each must be one line of what it printed,
//!   in order, with runs of spaces equal and `...` standing for anything; a shown
//!   `cairn: error: ...` line means the command must fail;
//! - a command shown with no answer must succeed (a `2xx` answer, or exit status 0).
//!
//! Commands that never end by themselves are run for a moment and stopped, by rule:
//! `curl -N` (Server-Sent Events) must answer `200` with an event stream and is read for
//! one second; `cairn tail` must still be running (or have exited with 0) after two
//! seconds. Nothing in these sections is skipped.
//!
//! Not run: the sections of `cargo` commands (the two commands, PostgreSQL, benchmarks)
//! and the NATS walkthrough, whose shown output is what the `order-board` example service
//! prints: checking it would mean building and running that example beside a NATS relay.

mod support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::{CAIRN, ServeProcess, Server};

/// The README, as committed.
const README: &str = include_str!("../../../README.md");

/// The sections whose `sh` blocks are run, in README order.
const SECTIONS: [&str; 4] = [
    "## A walk through the store API",
    "## A walk through an order's life",
    "## Operations",
    "## Command line",
];

/// What a command is shown to answer.
#[derive(Debug, Default)]
struct Shown {
    /// `# 409 {...}`: the HTTP status.
    status: Option<u16>,
    /// `# {...}`: a JSON answer (with `"..."` for anything).
    json: Option<Value>,
    /// `#> ...` lines.
    lines: Vec<String>,
}

/// One command of a walkthrough.
#[derive(Debug)]
struct Step {
    /// Its first line in README.md (1-based), for failure messages.
    line: usize,
    /// Its words, quotes removed; `|` and `>` are words of their own.
    words: Vec<Word>,
    shown: Shown,
}

/// A shell word: quoted text is never an operator.
#[derive(Debug, Clone, PartialEq)]
enum Word {
    Text(String),
    Pipe,
    Redirect,
}

/// The `sh` blocks of [`SECTIONS`], as (first line number, lines).
fn blocks() -> Vec<(usize, Vec<&'static str>)> {
    let mut blocks = Vec::new();
    let mut in_section = false;
    let mut block: Option<(usize, Vec<&str>)> = None;
    for (i, line) in README.lines().enumerate() {
        if let Some((start, lines)) = &mut block {
            if line.trim_start().starts_with("```") {
                blocks.push((*start, std::mem::take(lines)));
                block = None;
            } else {
                lines.push(line);
            }
        } else if line.starts_with("## ") {
            in_section = SECTIONS.iter().any(|s| line.starts_with(s));
        } else if in_section && line.trim_start().starts_with("```sh") {
            block = Some((i + 2, Vec::new()));
        }
    }
    assert!(block.is_none(), "README.md: an sh block is not closed");
    blocks
}

/// Splits a block into commands with their shown answers.
fn steps(first_line: usize, lines: &[&str]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    // Whether a comment line may still belong to the last command (no blank line since).
    let mut attached = false;
    let mut i = 0;
    while i < lines.len() {
        let line_no = first_line + i;
        let trimmed = lines[i].trim();
        if trimmed.is_empty() {
            attached = false;
            i += 1;
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            if attached && let Some(step) = steps.last_mut() {
                shown_in(comment, &mut step.shown, line_no);
            }
            i += 1;
            continue;
        }
        // A command: words until an unquoted, unescaped end of line.
        let (words, comment, next) = command(lines, i);
        let mut shown = Shown::default();
        if let Some(comment) = comment {
            shown_in(&comment, &mut shown, line_no);
        }
        steps.push(Step { line: line_no, words, shown });
        attached = true;
        i = next;
    }
    steps
}

/// Reads a comment's shown answer, if it is one, into `shown`.
fn shown_in(comment: &str, shown: &mut Shown, line_no: usize) {
    if let Some(text) = comment.strip_prefix('>') {
        shown.lines.push(text.strip_prefix(' ').unwrap_or(text).to_owned());
        return;
    }
    let mut text = comment.trim();
    if let Some((code, rest)) = text.split_once(' ')
        && code.len() == 3
        && code.bytes().all(|b| b.is_ascii_digit())
        && rest.trim_start().starts_with(['{', '['])
    {
        shown.status = Some(code.parse().unwrap());
        text = rest.trim_start();
    }
    if !text.starts_with(['{', '[', '"']) {
        return; // prose
    }
    let text = wildcards(text);
    let value = if text.starts_with('"') {
        serde_json::from_str(&format!("{{{text}}}")).unwrap_or_else(|e| {
            panic!("README.md:{line_no}: shown members {text} are not JSON: {e}")
        })
    } else {
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("README.md:{line_no}: shown answer {text} is not JSON"))
    };
    assert!(shown.json.is_none(), "README.md:{line_no}: two JSON answers for one command");
    shown.json = Some(value);
}

/// Turns every bare `...` (outside JSON strings) into the string `"..."`.
fn wildcards(text: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_string && rest.starts_with("...") {
            rest = &rest[3..];
            if rest.trim_start().starts_with('}') {
                // `{"a":1,...}`: an object's further members (shown fields are a subset anyway).
                let kept = out.trim_end().trim_end_matches(',').len();
                out.truncate(kept);
            } else {
                out.push_str("\"...\"");
            }
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Reads the command starting at `lines[start]`: its words, its trailing comment, and the
/// index of the line after it.
fn command(lines: &[&str], start: usize) -> (Vec<Word>, Option<String>, usize) {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    let mut i = start;
    let mut chars: Vec<char> = lines[i].chars().collect();
    let mut j = 0;
    let flush = |word: &mut Option<String>, words: &mut Vec<Word>| {
        if let Some(w) = word.take() {
            words.push(Word::Text(w));
        }
    };
    loop {
        if j >= chars.len() {
            // End of a line: inside quotes it is part of the word; else the command ends.
            if quote.is_some() {
                word.get_or_insert_with(String::new).push('\n');
            } else {
                flush(&mut word, &mut words);
                return (words, None, i + 1);
            }
            i += 1;
            assert!(i < lines.len(), "README.md: a quote is never closed");
            chars = lines[i].chars().collect();
            j = 0;
            continue;
        }
        let c = chars[j];
        j += 1;
        match quote {
            Some('\'') if c == '\'' => quote = None,
            Some('"') if c == '"' => quote = None,
            Some('"') if c == '\\' && j < chars.len() => {
                word.get_or_insert_with(String::new).push(chars[j]);
                j += 1;
            }
            Some(_) => word.get_or_insert_with(String::new).push(c),
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    word.get_or_insert_with(String::new);
                }
                '\\' if j == chars.len() => {
                    // A continuation line.
                    flush(&mut word, &mut words);
                    i += 1;
                    chars = lines[i].chars().collect();
                    j = 0;
                }
                '\\' => {
                    word.get_or_insert_with(String::new).push(chars[j]);
                    j += 1;
                }
                '#' if word.is_none() => {
                    let comment: String = chars[j..].iter().collect();
                    return (words, Some(comment), i + 1);
                }
                '|' | '>' => {
                    flush(&mut word, &mut words);
                    words.push(if c == '|' { Word::Pipe } else { Word::Redirect });
                }
                c if c.is_whitespace() => flush(&mut word, &mut words),
                c => word.get_or_insert_with(String::new).push(c),
            },
        }
    }
}

/// Where the README's addresses point in this run.
struct Env {
    base: String,
    second: String,
    dir: tempfile::TempDir,
}

impl Env {
    /// A README address with the test servers' addresses in place of 7070 and 7071.
    fn url(&self, url: &str) -> String {
        let url = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) = url.split_at(url.find('/').unwrap_or(url.len()));
        match host {
            "localhost:7070" | "127.0.0.1:7070" => format!("{}{path}", self.base),
            "localhost:7071" | "127.0.0.1:7071" => format!("{}{path}", self.second),
            _ => panic!("{url}: not an address of the README's servers"),
        }
    }
}

/// What a command answered.
struct Outcome {
    /// The HTTP status (`curl`) or whether it exited with 0 (`cairn`, `echo`).
    status: Option<u16>,
    ok: bool,
    text: String,
}

fn text(word: &Word, at: usize) -> &str {
    match word {
        Word::Text(t) => t,
        other => panic!("README.md:{at}: unexpected {other:?}"),
    }
}

async fn run(step: &Step, env: &Env) -> Outcome {
    let at = step.line;
    let mut stages = step.words.split(|w| *w == Word::Pipe);
    let first = stages.next().expect("a command has words");
    let mut outcome = match text(&first[0], at) {
        "curl" => curl(&first[1..], step, env).await,
        "cairn" => cairn(&first[1..], step, env).await,
        "echo" => {
            let [Word::Text(content), Word::Redirect, Word::Text(file)] = &first[1..] else {
                panic!("README.md:{at}: only `echo 'text' > file` is supported");
            };
            std::fs::write(env.dir.path().join(file), format!("{content}\n")).unwrap();
            Outcome { status: None, ok: true, text: String::new() }
        }
        other => panic!("README.md:{at}: the README test cannot run `{other}`"),
    };
    for stage in stages {
        let args: Vec<&str> = stage.iter().map(|w| text(w, at)).collect();
        outcome.text = match args.as_slice() {
            ["grep", "-E", pattern] => {
                let re = regex::Regex::new(pattern).unwrap();
                outcome.text.lines().filter(|l| re.is_match(l)).flat_map(|l| [l, "\n"]).collect()
            }
            ["head", "-c", n] => outcome.text.chars().take(n.parse().unwrap()).collect(),
            _ => panic!("README.md:{at}: the README test cannot run the filter {args:?}"),
        };
    }
    outcome
}

async fn curl(args: &[Word], step: &Step, env: &Env) -> Outcome {
    let at = step.line;
    let mut method = None;
    let mut headers = Vec::new();
    let mut body = None;
    let mut url = None;
    let mut streaming = false;
    let mut args = args.iter().map(|w| text(w, at));
    while let Some(arg) = args.next() {
        match arg {
            "-s" => {}
            "-N" => streaming = true,
            "-X" => method = Some(args.next().expect("-X METHOD").to_owned()),
            "-H" => {
                let header = args.next().expect("-H HEADER");
                let (name, value) = header.split_once(':').expect("-H 'name: value'");
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            "-d" => body = Some(args.next().expect("-d BODY").to_owned()),
            flag if flag.starts_with('-') => {
                panic!("README.md:{at}: the README test does not know curl's {flag}")
            }
            address => {
                assert!(url.is_none(), "README.md:{at}: two URLs");
                url = Some(env.url(address));
            }
        }
    }
    let url = url.unwrap_or_else(|| panic!("README.md:{at}: curl without a URL"));
    let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.to_owned());
    let client = reqwest::Client::new();
    let mut request = client.request(method.parse().unwrap(), &url);
    if body.is_some() && !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-type")) {
        // What curl -d sends.
        request = request.header("content-type", "application/x-www-form-urlencoded");
    }
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let mut response =
        request.send().await.unwrap_or_else(|e| panic!("README.md:{at}: {method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = if streaming {
        // Server-Sent Events never end: read for a second.
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/event-stream"), "README.md:{at}: {content_type}");
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    } else {
        response.text().await.unwrap()
    };
    Outcome { status: Some(status), ok: (200..300).contains(&status), text }
}

async fn cairn(args: &[Word], step: &Step, env: &Env) -> Outcome {
    let at = step.line;
    let mut args: Vec<String> = args.iter().map(|w| text(w, at).to_owned()).collect();
    if let Some(i) = args.iter().position(|a| a == "--url") {
        args[i + 1] = env.url(&args[i + 1]);
    } else {
        args.extend(["--url".to_owned(), env.base.clone()]);
    }
    let follows = args[0] == "tail";
    let child = tokio::process::Command::new(CAIRN)
        .args(&args)
        .current_dir(env.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let limit = Duration::from_secs(if follows { 2 } else { 60 });
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => {
            let output = output.unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            Outcome { status: None, ok: output.status.success(), text }
        }
        // `cairn tail` follows the log until stopped: still running is what it should do.
        Err(elapsed) => {
            assert!(follows, "README.md:{at}: cairn {args:?} did not finish: {elapsed}");
            Outcome { status: None, ok: true, text: String::new() }
        }
    }
}

/// Whether `actual` holds everything `shown` shows (`"..."` = anything).
fn matches(shown: &Value, actual: &Value) -> bool {
    match (shown, actual) {
        (Value::String(s), _) if s == "..." => true,
        (Value::Object(s), Value::Object(a)) => {
            s.iter().all(|(k, v)| a.get(k).is_some_and(|a| matches(v, a)))
        }
        (Value::Array(s), Value::Array(a)) => {
            if s.last().is_some_and(|l| l == "...") {
                let s = &s[..s.len() - 1];
                s.len() <= a.len() && s.iter().zip(a).all(|(s, a)| matches(s, a))
            } else {
                s.len() == a.len() && s.iter().zip(a).all(|(s, a)| matches(s, a))
            }
        }
        (Value::Number(s), Value::Number(a)) => s.as_f64() == a.as_f64(),
        _ => shown == actual,
    }
}

/// Whether `line` is `pattern` with runs of spaces equal and `...` standing for anything.
fn line_matches(pattern: &str, line: &str) -> bool {
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (pattern, line) = (squeeze(pattern), squeeze(line));
    let pieces: Vec<&str> = pattern.split("...").collect();
    let mut rest = line.as_str();
    for (i, piece) in pieces.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(piece) else { return false };
            rest = r;
        } else if i == pieces.len() - 1 {
            return rest.ends_with(piece);
        } else {
            let Some(at) = rest.find(piece) else { return false };
            rest = &rest[at + piece.len()..];
        }
    }
    rest.is_empty()
}

fn check(step: &Step, outcome: &Outcome, env: &Env) {
    let at = step.line;
    let shown = &step.shown;
    let fails = shown.lines.iter().any(|l| l.starts_with("cairn: error:"));
    let text = outcome.text.replace(&env.base, "http://127.0.0.1:7070");
    match (shown.status, outcome.status) {
        (Some(s), Some(a)) => assert_eq!(a, s, "README.md:{at}: status, answer {text}"),
        (Some(_), None) => panic!("README.md:{at}: a status shown for a command that is not HTTP"),
        (None, _) if shown.json.is_none() && !fails => {
            assert!(outcome.ok, "README.md:{at}: failed: {:?} {text}", outcome.status);
        }
        (None, _) => {}
    }
    if fails {
        assert!(!outcome.ok, "README.md:{at}: should fail, printed {text}");
    }
    if let Some(json) = &shown.json {
        let actual: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("README.md:{at}: the answer is not JSON ({e}): {text}"));
        assert!(
            matches(json, &actual),
            "README.md:{at}: the README shows {json}\nthe server answered {actual}"
        );
    }
    let mut lines = text.lines();
    for pattern in &shown.lines {
        assert!(
            lines.any(|l| line_matches(pattern, l)),
            "README.md:{at}: no line (in order) like {pattern:?} in:\n{text}"
        );
    }
}

async fn walk(backend: cairn_testkit::Backend) {
    let place = backend.place().await;
    let server: ServeProcess = Server::start_on(&place, &[]).await;
    let second_place = cairn_testkit::Backend::Sqlite.place().await;
    let second = Server::start_on(&second_place, &[]).await;
    let env = Env {
        base: server.base.clone(),
        second: second.base.clone(),
        dir: tempfile::tempdir().unwrap(),
    };
    let mut count: HashMap<String, usize> = HashMap::new();
    for (first_line, lines) in blocks() {
        for step in steps(first_line, &lines) {
            let outcome = run(&step, &env).await;
            check(&step, &outcome, &env);
            *count.entry(text(&step.words[0], step.line).to_owned()).or_default() += 1;
        }
    }
    eprintln!("README walkthroughs on {backend:?}: {count:?} commands run and checked");
    assert!(count.values().sum::<usize>() > 40, "too few README commands found: {count:?}");
    server.kill().await;
    second.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthroughs_work_as_written_on_sqlite() {
    walk(cairn_testkit::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthroughs_work_as_written_on_postgres() {
    if cairn_testkit::Backend::Postgres.enabled() {
        walk(cairn_testkit::Backend::Postgres).await;
    }
}

#[test]
fn the_parser_reads_commands_answers_and_wildcards() {
    let lines = [
        "curl -s -X POST localhost:7070/x -H 'a: b' \\",
        "  -d '{\"k\": [1,",
        "        2]}'",
        "# 409 {\"error\":\"e\"}",
        "cairn health   # says hello",
        "#> http://127.0.0.1:7070: ready (ok)",
        "",
        "# prose",
        "curl -s localhost:7070/metrics | grep -E '^a' # \"status\":\"ok\"",
    ];
    let steps = steps(1, &lines);
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0].words.len(), 9);
    assert_eq!(steps[0].words[8], Word::Text("{\"k\": [1,\n        2]}".into()));
    assert_eq!(steps[0].shown.status, Some(409));
    assert!(steps[1].shown.json.is_none());
    assert_eq!(steps[1].shown.lines, ["http://127.0.0.1:7070: ready (ok)"]);
    assert_eq!(steps[2].words[3], Word::Pipe);
    assert!(line_matches(
        "v1 @1 ... Order/order-1 OrderCreated {...}",
        "v1  @1 2026 Order/order-1 OrderCreated {\"a\":1}"
    ));
    assert!(!line_matches("a b", "a c"));
    assert_eq!(wildcards(r#"{"a":[1,...],"m":"...", ...}"#), r#"{"a":[1,"..."],"m":"..."}"#);
}
