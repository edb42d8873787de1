//! Help for planning schedules before they are saved:
//!
//! - `POST /api/v1/schedules/preview` takes the body of `POST /schedules`
//!   and saves nothing. It answers the occurrences over the next
//!   [`PREVIEW_DAYS`] days, the receivers reached, every overlap with
//!   another pending or approved schedule on a shared receiver (and who
//!   wins under the pre-emption rule), and occurrences inside a zone's
//!   quiet hours, so the console shows conflicts before saving.
//! - `GET /api/v1/calendar?from=&to=` (RFC 3339, at most [`MAX_CALENDAR_DAYS`]
//!   apart) lists the occurrences of every schedule the user sees in that
//!   window, with title, end, priority and approval state, for the
//!   console's week calendar.
//! - Quiet hours: a zone may have `quiet_hours` (`"22:00-05:30"`, local
//!   Vietnam time, may wrap past midnight). A schedule whose occurrence
//!   would start inside a targeted zone's quiet hours in the next
//!   [`QUIET_CHECK_DAYS`] days is refused (422), unless its priority is
//!   `emergency`.

use std::collections::{BTreeSet, HashMap, HashSet};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, NaiveTime, Timelike, Utc};
use chrono_tz::Tz;
use loa_schedules::{Priority, Schedule, ScheduleSpec, Targets};
use serde::Serialize;
use sqlx::SqlitePool;

use super::access::Scope;
use super::{ApiError, ApiJson, ApiQuery};
use crate::auth::AuthUser;
use crate::state::AppState;

/// How far ahead the preview looks.
pub const PREVIEW_DAYS: i64 = 14;
/// How far ahead quiet hours are enforced when saving.
pub const QUIET_CHECK_DAYS: i64 = 60;
/// Most conflicts listed.
const MAX_CONFLICTS: usize = 100;
/// Occurrences listed.
const LISTED_OCCURRENCES: usize = 20;
/// Longest calendar window.
pub const MAX_CALENDAR_DAYS: i64 = 62;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/schedules/preview", post(preview))
        .route("/calendar", get(calendar))
}

/// A quiet-hours interval, local wall time; `start > end` wraps midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl QuietHours {
    /// Parses `"HH:MM-HH:MM"`; `None` if malformed or empty (start = end).
    pub fn parse(text: &str) -> Option<QuietHours> {
        let (a, b) = text.trim().split_once('-')?;
        let start = NaiveTime::parse_from_str(a.trim(), "%H:%M").ok()?;
        let end = NaiveTime::parse_from_str(b.trim(), "%H:%M").ok()?;
        (start != end).then_some(QuietHours { start, end })
    }

    /// Whether local time `t` is inside.
    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// The canonical text form.
    pub fn text(&self) -> String {
        format!(
            "{}-{}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M")
        )
    }
}

fn local_tz() -> Tz {
    loa_schedules::parse_timezone(loa_schedules::DEFAULT_TIMEZONE).unwrap_or(chrono_tz::UTC)
}

/// The zones a set of targets reaches (listed zones, and those of listed
/// receivers), with their quiet hours.
async fn quiet_zones(
    db: &SqlitePool,
    targets: &Targets,
) -> Result<Vec<(String, String, QuietHours)>, ApiError> {
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, name, quiet_hours FROM zones WHERE quiet_hours IS NOT NULL")
            .fetch_all(db)
            .await?;
    let mut reached: HashSet<String> = targets.zones.iter().cloned().collect();
    if !targets.receivers.is_empty() {
        let zones: Vec<(String, String)> = sqlx::query_as("SELECT id, zone_id FROM receivers")
            .fetch_all(db)
            .await?;
        reached.extend(
            zones
                .into_iter()
                .filter(|(r, _)| targets.receivers.contains(r))
                .map(|(_, z)| z),
        );
    }
    Ok(rows
        .into_iter()
        .filter(|(id, _, _)| reached.contains(id))
        .filter_map(|(id, name, q)| Some((id, name, QuietHours::parse(q.as_deref()?)?)))
        .collect())
}

/// An occurrence inside a zone's quiet hours.
#[derive(Debug, Serialize)]
pub struct QuietViolation {
    zone_id: String,
    zone_name: String,
    quiet_hours: String,
    at: DateTime<Utc>,
}

