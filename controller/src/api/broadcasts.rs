//! Live broadcasts (see [`crate::live`]):
//!
//! - `POST /api/v1/broadcasts` `{"source": {"type": "microphone"} |
//!   {"type": "relay", "url": …} | {"type": "programme", "id": …},
//!   "targets": {"zones": [], "receivers": []}, "priority":
//!   "normal"|"priority"|"emergency", "duration_ms": …}` → 201 with the
//!   broadcast (its `id` is a UUID), once the source delivers audio;
//! - `GET /api/v1/broadcasts` → the broadcasts on air (`?all=true`: the
//!   last 100, ended ones included) that target a zone or receiver under
//!   the caller's unit (a root user sees all);
//! - `GET /api/v1/broadcasts/{id}` → one broadcast, on air or ended (404
//!   outside the caller's unit, as for `DELETE`);
//! - `DELETE /api/v1/broadcasts/{id}` → ends it (its `End` frames are out
//!   when the answer comes) and answers the ended broadcast.
//!
//! Browser microphones use the WebSocket in [`super::live_ws`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use loa_schedules::{Priority, Targets};
use serde::Deserialize;

use super::access::Scope;
use super::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::auth::AuthUser;
use crate::live::{Broadcast, EndReason, LiveError, MAX_ON_AIR, SourceSpec, StartRequest};
use crate::state::AppState;

/// How many broadcasts `?all=true` lists.
const HISTORY: i64 = 100;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/broadcasts", get(list).post(create))
        .route("/broadcasts/{id}", get(get_one).delete(stop))
}

/// Body of `POST /broadcasts`.
#[derive(Deserialize)]
struct NewBroadcast {
    /// Where the audio comes from.
    source: SourceSpec,
    /// Where it plays.
    #[serde(default)]
    targets: Targets,
    /// `normal` (default), `priority` or `emergency`.
    #[serde(default)]
    priority: Option<Priority>,
    /// Ends by itself after this many milliseconds.
    #[serde(default)]
    duration_ms: Option<u64>,
}

/// Query of `GET /broadcasts`.
#[derive(Deserialize)]
struct ListQuery {
    /// Include ended broadcasts (the last [`HISTORY`]).
    #[serde(default)]
    all: Option<bool>,
}

/// A live error as the API answers it.
pub(crate) fn live_error(e: LiveError) -> ApiError {
    let text = e.to_string();
    match e {
        LiveError::Disabled => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "live_unavailable",
            text,
            "Chức năng phát trực tiếp chưa sẵn sàng (chưa kết nối tới máy chủ MQTT).",
        ),
        LiveError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            text,
            "Máy điều khiển đang tắt; vui lòng thử lại sau khi khởi động lại.",
        ),
        LiveError::NoTargets => ApiError::unprocessable(
            "no_targets",
            text,
            "Vui lòng chọn ít nhất một khu vực hoặc một loa để phát.",
        ),
        LiveError::InvalidId { field, id } => ApiError::invalid_id(field, &id),
        LiveError::UnknownZone(id) => ApiError::unprocessable(
            "unknown_zone",
            text,
            format!("Khu vực có mã \"{id}\" không tồn tại."),
        ),
        LiveError::UnknownReceiver(id) => ApiError::unprocessable(
            "unknown_receiver",
            text,
            format!("Loa có mã \"{id}\" không tồn tại."),
        ),
        LiveError::UnknownProgramme(id) => ApiError::unprocessable(
            "unknown_programme",
            text,
            format!("Chương trình có mã \"{id}\" không tồn tại."),
        ),
        LiveError::MicrophoneBusy(id) => ApiError::conflict(
            "microphone_busy",
            text,
            format!(
                "Micrô đang được dùng cho một buổi phát trực tiếp khác (mã {id}). \
                 Hãy dừng buổi phát đó trước."
            ),
        ),
        LiveError::TooMany => ApiError::conflict(
            "too_many_broadcasts",
            text,
            format!(
                "Đang có quá nhiều buổi phát trực tiếp cùng lúc (tối đa {MAX_ON_AIR}). \
                 Hãy dừng bớt một buổi phát."
            ),
        ),
        LiveError::InvalidDuration => ApiError::unprocessable(
            "invalid_duration",
            text,
            "Thời lượng phát phải từ 1 giây đến 24 giờ.",
        ),
        LiveError::InvalidUrl { url, .. } => ApiError::unprocessable(
            "invalid_relay_url",
            text,
            format!(
                "Địa chỉ luồng tiếp sóng \"{url}\" không hợp lệ: chỉ chấp nhận địa chỉ \
                 http:// hoặc https://."
            ),
        ),
        LiveError::RelayUnreachable { url, .. } => ApiError::unprocessable(
            "relay_unreachable",
            text,
            format!(
                "Không kết nối được tới luồng tiếp sóng \"{url}\". Vui lòng kiểm tra địa chỉ \
                 và kết nối mạng."
            ),
        ),
        LiveError::RelayHttp { url, status } => ApiError::unprocessable(
            "relay_http_error",
            text,
            format!("Máy chủ của luồng tiếp sóng \"{url}\" trả về lỗi HTTP {status}."),
        ),
        LiveError::RelayNotAudio { url, .. } => ApiError::unprocessable(
            "relay_not_audio",
            text,
            format!(
                "Địa chỉ \"{url}\" không phải là luồng âm thanh được hỗ trợ (MP3, AAC, Ogg \
                 Vorbis hoặc Ogg Opus)."
            ),
        ),
        LiveError::MicrophoneUnavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "microphone_unavailable",
            text,
            "Không mở được micrô của máy điều khiển. Vui lòng kiểm tra thiết bị thu âm.",
        ),
        LiveError::BrowserNeedsWebSocket => ApiError::unprocessable(
            "invalid_source",
            text,
            "Phát từ micrô của trình duyệt phải dùng kết nối WebSocket /api/v1/live/ws.",
        ),
        LiveError::InvalidAudioFormat(detail) => ApiError::unprocessable(
            "invalid_audio_format",
            text,
            format!("Định dạng âm thanh không hợp lệ: {detail}."),
        ),
        LiveError::NotFound(id) => ApiError::not_found("broadcast", "buổi phát", &id),
        LiveError::AlreadyEnded(id) => ApiError::conflict(
            "broadcast_ended",
            text,
            format!("Buổi phát \"{id}\" đã kết thúc."),
        ),
        LiveError::Db(e) => ApiError::from(e),
        LiveError::Internal(detail) => ApiError::internal(detail),
    }
}

