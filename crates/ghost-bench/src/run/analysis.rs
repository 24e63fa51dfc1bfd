//! From what was submitted and what was observed (router events, summary files, Slack posts)
//! to a [`Report`]: the counts, the throughput and the latency of every stage.

use std::collections::HashMap;

use super::{first_terminal, hand_offs, rate, stage};
use crate::follow::{Event, SlackPosts, TERMINAL};
use crate::load::{LoadOutcome, Submission};
use crate::report::{Counts, Report, RunShape, ServiceFigures, Throughput};

/// The samples of one run, gathered submission by submission.
struct Tally<'a> {
    counts: Counts,
    sample_errors: Vec<String>,
    accept: Vec<f64>,
    to_ended: Vec<f64>,
    to_summary: Vec<f64>,
    to_slack: Vec<f64>,
    e2e_ended: Vec<f64>,
    e2e_slack: Vec<f64>,
    ended_to_slack: Vec<f64>,
    /// Time between consecutive router events, by the pair of statuses.
    pairs: Vec<(String, Vec<f64>)>,
    /// Per target: first lease, last end, patches ended.
    per_target: HashMap<&'a str, (f64, f64, usize)>,
    /// (queued, leased, ended) per target, for the hand-off between consecutive patches.
    cycles: HashMap<&'a str, Vec<(f64, f64, f64)>>,
    last_end: f64,
    last_slack: f64,
}

impl<'a> Tally<'a> {
    fn new(counts: Counts) -> Self {
        Self {
            counts,
            sample_errors: Vec::new(),
            accept: Vec::new(),
            to_ended: Vec::new(),
            to_summary: Vec::new(),
            to_slack: Vec::new(),
            e2e_ended: Vec::new(),
            e2e_slack: Vec::new(),
            ended_to_slack: Vec::new(),
            pairs: Vec::new(),
            per_target: HashMap::new(),
            cycles: HashMap::new(),
            last_end: f64::MIN,
            last_slack: f64::MIN,
        }
    }

    /// A submission the gateway did not accept: counted by status, the first five kept.
    fn refused(&mut self, sub: &Submission) {
        match sub.status {
            Some(status) => *self.counts.refused.entry(status).or_default() += 1,
            None => self.counts.transport_errors += 1,
        }
        if self.sample_errors.len() < 5 {
            self.sample_errors.push(format!(
                "{}: {:?} {}",
                sub.id,
                sub.status,
                sub.error.clone().unwrap_or_default()
            ));
        }
    }

    /// An accepted patch's router events: how often it ended, its last status, the time
    /// between its events, and its cycle on its target. Returns when it ended, and whether
    /// it is lost (never ended).
    fn events(&mut self, sub: &'a Submission, patch_events: &[Event]) -> (Option<f64>, bool) {
        let latency = sub.latency.as_secs_f64() * 1e3;
        self.accept.push(latency);
        let accepted_at = sub.sent_unix_ms + latency;
        let terminal_count = patch_events
            .iter()
            .filter(|e| TERMINAL.contains(&e.status.as_str()))
            .count();
        let ended_at = first_terminal(patch_events);
        let lost = terminal_count == 0;
        match terminal_count {
            0 => self.counts.not_ended += 1,
            1 => self.counts.ended_once += 1,
            _ => self.counts.ended_twice += 1,
        }
        if let Some(last) = patch_events.last() {
            *self.counts.statuses.entry(last.status.clone()).or_default() += 1;
        }
        for pair in patch_events.windows(2) {
            let name = format!("event {} → {}", pair[0].status, pair[1].status);
            let delta = pair[1].at() - pair[0].at();
            match self.pairs.iter_mut().find(|(n, _)| *n == name) {
                Some((_, samples)) => samples.push(delta),
                None => self.pairs.push((name, vec![delta])),
            }
        }
        if let Some(ended) = ended_at {
            self.ended(sub, patch_events, accepted_at, ended);
        }
        (ended_at, lost)
    }

    /// The latencies to a patch's end, and its (queued, leased, ended) cycle on its target.
    fn ended(&mut self, sub: &'a Submission, patch_events: &[Event], accepted_at: f64, ended: f64) {
        self.to_ended.push((ended - accepted_at).max(0.0));
        self.e2e_ended.push((ended - sub.sent_unix_ms).max(0.0));
        self.last_end = self.last_end.max(ended);
        let leased = patch_events
            .iter()
            .find(|e| e.status == "leased")
            .map_or(ended, Event::at);
        let entry = self
            .per_target
            .entry(sub.target.as_str())
            .or_insert((f64::MAX, f64::MIN, 0));
        *entry = (entry.0.min(leased), entry.1.max(ended), entry.2 + 1);
        let queued = patch_events
            .iter()
            .find(|e| e.status == "queued")
            .map_or(leased, Event::at);
        self.cycles
            .entry(sub.target.as_str())
            .or_default()
            .push((queued, leased, ended));
    }

