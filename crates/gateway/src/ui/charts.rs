//! Server-rendered inline SVG charts: finished patches per hour stacked by outcome, and stage
//! latency (p50 and p95) as horizontal bars. Colours come from CSS classes; no script.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::fleet::{HourOutcomes, StageLatency};
use crate::ui::html::{duration, esc};

const HOUR_MS: i64 = 3_600_000;
/// Outcomes in stacking order, bottom first.
const OUTCOMES: &[&str] = &[
    "succeeded",
    "failed",
    "rolled_back",
    "timed_out",
    "cancelled",
    "rejected",
    "lost",
    "interrupted",
];

fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "succeeded" => "ok",
        "cancelled" => "muted",
        "rolled_back" | "timed_out" => "warn",
        _ => "bad",
    }
}

/// Patches per hour by outcome over the `hours` hours ending with the one holding `now_ms`.
pub fn outcomes_per_hour(data: &[HourOutcomes], now_ms: i64, hours: i64) -> String {
    let last = now_ms.div_euclid(HOUR_MS) * HOUR_MS;
    let first = last - (hours - 1) * HOUR_MS;
    let by_hour: BTreeMap<i64, &BTreeMap<String, u32>> = data
        .iter()
        .filter(|h| h.hour_unix_ms >= first && h.hour_unix_ms <= last)
        .map(|h| (h.hour_unix_ms, &h.outcomes))
        .collect();
    let max_total = by_hour
        .values()
        .map(|outcomes| outcomes.values().sum::<u32>())
        .max()
        .unwrap_or(0)
        .max(1);
    let (width, height, top, bottom) = (720.0_f64, 170.0_f64, 14.0_f64, 22.0_f64);
    let plot = height - top - bottom;
    let slot = width / hours as f64;
    let bar = (slot - 4.0).max(2.0);
    let mut svg = format!(
        "<svg class=\"chart\" role=\"img\" viewBox=\"0 0 {width} {height}\" width=\"100%\" \
         aria-label=\"Finished patches per hour by outcome\"><title>Finished patches per hour by outcome (max {max_total} per hour)</title>"
    );
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"0\" y1=\"{y}\" x2=\"{width}\" y2=\"{y}\"/>\
         <text class=\"label\" x=\"0\" y=\"10\">{max_total}</text>",
        y = top + plot
    );
    for index in 0..hours {
        let hour = first + index * HOUR_MS;
        let x = index as f64 * slot + 2.0;
        let mut y = top + plot;
        if let Some(outcomes) = by_hour.get(&hour) {
            let mut ordered: Vec<(&str, u32)> = OUTCOMES
                .iter()
                .filter_map(|name| outcomes.get(*name).map(|count| (*name, *count)))
                .collect();
            for (name, count) in outcomes.iter() {
                if !OUTCOMES.contains(&name.as_str()) {
                    ordered.push((name.as_str(), *count));
                }
            }
            for (name, count) in ordered {
                let h = plot * f64::from(count) / f64::from(max_total);
                y -= h;
                let _ = write!(
                    svg,
                    "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\">\
                     <title>{time}: {count} {name}</title></rect>",
                    class = outcome_class(name),
                    time = esc(&crate::ui::html::time(hour)),
                    name = esc(name),
                );
            }
        }
        if index % 6 == 0 {
            let clock = crate::ui::html::time(hour);
            let label = clock.get(11..16).unwrap_or("");
            let _ = write!(
                svg,
                "<text class=\"label\" x=\"{x:.1}\" y=\"{ty}\">{label}</text>",
                ty = height - 6.0
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Stage latency: one row per stage, the p95 bar behind the p50 bar.
pub fn stage_latency(stages: &[StageLatency]) -> String {
    if stages.is_empty() {
        return "<p class=\"muted\">No reports yet.</p>".to_owned();
    }
    let max = stages.iter().map(|s| s.p95_ms).max().unwrap_or(0).max(1) as f64;
    let (width, row, label_width) = (720.0_f64, 26.0_f64, 110.0_f64);
    let height = row * stages.len() as f64 + 8.0;
    let plot = width - label_width - 210.0;
    let mut svg = format!(
        "<svg class=\"chart\" role=\"img\" viewBox=\"0 0 {width} {height}\" width=\"100%\" \
         aria-label=\"Stage latency p50 and p95\"><title>Stage latency (p50 dark, p95 light)</title>"
    );
    for (index, stage) in stages.iter().enumerate() {
        let y = index as f64 * row + 4.0;
        let p95 = plot * stage.p95_ms as f64 / max;
        let p50 = plot * stage.p50_ms as f64 / max;
        let _ = write!(
            svg,
            "<text class=\"label\" x=\"0\" y=\"{ty:.1}\">{name}</text>\
             <rect class=\"p95\" x=\"{label_width}\" y=\"{y:.1}\" width=\"{p95:.1}\" height=\"18\"><title>{name} p95 {p95t}</title></rect>\
             <rect class=\"p50\" x=\"{label_width}\" y=\"{y:.1}\" width=\"{p50:.1}\" height=\"18\"><title>{name} p50 {p50t}</title></rect>\
             <text class=\"label\" x=\"{tx:.1}\" y=\"{ty:.1}\">p50 {p50t} · p95 {p95t} · n={count}</text>",
            ty = y + 13.0,
            tx = label_width + plot + 6.0,
            name = esc(&stage.stage),
            p50t = esc(&duration(i64::try_from(stage.p50_ms).unwrap_or(i64::MAX))),
            p95t = esc(&duration(i64::try_from(stage.p95_ms).unwrap_or(i64::MAX))),
            count = stage.count,
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_stacked_per_hour_and_names_escaped() {
        let now = 100 * HOUR_MS + 5;
        let data = vec![HourOutcomes {
            hour_unix_ms: 99 * HOUR_MS,
            outcomes: BTreeMap::from([
                ("succeeded".to_owned(), 3),
                ("failed".to_owned(), 1),
                ("<odd>".to_owned(), 1),
            ]),
        }];
        let svg = outcomes_per_hour(&data, now, 24);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("3 succeeded"));
        assert!(svg.contains("&lt;odd&gt;"));
        assert!(!svg.contains("<odd>"));
    }

    #[test]
    fn stages_have_two_bars_each() {
        let stages = vec![StageLatency {
            stage: "edits".to_owned(),
            count: 4,
            p50_ms: 5,
            p95_ms: 20,
            max_ms: 25,
        }];
        let svg = stage_latency(&stages);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("p95 20 ms"));
    }
}
