//! Zones (villages, thôn): named groups of receivers that schedules target.
//! Each belongs to a unit (normally a commune, see [`super::access`]) and
//! may have quiet hours (see [`super::planning`]).
//! `POST`/`GET /api/v1/zones`, `GET`/`PATCH`/`DELETE /api/v1/zones/{id}`;
//! changes are for admins and technicians, inside their unit.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::access::{self, Scope};
use super::error::is_unique_violation;
use super::extract::{check_id, check_text};
use super::planning::QuietHours;
use super::{ApiError, ApiJson, ApiPath};
use crate::auth::AuthUser;
use crate::db::{from_ms, now_ms};
use crate::state::AppState;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/zones", get(list).post(create))
        .route("/zones/{id}", get(get_one).patch(update).delete(delete))
}

/// Body of `POST /zones`.
#[derive(Deserialize)]
struct NewZone {
    /// Chosen by the officer, e.g. `thon-1`.
    id: String,
    /// Display name, e.g. "Thôn 1".
    name: String,
    /// The unit it belongs to (default: the creator's unit).
    #[serde(default)]
    unit_id: Option<String>,
    /// Quiet hours, `"HH:MM-HH:MM"` local time.
    #[serde(default)]
    quiet_hours: Option<String>,
}

/// Body of `PATCH /zones/{id}`; absent fields are unchanged, an empty
/// `quiet_hours` removes them.
#[derive(Deserialize)]
struct ZoneChange {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    unit_id: Option<String>,
    #[serde(default)]
    quiet_hours: Option<String>,
}

/// A zone as the API shows it.
#[derive(Serialize)]
struct Zone {
    /// The zone's id.
    id: String,
    /// Display name.
    name: String,
    /// How many receivers belong to it.
    receivers: i64,
    /// When it was created.
    created_at: DateTime<Utc>,
    /// The unit it belongs to.
    unit_id: String,
    /// Quiet hours, or null.
    quiet_hours: Option<String>,
}

type ZoneRow = (String, String, i64, i64, String, Option<String>);

fn zone(row: ZoneRow) -> Zone {
    Zone {
        id: row.0,
        name: row.1,
        receivers: row.2,
        created_at: from_ms(row.3),
        unit_id: row.4,
        quiet_hours: row.5,
    }
}

/// Checks a quiet-hours value; `Ok(None)` for empty.
fn check_quiet(value: Option<&str>) -> Result<Option<String>, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => QuietHours::parse(v).map(|q| Some(q.text())).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_quiet_hours",
                format!("quiet_hours {v:?} must look like 22:00-05:30"),
                "Giờ yên lặng phải có dạng 22:00-05:30.",
            )
        }),
    }
}

/// Checks that `unit` exists and is in the user's scope (422 otherwise).
async fn check_unit(state: &AppState, scope: &Scope, unit: &str) -> Result<(), ApiError> {
    let units = access::all_units(&state.db).await?;
    if units.contains_key(unit) && scope.covers(Some(unit)) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "unknown_unit",
            format!("unit {unit:?} does not exist in your scope"),
            format!("Đơn vị \"{unit}\" không tồn tại hoặc không thuộc đơn vị của bạn."),
        ))
    }
}

/// The columns of [`ZoneRow`]; a macro so `concat!` can extend it statically.
macro_rules! select_zones {
    () => {
        "SELECT z.id, z.name, (SELECT COUNT(*) FROM receivers r WHERE r.zone_id = z.id), z.created_at, \
         COALESCE(z.unit_id, 'root'), z.quiet_hours FROM zones z"
    };
}