async fn quiet_violations(
    db: &SqlitePool,
    schedule: &Schedule,
    targets: &Targets,
    days: i64,
) -> Result<Vec<QuietViolation>, ApiError> {
    if schedule.priority == Priority::Emergency {
        return Ok(Vec::new());
    }
    let zones = quiet_zones(db, targets).await?;
    if zones.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    let occurrences = schedule
        .occurrences(now, now + Duration::days(days))
        .map_err(super::schedules::schedule_error)?;
    let tz = local_tz();
    let mut out = Vec::new();
    for at in occurrences {
        let local = at.with_timezone(&tz).time();
        let local =
            NaiveTime::from_hms_opt(local.hour(), local.minute(), local.second()).unwrap_or(local);
        for (id, name, q) in &zones {
            if q.contains(local) {
                out.push(QuietViolation {
                    zone_id: id.clone(),
                    zone_name: name.clone(),
                    quiet_hours: q.text(),
                    at,
                });
            }
        }
        if out.len() >= MAX_CONFLICTS {
            break;
        }
    }
    Ok(out)
}

/// Refuses (422) a non-emergency schedule that would start inside a
/// targeted zone's quiet hours in the next [`QUIET_CHECK_DAYS`] days.
pub async fn check_quiet_hours(
    db: &SqlitePool,
    schedule: &Schedule,
    targets: &Targets,
) -> Result<(), ApiError> {
    let v = quiet_violations(db, schedule, targets, QUIET_CHECK_DAYS).await?;
    if let Some(first) = v.first() {
        let local = first.at.with_timezone(&local_tz()).format("%H:%M %d/%m/%Y");
        return Err(ApiError::unprocessable(
            "quiet_hours",
            format!(
                "an occurrence at {} falls in the quiet hours {} of zone {:?}",
                first.at, first.quiet_hours, first.zone_id
            ),
            format!(
                "Lần phát lúc {local} rơi vào giờ yên lặng ({}) của {}. Hãy chọn giờ khác, \
                 hoặc dùng mức khẩn cấp.",
                first.quiet_hours, first.zone_name
            ),
        ));
    }
    Ok(())
}

/// One overlap between the previewed schedule and another.
#[derive(Debug, Serialize)]
struct Conflict {
    /// The previewed occurrence.
    at: DateTime<Utc>,
    /// The other schedule and its occurrence.
    schedule_id: String,
    programme_id: String,
    title: String,
    other_at: DateTime<Utc>,
    other_priority: Priority,
    other_status: String,
    /// Receivers both reach.
    receivers: Vec<String>,
    /// `waits` (the later of two equal priorities waits), `preempts` (the
    /// previewed one cuts the other), `preempted` (the other cuts it).
    effect: &'static str,
}

/// Answer of the preview.
#[derive(Debug, Serialize)]
pub struct Preview {
    /// Occurrences (up to 20) after now.
    occurrences: Vec<DateTime<Utc>>,
    /// Length of each play.
    duration_ms: i64,
    /// Receivers reached.
    receivers: Vec<String>,
    conflicts: Vec<Conflict>,
    quiet_hours: Vec<QuietViolation>,
    /// No conflict and no quiet-hours problem.
    ok: bool,
}

/// Receivers reached by targets, from `(receiver, zone)` pairs.
fn reached(all: &[(String, String)], t: &Targets) -> BTreeSet<String> {
    all.iter()
        .filter(|(r, z)| t.receivers.contains(r) || t.zones.contains(z))
        .map(|(r, _)| r.clone())
        .collect()
}

/// Another schedule's row, with its programme.
type OtherRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    String,
);

