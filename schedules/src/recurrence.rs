//! Recurrence: turning a local start, a time zone and an optional RFC 5545
//! RRULE into the ordered list of instants a programme must start.
//!
//! The RRULE is evaluated by the `rrule` crate with a DTSTART that carries the
//! schedule's TZID, so repetitions keep the local wall-clock time: "every
//! Tuesday and Friday at 06:30" is 06:30 in the zone on every date, whatever
//! its UTC offset that day.
//!
//! Rules of the road:
//! - The rule is one RRULE value, with or without a leading `RRULE:`. DTSTART
//!   is always built from the schedule's `start` and `timezone`; a rule that
//!   contains DTSTART, line breaks (RDATE, EXDATE, more rules) or any other
//!   property is rejected. `FREQ=SECONDLY` is rejected outright.
//! - `start` is the first candidate. As in python-dateutil (and the `rrule`
//!   crate), it is itself an occurrence only if it matches the rule: a start on
//!   a Monday with `BYDAY=TU,FR` first plays on the Tuesday.
//! - Several times a day come from BYHOUR/BYMINUTE, which combine as a cross
//!   product: `BYHOUR=6,17;BYMINUTE=30` gives 06:30 and 17:30, while
//!   `BYHOUR=6,17;BYMINUTE=30,0` gives 06:00, 06:30, 17:00 and 17:30. For
//!   06:30 *and* 17:00 use two schedules, or pick positions in the day's sorted
//!   set with BYSETPOS: `FREQ=DAILY;BYDAY=TU,FR;BYHOUR=6,17;BYMINUTE=0,30;BYSETPOS=2,3`.
//! - Hours, minutes and seconds not given by BYxxx come from `start`; any
//!   sub-second part of `start` is ignored.
//! - `UNTIL` may be UTC (`20261231T235959Z`, as RFC 5545 requires with a
//!   TZID start), local wall time in the schedule's zone (`20261231T235959`),
//!   or a date (`20261231`, meaning up to the end of that local day).
//! - Daylight saving: a `start` inside a spring-forward gap is an error; an
//!   ambiguous `start` means the earlier instant. Later repetitions follow RFC
//!   5545 §3.3.5: an ambiguous local time is the first of the two instants, a
//!   non-existent one is read with the offset before the gap (02:30 on the
//!   spring-forward day in Berlin plays at 03:30 CEST).
//! - Work is capped: at most [`MAX_OCCURRENCES`] per call, windows of at most
//!   [`MAX_HORIZON_DAYS`], at most [`MAX_SCANNED_OCCURRENCES`] repetitions
//!   stepped through from the start, at most [`MAX_CANDIDATES_PER_PERIOD`]
//!   start times in one period of the rule (checked when the rule is parsed).
//!   Going over is an error, never a silent cut.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use chrono::{
    DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use rrule::{Frequency, RRule, RRuleSet, Unvalidated};

use crate::ScheduleError;
use crate::timezone::resolve_local;

/// Most occurrences one call may return (one expansion, one window).
pub const MAX_OCCURRENCES: usize = 10_000;

/// Longest window, in days, one expansion may cover.
pub const MAX_HORIZON_DAYS: i64 = 366;

/// Most repetitions the rule may be stepped through (from its start up to
/// the end of the window) in one call. Bounds the CPU time a dense rule that
/// started long ago can cost, e.g. `FREQ=MINUTELY` started years before
/// (a daily rule may still start 500 years back, an hourly one 20). At
/// 1,000,000 the fuzzer found a minutely rule from 2023 taking seconds per
/// call (`fuzz/corpus/schedule/regress-minutely-since-2023`).
pub const MAX_SCANNED_OCCURRENCES: usize = 200_000;

/// Most start times one period of a rule (a year for `FREQ=YEARLY`, a
/// month, a week, a day, an hour, a minute) may hold. The recurrence engine
/// materialises a whole period before yielding its first instant, so without
/// this cap `FREQ=YEARLY` with every month, day, hour, minute and second
/// would allocate 31.6 million instants (1.5 GB, seconds of CPU) per call.
pub const MAX_CANDIDATES_PER_PERIOD: u64 = 10_000;

