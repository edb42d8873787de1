//! Zones (villages, thôn): named groups of receivers that schedules target.
//! `POST`/`GET /api/v1/zones`, `GET`/`DELETE /api/v1/zones/{id}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::is_unique_violation;
use super::extract::{check_id, check_text};
use super::{ApiError, ApiJson, ApiPath};
use crate::auth::AuthUser;
use crate::db::{from_ms, now_ms};
use crate::state::AppState;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/zones", get(list).post(create))
        .route("/zones/{id}", get(get_one).delete(delete))
}

/// Body of `POST /zones`.
#[derive(Deserialize)]
struct NewZone {
    /// Chosen by the officer, e.g. `thon-1`.
    id: String,
    /// Display name, e.g. "Thôn 1".
    name: String,
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
}

type ZoneRow = (String, String, i64, i64);

fn zone(row: ZoneRow) -> Zone {
    Zone {
        id: row.0,
        name: row.1,
        receivers: row.2,
        created_at: from_ms(row.3),
    }
}

/// The columns of [`ZoneRow`]; a macro so `concat!` can extend it statically.
macro_rules! select_zones {
    () => {
        "SELECT z.id, z.name, (SELECT COUNT(*) FROM receivers r WHERE r.zone_id = z.id), z.created_at FROM zones z"
    };
}

async fn create(
    State(state): State<AppState>,
    _user: AuthUser,
    ApiJson(req): ApiJson<NewZone>,
) -> Result<(StatusCode, Json<Zone>), ApiError> {
    check_id("id", &req.id)?;
    let name = check_text("name", "tên khu vực", &req.name, 200)?;
    let now = now_ms();
    let inserted = sqlx::query("INSERT INTO zones (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&req.id)
        .bind(&name)
        .bind(now)
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
    Ok((StatusCode::CREATED, Json(zone((req.id, name, 0, now)))))
}

async fn list(State(state): State<AppState>, _user: AuthUser) -> Result<Json<Vec<Zone>>, ApiError> {
    let rows: Vec<ZoneRow> = sqlx::query_as(concat!(select_zones!(), " ORDER BY z.id"))
        .fetch_all(&state.db)
        .await?;
    Ok(Json(rows.into_iter().map(zone).collect()))
}

async fn get_one(
    State(state): State<AppState>,
    _user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Zone>, ApiError> {
    let row: Option<ZoneRow> = sqlx::query_as(concat!(select_zones!(), " WHERE z.id = $1"))
        .bind(&id)
        .fetch_optional(&state.db)
        .await?;
    row.map(|r| Json(zone(r)))
        .ok_or_else(|| ApiError::not_found("zone", "khu vực", &id))
}

/// Deletes an empty, unscheduled zone; refuses (409) while receivers belong
/// to it or schedules target it, so nothing is silently left dangling.
async fn delete(
    State(state): State<AppState>,
    _user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
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
