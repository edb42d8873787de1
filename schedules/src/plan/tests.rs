//! Conflict-rule tests for [`plan`], including a randomised invariant check.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};

use crate::{PlannedPlay, PlayEvent, Priority, plan};

const N: Priority = Priority::Normal;
const P: Priority = Priority::Priority;
const E: Priority = Priority::Emergency;

/// 2026-11-24 10:00Z plus `minute` minutes.
fn at(minute: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
        + TimeDelta::minutes(minute)
}

fn ev(id: &str, start_minute: i64, minutes: u64, priority: Priority) -> PlayEvent {
    PlayEvent {
        id: id.to_string(),
        schedule_id: id.to_string(),
        programme_id: format!("prog-{id}"),
        starts_at: at(start_minute),
        duration_ms: minutes * 60_000,
        priority,
    }
}

/// The plan as `(id, start minute, end minute, preempted)` for readable asserts.
fn summary(plays: &[PlannedPlay]) -> Vec<(String, i64, i64, bool)> {
    plays
        .iter()
        .map(|p| {
            (
                p.event.id.clone(),
                (p.start - at(0)).num_minutes(),
                (p.end - at(0)).num_minutes(),
                p.preempted,
            )
        })
        .collect()
}

fn row(id: &str, start: i64, end: i64, preempted: bool) -> (String, i64, i64, bool) {
    (id.to_string(), start, end, preempted)
}

#[test]
fn empty_input_empty_plan() {
    assert!(plan(&[]).is_empty());
}

#[test]
fn separate_events_play_as_requested() {
    let events = [ev("a", 0, 5, N), ev("b", 10, 5, E), ev("c", 5, 5, N)];
    assert_eq!(
        summary(&plan(&events)),
        [
            row("a", 0, 5, false),
            row("c", 5, 10, false),
            row("b", 10, 15, false)
        ]
    );
}

#[test]
fn equal_priority_waits_for_the_running_play() {
    let events = [ev("a", 0, 10, N), ev("b", 3, 5, N)];
    assert_eq!(
        summary(&plan(&events)),
        [row("a", 0, 10, false), row("b", 10, 15, false)]
    );
}

#[test]
fn lower_priority_waits_for_the_running_play() {
    let events = [ev("e", 0, 10, E), ev("n", 3, 5, N)];
    assert_eq!(
        summary(&plan(&events)),
        [row("e", 0, 10, false), row("n", 10, 15, false)]
    );
}

#[test]
fn higher_priority_preempts_and_the_cut_play_is_not_resumed() {
    let events = [ev("n", 0, 10, N), ev("e", 5, 2, E)];
    let plays = plan(&events);
    assert_eq!(
        summary(&plays),
        [row("n", 0, 5, true), row("e", 5, 7, false)]
    );
    assert_eq!(plays.iter().filter(|p| p.event.id == "n").count(), 1);
}

#[test]
fn waiting_chain_plays_back_to_back() {
    let events = [ev("c", 4, 5, N), ev("a", 0, 10, N), ev("b", 2, 10, N)];
    assert_eq!(
        summary(&plan(&events)),
        [
            row("a", 0, 10, false),
            row("b", 10, 20, false),
            row("c", 20, 25, false)
        ]
    );
}

#[test]
fn waiting_event_plays_whole_after_a_preemption() {
    // a runs, b waits, e cuts a; b has not started, so it plays in full after e.
    let events = [ev("a", 0, 10, N), ev("b", 5, 10, N), ev("e", 7, 5, E)];
    assert_eq!(
        summary(&plan(&events)),
        [
            row("a", 0, 7, true),
            row("e", 7, 12, false),
            row("b", 12, 22, false)
        ]
    );
}

