//! One distribution pass: read schedules, targets, receivers and programmes,
//! expand each schedule once, give every receiver the events of the
//! schedules that target it or its zone, and publish what changed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use loa_protocol::{MAX_PAYLOAD_BYTES, PlayEvent, ProgrammeRef, ReceiverSchedule};
use loa_schedules::{Priority, Schedule, parse_local_start, parse_timezone};
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;

use super::{DistributionError, Force};
use crate::bus::Bus;

/// What a pass did, for the log and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Receivers whose schedule was published.
    pub published: Vec<String>,
    /// Receivers whose schedule was unchanged and not republished.
    pub unchanged: usize,
    /// Schedule ids that could not be read or expanded (logged).
    pub bad_schedules: Vec<String>,
}

impl PassReport {
    /// Logs a one-line summary.
    pub fn log(&self) {
        tracing::info!(
            published = self.published.len(),
            unchanged = self.unchanged,
            bad_schedules = self.bad_schedules.len(),
            "distribution pass done"
        );
    }
}

/// A schedule expanded over the pass window, with the audio it needs.
struct Expanded {
    /// Its occurrences in the window.
    events: Vec<PlayEvent>,
    /// The programme those occurrences play.
    programme_id: String,
    /// How receivers fetch and check that programme.
    programme: ProgrammeRef,
}

/// A schedule row joined with its programme.
#[derive(sqlx::FromRow)]
struct ScheduleRow {
    id: String,
    programme_id: String,
    start_local: String,
    timezone: String,
    rrule: Option<String>,
    priority: String,
    duration_ms: i64,
    sha256: String,
    bytes: i64,
}

/// Runs one pass at `now` with events in `[now - programme length, now +
/// horizon)`, so a receiver restarting mid-programme still knows it.
pub async fn run_pass(
    db: &SqlitePool,
    bus: &Bus,
    horizon: Duration,
    now: DateTime<Utc>,
    force: &Force,
) -> Result<PassReport, DistributionError> {
    let mut report = PassReport::default();
    let expanded = expand_all(db, now, horizon, &mut report).await?;

    let targets: Vec<(String, String, String)> =
        sqlx::query_as("SELECT schedule_id, kind, target_id FROM schedule_targets")
            .fetch_all(db)
            .await?;
    let mut by_zone: HashMap<String, Vec<usize>> = HashMap::new();
    let mut by_receiver: HashMap<String, Vec<usize>> = HashMap::new();
    let index: HashMap<&str, usize> = expanded
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();
    for (schedule_id, kind, target_id) in targets {
        let Some(&i) = index.get(schedule_id.as_str()) else {
            continue;
        };
        match kind.as_str() {
            "zone" => by_zone.entry(target_id).or_default().push(i),
            "receiver" => by_receiver.entry(target_id).or_default().push(i),
            other => tracing::warn!(schedule = %schedule_id, kind = other, "unknown target kind"),
        }
    }

    let receivers: Vec<(String, String)> =
        sqlx::query_as("SELECT id, zone_id FROM receivers ORDER BY id")
            .fetch_all(db)
            .await?;
    let previous: HashMap<String, (i64, i64, String)> =
        sqlx::query_as::<_, (String, i64, i64, String)>(
            "SELECT receiver_id, version, published_at, payload_hash FROM distributions",
        )
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|(id, version, published_at, hash)| (id, (version, published_at, hash)))
        .collect();

    // A receiver deleted since the last pass gets an empty schedule, so a
    // box still running with the old retained one stops playing it.
    let current: HashSet<&str> = receivers.iter().map(|(id, _)| id.as_str()).collect();
    for (receiver_id, (version, _, _)) in &previous {
        if current.contains(receiver_id.as_str()) {
            continue;
        }
        let empty = ReceiverSchedule {
            receiver_id: receiver_id.clone(),
            version: (*version + 1).max(now.timestamp_millis()) as u64,
            generated_at: now,
            horizon_end: now + horizon,
            programmes: BTreeMap::new(),
            events: Vec::new(),
            zone: None,
        };
        bus.publish_retained_schedule(&empty).await?;
        sqlx::query("DELETE FROM distributions WHERE receiver_id = $1")
            .bind(receiver_id)
            .execute(db)
            .await?;
        tracing::info!(receiver = %receiver_id, "cleared the schedule of a deleted receiver");
    }

    let horizon_end = now + horizon;
    // Refresh at least every half horizon so `horizon_end` never lapses.
    let stale_before = (now - horizon / 2).timestamp_millis();
    for (receiver_id, zone_id) in receivers {
        let mut chosen = BTreeSet::new();
        chosen.extend(by_zone.get(&zone_id).into_iter().flatten().copied());
        chosen.extend(by_receiver.get(&receiver_id).into_iter().flatten().copied());
        let mut schedule = ReceiverSchedule {
            receiver_id: receiver_id.clone(),
            version: 0,
            generated_at: now,
            horizon_end,
            programmes: BTreeMap::new(),
            events: Vec::new(),
            zone: Some(zone_id.clone()),
        };
        for &i in &chosen {
            let e = &expanded[i].1;
            schedule.events.extend(e.events.iter().cloned());
            if !e.events.is_empty() {
                schedule
                    .programmes
                    .insert(e.programme_id.clone(), e.programme.clone());
            }
        }
        schedule
            .events
            .sort_by(|a, b| a.starts_at.cmp(&b.starts_at).then_with(|| a.id.cmp(&b.id)));
        schedule.events.dedup_by(|a, b| a.id == b.id);
        let truncated = fit_payload(&mut schedule);
        let hash = content_hash(&schedule, truncated);

        let version = match previous.get(&receiver_id) {
            Some((version, published_at, old_hash)) if *old_hash == hash => {
                if !force.includes(&receiver_id) && *published_at >= stale_before {
                    report.unchanged += 1;
                    continue;
                }
                *version
            }
            Some((version, _, _)) => (*version + 1).max(now.timestamp_millis()),
            None => now.timestamp_millis(),
        };
        schedule.version = version as u64;
        bus.publish_retained_schedule(&schedule).await?;
        sqlx::query(
            "INSERT INTO distributions (receiver_id, version, published_at, payload_hash)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (receiver_id) DO UPDATE SET version = excluded.version,
                 published_at = excluded.published_at, payload_hash = excluded.payload_hash",
        )
        .bind(&receiver_id)
        .bind(version)
        .bind(now.timestamp_millis())
        .bind(&hash)
        .execute(db)
        .await?;
        tracing::debug!(receiver = %receiver_id, version, events = schedule.events.len(),
            "published schedule");
        report.published.push(receiver_id);
    }
    Ok(report)
}