/// Refuses a path id that is not a UUID.
fn check_broadcast_id(id: &str) -> Result<(), ApiError> {
    if uuid::Uuid::parse_str(id).is_ok() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_id",
            format!("broadcast id {id:?} is not a UUID"),
            format!("Mã buổi phát \"{id}\" không hợp lệ."),
        ))
    }
}

async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<NewBroadcast>,
) -> Result<(StatusCode, Json<Broadcast>), ApiError> {
    super::access::authorize_broadcast(&state.db, &user, &body.targets).await?;
    let request = StartRequest {
        source: body.source,
        targets: body.targets,
        priority: body.priority.unwrap_or_default(),
        duration: body.duration_ms.map(std::time::Duration::from_millis),
        created_by: user.username,
        occurrence: None,
    };
    let broadcast = state
        .live
        .start_broadcast(request)
        .await
        .map_err(live_error)?;
    Ok((StatusCode::CREATED, Json(broadcast)))
}

/// Keeps the broadcasts that target a zone or receiver in the user's scope
/// (all of them for a user at the root).
async fn in_scope(
    state: &AppState,
    user: &AuthUser,
    broadcasts: Vec<Broadcast>,
) -> Result<Vec<Broadcast>, ApiError> {
    let scope = Scope::of(&state.db, user).await?;
    if scope.is_root() {
        return Ok(broadcasts);
    }
    let zones = scope.zones(&state.db).await?;
    let receivers = scope.receivers(&state.db).await?;
    Ok(broadcasts
        .into_iter()
        .filter(|b| scope.touches(&zones, &receivers, &b.targets))
        .collect())
}

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Broadcast>>, ApiError> {
    let broadcasts = if q.all.unwrap_or(false) {
        state.live.recent(HISTORY).await.map_err(live_error)?
    } else {
        state.live.list_on_air()
    };
    in_scope(&state, &user, broadcasts).await.map(Json)
}

/// One broadcast the user may see, or 404.
async fn fetch_visible(state: &AppState, user: &AuthUser, id: &str) -> Result<Broadcast, ApiError> {
    check_broadcast_id(id)?;
    let found = state.live.get(id).await.map_err(live_error)?;
    in_scope(state, user, found.into_iter().collect())
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("broadcast", "buổi phát", id))
}

async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Broadcast>, ApiError> {
    fetch_visible(&state, &user, &id).await.map(Json)
}

async fn stop(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Broadcast>, ApiError> {
    user.require(user.role_kind().broadcasts(), "dừng buổi phát trực tiếp")?;
    fetch_visible(&state, &user, &id).await?;
    let ended = state
        .live
        .stop(&id, EndReason::Stopped)
        .await
        .map_err(live_error)?;
    tracing::info!(broadcast = %id, by = %user.username, "broadcast stopped");
    Ok(Json(ended))
}
