//! Schedules: a programme, a local start in a time zone, an optional RRULE,
//! a priority and targets (zones and/or receivers). The body of `POST` is
//! [`loa_schedules::ScheduleSpec`] (plus an optional `id`); answers carry the
//! next occurrences as RFC 3339 UTC instants so the officer can check them.
//!
//! A schedule may relay a stream instead of playing a programme: instead of
//! `programme_id` it has `"source": {"type": "relay", "url": "http://…"}`
//! and `"duration_ms"`. At each occurrence the controller starts a relay
//! broadcast for that long (see [`crate::live::schedules`]); such schedules
//! are not sent to receivers as play events.
//!
//! Pre-emption between schedules and live broadcasts, on each receiver: a
//! live broadcast of priority Q takes the loudspeaker from a scheduled play
//! of priority ≤ Q within one frame, and the play resumes where it stopped
//! when the broadcast ends (its proof of play lists the interruption); a
//! scheduled play of priority > Q holds the broadcast off on that receiver
//! until the play ends. Between two live broadcasts the higher priority
//! wins; on equal priority the one already on air continues.
//!
//! `POST`/`GET /api/v1/schedules`, `GET`/`DELETE /api/v1/schedules/{id}`.
//! Every change tells the distributor, which republishes receivers' events,
//! and the live hub, whose timer starts relay broadcasts.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use loa_schedules::{Priority, Schedule, ScheduleError, ScheduleSpec, Targets};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

use super::access::Scope;
use super::error::is_unique_violation;
use super::extract::check_id;
use super::{ApiError, ApiJson, ApiPath};
use crate::auth::AuthUser;
use crate::db::{from_ms, now_ms};
use crate::live::SourceSpec;
use crate::state::AppState;

/// Longest relay occurrence.
const MAX_RELAY_DURATION_MS: u64 = 24 * 3600 * 1000;
/// Shortest relay occurrence.
const MIN_RELAY_DURATION_MS: u64 = 1000;

/// How many upcoming occurrences answers list.
pub const NEXT_OCCURRENCES: usize = 10;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/schedules", get(list).post(create))
        .route("/schedules/{id}", get(get_one).delete(delete))
}

/// Body of `POST /schedules`: the shared schedule spec, with either a
/// `programme_id` or a relay `source` and its `duration_ms`.
#[derive(Deserialize)]
struct NewSchedule {
    /// Optional id; generated when absent.
    #[serde(default)]
    id: Option<String>,
    /// The programme to play.
    #[serde(default)]
    programme_id: Option<String>,
    /// Or a stream to relay.
    #[serde(default)]
    source: Option<SourceSpec>,
    /// How long each relay occurrence lasts.
    #[serde(default)]
    duration_ms: Option<u64>,
    /// Zones and receivers.
    targets: Targets,
    /// Local wall time of the first occurrence.
    start: String,
    /// IANA time zone of `start`.
    #[serde(default)]
    timezone: Option<String>,
    /// RFC 5545 RRULE value.
    #[serde(default)]
    rrule: Option<String>,
    /// `normal`, `priority` or `emergency`.
    #[serde(default)]
    priority: Option<Priority>,
    /// An editor's schedule goes straight to `pending` instead of `draft`.
    #[serde(default)]
    submit: bool,
}

/// What a new schedule plays.
enum Plays {
    /// A stored programme (sent to receivers as play events).
    Programme,
    /// A stream relayed live for `duration_ms` at each occurrence.
    Relay { url: String, duration_ms: u64 },
}

/// Placeholder programme id of relay schedules inside [`Schedule`].
const RELAY_PLACEHOLDER: &str = crate::live::schedules::RELAY_PROGRAMME_ID;

