//! One occurrence of a schedule on one receiver: what to play and when.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Priority;

/// One scheduled play of one programme at one instant. The controller sends
/// a receiver the list of these for its horizon; the receiver plays them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayEvent {
    /// Stable identity of this occurrence: `{schedule_id}@{starts_at as unix ms}`.
    /// Proof-of-play reports refer to it, so a re-sent schedule does not
    /// cause a second play of the same occurrence.
    pub id: String,
    /// The schedule this occurrence was expanded from.
    pub schedule_id: String,
    /// The programme (audio) to play.
    pub programme_id: String,
    /// The instant the play must start.
    pub starts_at: DateTime<Utc>,
    /// Length of the programme, so a plan can be made without the audio.
    pub duration_ms: u64,
    /// Who wins when two plays would overlap.
    pub priority: Priority,
}

impl PlayEvent {
    /// The id an occurrence of `schedule_id` at `starts_at` always gets.
    pub fn occurrence_id(schedule_id: &str, starts_at: DateTime<Utc>) -> String {
        format!("{schedule_id}@{}", starts_at.timestamp_millis())
    }

    /// When the play would end if nothing interrupted it. Saturates at the
    /// largest representable instant instead of panicking on an absurd
    /// (e.g. forged) duration.
    pub fn natural_end(&self) -> DateTime<Utc> {
        crate::plan::end_after(self.starts_at, self.duration_ms)
    }
}