/// Earliest year a schedule may start in.
pub const MIN_START_YEAR: i32 = 1970;

/// Latest year a schedule may start in.
pub const MAX_START_YEAR: i32 = 9999;

/// How far out of order the recurrence engine can yield instants: within one
/// day, times shifted out of a daylight-saving gap may come after later
/// times. Iteration goes this far past the point where it could stop, and
/// results are sorted and de-duplicated.
const REORDER_SLACK: TimeDelta = TimeDelta::days(1);

/// A schedule's recurrence, parsed, validated and anchored in its time zone.
#[derive(Debug, Clone)]
pub(crate) enum Recurrence {
    /// No RRULE: a single play at this instant.
    Once(DateTime<Utc>),
    /// An RRULE anchored at a DTSTART with TZID; boxed because it is large.
    Rule(Box<RRuleSet>),
}

impl Recurrence {
    /// Parses and validates the recurrence of a schedule starting at local
    /// wall time `start` in `tz`.
    pub(crate) fn new(
        start: NaiveDateTime,
        tz: Tz,
        rrule: Option<&str>,
    ) -> Result<Self, ScheduleError> {
        if !(MIN_START_YEAR..=MAX_START_YEAR).contains(&start.year()) {
            return Err(ScheduleError::StartOutOfRange {
                start,
                min_year: MIN_START_YEAR,
                max_year: MAX_START_YEAR,
            });
        }
        let start = start.with_nanosecond(0).unwrap_or(start);
        let dt_start =
            resolve_local(tz, start).ok_or_else(|| ScheduleError::NonexistentLocalTime {
                start,
                timezone: tz.name().to_string(),
            })?;
        let Some(rule) = rrule else {
            return Ok(Recurrence::Once(dt_start.with_timezone(&Utc)));
        };
        let body = normalize_rrule(rule)?;
        let anchored = anchor_until(&body, tz).map_err(|reason| ScheduleError::InvalidRrule {
            rule: rule.to_string(),
            reason,
        })?;
        let invalid = |e: rrule::RRuleError| ScheduleError::InvalidRrule {
            rule: rule.to_string(),
            reason: e.to_string(),
        };
        let parsed = anchored.parse::<RRule<Unvalidated>>().map_err(invalid)?;
        let candidates = candidates_per_period(&parsed);
        if candidates > MAX_CANDIDATES_PER_PERIOD {
            return Err(ScheduleError::InvalidRrule {
                rule: rule.to_string(),
                reason: format!(
                    "one {} period of the rule holds up to {candidates} start times \
                     (limit {MAX_CANDIDATES_PER_PERIOD}); use fewer BYMONTH/BYxxxDAY/BYHOUR/\
                     BYMINUTE/BYSECOND values or a shorter FREQ",
                    parsed.get_freq()
                ),
            });
        }
        let set = parsed
            .build(dt_start.with_timezone(&rrule::Tz::Tz(tz)))
            .map_err(invalid)?
            .limit();
        Ok(Recurrence::Rule(Box::new(set)))
    }

