//! Message payloads exchanged over MQTT.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use loa_schedules::PlayEvent;
use serde::{Deserialize, Serialize};

/// Everything one receiver must play over the coming horizon. Published
/// retained, so a receiver that (re)connects gets the latest at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiverSchedule {
    pub receiver_id: String,
    /// Increases with every publication; a receiver ignores a schedule whose
    /// version is not newer than the one it keeps on disk.
    pub version: u64,
    pub generated_at: DateTime<Utc>,
    /// Events are complete up to this instant; the controller republishes
    /// well before it passes.
    pub horizon_end: DateTime<Utc>,
    /// The audio each event needs, by programme id.
    pub programmes: BTreeMap<String, ProgrammeRef>,
    /// Occurrences to play, sorted by `starts_at`.
    pub events: Vec<PlayEvent>,
    /// The zone (village) the receiver belongs to; it subscribes to that
    /// zone's live topic as well as its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// Where a receiver gets a programme's audio and how it checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgrammeRef {
    /// Hex SHA-256 of the Ogg Opus file; the cache verifies it.
    pub sha256: String,
    pub bytes: u64,
    pub duration_ms: u64,
}

/// A receiver's presence and state, published retained on connect and at
/// every heartbeat; the broker publishes the receiver's last will (`online:
/// false`) when the connection drops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiverStatus {
    pub receiver_id: String,
    pub online: bool,
    pub sent_at: DateTime<Utc>,
    #[serde(default)]
    pub now_playing: Option<NowPlaying>,
    /// Programme ids whose audio is in the cache and verified.
    #[serde(default)]
    pub cached: Vec<String>,
    /// Version of the schedule the receiver is following.
    #[serde(default)]
    pub schedule_version: Option<u64>,
    /// Seconds between heartbeats, so the controller knows when one is late.
    #[serde(default)]
    pub heartbeat_secs: Option<u64>,
}

impl ReceiverStatus {
    /// The last will a receiver registers with the broker.
    pub fn offline(receiver_id: &str) -> Self {
        ReceiverStatus {
            receiver_id: receiver_id.to_string(),
            online: false,
            sent_at: Utc::now(),
            now_playing: None,
            cached: Vec::new(),
            schedule_version: None,
            heartbeat_secs: None,
        }
    }
}

/// What a receiver is playing right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NowPlaying {
    pub programme_id: String,
    pub event_id: String,
    pub started_at: DateTime<Utc>,
}

/// How a scheduled play ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlayOutcome {
    /// Played from start to end.
    Completed,
    /// Cut short by a higher-priority play.
    Preempted,
    /// Not played: audio missing or invalid, or the receiver was not running at the instant.
    Missed,
    /// Started but the audio output failed.
    Failed,
}

impl PlayOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PlayOutcome::Completed => "completed",
            PlayOutcome::Preempted => "preempted",
            PlayOutcome::Missed => "missed",
            PlayOutcome::Failed => "failed",
        }
    }
}

/// Proof of play for one event on one receiver. Receivers keep each report on
/// disk until the controller acknowledges its `report_id`, and the controller
/// stores each `report_id` once, so a report re-sent after a lost link is
/// neither lost nor counted twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayReport {
    pub report_id: String,
    pub receiver_id: String,
    pub event_id: String,
    pub programme_id: String,
    pub schedule_id: String,
    pub scheduled_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: PlayOutcome,
    /// Human-readable reason for `missed` or `failed`.
    #[serde(default)]
    pub detail: Option<String>,
    /// Live broadcasts that interrupted this play; it resumed after each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interruptions: Vec<Interruption>,
}

/// A stretch of a scheduled play during which a live broadcast took the
/// loudspeakers; the programme resumed where it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interruption {
    /// The broadcast's id (UUID, hyphenated).
    pub broadcast_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// The controller's acknowledgement that these reports are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    pub report_ids: Vec<String>,
}