    /// A patch's summary and Slack post (when Slack was watched); returns whether either is
    /// missing.
    fn downstream(
        &mut self,
        sub: &Submission,
        ended_at: Option<f64>,
        summary_at: Option<f64>,
        slack: &SlackPosts,
    ) -> bool {
        let mut lost = false;
        match summary_at {
            Some(at) => {
                self.counts.summaries += 1;
                if let Some(ended) = ended_at {
                    self.to_summary.push((at - ended).max(0.0));
                }
            }
            None => {
                self.counts.summaries_missing += 1;
                lost = true;
            }
        }
        match slack.by_id.get(&sub.id).map(Vec::as_slice) {
            Some([posted]) => {
                self.counts.slack_once += 1;
                self.e2e_slack.push(posted - sub.sent_unix_ms);
                if let Some(ended) = ended_at {
                    self.ended_to_slack.push((posted - ended).max(0.0));
                }
                self.last_slack = self.last_slack.max(*posted);
                if let Some(at) = summary_at {
                    self.to_slack.push((posted - at).max(0.0));
                }
            }
            Some(_) => self.counts.slack_duplicates += 1,
            None => {
                self.counts.slack_missing += 1;
                lost = true;
            }
        }
        lost
    }

    /// Patches per second accepted, ended, posted, and per target.
    fn throughput(&self, outcome: &LoadOutcome, first_send: f64) -> Throughput {
        let target_rates: Vec<f64> = self
            .per_target
            .values()
            .map(|(from, to, n)| rate(n.saturating_sub(1), *from, *to))
            .collect();
        Throughput {
            accepted_per_s: self.counts.accepted as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
            ended_per_s: rate(self.to_ended.len(), first_send, self.last_end),
            slack_per_s: rate(self.e2e_slack.len(), first_send, self.last_slack),
            per_target_min_per_s: if target_rates.is_empty() {
                0.0
            } else {
                target_rates
                    .iter()
                    .copied()
                    .fold(f64::INFINITY, f64::min)
                    .min(f64::MAX)
            },
            per_target_sum_per_s: target_rates.iter().sum(),
        }
    }

    /// The stages of a patch's path, in order; the Slack ones only when Slack was watched.
    fn stages(&mut self, slack: bool) -> Vec<crate::report::Stage> {
        let mut stages = vec![
            stage(
                "submit → 202 (durable accept)",
                std::mem::take(&mut self.accept),
            ),
            stage(
                "202 → ended (router event)",
                std::mem::take(&mut self.to_ended),
            ),
        ];
        if slack {
            stages.push(stage(
                "ended → summary file mtime*",
                std::mem::take(&mut self.to_summary),
            ));
            stages.push(stage(
                "summary file mtime* → Slack post",
                std::mem::take(&mut self.to_slack),
            ));
            stages.push(stage(
                "ended → Slack post",
                std::mem::take(&mut self.ended_to_slack),
            ));
        }
        stages.push(stage(
            "e2e submit → ended",
            std::mem::take(&mut self.e2e_ended),
        ));
        stages.push(stage(
            "hand-off: ended → next leased",
            hand_offs(std::mem::take(&mut self.cycles)),
        ));
        if slack {
            stages.push(stage(
                "e2e submit → Slack post",
                std::mem::take(&mut self.e2e_slack),
            ));
        }
        stages
    }
}

/// The report of a run from its submissions and what was observed of each patch.
pub(super) fn analyse(
    shape: RunShape,
    outcome: &LoadOutcome,
    events: &HashMap<String, Vec<Event>>,
    summaries: &HashMap<String, f64>,
    slack: Option<&SlackPosts>,
    services: Vec<ServiceFigures>,
    (idle_rss_five_kib, idle_anon_five_kib): (u64, u64),
) -> Report {
    let subs = &outcome.submissions;
    let mut tally = Tally::new(Counts {
        submitted: subs.len(),
        late_ticks: outcome.late_ticks,
        ..Counts::default()
    });
    let first_send = subs.iter().map(|s| s.sent_unix_ms).fold(f64::MAX, f64::min);
    for sub in subs {
        if !sub.accepted() {
            tally.refused(sub);
            continue;
        }
        tally.counts.accepted += 1;
        let patch_events = events.get(&sub.id).map(Vec::as_slice).unwrap_or_default();
        let (ended_at, mut lost) = tally.events(sub, patch_events);
        if let Some(slack) = slack {
            let summary_at = summaries.get(&sub.id).copied();
            lost |= tally.downstream(sub, ended_at, summary_at, slack);
        }
        if lost {
            tally.counts.unfinished += 1;
        }
    }
    if let Some(slack) = slack {
        tally.counts.slack_failed_calls = slack.failed;
    }
    let throughput = tally.throughput(outcome, first_send);
    let stages = tally.stages(slack.is_some());
    Report {
        shape,
        submit_seconds: outcome.elapsed.as_secs_f64(),
        throughput,
        stages,
        executor_stages: Vec::new(),
        event_stages: tally
            .pairs
            .into_iter()
            .map(|(name, samples)| stage(&name, samples))
            .collect(),
        counts: tally.counts,
        services,
        idle_rss_five_kib,
        idle_anon_five_kib,
        fsync: crate::floor::FsyncFloor {
            samples: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            overwrite_p50_ms: 0.0,
            overwrite_p99_ms: 0.0,
            path_fsyncs: 0,
            path_floor_ms: 0.0,
            ended_fsyncs: 0,
            ended_floor_ms: 0.0,
        },
        path_fsyncs: Report::path_fsyncs(),
        ended_p50_over_floor: 0.0,
        ended_p99_over_p50: 0.0,
        slack_p50_over_floor: 0.0,
        slack_p99_over_p50: 0.0,
        sample_errors: tally.sample_errors,
        loadavg: [String::new(), String::new()],
    }
}