    /// Occurrence instants in `[from, to)`, sorted, without duplicates.
    pub(crate) fn between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, ScheduleError> {
        if to < from {
            return Err(ScheduleError::InvalidWindow { from, to });
        }
        let span = to - from;
        if span > TimeDelta::days(MAX_HORIZON_DAYS) {
            let whole_days = span.num_days();
            let requested_days = if span > TimeDelta::days(whole_days) {
                whole_days + 1
            } else {
                whole_days
            };
            return Err(ScheduleError::HorizonTooLong {
                requested_days,
                max_days: MAX_HORIZON_DAYS,
            });
        }
        let stop = to.checked_add_signed(REORDER_SLACK).unwrap_or(to);
        let mut found = BTreeSet::new();
        self.scan(|at| {
            if at >= stop {
                return Ok(ControlFlow::Break(()));
            }
            if from <= at && at < to {
                found.insert(at);
                if found.len() > MAX_OCCURRENCES {
                    return Err(ScheduleError::TooManyOccurrences {
                        limit: MAX_OCCURRENCES,
                    });
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(found.into_iter().collect())
    }

    /// The first `n` occurrence instants strictly after `after`, sorted.
    pub(crate) fn next(
        &self,
        after: DateTime<Utc>,
        n: usize,
    ) -> Result<Vec<DateTime<Utc>>, ScheduleError> {
        if n > MAX_OCCURRENCES {
            return Err(ScheduleError::TooManyOccurrences {
                limit: MAX_OCCURRENCES,
            });
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut found = BTreeSet::new();
        let mut stop: Option<DateTime<Utc>> = None;
        self.scan(|at| {
            if stop.is_some_and(|stop| at >= stop) {
                return Ok(ControlFlow::Break(()));
            }
            if at > after {
                found.insert(at);
                if stop.is_none() && found.len() >= n {
                    stop = Some(at.checked_add_signed(REORDER_SLACK).unwrap_or(at));
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(found.into_iter().take(n).collect())
    }

    /// Feeds every occurrence, in the engine's order, to `visit` until it
    /// breaks, the recurrence ends, or the scan cap is hit (an error).
    fn scan(
        &self,
        mut visit: impl FnMut(DateTime<Utc>) -> Result<ControlFlow<()>, ScheduleError>,
    ) -> Result<(), ScheduleError> {
        match self {
            Recurrence::Once(at) => {
                // A single occurrence: whether the visitor wants more is moot.
                let _ = visit(*at)?;
                Ok(())
            }
            Recurrence::Rule(set) => {
                for (scanned, at) in set.as_ref().into_iter().enumerate() {
                    if scanned >= MAX_SCANNED_OCCURRENCES {
                        return Err(ScheduleError::TooMuchToCompute {
                            limit: MAX_SCANNED_OCCURRENCES,
                        });
                    }
                    if visit(at.with_timezone(&Utc))?.is_break() {
                        break;
                    }
                }
                Ok(())
            }
        }
    }
}

/// An upper bound of the start times one period of `rule` expands to: the
/// days the period can hold (after BYMONTH) times the times of day (the
/// BYHOUR × BYMINUTE × BYSECOND cross product, for the units finer than the
/// frequency; a missing list counts as one value, taken from the start).
fn candidates_per_period(rule: &RRule<Unvalidated>) -> u64 {
    let count = |n: usize| (n as u64).max(1);
    let hours = count(rule.get_by_hour().len());
    let minutes = count(rule.get_by_minute().len());
    let seconds = count(rule.get_by_second().len());
    let days = match rule.get_freq() {
        Frequency::Yearly => {
            let picks_days = !rule.get_by_month_day().is_empty()
                || !rule.get_by_year_day().is_empty()
                || !rule.get_by_week_no().is_empty()
                || !rule.get_by_weekday().is_empty();
            match rule.get_by_month().len() {
                // Neither months nor days: the start's date, once a year.
                0 if !picks_days => 1,
                0 => 366,
                months => (31 * months as u64).min(366),
            }
        }
        Frequency::Monthly => 31,
        Frequency::Weekly => 7,
        Frequency::Daily | Frequency::Hourly | Frequency::Minutely | Frequency::Secondly => 1,
    };
    let times = match rule.get_freq() {
        Frequency::Hourly => minutes * seconds,
        Frequency::Minutely => seconds,
        Frequency::Secondly => 1,
        _ => hours * minutes * seconds,
    };
    days * times
}

/// Checks a user's RRULE text and returns the bare value (no `RRULE:`
/// prefix, no surrounding spaces). Does not need the time zone, so it can be
/// used to store the rule in its canonical form.
pub(crate) fn normalize_rrule(rule: &str) -> Result<String, ScheduleError> {
    if rule.contains(['\n', '\r']) {
        return Err(ScheduleError::RruleMultiline {
            rule: rule.to_string(),
        });
    }
    let trimmed = rule.trim();
    let body = match trimmed.get(..6) {
        Some(prefix) if prefix.eq_ignore_ascii_case("RRULE:") => trimmed[6..].trim(),
        _ => trimmed,
    };
    if body.to_ascii_uppercase().contains("DTSTART") {
        return Err(ScheduleError::RruleHasDtstart {
            rule: rule.to_string(),
        });
    }
    let invalid = |reason: &str| ScheduleError::InvalidRrule {
        rule: rule.to_string(),
        reason: reason.to_string(),
    };
    if body.is_empty() {
        return Err(invalid("the rule is empty"));
    }
    // RFC 5545 rule values are ASCII. The `rrule` crate slices weekday
    // names by bytes and panics inside a multi-byte character
    // (`BYDAY=thứ`), so anything else is refused before it gets there.
    if !body.is_ascii() {
        return Err(invalid(
            "the rule may contain only ASCII characters (RFC 5545)",
        ));
    }
    if body.contains(':') {
        return Err(invalid(
            "only an RRULE value is accepted, not other iCalendar properties",
        ));
    }
    for part in body.split(';') {
        if let Some((key, value)) = part.split_once('=')
            && key.trim().eq_ignore_ascii_case("FREQ")
            && value.trim().eq_ignore_ascii_case("SECONDLY")
        {
            return Err(ScheduleError::RruleTooFrequent {
                rule: rule.to_string(),
            });
        }
    }
    Ok(body.to_string())
}

/// Rewrites an `UNTIL` given as local time or as a date into the UTC form
/// RFC 5545 requires next to a DTSTART with TZID. Without this, the `rrule`
/// crate would read a floating UNTIL in the machine's own zone.
fn anchor_until(body: &str, tz: Tz) -> Result<String, String> {
    let mut parts = Vec::new();
    for part in body.split(';') {
        match part.split_once('=') {
            Some((key, value)) if key.trim().eq_ignore_ascii_case("UNTIL") => {
                let value = value.trim();
                if value.ends_with(['Z', 'z']) {
                    parts.push(format!("UNTIL={}", value.to_ascii_uppercase()));
                    continue;
                }
                let local = if let Ok(date) = NaiveDate::parse_from_str(value, "%Y%m%d") {
                    date.and_time(NaiveTime::from_hms_opt(23, 59, 59).expect("valid time"))
                } else {
                    NaiveDateTime::parse_from_str(value, "%Y%m%dT%H%M%S").map_err(|_| {
                        format!(
                            "UNTIL {value:?} must look like 20261231, 20261231T235959 or 20261231T235959Z"
                        )
                    })?
                };
                // The later instant of an ambiguous time, so UNTIL covers both.
                let until = tz
                    .from_local_datetime(&local)
                    .latest()
                    .ok_or_else(|| format!("UNTIL {value:?} does not exist in {}", tz.name()))?;
                parts.push(format!(
                    "UNTIL={}",
                    until.with_timezone(&Utc).format("%Y%m%dT%H%M%SZ")
                ));
            }
            _ => parts.push(part.to_string()),
        }
    }
    Ok(parts.join(";"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtstart_carries_the_tzid_and_until_becomes_utc() {
        let start =
            NaiveDateTime::parse_from_str("2026-11-24T06:30:00", "%Y-%m-%dT%H:%M:%S").unwrap();
        let recurrence = Recurrence::new(
            start,
            chrono_tz::Asia::Ho_Chi_Minh,
            Some("RRULE:FREQ=WEEKLY;BYDAY=TU,FR;UNTIL=20261231"),
        )
        .unwrap();
        let Recurrence::Rule(set) = recurrence else {
            panic!("expected a rule")
        };
        let text = set.to_string();
        assert!(
            text.starts_with("DTSTART;TZID=Asia/Ho_Chi_Minh:20261124T063000\n"),
            "{text}"
        );
        // End of 2026-12-31 local (UTC+7) is 16:59:59Z.
        assert!(text.contains("UNTIL=20261231T165959Z"), "{text}");
    }

    #[test]
    fn normalize_strips_prefix_and_spaces() {
        assert_eq!(
            normalize_rrule("  RRULE:FREQ=DAILY;COUNT=2 ").unwrap(),
            "FREQ=DAILY;COUNT=2"
        );
        assert_eq!(normalize_rrule("FREQ=DAILY").unwrap(), "FREQ=DAILY");
    }
}