#[test]
fn waiting_queue_serves_higher_priority_first() {
    // Both wait behind the emergency; the priority one goes first although it
    // was requested later.
    let events = [ev("e", 0, 10, E), ev("n", 1, 5, N), ev("p", 2, 5, P)];
    assert_eq!(
        summary(&plan(&events)),
        [
            row("e", 0, 10, false),
            row("p", 10, 15, false),
            row("n", 15, 20, false)
        ]
    );
}

#[test]
fn waiting_queue_serves_earlier_request_first_on_equal_priority() {
    let events = [ev("e", 0, 10, E), ev("z", 1, 5, N), ev("a", 2, 5, N)];
    assert_eq!(
        summary(&plan(&events)),
        [
            row("e", 0, 10, false),
            row("z", 10, 15, false),
            row("a", 15, 20, false)
        ]
    );
}

#[test]
fn delayed_play_can_itself_be_preempted() {
    // n waited until 10, then p (higher) arrives at 12 and cuts it.
    let events = [ev("a", 0, 10, N), ev("n", 5, 10, N), ev("p", 12, 3, P)];
    assert_eq!(
        summary(&plan(&events)),
        [
            row("a", 0, 10, false),
            row("n", 10, 12, true),
            row("p", 12, 15, false)
        ]
    );
}

#[test]
fn preemption_chain_through_three_levels() {
    let events = [ev("n", 0, 30, N), ev("p", 5, 30, P), ev("e", 10, 5, E)];
    assert_eq!(
        summary(&plan(&events)),
        [
            row("n", 0, 5, true),
            row("p", 5, 10, true),
            row("e", 10, 15, false)
        ]
    );
}

#[test]
fn same_instant_higher_priority_first_lower_waits() {
    let events = [ev("n", 0, 5, N), ev("e", 0, 5, E)];
    assert_eq!(
        summary(&plan(&events)),
        [row("e", 0, 5, false), row("n", 5, 10, false)]
    );
}

#[test]
fn same_instant_same_priority_in_id_order() {
    let events = [ev("b", 0, 5, N), ev("a", 0, 5, N), ev("c", 0, 5, N)];
    assert_eq!(
        summary(&plan(&events)),
        [
            row("a", 0, 5, false),
            row("b", 5, 10, false),
            row("c", 10, 15, false)
        ]
    );
}

#[test]
fn play_ending_when_a_higher_one_arrives_is_not_preempted() {
    let events = [ev("n", 0, 5, N), ev("e", 5, 5, E)];
    assert_eq!(
        summary(&plan(&events)),
        [row("n", 0, 5, false), row("e", 5, 10, false)]
    );
}

#[test]
fn arrival_at_the_end_instant_is_considered_before_the_queue() {
    // At 10 a ends, w has been waiting since 5 and e arrives: e goes first and
    // w is neither started nor cut at 10.
    let events = [ev("a", 0, 10, N), ev("w", 5, 5, N), ev("e", 10, 5, E)];
    assert_eq!(
        summary(&plan(&events)),
        [
            row("a", 0, 10, false),
            row("e", 10, 15, false),
            row("w", 15, 20, false)
        ]
    );
}

#[test]
fn zero_duration_events_are_skipped_and_duplicates_play_once() {
    let events = [
        ev("z", 0, 0, E),
        ev("a", 0, 5, N),
        ev("a", 0, 5, N),
        ev("b", 1, 5, N),
    ];
    assert_eq!(
        summary(&plan(&events)),
        [row("a", 0, 5, false), row("b", 5, 10, false)]
    );
}

#[test]
fn input_order_does_not_matter() {
    let events = vec![
        ev("a", 0, 10, N),
        ev("b", 2, 10, N),
        ev("e", 7, 5, E),
        ev("p", 8, 5, P),
        ev("c", 30, 1, N),
    ];
    let expected = plan(&events);
    let mut reversed = events.clone();
    reversed.reverse();
    assert_eq!(plan(&reversed), expected);
    let mut rotated = events;
    rotated.rotate_left(2);
    assert_eq!(plan(&rotated), expected);
}