impl NewSchedule {
    /// Checks the programme-or-relay choice and splits the body into the
    /// shared spec and what it plays.
    fn split(self) -> Result<(Option<String>, ScheduleSpec, Plays, bool), ApiError> {
        let plays = match (&self.programme_id, self.source, self.duration_ms) {
            (Some(_), None, None) => Plays::Programme,
            (Some(_), Some(_), _) => {
                return Err(ApiError::unprocessable(
                    "invalid_schedule",
                    "give either programme_id or source, not both",
                    "Lịch phát chỉ được chọn một trong hai: chương trình hoặc nguồn tiếp sóng.",
                ));
            }
            (Some(_), None, Some(_)) => {
                return Err(ApiError::unprocessable(
                    "invalid_schedule",
                    "duration_ms only applies to relay schedules (a programme plays to its end)",
                    "Chỉ lịch tiếp sóng mới cần thời lượng; chương trình được phát đến hết.",
                ));
            }
            (None, None, _) => {
                return Err(ApiError::unprocessable(
                    "invalid_fields",
                    "missing field `programme_id` (or a relay `source` with `duration_ms`)",
                    "Vui lòng chọn chương trình cần phát hoặc nguồn tiếp sóng.",
                ));
            }
            (None, Some(SourceSpec::Relay { url }), duration) => {
                crate::live::relay_url_check(&url).map_err(super::broadcasts::live_error)?;
                let duration_ms = duration
                    .filter(|d| (MIN_RELAY_DURATION_MS..=MAX_RELAY_DURATION_MS).contains(d))
                    .ok_or_else(|| {
                        ApiError::unprocessable(
                            "invalid_duration",
                            "a relay schedule needs duration_ms between 1000 and 86400000",
                            "Lịch tiếp sóng cần thời lượng (duration_ms) từ 1 giây đến 24 giờ.",
                        )
                    })?;
                Plays::Relay {
                    url: url.trim().to_string(),
                    duration_ms,
                }
            }
            (None, Some(other), _) => {
                return Err(ApiError::unprocessable(
                    "invalid_source",
                    format!(
                        "schedules relay streams only (source type relay), not {}",
                        other.kind()
                    ),
                    "Lịch phát chỉ nhận nguồn tiếp sóng (relay); để phát chương trình, hãy dùng                      programme_id.",
                ));
            }
        };
        let programme_id = match plays {
            Plays::Programme => self.programme_id.unwrap_or_default(),
            Plays::Relay { .. } => RELAY_PLACEHOLDER.to_string(),
        };
        let spec = ScheduleSpec {
            programme_id,
            targets: self.targets,
            start: self.start,
            timezone: self.timezone,
            rrule: self.rrule,
            priority: self.priority,
        };
        Ok((self.id, spec, plays, self.submit))
    }
}

/// A schedule as the API shows it.
#[derive(Serialize)]
struct ScheduleView {
    /// The schedule's id.
    id: String,
    /// The programme it plays (absent for a relay schedule).
    #[serde(skip_serializing_if = "Option::is_none")]
    programme_id: Option<String>,
    /// The stream it relays (relay schedules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<SourceSpec>,
    /// How long each relay occurrence lasts (relay schedules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    /// Zones and receivers it plays on.
    targets: Targets,
    /// Local wall time of the first occurrence, `YYYY-MM-DDTHH:MM:SS`.
    start: String,
    /// IANA time zone of `start`.
    timezone: String,
    /// RFC 5545 RRULE value, or null for a one-off.
    rrule: Option<String>,
    /// `normal`, `priority` or `emergency`.
    priority: Priority,
    /// When it was created.
    created_at: DateTime<Utc>,
    /// The next occurrences after now (up to [`NEXT_OCCURRENCES`]), RFC 3339 UTC.
    next_occurrences: Vec<DateTime<Utc>>,
    /// Approval state and ownership (see [`super::approvals`]).
    #[serde(flatten)]
    approval: Approval,
}

/// A schedule's approval state and who made and reviewed it.
#[derive(Serialize, Default, Clone, sqlx::FromRow)]
pub(super) struct Approval {
    /// `draft`, `pending`, `approved` or `rejected`; only approved ones air.
    status: String,
    /// The unit it belongs to (its creator's; `None` = root).
    unit_id: Option<String>,
    /// Username of its creator.
    created_by: Option<String>,
    /// Who approved or rejected it.
    reviewed_by: Option<String>,
    /// When (RFC 3339).
    #[serde(serialize_with = "serialize_opt_ms")]
    reviewed_at: Option<i64>,
    /// The approver's note.
    review_note: Option<String>,
}

fn serialize_opt_ms<S: serde::Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    v.map(from_ms).serialize(s)
}

fn view(
    schedule: &Schedule,
    relay: Option<(String, u64)>,
    targets: Targets,
    created_at: i64,
    next: Vec<DateTime<Utc>>,
    approval: Approval,
) -> ScheduleView {
    let (programme_id, source, duration_ms) = match relay {
        None => (Some(schedule.programme_id.clone()), None, None),
        Some((url, duration_ms)) => (None, Some(SourceSpec::Relay { url }), Some(duration_ms)),
    };
    ScheduleView {
        id: schedule.id.clone(),
        programme_id,
        source,
        duration_ms,
        targets,
        start: schedule.start.format("%Y-%m-%dT%H:%M:%S").to_string(),
        timezone: schedule.timezone.name().to_string(),
        rrule: schedule.rrule.clone(),
        priority: schedule.priority,
        created_at: from_ms(created_at),
        next_occurrences: next,
        approval,
    }
}

