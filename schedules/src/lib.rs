//! Loa's schedule model, kept pure: no tokio, no I/O, the current time is
//! always an argument. The controller expands schedules into [`PlayEvent`]s
//! for each receiver; the receiver turns its events into a non-overlapping
//! play plan with the same rule ([`plan`]), so both sides agree on what airs.

mod event;
mod priority;

pub use event::PlayEvent;
pub use priority::Priority;
