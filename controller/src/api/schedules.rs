//! Schedules: a programme, a local start in a time zone, an optional RRULE,
//! a priority and targets (zones and/or receivers). The body of `POST` is
//! [`loa_schedules::ScheduleSpec`] (plus an optional `id`); answers carry the
//! next occurrences as RFC 3339 UTC instants so the officer can check them.
//!
//! `POST`/`GET /api/v1/schedules`, `GET`/`DELETE /api/v1/schedules/{id}`.
//! Every change tells the distributor, which republishes receivers' events.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use loa_schedules::{Priority, Schedule, ScheduleError, ScheduleSpec, Targets};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

use super::error::is_unique_violation;
use super::extract::check_id;
use super::{ApiError, ApiJson, ApiPath};
use crate::auth::AuthUser;
use crate::db::{from_ms, now_ms};
use crate::state::AppState;

/// How many upcoming occurrences answers list.
pub const NEXT_OCCURRENCES: usize = 10;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/schedules", get(list).post(create))
        .route("/schedules/{id}", get(get_one).delete(delete))
}

/// Body of `POST /schedules`.
#[derive(Deserialize)]
struct NewSchedule {
    /// Optional id; generated when absent.
    #[serde(default)]
    id: Option<String>,
    /// Everything else: the shared schedule spec.
    #[serde(flatten)]
    spec: ScheduleSpec,
}

/// A schedule as the API shows it.
#[derive(Serialize)]
struct ScheduleView {
    /// The schedule's id.
    id: String,
    /// The programme it plays.
    programme_id: String,
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
}

fn view(
    schedule: &Schedule,
    targets: Targets,
    created_at: i64,
    next: Vec<DateTime<Utc>>,
) -> ScheduleView {
    ScheduleView {
        id: schedule.id.clone(),
        programme_id: schedule.programme_id.clone(),
        targets,
        start: schedule.start.format("%Y-%m-%dT%H:%M:%S").to_string(),
        timezone: schedule.timezone.name().to_string(),
        rrule: schedule.rrule.clone(),
        priority: schedule.priority,
        created_at: from_ms(created_at),
        next_occurrences: next,
    }
}

/// A schedule error is the user's: 422 with the schedules crate's Vietnamese text.
fn schedule_error(e: ScheduleError) -> ApiError {
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
    _user: AuthUser,
    ApiJson(body): ApiJson<NewSchedule>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    let id = match body.id {
        Some(id) => {
            check_id("id", &id)?;
            id
        }
        None => uuid::Uuid::new_v4().to_string(),
    };
    let (schedule, targets) = body.spec.into_schedule(id).map_err(schedule_error)?;
    check_id("programme_id", &schedule.programme_id)?;
    for z in &targets.zones {
        check_id("targets.zones", z)?;
    }
    for r in &targets.receivers {
        check_id("targets.receivers", r)?;
    }
    check_exists(&state.db, Table::Programme, &schedule.programme_id).await?;
    for z in &targets.zones {
        check_exists(&state.db, Table::Zone, z).await?;
    }
    for r in &targets.receivers {
        check_exists(&state.db, Table::Receiver, r).await?;
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
    let mut tx = state.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO schedules (id, programme_id, start_local, timezone, rrule, priority, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&schedule.id)
    .bind(&schedule.programme_id)
    .bind(schedule.start.format("%Y-%m-%dT%H:%M:%S").to_string())
    .bind(schedule.timezone.name())
    .bind(&schedule.rrule)
    .bind(schedule.priority.as_str())
    .bind(created_at)
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
    tracing::info!(schedule = %schedule.id, programme = %schedule.programme_id, rrule = ?schedule.rrule, "schedule created");
    state.distributor.schedules_changed();
    Ok((
        StatusCode::CREATED,
        Json(view(&schedule, targets, created_at, next)),
    ))
}

/// One `schedules` row.
#[derive(sqlx::FromRow)]
struct ScheduleRow {
    id: String,
    programme_id: String,
    start_local: String,
    timezone: String,
    rrule: Option<String>,
    priority: String,
    created_at: i64,
}

impl ScheduleRow {
    /// Rebuilds the schedule; a row that no longer parses is a server-side fault.
    fn into_schedule(self) -> Result<(Schedule, i64), ApiError> {
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
        Ok((
            Schedule {
                id: self.id,
                programme_id: self.programme_id,
                start,
                timezone,
                rrule: self.rrule,
                priority,
            },
            self.created_at,
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
    let (schedule, created_at) = row.into_schedule()?;
    let next = schedule
        .next_occurrences(now, NEXT_OCCURRENCES)
        .map_err(|e| ApiError::internal(format!("stored schedule {}: {e}", schedule.id)))?;
    let t = targets.remove(&schedule.id).unwrap_or_default();
    Ok(view(&schedule, t, created_at, next))
}

macro_rules! select_schedules {
    () => {
        "SELECT id, programme_id, start_local, timezone, rrule, priority, created_at FROM schedules"
    };
}

async fn list(
    State(state): State<AppState>,
    _user: AuthUser,
) -> Result<Json<Vec<ScheduleView>>, ApiError> {
    let rows: Vec<ScheduleRow> =
        sqlx::query_as(concat!(select_schedules!(), " ORDER BY created_at, id"))
            .fetch_all(&state.db)
            .await?;
    let mut targets = targets(&state.db, None).await?;
    let now = Utc::now();
    rows.into_iter()
        .map(|r| to_view(r, &mut targets, now))
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

async fn get_one(
    State(state): State<AppState>,
    _user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let row: Option<ScheduleRow> = sqlx::query_as(concat!(select_schedules!(), " WHERE id = $1"))
        .bind(&id)
        .fetch_optional(&state.db)
        .await?;
    let row = row.ok_or_else(|| ApiError::not_found("schedule", "lịch phát", &id))?;
    let mut targets = targets(&state.db, Some(&id)).await?;
    to_view(row, &mut targets, Utc::now()).map(Json)
}

async fn delete(
    State(state): State<AppState>,
    _user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
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
    Ok(StatusCode::NO_CONTENT)
}