/// A schedule error is the user's: 422 with the schedules crate's Vietnamese text.
pub(super) fn schedule_error(e: ScheduleError) -> ApiError {
    let code = match e {
        ScheduleError::InvalidRrule { .. } => "invalid_rrule",
        ScheduleError::UnknownTimezone(_) => "unknown_timezone",
        ScheduleError::NoTargets => "no_targets",
        _ => "invalid_schedule",
    };
    ApiError::unprocessable(code, e.to_string(), e.message_vi())
}

/// Refuses references to ids that do not exist (422).
async fn check_exists(db: &SqlitePool, table: Table, id: &str) -> Result<(), ApiError> {
    let sql = match table {
        Table::Programme => "SELECT COUNT(*) FROM programmes WHERE id = $1",
        Table::Zone => "SELECT COUNT(*) FROM zones WHERE id = $1",
        Table::Receiver => "SELECT COUNT(*) FROM receivers WHERE id = $1",
    };
    let n: i64 = sqlx::query_scalar(sql).bind(id).fetch_one(db).await?;
    if n > 0 {
        return Ok(());
    }
    let (code, en, vi) = match table {
        Table::Programme => ("unknown_programme", "programme", "Chương trình"),
        Table::Zone => ("unknown_zone", "zone", "Khu vực"),
        Table::Receiver => ("unknown_receiver", "receiver", "Loa"),
    };
    Err(ApiError::unprocessable(
        code,
        format!("{en} {id:?} does not exist"),
        format!("{vi} có mã \"{id}\" không tồn tại."),
    ))
}

/// Tables a schedule refers to.
#[derive(Clone, Copy)]
enum Table {
    Programme,
    Zone,
    Receiver,
}

async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<NewSchedule>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    user.require(user.role_kind().edits(), "đặt lịch phát")?;
    let (id, spec, plays, submit) = body.split()?;
    let id = match id {
        Some(id) => {
            check_id("id", &id)?;
            id
        }
        None => uuid::Uuid::new_v4().to_string(),
    };
    let (schedule, targets) = spec.into_schedule(id).map_err(schedule_error)?;
    if let Plays::Programme = plays {
        check_id("programme_id", &schedule.programme_id)?;
    }
    for z in &targets.zones {
        check_id("targets.zones", z)?;
    }
    for r in &targets.receivers {
        check_id("targets.receivers", r)?;
    }
    if let Plays::Programme = plays {
        check_exists(&state.db, Table::Programme, &schedule.programme_id).await?;
    }
    for z in &targets.zones {
        check_exists(&state.db, Table::Zone, z).await?;
    }
    for r in &targets.receivers {
        check_exists(&state.db, Table::Receiver, r).await?;
    }
    let scope = Scope::of(&state.db, &user).await?;
    scope.check_targets(&state.db, &targets).await?;
    if let Plays::Programme = plays {
        if super::programmes::fetch_visible(&state, &user, &schedule.programme_id)
            .await
            .is_err()
        {
            return Err(ApiError::unprocessable(
                "unknown_programme",
                format!(
                    "programme {:?} is not visible to you",
                    schedule.programme_id
                ),
                format!(
                    "Chương trình có mã \"{}\" không tồn tại hoặc không thuộc đơn vị của bạn.",
                    schedule.programme_id
                ),
            ));
        }
        super::planning::check_quiet_hours(&state.db, &schedule, &targets).await?;
    }
    let next = schedule
        .next_occurrences(Utc::now(), NEXT_OCCURRENCES)
        .map_err(schedule_error)?;
    if next.is_empty() {
        return Err(ApiError::unprocessable(
            "no_future_occurrence",
            "the schedule has no occurrence after now",
            "Lịch phát không có lần phát nào trong tương lai. Vui lòng kiểm tra thời điểm bắt đầu và quy tắc lặp.",
        ));
    }

    let created_at = now_ms();
    let status = super::approvals::initial_status(&user, submit);
    let approved = status == super::approvals::Status::Approved;
    let approval = Approval {
        status: status.as_str().to_string(),
        unit_id: Some(user.unit_id.clone()),
        created_by: Some(user.username.clone()),
        reviewed_by: approved.then(|| user.username.clone()),
        reviewed_at: approved.then_some(created_at),
        review_note: None,
    };
    let mut tx = state.db.begin().await?;
    let (programme_id, source, duration_ms, relay) = match &plays {
        Plays::Programme => (Some(schedule.programme_id.clone()), None, None, None),
        Plays::Relay { url, duration_ms } => (
            None,
            Some(
                serde_json::to_string(&SourceSpec::Relay { url: url.clone() })
                    .expect("sources serialise"),
            ),
            Some(*duration_ms as i64),
            Some((url.clone(), *duration_ms)),
        ),
    };
    let inserted = sqlx::query(
        "INSERT INTO schedules (id, programme_id, source, duration_ms, start_local, timezone, rrule, \
             priority, created_at, status, unit_id, created_by, reviewed_by, reviewed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&schedule.id)
    .bind(&programme_id)
    .bind(&source)
    .bind(duration_ms)
    .bind(schedule.start.format("%Y-%m-%dT%H:%M:%S").to_string())
    .bind(schedule.timezone.name())
    .bind(&schedule.rrule)
    .bind(schedule.priority.as_str())
    .bind(created_at)
    .bind(&approval.status)
    .bind(&approval.unit_id)
    .bind(&approval.created_by)
    .bind(&approval.reviewed_by)
    .bind(approval.reviewed_at)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::duplicate("schedule", "lịch phát", &schedule.id));
        }
        Err(e) => return Err(e.into()),
    }
    let kinds = targets
        .zones
        .iter()
        .map(|z| ("zone", z))
        .chain(targets.receivers.iter().map(|r| ("receiver", r)));
    for (kind, target) in kinds {
        sqlx::query(
            "INSERT INTO schedule_targets (schedule_id, kind, target_id) VALUES ($1, $2, $3)",
        )
        .bind(&schedule.id)
        .bind(kind)
        .bind(target)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    match &relay {
        None => {
            tracing::info!(schedule = %schedule.id, programme = %schedule.programme_id, rrule = ?schedule.rrule, "schedule created");
            state.distributor.schedules_changed();
        }
        Some((url, duration_ms)) => {
            tracing::info!(schedule = %schedule.id, %url, duration_ms, rrule = ?schedule.rrule, "relay schedule created");
            state.live.schedules_changed();
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(view(&schedule, relay, targets, created_at, next, approval)),
    ))
}