async fn preview(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(spec): ApiJson<ScheduleSpec>,
) -> Result<Json<Preview>, ApiError> {
    let (schedule, targets) = spec
        .into_schedule("preview".into())
        .map_err(super::schedules::schedule_error)?;
    let programme = super::programmes::fetch_visible(&state, &user, &schedule.programme_id)
        .await
        .map_err(|_| {
            ApiError::unprocessable(
                "unknown_programme",
                format!("programme {:?} does not exist", schedule.programme_id),
                format!(
                    "Chương trình có mã \"{}\" không tồn tại.",
                    schedule.programme_id
                ),
            )
        })?;
    let all: Vec<(String, String)> = sqlx::query_as("SELECT id, zone_id FROM receivers")
        .fetch_all(&state.db)
        .await?;
    let zones: HashSet<String> = sqlx::query_scalar("SELECT id FROM zones")
        .fetch_all(&state.db)
        .await?
        .into_iter()
        .collect();
    if let Some(z) = targets.zones.iter().find(|z| !zones.contains(*z)) {
        return Err(ApiError::unprocessable(
            "unknown_zone",
            format!("zone {z:?} does not exist"),
            format!("Khu vực có mã \"{z}\" không tồn tại."),
        ));
    }
    if let Some(r) = targets
        .receivers
        .iter()
        .find(|r| !all.iter().any(|(id, _)| id == *r))
    {
        return Err(ApiError::unprocessable(
            "unknown_receiver",
            format!("receiver {r:?} does not exist"),
            format!("Loa có mã \"{r}\" không tồn tại."),
        ));
    }
    Scope::of(&state.db, &user)
        .await?
        .check_targets(&state.db, &targets)
        .await?;

    let now = Utc::now();
    let to = now + Duration::days(PREVIEW_DAYS);
    let mine = reached(&all, &targets);
    let duration = programme.duration_ms.max(0) as u64;
    let events = schedule
        .expand(duration, now, to)
        .map_err(super::schedules::schedule_error)?;

    let others: Vec<OtherRow> = sqlx::query_as(
        "SELECT s.id, s.programme_id, p.title, s.start_local, s.rrule, s.timezone, s.priority, \
                p.duration_ms, s.status \
         FROM schedules s JOIN programmes p ON p.id = s.programme_id \
         WHERE s.status IN ('approved', 'pending') AND p.status <> 'rejected'",
    )
    .fetch_all(&state.db)
    .await?;
    let target_rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT schedule_id, kind, target_id FROM schedule_targets")
            .fetch_all(&state.db)
            .await?;
    let mut other_targets: HashMap<String, Targets> = HashMap::new();
    for (sid, kind, id) in target_rows {
        let t = other_targets.entry(sid).or_default();
        if kind == "zone" {
            t.zones.push(id);
        } else {
            t.receivers.push(id);
        }
    }
    let mut conflicts = Vec::new();
    'others: for (id, programme_id, title, start, rrule, tz, priority, dur, status) in others {
        let Some(t) = other_targets.get(&id) else {
            continue;
        };
        let shared: Vec<String> = reached(&all, t).intersection(&mine).cloned().collect();
        if shared.is_empty() {
            continue;
        }
        let (Ok(start), Ok(timezone), Ok(other_priority)) = (
            loa_schedules::parse_local_start(&start),
            loa_schedules::parse_timezone(&tz),
            priority.parse::<Priority>(),
        ) else {
            continue;
        };
        let other = Schedule {
            id: id.clone(),
            programme_id: programme_id.clone(),
            start,
            timezone,
            rrule,
            priority: other_priority,
        };
        let Ok(other_events) =
            other.expand(dur.max(0) as u64, now - Duration::milliseconds(dur), to)
        else {
            continue;
        };
        for e in &events {
            for o in &other_events {
                if e.starts_at < o.natural_end() && o.starts_at < e.natural_end() {
                    let effect = match schedule.priority.cmp(&other_priority) {
                        std::cmp::Ordering::Greater => "preempts",
                        std::cmp::Ordering::Less => "preempted",
                        std::cmp::Ordering::Equal => "waits",
                    };
                    conflicts.push(Conflict {
                        at: e.starts_at,
                        schedule_id: id.clone(),
                        programme_id: programme_id.clone(),
                        title: title.clone(),
                        other_at: o.starts_at,
                        other_priority,
                        other_status: status.clone(),
                        receivers: shared.clone(),
                        effect,
                    });
                    if conflicts.len() >= MAX_CONFLICTS {
                        break 'others;
                    }
                }
            }
        }
    }
    conflicts.sort_by_key(|c| c.at);
    let quiet = quiet_violations(&state.db, &schedule, &targets, PREVIEW_DAYS).await?;
    let occurrences = schedule
        .next_occurrences(now, LISTED_OCCURRENCES)
        .map_err(super::schedules::schedule_error)?;
    Ok(Json(Preview {
        ok: conflicts.is_empty() && quiet.is_empty(),
        occurrences,
        duration_ms: programme.duration_ms,
        receivers: mine.into_iter().collect(),
        conflicts,
        quiet_hours: quiet,
    }))
}

