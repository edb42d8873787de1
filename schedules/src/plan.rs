//! The conflict rule: turning play events (possibly overlapping, in any
//! order) into a plan where at most one programme plays at a time. The
//! controller and every receiver use this same function, so both agree on
//! what airs.
//!
//! The rule, for one loudspeaker:
//! 1. Events are taken in order of `(starts_at, priority descending, id)`.
//!    Events with a zero duration are skipped; events with the same `id`
//!    (the same occurrence sent twice) play once.
//! 2. An event arriving while nothing plays starts at its own `starts_at`.
//! 3. An event arriving while a **lower**-priority play is running pre-empts
//!    it: the running play is cut (`end` = the new start, `preempted` = true)
//!    and is **not** resumed later.
//! 4. An event arriving while an **equal- or higher**-priority play is
//!    running waits; when the running play ends, the next one starts at that
//!    very instant (the loudspeaker is never idle while something waits).
//! 5. Among waiting events the next to start is the one with the highest
//!    priority, then the earliest `starts_at`, then the smallest `id`. A
//!    waiting event is never dropped, only delayed; once started it can
//!    itself be pre-empted by a later, higher-priority arrival (rule 3).
//! 6. At one instant, arrivals are taken in before anything waiting is
//!    started, so a play never starts and gets cut at the same instant, and
//!    a play ending exactly when another arrives is not pre-empted.
//!
//! Consequences: a plan never overlaps; a play's `start` is never before its
//! event's `starts_at`; a play is shorter than its programme only when a
//! higher-priority event cut it.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{PlayEvent, Priority};

/// One entry of a plan: an event and when it actually plays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedPlay {
    /// The event this play comes from (its `starts_at` is the requested
    /// instant, which `start` may be later than).
    pub event: PlayEvent,
    /// When playing starts: the event's `starts_at`, or later if it had to
    /// wait for an equal- or higher-priority play to end.
    pub start: DateTime<Utc>,
    /// When playing stops: `start` + the programme's duration, or earlier if
    /// a higher-priority event cut it.
    pub end: DateTime<Utc>,
    /// True if a higher-priority event cut this play before its natural end.
    pub preempted: bool,
}

/// Waiting-queue order (rule 5): highest priority, then earliest requested
/// start, then smallest id; the index into the sorted events breaks any
/// remaining tie and finds the event.
type QueueKey<'a> = (Reverse<Priority>, DateTime<Utc>, &'a str, usize);

/// Turns play events (any order) into a non-overlapping plan, sorted by
/// `start`, following the rule in this module's documentation. Pure.
pub fn plan(events: &[PlayEvent]) -> Vec<PlannedPlay> {
    let mut sorted: Vec<&PlayEvent> = events.iter().filter(|e| e.duration_ms > 0).collect();
    sorted.sort_by(|a, b| {
        (a.starts_at, Reverse(a.priority), &a.id).cmp(&(b.starts_at, Reverse(b.priority), &b.id))
    });
    let mut seen = HashSet::new();
    sorted.retain(|e| seen.insert(e.id.as_str()));

    let mut out: Vec<PlannedPlay> = Vec::with_capacity(sorted.len());
    let mut waiting: BTreeSet<QueueKey> = BTreeSet::new();
    // Index in `out` of the play running now, if any.
    let mut current: Option<usize> = None;
    let mut next = 0;

    loop {
        let next_arrival = sorted.get(next).map(|e| e.starts_at);
        match current {
            // The running play ends before (or exactly when) the next event arrives.
            Some(running) if next_arrival.is_none_or(|at| out[running].end <= at) => {
                let now = out[running].end;
                current = None;
                while let Some(event) = sorted.get(next).filter(|e| e.starts_at <= now) {
                    waiting.insert(queue_key(event, next));
                    next += 1;
                }
                if let Some(key) = waiting.pop_first() {
                    current = Some(start_play(&mut out, sorted[key.3], now));
                }
            }
            _ => {
                // Nothing runs past the next arrival: take in every event of that instant.
                let Some(now) = next_arrival else { break };
                while let Some(event) = sorted.get(next).filter(|e| e.starts_at == now) {
                    waiting.insert(queue_key(event, next));
                    next += 1;
                }
                let best = waiting.first().copied().expect("just inserted");
                let best_priority = best.0.0;
                match current {
                    None => {
                        waiting.pop_first();
                        current = Some(start_play(&mut out, sorted[best.3], now));
                    }
                    Some(running) if out[running].event.priority < best_priority => {
                        let cut = &mut out[running];
                        tracing::debug!(
                            cut = %cut.event.id,
                            by = %sorted[best.3].id,
                            at = %now,
                            "higher priority pre-empts running play"
                        );
                        cut.end = now;
                        cut.preempted = true;
                        waiting.pop_first();
                        current = Some(start_play(&mut out, sorted[best.3], now));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    out
}

/// The waiting-queue key of `event`, the `index`-th sorted event.
fn queue_key(event: &PlayEvent, index: usize) -> QueueKey<'_> {
    (
        Reverse(event.priority),
        event.starts_at,
        event.id.as_str(),
        index,
    )
}

/// Appends a play of `event` starting at `start` and returns its index.
fn start_play(out: &mut Vec<PlannedPlay>, event: &PlayEvent, start: DateTime<Utc>) -> usize {
    if start > event.starts_at {
        tracing::debug!(event = %event.id, requested = %event.starts_at, %start, "play delayed by a running play");
    }
    let end = end_after(start, event.duration_ms);
    out.push(PlannedPlay {
        event: event.clone(),
        start,
        end,
        preempted: false,
    });
    out.len() - 1
}

/// `start` + `duration_ms`, saturating at the largest representable instant
/// (a forged duration must not panic a receiver).
pub(crate) fn end_after(start: DateTime<Utc>, duration_ms: u64) -> DateTime<Utc> {
    i64::try_from(duration_ms)
        .ok()
        .and_then(chrono::TimeDelta::try_milliseconds)
        .and_then(|d| start.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests;
