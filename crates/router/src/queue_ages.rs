//! How long the oldest row of a queue (a target's queued patches, an outbox's undelivered
//! rows) has waited, in rule time: a wall-clock jump of an hour neither makes a fresh queue
//! look an hour stale (flooding `queue_stale`) nor a stale one look fresh (silencing it).
//!
//! The rows carry their creation time in wall time (shown to people), which a jump shifts.
//! So the router measures a queue's age itself: from the monotonic instant this process first
//! saw its oldest row (known by its order in the queue, `seq` or row id, which no clock moves)
//! as the oldest. At that first sight the row is credited with the wait its wall time shows:
//! the shorter of wall time now and rule time now (the wall clock as read at start, advanced
//! monotonically) minus its creation time. A jump between its creation and now inflates one
//! of the two, not both, so a jump never makes a row older than it is; at worst a row first
//! seen just after a jump counts from then. That wait is clamped to 0 and to the longest the
//! row can have waited unseen:
//!
//! - the previous oldest row of the same queue came before it, so it waited no longer than
//!   that one has;
//! - a row that was not the oldest (or an empty queue) at the previous sweep, and comes before
//!   the row that was, was not queued then: no longer than since that sweep;
//! - at the first sweep of the process nothing bounds it (not the uptime): the wall clock is
//!   trusted as read at start, exactly as the rule clock itself does ([`ghost_runtime::clock`]).
//!   A router restarted during an outage keeps the ages (and a firing `queue_stale`) it had,
//!   rather than starting every queue at 0 and resolving the alert; a jump made while it was
//!   down is taken as the truth, as it is for leases.

use std::collections::HashMap;

/// The oldest row of one queue: its position (`seq`, row id: increasing, never reused) and
/// its creation time in wall ms (0: unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oldest {
    /// Position in the queue's order.
    pub order: i64,
    /// Wall time it was created (0: not recorded).
    pub created_wall_ms: i64,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    order: i64,
    /// Rule time since which the row counts as waiting.
    since_rule_ms: i64,
}

/// Ages of queues by key, measured in rule time. One sweep calls [`QueueAges::sweep`] once
/// with every queue it knows about.
#[derive(Debug, Default)]
pub struct QueueAges {
    seen: HashMap<String, Seen>,
    last_sweep_rule_ms: Option<i64>,
}