/// Query of `GET /calendar`.
#[derive(serde::Deserialize)]
struct CalendarQuery {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// One occurrence in the calendar.
#[derive(Serialize)]
struct CalendarEntry {
    schedule_id: String,
    programme_id: Option<String>,
    title: String,
    at: DateTime<Utc>,
    end: DateTime<Utc>,
    priority: Priority,
    status: String,
    targets: Targets,
    /// A relay schedule (a stream, not a programme).
    relay: bool,
}

type CalendarRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    String,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
);

async fn calendar(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<CalendarQuery>,
) -> Result<Json<Vec<CalendarEntry>>, ApiError> {
    if q.to <= q.from || q.to - q.from > Duration::days(MAX_CALENDAR_DAYS) {
        return Err(ApiError::bad_request(
            "invalid_range",
            format!("to must be after from, at most {MAX_CALENDAR_DAYS} days later"),
            format!("Khoảng thời gian không hợp lệ (tối đa {MAX_CALENDAR_DAYS} ngày)."),
        ));
    }
    let scope = Scope::of(&state.db, &user).await?;
    let zones = scope.zones(&state.db).await?;
    let receivers = scope.receivers(&state.db).await?;
    let rows: Vec<CalendarRow> = sqlx::query_as(
        "SELECT s.id, s.programme_id, p.title, p.duration_ms, s.duration_ms, s.start_local, \
                s.rrule, s.timezone, s.priority, s.status, s.unit_id \
         FROM schedules s LEFT JOIN programmes p ON p.id = s.programme_id ORDER BY s.id",
    )
    .fetch_all(&state.db)
    .await?;
    let target_rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT schedule_id, kind, target_id FROM schedule_targets")
            .fetch_all(&state.db)
            .await?;
    let mut all_targets: HashMap<String, Targets> = HashMap::new();
    for (sid, kind, id) in target_rows {
        let t = all_targets.entry(sid).or_default();
        if kind == "zone" {
            t.zones.push(id);
        } else {
            t.receivers.push(id);
        }
    }
    let mut out = Vec::new();
    for (id, programme_id, title, p_dur, relay_dur, start, rrule, tz, priority, status, unit) in
        rows
    {
        let targets = all_targets.remove(&id).unwrap_or_default();
        if !scope.covers(unit.as_deref()) && !scope.touches(&zones, &receivers, &targets) {
            continue;
        }
        let (Ok(start), Ok(timezone), Ok(priority)) = (
            loa_schedules::parse_local_start(&start),
            loa_schedules::parse_timezone(&tz),
            priority.parse::<Priority>(),
        ) else {
            continue;
        };
        let relay = programme_id.is_none();
        let duration = Duration::milliseconds(relay_dur.or(p_dur).unwrap_or(0).max(0));
        let schedule = Schedule {
            id: id.clone(),
            programme_id: programme_id.clone().unwrap_or_else(|| "relay".into()),
            start,
            timezone,
            rrule,
            priority,
        };
        let Ok(occurrences) = schedule.occurrences(q.from - duration, q.to) else {
            continue;
        };
        for at in occurrences {
            out.push(CalendarEntry {
                schedule_id: id.clone(),
                programme_id: programme_id.clone(),
                title: title.clone().unwrap_or_else(|| "Tiếp sóng".into()),
                at,
                end: at + duration,
                priority,
                status: status.clone(),
                targets: targets.clone(),
                relay,
            });
            if out.len() >= 5000 {
                break;
            }
        }
    }
    out.sort_by_key(|e| e.at);
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hours_parse_and_wrap_midnight() {
        let q = QuietHours::parse("22:00-05:30").unwrap();
        let t = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        assert!(q.contains(t(23, 0)) && q.contains(t(2, 0)) && q.contains(t(22, 0)));
        assert!(!q.contains(t(5, 30)) && !q.contains(t(12, 0)));
        let day = QuietHours::parse(" 11:30 - 13:30 ").unwrap();
        assert!(day.contains(t(12, 0)) && !day.contains(t(14, 0)));
        assert_eq!(day.text(), "11:30-13:30");
        assert!(QuietHours::parse("25:00-01:00").is_none());
        assert!(QuietHours::parse("10:00-10:00").is_none());
        assert!(QuietHours::parse("").is_none());
    }
}
