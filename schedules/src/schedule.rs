//! A schedule: one programme, a local start, a time zone, an optional
//! recurrence and a priority. It answers "when does this play?" for any time
//! window, and expands into [`PlayEvent`]s for receivers.
//!
//! How the start, the time zone and the RRULE combine is described on
//! [`Schedule`] and in full in `recurrence.rs`; the short version: `start` is local wall time in
//! `timezone`, repetitions keep that wall-clock time, and every call is
//! bounded ([`crate::MAX_OCCURRENCES`], [`crate::MAX_HORIZON_DAYS`]).

use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::recurrence::Recurrence;
use crate::{PlayEvent, Priority, ScheduleError};

/// When and how often one programme airs. Built from a
/// [`crate::ScheduleSpec`] (the API body) or loaded from storage.
///
/// Recurrence in short (the full rules open `schedules/src/recurrence.rs`):
/// `start` is local wall time in `timezone` and is the first *candidate*
/// (it plays only if it matches the rule); repetitions keep that wall-clock
/// time across daylight-saving changes; BYHOUR × BYMINUTE is a cross product
/// (`BYHOUR=6,17;BYMINUTE=30` = 06:30 and 17:30; for 06:30 and 17:00 use two
/// schedules or `FREQ=DAILY;BYDAY=TU,FR;BYHOUR=6,17;BYMINUTE=0,30;BYSETPOS=2,3`);
/// a start in a daylight-saving gap is an error, an ambiguous one means the
/// earlier instant; `FREQ=SECONDLY`, DTSTART and multi-line rules are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Stable identity; occurrence ids (`{id}@{unix ms}`) are derived from it.
    pub id: String,
    /// The programme (audio) each occurrence plays.
    pub programme_id: String,
    /// First (candidate) occurrence, as local wall time in `timezone`.
    pub start: NaiveDateTime,
    /// The zone `start` and the repetitions are read in; keeps 06:30 at
    /// 06:30 local across daylight-saving changes.
    pub timezone: Tz,
    /// RFC 5545 RRULE value without the `RRULE:` prefix, e.g.
    /// `FREQ=WEEKLY;BYDAY=TU,FR`; `None` for a one-off play.
    pub rrule: Option<String>,
    /// Who wins when two plays would overlap on a receiver.
    pub priority: Priority,
}

impl Schedule {
    /// Checks everything a user can get wrong: empty ids, a start outside the
    /// accepted years or inside a daylight-saving gap, an invalid RRULE.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        self.recurrence().map(drop)
    }

    /// Occurrence instants in `[from, to)`, sorted. An occurrence exactly at
    /// `from` is included, one exactly at `to` is not.
    pub fn occurrences(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, ScheduleError> {
        self.recurrence()?.between(from, to)
    }

    /// The next `n` occurrence instants strictly after `after`, sorted; fewer
    /// if the recurrence ends first. `n` may be at most [`crate::MAX_OCCURRENCES`].
    pub fn next_occurrences(
        &self,
        after: DateTime<Utc>,
        n: usize,
    ) -> Result<Vec<DateTime<Utc>>, ScheduleError> {
        self.recurrence()?.next(after, n)
    }

    /// The play events of occurrences in `[from, to)`, each lasting
    /// `duration_ms`. An occurrence that started before `from` is not
    /// included, even if it would still be playing at `from`.
    pub fn expand(
        &self,
        duration_ms: u64,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PlayEvent>, ScheduleError> {
        let events = self
            .occurrences(from, to)?
            .into_iter()
            .map(|starts_at| PlayEvent {
                id: PlayEvent::occurrence_id(&self.id, starts_at),
                schedule_id: self.id.clone(),
                programme_id: self.programme_id.clone(),
                starts_at,
                duration_ms,
                priority: self.priority,
            })
            .collect::<Vec<_>>();
        tracing::debug!(
            schedule = %self.id,
            %from,
            %to,
            events = events.len(),
            "expanded schedule"
        );
        Ok(events)
    }

    /// Validates the fields and builds the recurrence the queries run on.
    fn recurrence(&self) -> Result<Recurrence, ScheduleError> {
        if self.id.trim().is_empty() {
            return Err(ScheduleError::MissingField { field: "id" });
        }
        if self.programme_id.trim().is_empty() {
            return Err(ScheduleError::MissingField {
                field: "programme_id",
            });
        }
        Recurrence::new(self.start, self.timezone, self.rrule.as_deref())
    }
}

#[cfg(test)]
mod tests;