impl QueueAges {
    /// The age in ms of each queue's oldest row (0 for an empty queue), given the queues at
    /// rule time `rule_now` and wall time `wall_now`. Queues absent from `queues` are
    /// forgotten (they count as empty).
    pub fn sweep(
        &mut self,
        queues: &[(String, Option<Oldest>)],
        rule_now: i64,
        wall_now: i64,
    ) -> HashMap<String, i64> {
        let mut ages = HashMap::with_capacity(queues.len());
        let mut seen = HashMap::with_capacity(queues.len());
        for (key, oldest) in queues {
            let Some(oldest) = oldest else {
                ages.insert(key.clone(), 0);
                continue;
            };
            let since = match self.seen.get(key) {
                Some(before) if before.order == oldest.order => before.since_rule_ms,
                before => {
                    let bound = match (before, self.last_sweep_rule_ms) {
                        // Queued behind the previous oldest: waited no longer than it.
                        (Some(before), _) if before.order < oldest.order => {
                            Some(rule_now - before.since_rule_ms)
                        }
                        // Not in the queue (or not its oldest) at the previous sweep.
                        (_, Some(last)) => Some(rule_now - last),
                        // The process's first sweep: the wall clock is read once.
                        (_, None) => None,
                    };
                    // A jump between its creation and now inflates one of these, not both.
                    let shown = if oldest.created_wall_ms > 0 {
                        (wall_now - oldest.created_wall_ms)
                            .min(rule_now - oldest.created_wall_ms)
                            .max(0)
                    } else {
                        0
                    };
                    let age = bound.map_or(shown, |bound| shown.min(bound.max(0)));
                    rule_now - age
                }
            };
            seen.insert(
                key.clone(),
                Seen {
                    order: oldest.order,
                    since_rule_ms: since,
                },
            );
            ages.insert(key.clone(), (rule_now - since).max(0));
        }
        self.seen = seen;
        self.last_sweep_rule_ms = Some(rule_now);
        ages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    /// Times in the tests are offsets from this (a real Unix time: 0 means unknown).
    const T0: i64 = 1_700_000_000_000;

    fn one(order: i64, created: i64) -> Vec<(String, Option<Oldest>)> {
        vec![(
            "MAIN".to_owned(),
            Some(Oldest {
                order,
                created_wall_ms: T0 + created,
            }),
        )]
    }

    fn empty() -> Vec<(String, Option<Oldest>)> {
        vec![("MAIN".to_owned(), None)]
    }

    /// The age of MAIN at rule time `rule` and wall time `wall` (offsets from T0).
    fn age(ages: &mut QueueAges, queues: &[(String, Option<Oldest>)], rule: i64, wall: i64) -> i64 {
        ages.sweep(queues, T0 + rule, T0 + wall)["MAIN"]
    }

    #[test]
    fn the_first_sweep_trusts_the_wall_clock_once_and_then_counts_rule_time() {
        let mut ages = QueueAges::default();
        assert_eq!(age(&mut ages, &one(1, 1_000), 10_000, 10_000), 9_000);
        // The wall clock jumps an hour forward, then an hour back: the age follows rule time.
        assert_eq!(
            age(&mut ages, &one(1, 1_000), 12_000, 12_000 + HOUR),
            11_000
        );
        assert_eq!(
            age(&mut ages, &one(1, 1_000), 14_000, 14_000 - HOUR),
            13_000
        );
    }

    #[test]
    fn a_jump_between_the_submit_and_the_first_sweep_is_not_counted() {
        let mut ages = QueueAges::default();
        assert_eq!(age(&mut ages, &one(1, 9_900), 10_000, 10_000 + HOUR), 100);
        let mut ages = QueueAges::default();
        assert_eq!(age(&mut ages, &one(1, 9_900), 10_000, 10_000 - HOUR), 0);
        assert_eq!(age(&mut ages, &one(1, 9_900), 14_000, 14_000 - HOUR), 4_000);
    }

    #[test]
    fn a_patch_queued_after_a_forward_jump_is_not_an_hour_old() {
        let mut ages = QueueAges::default();
        assert_eq!(age(&mut ages, &empty(), 10_000, 10_000), 0);
        // Submitted at wall 10_500 + 1 h (the jump came first), first seen at rule 11_000:
        // counts from then (half a sweep less than it waited, never an hour more).
        assert_eq!(
            age(&mut ages, &one(7, 10_500 + HOUR), 11_000, 11_000 + HOUR),
            0
        );
        assert_eq!(
            age(&mut ages, &one(7, 10_500 + HOUR), 15_000, 15_000 + HOUR),
            4_000
        );
        // Submitted just before the jump, seen after it.
        let mut ages = QueueAges::default();
        assert_eq!(age(&mut ages, &empty(), 10_000, 10_000), 0);
        assert_eq!(age(&mut ages, &one(7, 10_500), 11_000, 11_000 + HOUR), 500);
    }

    #[test]
    fn a_backward_jump_neither_hides_the_oldest_patch_nor_makes_a_new_one_negative() {
        let mut ages = QueueAges::default();
        assert_eq!(age(&mut ages, &one(1, 500), 10_000, 10_000), 9_500);
        // The oldest is the oldest by order, whatever the wall times of later patches say.
        assert_eq!(age(&mut ages, &one(1, 500), 20_000, 20_000 - HOUR), 19_500);
        // A patch queued after the jump (its wall time an hour back) is not an hour old.
        let mut fresh = QueueAges::default();
        assert_eq!(age(&mut fresh, &empty(), 10_000, 10_000), 0);
        assert_eq!(
            age(&mut fresh, &one(2, 10_500 - HOUR), 11_000, 11_000 - HOUR),
            500
        );
    }

    #[test]
    fn the_next_oldest_waited_no_longer_than_the_one_before_it() {
        let mut ages = QueueAges::default();
        assert_eq!(age(&mut ages, &one(1, 1_000), 10_000, 10_000), 9_000);
        // Patch 1 is leased; patch 2's wall time, read after a forward jump, claims more.
        assert_eq!(
            age(&mut ages, &one(2, 2_000), 12_000, 12_000 + 2 * HOUR),
            10_000
        );
        assert_eq!(
            age(&mut ages, &one(2, 2_000), 13_000, 13_000 + 2 * HOUR),
            11_000
        );
        // Its wall time is honest and younger: it keeps it.
        let mut ages = QueueAges::default();
        age(&mut ages, &one(1, 1_000), 10_000, 10_000);
        assert_eq!(age(&mut ages, &one(2, 5_000), 12_000, 12_000), 7_000);
    }

    #[test]
    fn a_requeued_older_patch_counts_from_the_last_sweep_at_most() {
        let mut ages = QueueAges::default();
        assert_eq!(age(&mut ages, &one(5, 5_000), 10_000, 10_000 + HOUR), 5_000);
        // Patch 3 (leased before, created long ago) is queued again.
        assert_eq!(age(&mut ages, &one(3, 1_000), 12_000, 12_000 + HOUR), 2_000);
    }

    #[test]
    fn an_empty_queue_is_zero_and_forgotten() {
        let mut ages = QueueAges::default();
        age(&mut ages, &one(1, 1_000), 10_000, 10_000);
        assert_eq!(age(&mut ages, &empty(), 11_000, 11_000), 0);
        assert!(ages.seen.is_empty());
    }
}