/// One `schedules` row.
#[derive(sqlx::FromRow)]
struct ScheduleRow {
    id: String,
    programme_id: Option<String>,
    source: Option<String>,
    duration_ms: Option<i64>,
    start_local: String,
    timezone: String,
    rrule: Option<String>,
    priority: String,
    created_at: i64,
    #[sqlx(flatten)]
    approval: Approval,
}

impl ScheduleRow {
    /// Rebuilds the schedule (and, for a relay schedule, its URL and
    /// duration); a row that no longer parses is a server-side fault.
    #[allow(clippy::type_complexity)]
    fn into_schedule(self) -> Result<(Schedule, Option<(String, u64)>, i64, Approval), ApiError> {
        let broken =
            |what: String| ApiError::internal(format!("stored schedule {}: {what}", self.id));
        let start = loa_schedules::parse_local_start(&self.start_local)
            .map_err(|e| broken(e.to_string()))?;
        let timezone =
            loa_schedules::parse_timezone(&self.timezone).map_err(|e| broken(e.to_string()))?;
        let priority = self
            .priority
            .parse::<Priority>()
            .map_err(|e| broken(e.to_string()))?;
        let relay = match &self.source {
            None => None,
            Some(json) => match serde_json::from_str::<SourceSpec>(json) {
                Ok(SourceSpec::Relay { url }) => {
                    let duration = self
                        .duration_ms
                        .and_then(|d| u64::try_from(d).ok())
                        .ok_or_else(|| broken("relay without duration".into()))?;
                    Some((url, duration))
                }
                Ok(other) => return Err(broken(format!("source type {}", other.kind()))),
                Err(e) => return Err(broken(e.to_string())),
            },
        };
        let programme_id = match (&relay, self.programme_id) {
            (None, Some(p)) => p,
            (None, None) => return Err(broken("neither programme nor source".into())),
            (Some(_), _) => RELAY_PLACEHOLDER.to_string(),
        };
        Ok((
            Schedule {
                id: self.id,
                programme_id,
                start,
                timezone,
                rrule: self.rrule,
                priority,
            },
            relay,
            self.created_at,
            self.approval,
        ))
    }
}

