//! Administrative units (root → province → district → commune), the tree
//! users and zones hang from (see [`super::access`]).
//!
//! `GET /api/v1/units` (the caller's unit, what is below it and the path
//! above it), `POST /api/v1/units` `{"id","name","kind","parent_id"}`,
//! `PATCH /api/v1/units/{id}` `{"name"}`, `DELETE /api/v1/units/{id}`
//! (an empty unit only). Changes are for admins, inside their scope.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::access::{self, ROOT_UNIT, Scope};
use super::error::is_unique_violation;
use super::extract::{check_id, check_text};
use super::{ApiError, ApiJson, ApiPath};
use crate::auth::AuthUser;
use crate::db::now_ms;
use crate::state::AppState;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/units", get(list).post(create))
        .route("/units/{id}", get(get_one).patch(update).delete(delete))
}

/// Depth of each kind; a child is deeper than its parent.
fn depth(kind: &str) -> Option<u8> {
    match kind {
        "root" => Some(0),
        "province" => Some(1),
        "district" => Some(2),
        "commune" => Some(3),
        _ => None,
    }
}

/// A unit as the API shows it.
#[derive(Serialize)]
struct UnitView {
    id: String,
    parent_id: Option<String>,
    kind: String,
    name: String,
    /// Whether it is in the caller's scope (else it is above it).
    in_scope: bool,
    /// Zones directly in it.
    zones: i64,
    /// Users directly in it.
    users: i64,
}

/// Body of `POST /units`.
#[derive(Deserialize)]
struct NewUnit {
    id: String,
    name: String,
    /// `province`, `district` or `commune`.
    kind: String,
    /// The parent unit (default: the caller's unit).
    #[serde(default)]
    parent_id: Option<String>,
}

/// Body of `PATCH /units/{id}`.
#[derive(Deserialize)]
struct UnitChange {
    #[serde(default)]
    name: Option<String>,
}

async fn views(state: &AppState, user: &AuthUser) -> Result<Vec<UnitView>, ApiError> {
    let units = access::all_units(&state.db).await?;
    let scope = Scope::within(&units, &user.unit_id);
    let counts: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT u.id, \
            (SELECT COUNT(*) FROM zones z WHERE COALESCE(z.unit_id, 'root') = u.id), \
            (SELECT COUNT(*) FROM users s WHERE COALESCE(s.unit_id, 'root') = u.id) \
         FROM units u",
    )
    .fetch_all(&state.db)
    .await?;
    let mut out: Vec<UnitView> = counts
        .into_iter()
        .filter_map(|(id, zones, users)| {
            let u = units.get(&id)?;
            let in_scope = scope.covers(Some(&id));
            (in_scope || scope.sees(Some(&id))).then(|| UnitView {
                id: u.id.clone(),
                parent_id: u.parent_id.clone(),
                kind: u.kind.clone(),
                name: u.name.clone(),
                in_scope,
                zones,
                users,
            })
        })
        .collect();
    out.sort_by(|a, b| (depth(&a.kind), &a.name, &a.id).cmp(&(depth(&b.kind), &b.name, &b.id)));
    Ok(out)
}

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<UnitView>>, ApiError> {
    views(&state, &user).await.map(Json)
}

async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<UnitView>, ApiError> {
    views(&state, &user)
        .await?
        .into_iter()
        .find(|u| u.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("unit", "đơn vị", &id))
}

