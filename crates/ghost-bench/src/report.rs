//! Statistics of one run, the table printed on stdout and the JSON document (`--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::floor::{FsyncFloor, PATH_FSYNCS, PathFsync};
use crate::procfs::Memory;

/// Percentiles of one set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stats {
    /// Samples.
    pub n: usize,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Stats {
    /// Percentiles of `samples` (sorted in place; NaNs dropped).
    pub fn of(samples: &mut Vec<f64>) -> Self {
        samples.retain(|s| s.is_finite());
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
        Self {
            n: samples.len(),
            min: at(0.0),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
        }
    }
}

/// One named latency stage.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// e.g. `submit → 202`.
    pub name: String,
    /// Its percentiles (ms).
    pub stats: Stats,
}

/// What the run asked for.
#[derive(Debug, Clone, Serialize)]
pub struct RunShape {
    /// `started` (child processes) or `url`.
    pub mode: String,
    /// Patches submitted.
    pub patches: usize,
    /// Closed-loop concurrency (None in open loop).
    pub concurrency: Option<usize>,
    /// Open-loop rate per second.
    pub rate: Option<f64>,
    /// Targets (one executor each).
    pub targets: usize,
    /// Files each patch writes.
    pub files_per_patch: usize,
    /// Files in each workspace before the run.
    pub workspace_files: usize,
    /// Patches failed on purpose (rollback).
    pub fail: bool,
    /// Where the router, summarizer and alerter kept their state (`--store`); empty with
    /// `--url`.
    pub store: String,
}

/// Rates, per second.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Throughput {
    /// 202s per second of the submission phase.
    pub accepted_per_s: f64,
    /// Ended patches per second, first send to last end (router terminal event).
    pub ended_per_s: f64,
    /// Slack posts per second, first send to last post (started system only).
    pub slack_per_s: f64,
    /// Per target: ended patches per second between its first lease and its last end; the
    /// slowest target.
    pub per_target_min_per_s: f64,
    /// The same, summed over targets.
    pub per_target_sum_per_s: f64,
}

/// Counts: nothing may go missing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Requests sent.
    pub submitted: usize,
    /// Answered 202.
    pub accepted: usize,
    /// Answered with another status (by status).
    pub refused: BTreeMap<u16, usize>,
    /// Failed without an answer.
    pub transport_errors: usize,
    /// Accepted patches with exactly one terminal event.
    pub ended_once: usize,
    /// Accepted patches with no terminal event by the deadline: lost or stuck.
    pub not_ended: usize,
    /// Accepted patches with more than one terminal event.
    pub ended_twice: usize,
    /// Final status → patches.
    pub statuses: BTreeMap<String, usize>,
    /// Summaries written (started system only).
    pub summaries: usize,
    /// Ended patches without a summary file.
    pub summaries_missing: usize,
    /// Patches with exactly one Slack parent post (started system only).
    pub slack_once: usize,
    /// Accepted patches without a Slack post.
    pub slack_missing: usize,
    /// Patches posted more than once.
    pub slack_duplicates: usize,
    /// Slack calls the fake answered with an error.
    pub slack_failed_calls: usize,
    /// Open loop: submissions that started > 5 ms late (the client could not keep the rate).
    pub late_ticks: usize,
    /// Accepted patches not finished when the wait ended: no terminal event, no summary or no
    /// Slack post (started system), or no terminal event (`--url`). Lost or late: a run with
    /// a longer `--timeout` tells them apart (everything is stored in outboxes, so late
    /// patches finish after the report).
    pub unfinished: usize,
}