/// Loads targets for the given schedules (all when `only` is `None`).
async fn targets(
    db: &SqlitePool,
    only: Option<&str>,
) -> Result<HashMap<String, Targets>, ApiError> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT schedule_id, kind, target_id FROM schedule_targets \
         WHERE ($1 IS NULL OR schedule_id = $1) ORDER BY schedule_id, kind, target_id",
    )
    .bind(only)
    .fetch_all(db)
    .await?;
    let mut map: HashMap<String, Targets> = HashMap::new();
    for (schedule_id, kind, target) in rows {
        let t = map.entry(schedule_id).or_default();
        if kind == "zone" {
            t.zones.push(target);
        } else {
            t.receivers.push(target);
        }
    }
    Ok(map)
}

fn to_view(
    row: ScheduleRow,
    targets: &mut HashMap<String, Targets>,
    now: DateTime<Utc>,
) -> Result<ScheduleView, ApiError> {
    let (schedule, relay, created_at, approval) = row.into_schedule()?;
    let next = schedule
        .next_occurrences(now, NEXT_OCCURRENCES)
        .map_err(|e| ApiError::internal(format!("stored schedule {}: {e}", schedule.id)))?;
    let t = targets.remove(&schedule.id).unwrap_or_default();
    Ok(view(&schedule, relay, t, created_at, next, approval))
}

macro_rules! select_schedules {
    () => {
        "SELECT id, programme_id, source, duration_ms, start_local, timezone, rrule, priority, \
         created_at, status, unit_id, created_by, reviewed_by, reviewed_at, review_note FROM schedules"
    };
}

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<ScheduleView>>, ApiError> {
    let rows: Vec<ScheduleRow> =
        sqlx::query_as(concat!(select_schedules!(), " ORDER BY created_at, id"))
            .fetch_all(&state.db)
            .await?;
    let mut targets = targets(&state.db, None).await?;
    let visible = Visibility::of(&state, &user).await?;
    let rows: Vec<ScheduleRow> = rows
        .into_iter()
        .filter(|r| visible.sees(r, &targets))
        .collect();
    let now = Utc::now();
    rows.into_iter()
        .map(|r| to_view(r, &mut targets, now))
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

/// Which schedules a user sees: those of their unit and below, and those
/// made higher up that play on something in their scope.
struct Visibility {
    scope: Scope,
    zones: HashMap<String, String>,
    receivers: HashMap<String, String>,
}

impl Visibility {
    async fn of(state: &AppState, user: &AuthUser) -> Result<Visibility, ApiError> {
        let scope = Scope::of(&state.db, user).await?;
        let zones = scope.zones(&state.db).await?;
        let receivers = scope.receivers(&state.db).await?;
        Ok(Visibility {
            scope,
            zones,
            receivers,
        })
    }

    fn sees(&self, row: &ScheduleRow, targets: &HashMap<String, Targets>) -> bool {
        self.scope.covers(row.approval.unit_id.as_deref())
            || targets
                .get(&row.id)
                .is_some_and(|t| self.scope.touches(&self.zones, &self.receivers, t))
    }
}

async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let row: Option<ScheduleRow> = sqlx::query_as(concat!(select_schedules!(), " WHERE id = $1"))
        .bind(&id)
        .fetch_optional(&state.db)
        .await?;
    let mut targets = targets(&state.db, Some(&id)).await?;
    let visible = Visibility::of(&state, &user).await?;
    let row = row
        .filter(|r| visible.sees(r, &targets))
        .ok_or_else(|| ApiError::not_found("schedule", "lịch phát", &id))?;
    to_view(row, &mut targets, Utc::now()).map(Json)
}

async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let role = user.role_kind();
    user.require(role.edits(), "xoá lịch phát")?;
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT status, unit_id FROM schedules WHERE id = $1")
            .bind(&id)
            .fetch_optional(&state.db)
            .await?;
    let scope = Scope::of(&state.db, &user).await?;
    let Some((status, _)) = row.filter(|(_, unit)| scope.covers(unit.as_deref())) else {
        return Err(ApiError::not_found("schedule", "lịch phát", &id));
    };
    if status == "approved" && !role.approves() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only approvers may delete an approved schedule",
            "Chỉ người duyệt mới được xoá lịch phát đã duyệt.",
        ));
    }
    let deleted = sqlx::query("DELETE FROM schedules WHERE id = $1")
        .bind(&id)
        .execute(&state.db)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found("schedule", "lịch phát", &id));
    }
    tracing::info!(schedule = %id, "schedule deleted");
    state.distributor.schedules_changed();
    // A relay schedule's broadcast on air ends with it.
    state.live.schedule_deleted(&id).await;
    Ok(StatusCode::NO_CONTENT)
}
