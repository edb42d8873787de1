//! Schedules as the API accepts them: `ScheduleSpec` JSON (the body of
//! `POST /api/v1/schedules`) or, for inputs that are not JSON, text lines
//! `RRULE\nSTART\nTIMEZONE` (so the fuzzer can mutate rules directly).
//! Checked, then expanded the way the controller does (next occurrences for
//! the answer, 7 days of events for distribution, 14 days for the preview):
//! never a panic, never unbounded time or memory (libFuzzer's `-timeout`
//! and `-rss_limit_mb` catch those), and results sorted, unique, inside
//! their window and under the crate's caps.
#![no_main]

use chrono::{DateTime, Duration, Utc};
use libfuzzer_sys::fuzz_target;
use loa_schedules::{MAX_OCCURRENCES, ScheduleSpec, Targets};

fn spec(data: &[u8]) -> Option<ScheduleSpec> {
    if let Ok(spec) = serde_json::from_slice::<ScheduleSpec>(data) {
        return Some(spec);
    }
    let text = std::str::from_utf8(data).ok()?;
    let mut lines = text.splitn(3, '\n');
    let rrule = lines.next().map(str::to_string);
    let start = lines.next().unwrap_or("2026-11-24T06:30:00").to_string();
    let timezone = lines.next().map(str::to_string);
    Some(ScheduleSpec {
        programme_id: "ban-tin".into(),
        targets: Targets {
            zones: vec!["thon-1".into()],
            receivers: Vec::new(),
        },
        start,
        timezone,
        rrule,
        priority: None,
    })
}

fn check_sorted(instants: &[DateTime<Utc>]) {
    assert!(
        instants.windows(2).all(|w| w[0] < w[1]),
        "occurrences not sorted and unique"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some(spec) = spec(data) else { return };
    let Ok((schedule, _targets)) = spec.into_schedule("s-1".into()) else {
        return;
    };
    let now: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().expect("valid instant");

    if let Ok(next) = schedule.next_occurrences(now, 10) {
        assert!(next.len() <= 10);
        check_sorted(&next);
        assert!(next.iter().all(|at| *at > now), "occurrence not after now");
    }

    let duration_ms = 90_000;
    let from = now - Duration::milliseconds(duration_ms);
    let to = now + Duration::days(7);
    if let Ok(events) = schedule.expand(duration_ms as u64, from, to) {
        assert!(events.len() <= MAX_OCCURRENCES);
        let starts: Vec<_> = events.iter().map(|e| e.starts_at).collect();
        check_sorted(&starts);
        assert!(
            starts.iter().all(|at| from <= *at && *at < to),
            "event outside its window"
        );
    }

    if let Ok(occurrences) = schedule.occurrences(now, now + Duration::days(14)) {
        assert!(occurrences.len() <= MAX_OCCURRENCES);
        check_sorted(&occurrences);
    }
});
