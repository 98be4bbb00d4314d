//! Collects samples and prints the table: median, min–max, and ratios between rows.

use std::time::Duration;

/// One measured scenario.
pub struct Row {
    name: String,
    unit: &'static str,
    samples: Vec<f64>,
}

impl Row {
    fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n % 2 == 1 { s[n / 2] } else { f64::midpoint(s[n / 2 - 1], s[n / 2]) }
    }
}

/// All rows of one run, plus ratio lines.
#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
    ratios: Vec<(String, String, String, f64)>,
}

/// Events per second from a count and a duration.
pub fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

impl Table {
    /// Records one sample of a scenario; rows keep the order they were first seen in.
    pub fn sample(&mut self, name: &str, unit: &'static str, value: f64) {
        eprintln!("  {name:<44} {value:>12.1} {unit}");
        match self.rows.iter_mut().find(|r| r.name == name) {
            Some(row) => row.samples.push(value),
            None => self.rows.push(Row { name: name.to_owned(), unit, samples: vec![value] }),
        }
    }

    fn median_of(&self, name: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.name == name).map(Row::median)
    }

    /// Adds a ratio line `a / b` of medians.
    pub fn ratio(&mut self, a: &str, b: &str, target: &str) {
        if let (Some(x), Some(y)) = (self.median_of(a), self.median_of(b)) {
            self.ratios.push((a.to_owned(), b.to_owned(), target.to_owned(), x / y));
        }
    }

    /// Prints the table as Markdown.
    pub fn print(&self) {
        println!("| scenario | median | min – max | unit | runs |");
        println!("|---|---:|---:|---|---:|");
        for r in &self.rows {
            let min = r.samples.iter().copied().fold(f64::INFINITY, f64::min);
            let max = r.samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            println!(
                "| {} | {} | {} – {} | {} | {} |",
                r.name,
                fmt(r.median()),
                fmt(min),
                fmt(max),
                r.unit,
                r.samples.len()
            );
        }
        println!();
        println!("| ratio (medians) | value | target |");
        println!("|---|---:|---|");
        for (a, b, target, v) in &self.ratios {
            println!("| {a} / {b} | {v:.2} | {target} |");
        }
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}
