//! The schedule as a user writes it: the JSON body of `POST /api/v1/schedules`
//! and of the example files in `schedules/examples/`. [`ScheduleSpec::into_schedule`]
//! checks it and turns it into a [`Schedule`] plus its targets.
//!
//! ```json
//! {"programme_id": "ban-tin-chuyen-doi-so",
//!  "targets": {"zones": ["thon-1", "thon-2"], "receivers": []},
//!  "start": "2026-11-24T06:30:00", "timezone": "Asia/Ho_Chi_Minh",
//!  "rrule": "FREQ=WEEKLY;BYDAY=TU,FR", "priority": "normal"}
//! ```

use chrono::{NaiveDateTime, Timelike};
use serde::{Deserialize, Serialize};

use crate::recurrence::normalize_rrule;
use crate::{DEFAULT_TIMEZONE, Priority, Schedule, ScheduleError, parse_timezone};

/// A schedule as sent by a user (API body, example file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// The programme to play.
    pub programme_id: String,
    /// Where to play it: zones (villages) and/or single receivers.
    pub targets: Targets,
    /// Local wall time of the first (candidate) play, `2026-11-24T06:30:00`
    /// or `2026-11-24T06:30`; no offset, the zone is `timezone`.
    pub start: String,
    /// IANA zone of `start`; [`DEFAULT_TIMEZONE`] (Vietnam) when absent or blank.
    #[serde(default)]
    pub timezone: Option<String>,
    /// RFC 5545 RRULE value (with or without `RRULE:`); absent or blank for a
    /// one-off play.
    #[serde(default)]
    pub rrule: Option<String>,
    /// `normal` (default), `priority` or `emergency`.
    #[serde(default)]
    pub priority: Option<Priority>,
}

/// Who a schedule is for. A receiver gets the schedule if it is listed
/// itself or belongs to a listed zone.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Targets {
    /// Zone (village) ids; every receiver in these zones plays the schedule.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Single receiver ids, for receivers targeted directly.
    #[serde(default)]
    pub receivers: Vec<String>,
}

impl ScheduleSpec {
    /// Checks the spec and builds the schedule `id` from it. The returned
    /// schedule is valid ([`Schedule::validate`] passes), its `rrule` is the
    /// bare RRULE value, and the returned targets are trimmed, without
    /// duplicates and not both empty.
    pub fn into_schedule(self, id: String) -> Result<(Schedule, Targets), ScheduleError> {
        let programme_id = self.programme_id.trim().to_string();
        if programme_id.is_empty() {
            return Err(ScheduleError::MissingField {
                field: "programme_id",
            });
        }
        let targets = clean_targets(self.targets)?;
        let timezone = parse_timezone(
            self.timezone
                .as_deref()
                .filter(|name| !name.trim().is_empty())
                .unwrap_or(DEFAULT_TIMEZONE),
        )?;
        let start = parse_local_start(&self.start)?;
        let rrule = match self.rrule.as_deref() {
            Some(rule) if !rule.trim().is_empty() => Some(normalize_rrule(rule)?),
            _ => None,
        };
        let schedule = Schedule {
            id,
            programme_id,
            start,
            timezone,
            rrule,
            priority: self.priority.unwrap_or_default(),
        };
        schedule.validate()?;
        Ok((schedule, targets))
    }
}

/// Parses a local wall time: `2026-11-24T06:30:00`, `2026-11-24T06:30`
/// (a space instead of `T` and fractional seconds are accepted; fractions
/// are dropped). A trailing `Z` or UTC offset is refused, because `start` is
/// local time in the schedule's `timezone`.
pub fn parse_local_start(text: &str) -> Result<NaiveDateTime, ScheduleError> {
    let trimmed = text.trim();
    if has_offset(trimmed) {
        return Err(ScheduleError::StartHasOffset {
            input: text.to_string(),
        });
    }
    let normalized = trimmed.replacen(' ', "T", 1);
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(&normalized, format).ok())
        .and_then(|start| start.with_nanosecond(0))
        .ok_or_else(|| ScheduleError::InvalidStart {
            input: text.to_string(),
        })
}

/// True if the time part of `text` (after the date's `T` or space) carries
/// `Z` or a `+hh:mm` / `-hh:mm` offset.
fn has_offset(text: &str) -> bool {
    let Some(split) = text.find(['T', 't', ' ']) else {
        return false;
    };
    text[split + 1..].contains(['Z', 'z', '+', '-'])
}

/// Trims ids, refuses blank ones, drops duplicates (keeping the first) and
/// requires at least one target.
fn clean_targets(targets: Targets) -> Result<Targets, ScheduleError> {
    fn clean(ids: Vec<String>, field: &'static str) -> Result<Vec<String>, ScheduleError> {
        let mut out: Vec<String> = Vec::with_capacity(ids.len());
        for id in ids {
            let id = id.trim();
            if id.is_empty() {
                return Err(ScheduleError::MissingField { field });
            }
            if !out.iter().any(|seen| seen == id) {
                out.push(id.to_string());
            }
        }
        Ok(out)
    }
    let cleaned = Targets {
        zones: clean(targets.zones, "targets.zones")?,
        receivers: clean(targets.receivers, "targets.receivers")?,
    };
    if cleaned.zones.is_empty() && cleaned.receivers.is_empty() {
        return Err(ScheduleError::NoTargets);
    }
    Ok(cleaned)
}

#[cfg(test)]
mod tests;
