//! Progress of long work (export, import, rebuild): an `indicatif` bar with rate and ETA
//! when stdout is a terminal, plain lines on stderr otherwise (at most one a second, and
//! a last one when the work is done), so that piped output and logs stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Longest gap between two plain progress lines.
const PLAIN_INTERVAL: Duration = Duration::from_secs(1);

/// Progress of one piece of work, counted in `unit`s.
pub struct Progress {
    label: &'static str,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    shape: Shape,
}

enum Shape {
    Bar(ProgressBar),
    Plain { last_line: Option<Instant> },
}

impl Progress {
    /// Starts reporting `label` work of `total` units (unknown: `None`).
    pub fn new(label: &'static str, unit: &'static str, total: Option<u64>) -> Self {
        let shape = if std::io::stdout().is_terminal() {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(10));
            let template = if total.is_some() {
                format!(
                    "{label} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}})"
                )
            } else {
                format!("{label} [{{elapsed_precise}}] {{spinner}} {{pos}} {unit} ({{per_sec}})")
            };
            bar.set_style(
                ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Shape::Bar(bar)
        } else {
            Shape::Plain { last_line: None }
        };
        Self { label, unit, total, done: 0, started: Instant::now(), shape }
    }

    /// Sets the total once it is known (or it changes).
    pub fn set_total(&mut self, total: u64) {
        self.total = Some(total);
        if let Shape::Bar(bar) = &self.shape {
            bar.set_length(total);
        }
    }

    /// Sets how much is done.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        match &mut self.shape {
            Shape::Bar(bar) => bar.set_position(done),
            Shape::Plain { last_line } => {
                if last_line.is_none_or(|t| t.elapsed() >= PLAIN_INTERVAL) {
                    *last_line = Some(Instant::now());
                    eprintln!(
                        "{}",
                        plain_line(
                            self.label,
                            self.unit,
                            self.done,
                            self.total,
                            self.started.elapsed()
                        )
                    );
                }
            }
        }
    }

    /// Adds `n` to what is done.
    pub fn inc(&mut self, n: u64) {
        self.set(self.done + n);
    }

    /// Ends the report with one summary line: `<label>: <summary> in <seconds>s`.
    pub fn finish(self, summary: &str) {
        let line =
            format!("{}: {summary} in {:.1}s", self.label, self.started.elapsed().as_secs_f64());
        if let Shape::Bar(bar) = self.shape {
            bar.finish_and_clear();
        }
        eprintln!("{line}");
    }
}

fn rate(done: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { done as f64 / secs } else { 0.0 }
}

/// `import: 1200/5000 events (24%), 800 events/s, ETA 5s`.
fn plain_line(label: &str, unit: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let per_sec = rate(done, elapsed);
    match total {
        Some(total) if total > 0 => {
            let percent = (done.min(total) * 100) / total;
            let eta = if per_sec > 0.0 {
                format!("{:.0}s", total.saturating_sub(done) as f64 / per_sec)
            } else {
                "?".to_owned()
            };
            format!("{label}: {done}/{total} {unit} ({percent}%), {per_sec:.0} {unit}/s, ETA {eta}")
        }
        _ => format!("{label}: {done} {unit}, {per_sec:.0} {unit}/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_show_count_percent_rate_and_eta() {
        let line = plain_line("import", "events", 250, Some(1000), Duration::from_secs(1));
        assert_eq!(line, "import: 250/1000 events (25%), 250 events/s, ETA 3s");
        let line = plain_line("export", "events", 10, None, Duration::from_secs(2));
        assert_eq!(line, "export: 10 events, 5 events/s");
    }
}