/// One service process.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceFigures {
    /// Name.
    pub name: String,
    /// Spawn to first `/readyz` 200, ms.
    pub ready_ms: f64,
    /// RSS after start, before load, KiB.
    pub idle_rss_kib: u64,
    /// Anonymous part of it (heap, stacks; the rest is the binary's mapped code), KiB.
    pub idle_anon_kib: u64,
    /// Peak RSS (VmHWM) at the end of the run, KiB.
    pub peak_rss_kib: u64,
    /// CPU time used between idle and the end of the run (user + system), s.
    pub cpu_seconds: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What ran.
    pub shape: RunShape,
    /// Submission phase length, s.
    pub submit_seconds: f64,
    /// Rates.
    pub throughput: Throughput,
    /// Client-side and cross-service stages, ms.
    pub stages: Vec<Stage>,
    /// Stages between consecutive stored router events, ms (ms resolution).
    pub event_stages: Vec<Stage>,
    /// The executor's own stage timings from a sample of reports, ms (ms resolution).
    pub executor_stages: Vec<Stage>,
    /// Counts.
    pub counts: Counts,
    /// Services (started system only).
    pub services: Vec<ServiceFigures>,
    /// Idle RSS of gateway + router + summarizer + alerter + one executor, KiB.
    pub idle_rss_five_kib: u64,
    /// The anonymous part of it, KiB.
    pub idle_anon_five_kib: u64,
    /// The disk's fsync floor.
    pub fsync: FsyncFloor,
    /// The fsyncs on a patch's path, counted from the code.
    pub path_fsyncs: Vec<PathFsync>,
    /// Submit → ended p50 over its floor (`fsync.ended_floor_ms`).
    pub ended_p50_over_floor: f64,
    /// Submit → ended p99 over its p50.
    pub ended_p99_over_p50: f64,
    /// Submit → Slack post p50 over its floor (`fsync.path_floor_ms`).
    pub slack_p50_over_floor: f64,
    /// Submit → Slack post p99 over its p50.
    pub slack_p99_over_p50: f64,
    /// The first few refusal or transport-error texts.
    pub sample_errors: Vec<String>,
    /// `/proc/loadavg` before and after the run (the machine is shared).
    pub loadavg: [String; 2],
}

