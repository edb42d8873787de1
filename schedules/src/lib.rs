//! Loa's schedule model, kept pure: no tokio, no I/O, the current time is
//! always an argument. The controller expands schedules into [`PlayEvent`]s
//! for each receiver; the receiver turns its events into a non-overlapping
//! play plan with the same rule ([`plan`]), so both sides agree on what airs.
//!
//! - [`ScheduleSpec`] is what a user sends (API body, `examples/*.json`);
//!   [`ScheduleSpec::into_schedule`] checks it and yields a [`Schedule`].
//! - [`Schedule`] answers when a programme plays ([`Schedule::occurrences`],
//!   [`Schedule::next_occurrences`]) and expands into events ([`Schedule::expand`]).
//!   Recurrence is an RFC 5545 RRULE evaluated in the schedule's IANA time
//!   zone (default [`DEFAULT_TIMEZONE`], Vietnam), keeping local wall time.
//! - [`plan`] resolves overlaps: a higher priority pre-empts, an equal or
//!   lower one waits.
//! - [`ScheduleError`] explains every refusal in English and, through
//!   [`ScheduleError::message_vi`], in Vietnamese.

mod error;
mod event;
mod plan;
mod priority;
mod recurrence;
mod schedule;
mod spec;
mod timezone;

pub use error::ScheduleError;
pub use event::PlayEvent;
pub use plan::{PlannedPlay, plan};
pub use priority::{Priority, UnknownPriority};
pub use recurrence::{
    MAX_CANDIDATES_PER_PERIOD, MAX_HORIZON_DAYS, MAX_OCCURRENCES, MAX_SCANNED_OCCURRENCES,
    MAX_START_YEAR, MIN_START_YEAR,
};
pub use schedule::Schedule;
pub use spec::{ScheduleSpec, Targets, parse_local_start};
pub use timezone::{DEFAULT_TIMEZONE, parse_timezone};
