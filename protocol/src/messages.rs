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
    /// Whether the amplifier relay is switched on (`None`: not reported,
    /// e.g. an older receiver). A status is also published at each change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amplifier_on: Option<bool>,
    /// The normal output gain in force, in percent of the level as sent
    /// (100 = unchanged; capped at 255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<u8>,
    /// Controller messages and live frames the receiver refused lately
    /// (forged, altered, replayed, stale, malformed), newest last, at most
    /// [`MAX_REPORTED_REJECTIONS`](crate::signed::MAX_REPORTED_REJECTIONS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<crate::signed::Rejection>,
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
            amplifier_on: None,
            volume: None,
            rejected: Vec::new(),
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

/// Output settings the console sets for one receiver. Published retained,
/// so a receiver that (re)connects gets the latest; the receiver keeps them
/// on disk and ignores a version that is not newer than the one it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverSettings {
    pub receiver_id: String,
    /// Increases with every change.
    pub version: u64,
    /// Normal output gain, in percent (0–100) of the level as sent; applies
    /// to normal and priority audio, scheduled or live.
    pub volume: u8,
    /// Output gain of emergency audio, in percent (0–100); `None` keeps the
    /// receiver's `--emergency-volume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency_volume: Option<u8>,
}

/// Largest volume in [`ReceiverSettings`], in percent.
pub const MAX_SETTINGS_VOLUME: u8 = 100;

impl ReceiverSettings {
    /// Whether the volumes are within 0–100 %.
    pub fn is_valid(&self) -> bool {
        self.volume <= MAX_SETTINGS_VOLUME
            && self
                .emergency_volume
                .is_none_or(|v| v <= MAX_SETTINGS_VOLUME)
    }
}

/// A one-off command to a receiver (QoS 1, not retained). A receiver
/// ignores commands issued more than [`COMMAND_MAX_AGE_SECS`] ago and
/// commands whose `command_id` it has already seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverCommand {
    /// Unique per command (a UUID from the controller).
    pub command_id: String,
    /// When the controller issued it.
    pub issued_at: DateTime<Utc>,
    /// What to do.
    pub kind: CommandKind,
}

/// Commands older than this (seconds) are ignored.
pub const COMMAND_MAX_AGE_SECS: i64 = 60;

/// Longest test tone, in seconds.
pub const MAX_TEST_TONE_SECS: u32 = 30;

/// What a [`ReceiverCommand`] asks for; tagged by `type`, so more commands
/// can follow (`{"type":"test_tone","seconds":5}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandKind {
    /// Play a 1 kHz tone at about −12 dBFS × the normal volume for
    /// `seconds` (1–30), amplifier on, unless a programme or a broadcast is
    /// on air (a tone never interrupts one).
    TestTone { seconds: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_tagged_and_round_trip() {
        let command = ReceiverCommand {
            command_id: "c1".into(),
            issued_at: "2026-12-03T10:00:00Z".parse().unwrap(),
            kind: CommandKind::TestTone { seconds: 5 },
        };
        let json = serde_json::to_value(&command).unwrap();
        assert_eq!(json["kind"]["type"], "test_tone");
        assert_eq!(json["kind"]["seconds"], 5);
        let back: ReceiverCommand = crate::decode(&crate::encode(&command)).unwrap();
        assert_eq!(back, command);
        assert!(crate::decode::<ReceiverCommand>(
            br#"{"command_id":"c","issued_at":"2026-12-03T10:00:00Z","kind":{"type":"reboot"}}"#
        )
        .is_err());
    }

    #[test]
    fn old_statuses_still_parse_and_settings_are_checked() {
        let status: ReceiverStatus =
            crate::decode(br#"{"receiver_id":"a","online":true,"sent_at":"2026-12-03T10:00:00Z"}"#)
                .unwrap();
        assert_eq!((status.amplifier_on, status.volume), (None, None));
        let mut settings = ReceiverSettings {
            receiver_id: "a".into(),
            version: 1,
            volume: 100,
            emergency_volume: None,
        };
        assert!(settings.is_valid());
        settings.volume = 101;
        assert!(!settings.is_valid());
        settings.volume = 50;
        settings.emergency_volume = Some(200);
        assert!(!settings.is_valid());
    }
}