/// Expands every schedule once over the pass window; bad rows are logged,
/// recorded in `report` and left out.
async fn expand_all(
    db: &SqlitePool,
    now: DateTime<Utc>,
    horizon: Duration,
    report: &mut PassReport,
) -> Result<Vec<(String, Expanded)>, DistributionError> {
    let rows: Vec<ScheduleRow> = sqlx::query_as(
        "SELECT s.id, s.programme_id, s.start_local, s.timezone, s.rrule, s.priority,
                p.duration_ms, p.sha256, p.bytes
         FROM schedules s JOIN programmes p ON p.id = s.programme_id
         WHERE s.status = 'approved' AND p.status = 'approved'
         ORDER BY s.id",
    )
    .fetch_all(db)
    .await?;
    let mut expanded = Vec::with_capacity(rows.len());
    for row in rows {
        let id = row.id.clone();
        match expand_row(row, now, horizon) {
            Ok(e) => expanded.push((id, e)),
            Err(reason) => {
                tracing::warn!(schedule = %id, %reason, "skipping schedule that cannot be expanded");
                report.bad_schedules.push(id);
            }
        }
    }
    Ok(expanded)
}

/// Builds the schedule from its row and expands it.
fn expand_row(row: ScheduleRow, now: DateTime<Utc>, horizon: Duration) -> Result<Expanded, String> {
    let duration_ms = u64::try_from(row.duration_ms).map_err(|_| "negative programme duration")?;
    let bytes = u64::try_from(row.bytes).map_err(|_| "negative programme size")?;
    let schedule = Schedule {
        id: row.id,
        programme_id: row.programme_id.clone(),
        start: parse_local_start(&row.start_local).map_err(|e| e.to_string())?,
        timezone: parse_timezone(&row.timezone).map_err(|e| e.to_string())?,
        rrule: row.rrule.filter(|r| !r.trim().is_empty()),
        priority: row
            .priority
            .parse::<Priority>()
            .map_err(|e| e.to_string())?,
    };
    // Include occurrences still playing at `now`.
    let from = now - Duration::milliseconds(row.duration_ms);
    let events = schedule
        .expand(duration_ms, from, now + horizon)
        .map_err(|e| e.to_string())?;
    let programme = ProgrammeRef {
        sha256: row.sha256,
        bytes,
        duration_ms,
    };
    Ok(Expanded {
        events,
        programme_id: row.programme_id,
        programme,
    })
}