async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<NewZone>,
) -> Result<(StatusCode, Json<Zone>), ApiError> {
    user.require(user.role_kind().manages_devices(), "quản lý khu vực")?;
    check_id("id", &req.id)?;
    let name = check_text("name", "tên khu vực", &req.name, 200)?;
    let quiet = check_quiet(req.quiet_hours.as_deref())?;
    let unit = req.unit_id.clone().unwrap_or_else(|| user.unit_id.clone());
    let scope = Scope::of(&state.db, &user).await?;
    check_unit(&state, &scope, &unit).await?;
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO zones (id, name, created_at, unit_id, quiet_hours) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&req.id)
    .bind(&name)
    .bind(now)
    .bind(&unit)
    .bind(&quiet)
    .execute(&state.db)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::duplicate("zone", "khu vực", &req.id));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(zone = %req.id, "zone created");
    Ok((
        StatusCode::CREATED,
        Json(zone((req.id, name, 0, now, unit, quiet))),
    ))
}

async fn list(State(state): State<AppState>, user: AuthUser) -> Result<Json<Vec<Zone>>, ApiError> {
    let scope = Scope::of(&state.db, &user).await?;
    let rows: Vec<ZoneRow> = sqlx::query_as(concat!(select_zones!(), " ORDER BY z.id"))
        .fetch_all(&state.db)
        .await?;
    Ok(Json(
        rows.into_iter()
            .filter(|r| scope.covers(Some(&r.4)))
            .map(zone)
            .collect(),
    ))
}

/// A zone in the user's scope, or 404.
async fn fetch(state: &AppState, user: &AuthUser, id: &str) -> Result<Zone, ApiError> {
    let scope = Scope::of(&state.db, user).await?;
    let row: Option<ZoneRow> = sqlx::query_as(concat!(select_zones!(), " WHERE z.id = $1"))
        .bind(id)
        .fetch_optional(&state.db)
        .await?;
    row.filter(|r| scope.covers(Some(&r.4)))
        .map(zone)
        .ok_or_else(|| ApiError::not_found("zone", "khu vực", id))
}

async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Zone>, ApiError> {
    fetch(&state, &user, &id).await.map(Json)
}

async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(change): ApiJson<ZoneChange>,
) -> Result<Json<Zone>, ApiError> {
    user.require(user.role_kind().manages_devices(), "quản lý khu vực")?;
    let current = fetch(&state, &user, &id).await?;
    let name = match &change.name {
        Some(n) => check_text("name", "tên khu vực", n, 200)?,
        None => current.name.clone(),
    };
    let quiet = match &change.quiet_hours {
        Some(q) => check_quiet(Some(q))?,
        None => current.quiet_hours.clone(),
    };
    let unit = change.unit_id.clone().unwrap_or(current.unit_id.clone());
    if unit != current.unit_id {
        let scope = Scope::of(&state.db, &user).await?;
        check_unit(&state, &scope, &unit).await?;
    }
    sqlx::query("UPDATE zones SET name = $1, quiet_hours = $2, unit_id = $3 WHERE id = $4")
        .bind(&name)
        .bind(&quiet)
        .bind(&unit)
        .bind(&id)
        .execute(&state.db)
        .await?;
    tracing::info!(zone = %id, by = %user.username, "zone changed");
    fetch(&state, &user, &id).await.map(Json)
}

/// Deletes an empty, unscheduled zone; refuses (409) while receivers belong
/// to it or schedules target it, so nothing is silently left dangling.
async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    user.require(user.role_kind().manages_devices(), "quản lý khu vực")?;
    fetch(&state, &user, &id).await?;
    let mut tx = state.db.begin().await?;
    let receivers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM receivers WHERE zone_id = $1")
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
    let schedules: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM schedule_targets WHERE kind = 'zone' AND target_id = $1",
    )
    .bind(&id)
    .fetch_one(&mut *tx)
    .await?;
    if receivers > 0 || schedules > 0 {
        return Err(ApiError::conflict(
            "zone_in_use",
            format!("zone {id:?} still has {receivers} receiver(s) and {schedules} schedule(s)"),
            format!(
                "Không thể xoá khu vực \"{id}\": còn {receivers} loa và {schedules} lịch phát \
                 gắn với khu vực này."
            ),
        ));
    }
    let deleted = sqlx::query("DELETE FROM zones WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    if deleted == 0 {
        return Err(ApiError::not_found("zone", "khu vực", &id));
    }
    tracing::info!(zone = %id, "zone deleted");
    Ok(StatusCode::NO_CONTENT)
}
