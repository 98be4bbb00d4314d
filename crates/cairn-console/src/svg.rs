//! Charts drawn on the server as SVG: no chart library, no script, and they print.
//! Colours are presentation attributes (the content-security policy forbids inline style).

use std::fmt::Write as _;

use crate::rates::{Rate, SAMPLES_KEPT};
use crate::render::escape;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 180.0;
const PAD_LEFT: f64 = 56.0;
const PAD_BOTTOM: f64 = 24.0;
const PAD_TOP: f64 = 12.0;
const EVENTS_COLOUR: &str = "#2563eb";
const COMMANDS_COLOUR: &str = "#d97706";
const LAG_COLOUR: &str = "#7c3aed";

/// A round upper bound for an axis holding `max`.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|m| *m >= max).unwrap_or(max)
}

fn number(v: f64) -> String {
    if v >= 100.0 || v == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

/// Events/s and commands/s over the kept samples, as two lines.
pub fn rates(series: &[Rate]) -> String {
    let max = nice_max(series.iter().map(|r| r.events.max(r.commands)).fold(0.0, f64::max));
    let span = (SAMPLES_KEPT as f64) * crate::rates::SAMPLE_EVERY.as_secs_f64();
    let plot_w = WIDTH - PAD_LEFT - 8.0;
    let plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM;
    let x = |seconds_ago: f64| PAD_LEFT + plot_w * (1.0 + seconds_ago / span).clamp(0.0, 1.0);
    let y = |v: f64| PAD_TOP + plot_h * (1.0 - v / max);
    let line = |pick: fn(&Rate) -> f64| {
        series.iter().fold(String::new(), |mut s, r| {
            let _ = write!(s, "{:.1},{:.1} ", x(r.seconds_ago), y(pick(r)));
            s
        })
    };
    let last = series.last();
    let mut svg = format!(
        "<svg id=\"rates-chart\" class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
         aria-labelledby=\"rates-title\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"rates-title\">Events per second and commands per second, last {} minutes; \
         now {} events/s, {} commands/s</title>",
        span / 60.0,
        number(last.map_or(0.0, |r| r.events)),
        number(last.map_or(0.0, |r| r.commands)),
    );
    for step in 0..=4 {
        let v = max * f64::from(step) / 4.0;
        let _ = write!(
            svg,
            "<line x1=\"{PAD_LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e5e7eb\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\" fill=\"#4b5563\">{}</text>",
            WIDTH - 8.0,
            PAD_LEFT - 6.0,
            y(v) + 4.0,
            number(v),
            y = y(v),
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{PAD_LEFT}\" y=\"{}\" font-size=\"11\" fill=\"#4b5563\">−5 min</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"#4b5563\">now</text>",
        HEIGHT - 6.0,
        WIDTH - 8.0,
        HEIGHT - 6.0,
    );
    if let Some(last) = last {
        // The newest point is marked: a line needs two, and the first minute has few.
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{EVENTS_COLOUR}\"/>\
             <circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{COMMANDS_COLOUR}\"/>",
            x(last.seconds_ago),
            y(last.events),
            x(last.seconds_ago),
            y(last.commands),
        );
    }
    if series.len() > 1 {
        let _ = write!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{EVENTS_COLOUR}\" stroke-width=\"2\"/>\
             <polyline points=\"{}\" fill=\"none\" stroke=\"{COMMANDS_COLOUR}\" stroke-width=\"2\" stroke-dasharray=\"5 3\"/>",
            line(|r| r.events),
            line(|r| r.commands),
        );
    } else if series.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\" fill=\"#6b7280\">collecting samples…</text>",
            WIDTH / 2.0,
            HEIGHT / 2.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One bar per consumer: its lag behind the head.
pub fn lag(consumers: &[(String, u64)]) -> String {
    let row = 22.0;
    let label_w = 200.0;
    let height = (consumers.len().max(1) as f64) * row + 8.0;
    let max = nice_max(consumers.iter().map(|c| c.1 as f64).fold(0.0, f64::max));
    let bar_w = WIDTH - label_w - 70.0;
    let mut svg = format!(
        "<svg id=\"lag-chart\" class=\"chart\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" \
         aria-labelledby=\"lag-title\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"lag-title\">Each consumer's lag behind the head, in events</title>"
    );
    if consumers.is_empty() {
        svg.push_str(
            "<text x=\"8\" y=\"18\" font-size=\"12\" fill=\"#6b7280\">no consumers</text>",
        );
    }
    for (i, (name, lag)) in consumers.iter().enumerate() {
        let top = 4.0 + row * i as f64;
        let w = if *lag == 0 { 0.0 } else { (bar_w * *lag as f64 / max).max(2.0) };
        let _ = write!(
            svg,
            "<g class=\"lag-bar\" data-name=\"{name}\"><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"12\" fill=\"#111827\">{name}</text>\
             <rect x=\"{label_w}\" y=\"{top:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{LAG_COLOUR}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"#111827\">{lag}</text></g>",
            label_w - 8.0,
            top + 14.0,
            row - 8.0,
            label_w + w + 6.0,
            top + 14.0,
            name = escape(name),
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round_and_never_zero() {
        assert!((nice_max(0.0) - 1.0).abs() < f64::EPSILON);
        assert!((nice_max(7.0) - 10.0).abs() < f64::EPSILON);
        assert!((nice_max(120.0) - 200.0).abs() < f64::EPSILON);
        assert!((nice_max(5000.0) - 5000.0).abs() < f64::EPSILON);
    }

    #[test]
    fn names_are_escaped_and_bars_scale() {
        let svg = lag(&[("<x>".to_owned(), 10), ("b".to_owned(), 0)]);
        assert!(svg.contains("&lt;x&gt;"));
        assert!(!svg.contains("<x>"));
        assert!(svg.contains("width=\"0.0\""));
        let rates = rates(&[]);
        assert!(rates.contains("collecting samples"));
    }
}