/// Drops the latest events until the message fits [`MAX_PAYLOAD_BYTES`],
/// moving `horizon_end` back to the first dropped event. Returns whether
/// anything was dropped.
fn fit_payload(schedule: &mut ReceiverSchedule) -> bool {
    let mut truncated = false;
    loop {
        let size = loa_protocol::encode(schedule).len();
        if size <= MAX_PAYLOAD_BYTES || schedule.events.is_empty() {
            break;
        }
        // Keep a proportional share, with a margin, and check again.
        let keep = (schedule.events.len() as u128 * MAX_PAYLOAD_BYTES as u128 * 9
            / 10
            / size as u128) as usize;
        let keep = keep.min(schedule.events.len() - 1);
        schedule.horizon_end = schedule.events[keep].starts_at;
        schedule.events.truncate(keep);
        truncated = true;
    }
    if truncated {
        let used: BTreeSet<&str> = schedule
            .events
            .iter()
            .map(|e| e.programme_id.as_str())
            .collect();
        schedule
            .programmes
            .retain(|id, _| used.contains(id.as_str()));
        tracing::warn!(receiver = %schedule.receiver_id, events = schedule.events.len(),
            horizon_end = %schedule.horizon_end, "schedule too large for one message; horizon shortened");
    }
    truncated
}

/// SHA-256 of what a receiver would act on: events and programmes (and the
/// shortened horizon, if any), not the always-moving generation times.
fn content_hash(schedule: &ReceiverSchedule, truncated: bool) -> String {
    let horizon = truncated.then_some(schedule.horizon_end);
    let content = serde_json::to_vec(&(
        &schedule.events,
        &schedule.programmes,
        horizon,
        &schedule.zone,
    ))
    .expect("schedule content always serialises");
    hex::encode(Sha256::digest(content))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: i64) -> PlayEvent {
        let starts_at = DateTime::from_timestamp(1_800_000_000 + i * 60, 0).unwrap();
        PlayEvent {
            id: PlayEvent::occurrence_id("s", starts_at),
            schedule_id: "s".into(),
            programme_id: "p".into(),
            starts_at,
            duration_ms: 1000,
            priority: Priority::Normal,
        }
    }

    #[test]
    fn oversize_schedules_are_cut_at_an_event_and_fit() {
        let now = Utc::now();
        let mut schedule = ReceiverSchedule {
            receiver_id: "r".into(),
            version: 1,
            generated_at: now,
            horizon_end: now + Duration::days(7),
            programmes: BTreeMap::from([(
                "p".to_string(),
                ProgrammeRef {
                    sha256: "0".repeat(64),
                    bytes: 1,
                    duration_ms: 1000,
                },
            )]),
            events: (0..40_000).map(event).collect(),
            zone: None,
        };
        assert!(fit_payload(&mut schedule));
        assert!(loa_protocol::encode(&schedule).len() <= MAX_PAYLOAD_BYTES);
        assert!(
            schedule.events.len() > 10_000,
            "kept {}",
            schedule.events.len()
        );
        assert_eq!(
            schedule.horizon_end,
            event(schedule.events.len() as i64).starts_at
        );

        let mut small = schedule.clone();
        small.events.truncate(3);
        let before = small.clone();
        assert!(!fit_payload(&mut small));
        assert_eq!(small, before);
    }

    #[test]
    fn hash_ignores_generation_time_but_not_events() {
        let now = Utc::now();
        let a = ReceiverSchedule {
            receiver_id: "r".into(),
            version: 1,
            generated_at: now,
            horizon_end: now,
            programmes: BTreeMap::new(),
            events: vec![event(1)],
            zone: None,
        };
        let mut b = a.clone();
        b.generated_at = now + Duration::minutes(10);
        b.horizon_end = now + Duration::minutes(10);
        b.version = 2;
        assert_eq!(content_hash(&a, false), content_hash(&b, false));
        b.events.push(event(2));
        assert_ne!(content_hash(&a, false), content_hash(&b, false));
    }
}