impl Report {
    /// Services as figures, from memory at idle and at the end.
    pub fn service_figures(
        ready: &[(String, f64)],
        idle: &[(String, Memory)],
        end: &[(String, Memory)],
    ) -> Vec<ServiceFigures> {
        ready
            .iter()
            .map(|(name, ready_ms)| {
                let of = |list: &[(String, Memory)]| {
                    list.iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, m)| *m)
                        .unwrap_or_default()
                };
                ServiceFigures {
                    name: name.clone(),
                    ready_ms: *ready_ms,
                    idle_rss_kib: of(idle).rss_kib,
                    idle_anon_kib: of(idle).anon_kib,
                    peak_rss_kib: of(end).peak_kib.max(of(end).rss_kib),
                    cpu_seconds: of(end).cpu_ms.saturating_sub(of(idle).cpu_ms) as f64 / 1000.0,
                }
            })
            .collect()
    }

    /// Sets the end-to-end stages' ratios to the fsync floor (p50 over the floor, p99 over
    /// p50) from the stages and `fsync`; zero where a stage or the floor is missing.
    pub fn relate_to_floor(&mut self) {
        let ratios = |name: &str, floor: f64| {
            self.stages
                .iter()
                .find(|s| s.name == name)
                .filter(|s| s.stats.p50 > 0.0 && floor > 0.0)
                .map_or((0.0, 0.0), |s| {
                    (s.stats.p50 / floor, s.stats.p99 / s.stats.p50)
                })
        };
        let ended = ratios("e2e submit → ended", self.fsync.ended_floor_ms);
        let slack = ratios("e2e submit → Slack post", self.fsync.path_floor_ms);
        (self.ended_p50_over_floor, self.ended_p99_over_p50) = ended;
        (self.slack_p50_over_floor, self.slack_p99_over_p50) = slack;
    }

    /// The fixed list of path fsyncs.
    pub fn path_fsyncs() -> Vec<PathFsync> {
        PATH_FSYNCS.to_vec()
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        self.write_headline(&mut out);
        self.write_stages(&mut out);
        self.write_counts(&mut out);
        if !self.services.is_empty() {
            self.write_services(&mut out);
        }
        let _ = writeln!(
            out,
            "load average before: {}; after: {}",
            self.loadavg[0], self.loadavg[1]
        );
        for error in &self.sample_errors {
            let _ = writeln!(out, "error: {error}");
        }
        out
    }

    /// The run's shape, its throughput and the fsync floor.
    fn write_headline(&self, out: &mut String) {
        let s = &self.shape;
        let load = match (s.rate, s.concurrency) {
            (Some(rate), _) => format!("rate {rate}/s"),
            (None, Some(c)) => format!("concurrency {c}"),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "ghost-bench: {} patches, {load}, {} target(s), {} file(s)/patch, {} files/workspace{}, mode {}",
            s.patches,
            s.targets,
            s.files_per_patch,
            s.workspace_files,
            if s.fail { ", failing (rollback)" } else { "" },
            s.mode
        );
        if !s.store.is_empty() {
            let _ = writeln!(out, "store: {}", s.store);
        }
        let t = &self.throughput;
        let _ = writeln!(
            out,
            "throughput: accepted {:.0}/s over {:.2}s; ended {:.1}/s; slack {:.1}/s; per target min {:.1}/s, sum {:.1}/s",
            t.accepted_per_s,
            self.submit_seconds,
            t.ended_per_s,
            t.slack_per_s,
            t.per_target_min_per_s,
            t.per_target_sum_per_s
        );
        let f = &self.fsync;
        let _ = writeln!(
            out,
            "fsync floor (append 4 KiB + fdatasync): p50 {:.3} ms, p99 {:.3} ms ({} samples); in-place rewrite + fdatasync: p50 {:.3} ms, p99 {:.3} ms\n  to ended: {} fsyncs → floor {:.2} ms; p50/floor {:.2}, p99/p50 {:.2}\n  to Slack: {} fsyncs → floor {:.2} ms; p50/floor {:.2}, p99/p50 {:.2}",
            f.p50_ms,
            f.p99_ms,
            f.samples,
            f.overwrite_p50_ms,
            f.overwrite_p99_ms,
            f.ended_fsyncs,
            f.ended_floor_ms,
            self.ended_p50_over_floor,
            self.ended_p99_over_p50,
            f.path_fsyncs,
            f.path_floor_ms,
            self.slack_p50_over_floor,
            self.slack_p99_over_p50
        );
    }

    /// Every stage's latency: the path's stages, then the router's events, then the
    /// executor's.
    fn write_stages(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n{:<34} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "stage (ms)", "n", "p50", "p90", "p99", "max", "mean"
        );
        for stage in self
            .stages
            .iter()
            .chain(&self.event_stages)
            .chain(&self.executor_stages)
        {
            let st = &stage.stats;
            let _ = writeln!(
                out,
                "{:<34} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                stage.name, st.n, st.p50, st.p90, st.p99, st.max, st.mean
            );
        }
        let _ = writeln!(
            out,
            "* file mtimes tick with the kernel's coarse clock (a few ms); router events are to the µs"
        );
    }

    /// What became of the submissions: refused, ended, summarised, posted.
    fn write_counts(&self, out: &mut String) {
        let c = &self.counts;
        let _ = writeln!(
            out,
            "\ncounts: submitted {}, accepted {}, refused {:?}, transport errors {}, ended once {}, not ended {}, ended twice {}, statuses {:?}",
            c.submitted,
            c.accepted,
            c.refused,
            c.transport_errors,
            c.ended_once,
            c.not_ended,
            c.ended_twice,
            c.statuses
        );
        let _ = writeln!(
            out,
            "        summaries {} (missing {}), slack once {} (missing {}, duplicates {}, failed calls {}), late ticks {}; UNFINISHED at the deadline {}",
            c.summaries,
            c.summaries_missing,
            c.slack_once,
            c.slack_missing,
            c.slack_duplicates,
            c.slack_failed_calls,
            c.late_ticks,
            c.unfinished
        );
    }

    /// Every service's start time, memory and CPU, and the idle RSS of the five.
    fn write_services(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n{:<14} {:>9} {:>13} {:>14} {:>13} {:>8}",
            "service", "ready ms", "idle RSS MiB", "idle anon MiB", "peak RSS MiB", "CPU s"
        );
        for service in &self.services {
            let _ = writeln!(
                out,
                "{:<14} {:>9.1} {:>13.1} {:>14.1} {:>13.1} {:>8.1}",
                service.name,
                service.ready_ms,
                service.idle_rss_kib as f64 / 1024.0,
                service.idle_anon_kib as f64 / 1024.0,
                service.peak_rss_kib as f64 / 1024.0,
                service.cpu_seconds
            );
        }
        let _ = writeln!(
            out,
            "idle RSS of the five (one executor): {} KiB = {:.1} MiB = {:.1} MB, of which anonymous {:.1} MiB",
            self.idle_rss_five_kib,
            self.idle_rss_five_kib as f64 / 1024.0,
            self.idle_rss_five_kib as f64 * 1024.0 / 1e6,
            self.idle_anon_five_kib as f64 / 1024.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        samples.reverse();
        let stats = Stats::of(&mut samples);
        assert_eq!(stats.n, 100);
        assert_eq!(stats.p50, 51.0);
        assert_eq!(stats.p99, 99.0);
        assert_eq!(stats.max, 100.0);
        assert!((stats.mean - 50.5).abs() < 1e-9);
        assert_eq!(Stats::of(&mut Vec::new()).n, 0);
    }
}