async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<NewUnit>,
) -> Result<(StatusCode, Json<UnitView>), ApiError> {
    user.require(user.role_kind().administers(), "quản lý đơn vị")?;
    check_id("id", &req.id)?;
    let name = check_text("name", "tên đơn vị", &req.name, 200)?;
    let kind = req.kind.trim().to_string();
    let parent_id = req
        .parent_id
        .clone()
        .unwrap_or_else(|| user.unit_id.clone());
    let units = access::all_units(&state.db).await?;
    let scope = Scope::within(&units, &user.unit_id);
    let parent = units
        .get(&parent_id)
        .filter(|_| scope.covers(Some(&parent_id)))
        .ok_or_else(|| {
            ApiError::unprocessable(
                "unknown_unit",
                format!("parent unit {parent_id:?} does not exist in your scope"),
                format!(
                    "Đơn vị cấp trên \"{parent_id}\" không tồn tại hoặc không thuộc đơn vị của bạn."
                ),
            )
        })?;
    let (Some(d), Some(pd)) = (depth(&kind), depth(&parent.kind)) else {
        return Err(ApiError::unprocessable(
            "invalid_kind",
            format!("kind {kind:?} must be province, district or commune"),
            "Cấp đơn vị phải là tỉnh (province), huyện (district) hoặc xã (commune).",
        ));
    };
    if d <= pd {
        return Err(ApiError::unprocessable(
            "invalid_kind",
            format!("a {kind} cannot be under a {}", parent.kind),
            format!("Không thể đặt đơn vị cấp này dưới \"{}\".", parent.name),
        ));
    }
    let inserted = sqlx::query(
        "INSERT INTO units (id, parent_id, kind, name, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&req.id)
    .bind(&parent_id)
    .bind(&kind)
    .bind(&name)
    .bind(now_ms())
    .execute(&state.db)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::duplicate("unit", "đơn vị", &req.id));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(unit = %req.id, parent = %parent_id, by = %user.username, "unit created");
    Ok((
        StatusCode::CREATED,
        Json(UnitView {
            id: req.id,
            parent_id: Some(parent_id),
            kind,
            name,
            in_scope: true,
            zones: 0,
            users: 0,
        }),
    ))
}

/// Checks that `id` is an existing unit inside the caller's scope.
async fn check_managed(state: &AppState, user: &AuthUser, id: &str) -> Result<(), ApiError> {
    user.require(user.role_kind().administers(), "quản lý đơn vị")?;
    let units = access::all_units(&state.db).await?;
    if !units.contains_key(id) || !Scope::within(&units, &user.unit_id).covers(Some(id)) {
        return Err(ApiError::not_found("unit", "đơn vị", id));
    }
    Ok(())
}

async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(change): ApiJson<UnitChange>,
) -> Result<Json<UnitView>, ApiError> {
    check_managed(&state, &user, &id).await?;
    if let Some(name) = &change.name {
        let name = check_text("name", "tên đơn vị", name, 200)?;
        sqlx::query("UPDATE units SET name = $1 WHERE id = $2")
            .bind(&name)
            .bind(&id)
            .execute(&state.db)
            .await?;
    }
    get_one(State(state), user, ApiPath(id)).await
}

async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    check_managed(&state, &user, &id).await?;
    if id == ROOT_UNIT || id == user.unit_id {
        return Err(ApiError::conflict(
            "unit_in_use",
            "cannot delete the root unit or your own unit",
            "Không thể xoá đơn vị gốc hoặc đơn vị của chính bạn.",
        ));
    }
    let used: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM units WHERE parent_id = $1) \
              + (SELECT COUNT(*) FROM zones WHERE unit_id = $1) \
              + (SELECT COUNT(*) FROM users WHERE unit_id = $1) \
              + (SELECT COUNT(*) FROM programmes WHERE unit_id = $1) \
              + (SELECT COUNT(*) FROM schedules WHERE unit_id = $1)",
    )
    .bind(&id)
    .fetch_one(&state.db)
    .await?;
    if used > 0 {
        return Err(ApiError::conflict(
            "unit_in_use",
            format!("unit {id:?} still has units, zones, users, programmes or schedules"),
            format!(
                "Không thể xoá đơn vị \"{id}\": vẫn còn đơn vị con, khu vực, người dùng, chương \
                 trình hoặc lịch phát thuộc đơn vị này."
            ),
        ));
    }
    sqlx::query("DELETE FROM units WHERE id = $1")
        .bind(&id)
        .execute(&state.db)
        .await?;
    tracing::info!(unit = %id, by = %user.username, "unit deleted");
    Ok(StatusCode::NO_CONTENT)
}