#[test]
fn absurd_durations_do_not_panic() {
    let mut huge = ev("huge", 0, 0, N);
    huge.duration_ms = u64::MAX;
    let events = [huge, ev("e", 5, 5, E), ev("n", 6, 5, N)];
    let plays = plan(&events);
    assert_eq!(plays[0].end, at(5));
    assert!(plays[0].preempted);
    assert_eq!(
        summary(&plays[1..]),
        [row("e", 5, 10, false), row("n", 10, 15, false)]
    );
}

/// A tiny deterministic pseudo-random generator (64-bit LCG), so the
/// randomised test needs no extra dependency and always runs the same cases.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

#[test]
fn random_plans_keep_every_invariant() {
    let mut rng = Lcg(0x10a_2026);
    for case in 0..2_000 {
        let count = 1 + rng.next(25) as usize;
        let events: Vec<PlayEvent> = (0..count)
            .map(|i| {
                let mut e = ev(
                    &format!("e{i:02}"),
                    rng.next(120) as i64,
                    0,
                    [N, P, E][rng.next(3) as usize],
                );
                // Seconds-level durations, sometimes zero.
                e.duration_ms = rng.next(20 * 60) * 1_000;
                e.starts_at += TimeDelta::seconds(rng.next(60) as i64);
                e
            })
            .collect();
        check_invariants(case, &events, &plan(&events));
    }
}

fn check_invariants(case: usize, events: &[PlayEvent], plays: &[PlannedPlay]) {
    let ctx = || format!("case {case}: {events:#?}\nplan: {:#?}", summary(plays));
    let by_id: HashMap<&str, &PlayEvent> = events.iter().map(|e| (e.id.as_str(), e)).collect();

    // Every playable event appears exactly once; nothing else appears.
    let expected: HashSet<&str> = events
        .iter()
        .filter(|e| e.duration_ms > 0)
        .map(|e| e.id.as_str())
        .collect();
    let mut seen = HashSet::new();
    for p in plays {
        assert!(seen.insert(p.event.id.as_str()), "twice: {}", ctx());
        assert_eq!(by_id[p.event.id.as_str()], &p.event, "{}", ctx());
    }
    assert_eq!(seen, expected, "{}", ctx());

    for (i, p) in plays.iter().enumerate() {
        // Never early, never empty, never longer than the programme.
        assert!(p.start >= p.event.starts_at, "early: {}", ctx());
        assert!(p.end > p.start, "empty play: {}", ctx());
        let natural = p.start + TimeDelta::milliseconds(p.event.duration_ms as i64);
        if p.preempted {
            assert!(p.end < natural, "{}", ctx());
            // Cut exactly by a higher-priority play starting then.
            let next = plays.get(i + 1).unwrap_or_else(|| panic!("{}", ctx()));
            assert_eq!(next.start, p.end, "{}", ctx());
            assert!(next.event.priority > p.event.priority, "{}", ctx());
            assert_eq!(next.start, next.event.starts_at, "{}", ctx());
        } else {
            assert_eq!(p.end, natural, "{}", ctx());
        }
        if i > 0 {
            let prev = &plays[i - 1];
            // No overlap, sorted.
            assert!(prev.end <= p.start, "overlap: {}", ctx());
            // Delayed only by the play just before it (no idle waiting).
            if p.start > p.event.starts_at {
                assert_eq!(p.start, prev.end, "idle while waiting: {}", ctx());
            }
        } else {
            assert_eq!(p.start, p.event.starts_at, "{}", ctx());
        }
    }

    // Nothing that was waiting when a play started outranks it (rule 5):
    // every event requested at or before a delayed play's start that plays
    // later must not have a higher priority.
    for (i, p) in plays.iter().enumerate() {
        for later in &plays[i + 1..] {
            if later.event.starts_at <= p.start {
                assert!(
                    later.event.priority <= p.event.priority,
                    "queue order: {}",
                    ctx()
                );
            }
        }
    }
}
