//! Programmes: uploaded audio, transcoded to Ogg Opus, with a title and a
//! category. `POST /api/v1/programmes` (multipart, see [`super::upload`]),
//! `GET /api/v1/programmes`, `GET`/`DELETE /api/v1/programmes/{id}`,
//! `GET /api/v1/programmes/{id}/audio` (see [`super::audio`]).

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::access::{self, Scope};
use super::{ApiError, ApiPath, ApiQuery};
use crate::auth::AuthUser;
use crate::db::from_ms;
use crate::state::AppState;

/// Bytes allowed on top of the file itself for the other form fields and
/// multipart framing; the file's own limit is enforced while streaming.
pub(super) const FORM_OVERHEAD_BYTES: u64 = 1024 * 1024;

/// Routes of this resource. Uploads may be up to `max_upload_bytes`, so the
/// upload route replaces axum's 2 MB default body limit.
pub fn router(max_upload_bytes: u64) -> Router<AppState> {
    let body_limit =
        usize::try_from(max_upload_bytes.saturating_add(FORM_OVERHEAD_BYTES)).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/programmes",
            get(list)
                .post(super::upload::create)
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/programmes/{id}", get(get_one).delete(delete))
        .route("/programmes/{id}/audio", get(super::audio::get))
}

/// A programme as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Programme {
    /// The programme's id (generated unless the upload chose one).
    pub id: String,
    /// Title shown to officers.
    pub title: String,
    /// Category (e.g. "thời sự", "chuyển đổi số").
    pub category: String,
    /// Length of the audio in milliseconds.
    pub duration_ms: i64,
    /// Hex SHA-256 of the Ogg Opus file; receivers verify downloads with it.
    pub sha256: String,
    /// Size of the Ogg Opus file.
    pub bytes: i64,
    /// Opus bitrate in bits per second.
    pub bitrate: i64,
    /// Name of the uploaded file, for the officer's reference.
    pub original_name: Option<String>,
    /// When it was uploaded.
    #[sqlx(try_from = "i64")]
    pub created_at: Millis,
    /// Approval state: `draft`, `pending`, `approved` or `rejected`; only
    /// approved programmes air (see [`super::approvals`]).
    pub status: String,
    /// The unit it belongs to (that of its uploader; `None` = root).
    pub unit_id: Option<String>,
    /// Username of the uploader (`None` for rows from before accounts).
    pub created_by: Option<String>,
    /// Who approved or rejected it.
    pub reviewed_by: Option<String>,
    /// When it was approved or rejected (RFC 3339).
    #[serde(serialize_with = "serialize_opt_ms")]
    pub reviewed_at: Option<i64>,
    /// The approver's note (e.g. why it was rejected).
    pub review_note: Option<String>,
}

/// Serialises optional unix milliseconds as an RFC 3339 instant or null.
fn serialize_opt_ms<S: serde::Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    v.map(Millis).serialize(s)
}

/// A DB instant (unix ms) that serialises as RFC 3339.
#[derive(Debug, Clone, Copy)]
pub struct Millis(pub i64);

impl From<i64> for Millis {
    fn from(ms: i64) -> Self {
        Millis(ms)
    }
}

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t: DateTime<Utc> = from_ms(self.0);
        t.serialize(s)
    }
}

macro_rules! select_programmes {
    () => {
        "SELECT id, title, category, duration_ms, sha256, bytes, bitrate, original_name, created_at, \
         status, unit_id, created_by, reviewed_by, reviewed_at, review_note FROM programmes"
    };
}

/// Loads one programme, or 404.
pub async fn fetch(state: &AppState, id: &str) -> Result<Programme, ApiError> {
    let row: Option<Programme> = sqlx::query_as(concat!(select_programmes!(), " WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.db)
        .await?;
    row.ok_or_else(|| ApiError::not_found("programme", "chương trình", id))
}

/// Query of `GET /programmes`.
#[derive(Deserialize)]
struct ListQuery {
    /// Only programmes in this approval state.
    #[serde(default)]
    status: Option<String>,
}

/// Programmes the user may see: those of their unit and below, and those
/// shared from the units above.
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Programme>>, ApiError> {
    let scope = Scope::of(&state.db, &user).await?;
    let rows: Vec<Programme> = sqlx::query_as(concat!(
        select_programmes!(),
        " WHERE ($1 IS NULL OR status = $1) ORDER BY created_at DESC, id"
    ))
    .bind(q.status.filter(|s| !s.trim().is_empty()))
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .filter(|p| scope.sees(p.unit_id.as_deref()))
            .collect(),
    ))
}

/// Loads a programme the user may see, or 404.
pub async fn fetch_visible(
    state: &AppState,
    user: &AuthUser,
    id: &str,
) -> Result<Programme, ApiError> {
    let programme = fetch(state, id).await?;
    let scope = Scope::of(&state.db, user).await?;
    if scope.sees(programme.unit_id.as_deref()) {
        Ok(programme)
    } else {
        Err(ApiError::not_found("programme", "chương trình", id))
    }
}

async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Programme>, ApiError> {
    fetch_visible(&state, &user, &id).await.map(Json)
}

/// Deletes a programme no schedule uses; its audio file goes too unless
/// another programme has the same content.
async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let role = user.role_kind();
    user.require(role.edits(), "xoá chương trình")?;
    let programme = fetch_visible(&state, &user, &id).await?;
    let scope = Scope::of(&state.db, &user).await?;
    if !scope.covers(programme.unit_id.as_deref()) {
        return Err(access::out_of_scope("programme", "chương trình", &id));
    }
    if programme.status == "approved" && !role.approves() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only approvers may delete an approved programme",
            "Chỉ người duyệt mới được xoá chương trình đã duyệt.",
        ));
    }
    let _guard = state.store.commit_lock().await;
    let mut tx = state.db.begin().await?;
    let schedules: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM schedules WHERE programme_id = $1")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
    if schedules > 0 {
        return Err(ApiError::conflict(
            "programme_in_use",
            format!("programme {id:?} is used by {schedules} schedule(s)"),
            format!(
                "Không thể xoá chương trình \"{id}\": đang có {schedules} lịch phát dùng chương trình này."
            ),
        ));
    }
    sqlx::query("DELETE FROM programmes WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let others: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM programmes WHERE sha256 = $1")
        .bind(&programme.sha256)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    if others == 0
        && let Err(e) = state.store.remove(&programme.sha256).await
    {
        tracing::warn!(error = %e, "cannot remove the audio of a deleted programme");
    }
    tracing::info!(programme = %id, "programme deleted");
    Ok(StatusCode::NO_CONTENT)
}
