//! Receivers (loudspeaker boxes). Creating one returns its own bearer token
//! once; only the hash is kept. Listing shows presence as reported over
//! MQTT by [`crate::ingest`]: a receiver is `online` while its last status
//! said so and its last heartbeat is at most [`ONLINE_WINDOW_MS`] old.
//!
//! `POST`/`GET /api/v1/receivers`, `GET`/`PATCH`/`DELETE /api/v1/receivers/{id}`,
//! `POST /api/v1/receivers/{id}/token` (replace a lost token),
//! `PUT /api/v1/receivers/{id}/volume` (the normal output volume, 0–100 %,
//! and optionally the emergency one,
//! published to the receiver as retained [`loa_protocol::ReceiverSettings`]
//! by the distributor), `POST /api/v1/receivers/{id}/test-tone` (a 1 kHz
//! tone for 1–30 s, sent as a [`loa_protocol::ReceiverCommand`]; the
//! receiver refuses it while a programme or broadcast is on air).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::access::{self, Scope};
use super::audit::AuditDetail;
use super::error::is_unique_violation;
use super::extract::{check_id, check_text};
use super::{ApiError, ApiJson, ApiPath};
use crate::auth::{self, AuthUser};
use crate::db::{from_ms, now_ms};
use crate::state::AppState;

/// A receiver whose last heartbeat is older than this is shown offline even
/// if its last status said online (heartbeats come every 10 s; three missed
/// plus slack).
pub const ONLINE_WINDOW_MS: i64 = 35_000;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/receivers", get(list).post(create))
        .route("/receivers/{id}", get(get_one).patch(update).delete(delete))
        .route("/receivers/{id}/token", post(rotate_token))
        .route("/receivers/{id}/volume", put(set_volume))
        .route("/receivers/{id}/test-tone", post(test_tone))
}

/// Body of `PUT /receivers/{id}/volume`.
#[derive(Deserialize)]
struct VolumeChange {
    /// Percent of the normal output level, 0–100. Any JSON number is
    /// accepted here and checked below, so an out-of-range value gets the
    /// project's 400 rather than a parse error.
    volume: f64,
    /// Percent of the level of emergency broadcasts, 0–100; absent keeps
    /// the one set before (or the receiver's own `--emergency-volume`).
    #[serde(default)]
    emergency_volume: Option<f64>,
}

/// A whole percentage 0–100, or the project's 400 naming `field`.
fn percent(field: &str, value: f64) -> Result<i64, ApiError> {
    if !value.is_finite() || !(0.0..=100.0).contains(&value) || value.fract() != 0.0 {
        let vi = if field == "volume" {
            "Âm lượng phải là số nguyên từ 0 đến 100."
        } else {
            "Âm lượng khẩn cấp phải là số nguyên từ 0 đến 100."
        };
        return Err(ApiError::bad_request(
            "invalid_volume",
            format!("{field} must be a whole number from 0 to 100, not {value}"),
            vi,
        ));
    }
    Ok(value as i64)
}

/// Body of `POST /receivers/{id}/test-tone`.
#[derive(Deserialize, Default)]
struct ToneRequest {
    /// Length in seconds, 1–30 (default 5).
    #[serde(default)]
    seconds: Option<f64>,
}

/// Answer to `POST /receivers/{id}/test-tone`.
#[derive(Serialize)]
struct ToneAccepted {
    command_id: String,
}

/// Default test tone length, seconds.
const DEFAULT_TONE_SECS: u32 = 5;

/// Body of `POST /receivers`.
#[derive(Deserialize)]
struct NewReceiver {
    /// Chosen by the officer; becomes the MQTT topic level.
    id: String,
    /// Display name, e.g. "Loa cổng chợ".
    name: String,
    /// The zone it belongs to.
    zone: String,
}

/// Body of `PATCH /receivers/{id}`; absent fields are unchanged.
#[derive(Deserialize)]
struct ReceiverChange {
    /// New display name.
    #[serde(default)]
    name: Option<String>,
    /// New zone.
    #[serde(default)]
    zone: Option<String>,
    /// Latitude in degrees (WGS 84), `null` to clear.
    #[serde(default, deserialize_with = "double_option")]
    lat: Option<Option<f64>>,
    /// Longitude in degrees (WGS 84), `null` to clear.
    #[serde(default, deserialize_with = "double_option")]
    lon: Option<Option<f64>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

/// Answer to a creation or token replacement: the token, shown this once.
#[derive(Serialize)]
struct ReceiverCredential {
    /// The receiver's id.
    id: String,
    /// Bearer token for the receiver's audio downloads.
    token: String,
    /// Display name.
    name: String,
    /// Zone id.
    zone: String,
}

/// A receiver as the API lists it.
#[derive(Serialize)]
struct Receiver {
    /// The receiver's id.
    id: String,
    /// Display name.
    name: String,
    /// Zone id.
    zone: String,
    /// Whether it is connected and its heartbeat is recent.
    online: bool,
    /// Last status received.
    last_seen: Option<DateTime<Utc>>,
    /// What it is playing (`{"programme_id","event_id","started_at"}`), if anything.
    now_playing: Option<serde_json::Value>,
    /// Programme ids whose audio it has verified in its cache.
    cached: Vec<String>,
    /// Version of the schedule it reports following.
    schedule_version: Option<i64>,
    /// When it was registered.
    created_at: DateTime<Utc>,
    /// Where it stands (degrees), if known.
    lat: Option<f64>,
    lon: Option<f64>,
    /// Normal output volume, percent: the one set from the console, else
    /// the one the receiver reports (its `--volume`), else `null`.
    volume: Option<i64>,
    /// Whether the volume was set from the console (`false`: the
    /// receiver's own `--volume` is in force).
    volume_set: bool,
    /// The normal volume the receiver last reported having in force, percent.
    reported_volume: Option<i64>,
    /// Emergency output volume set from the console, percent; `null`: the
    /// receiver's own `--emergency-volume` is in force.
    emergency_volume: Option<i64>,
    /// Whether its amplifier is on, as last reported; `null` when unknown
    /// (offline, or a receiver that does not report it).
    amplifier_on: Option<bool>,
    /// Messages and live frames it refused lately (forged, altered,
    /// replayed, stale, malformed): `[{"topic","reason","at"}]`, newest last.
    rejected_messages: Vec<loa_protocol::signed::Rejection>,
}

/// One `receivers` row.
#[derive(sqlx::FromRow)]
struct ReceiverRow {
    id: String,
    name: String,
    zone_id: String,
    online: bool,
    last_seen: Option<i64>,
    now_playing: Option<String>,
    cached: String,
    schedule_version: Option<i64>,
    created_at: i64,
    lat: Option<f64>,
    lon: Option<f64>,
    rejected_messages: String,
    volume: Option<i64>,
    reported_volume: Option<i64>,
    emergency_volume: Option<i64>,
    amplifier_on: Option<bool>,
}

impl ReceiverRow {
    fn into_api(self, now: i64) -> Receiver {
        let online = self.online && self.last_seen.is_some_and(|t| now - t <= ONLINE_WINDOW_MS);
        Receiver {
            online,
            volume: self.volume.or(self.reported_volume),
            volume_set: self.volume.is_some(),
            reported_volume: self.reported_volume,
            emergency_volume: self.emergency_volume,
            amplifier_on: self.amplifier_on.filter(|_| online),
            last_seen: self.last_seen.map(from_ms),
            now_playing: self
                .now_playing
                .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
                .filter(|v| !v.is_null()),
            cached: serde_json::from_str(&self.cached).unwrap_or_default(),
            schedule_version: self.schedule_version,
            created_at: from_ms(self.created_at),
            id: self.id,
            name: self.name,
            zone: self.zone_id,
            lat: self.lat,
            lon: self.lon,
            rejected_messages: serde_json::from_str(&self.rejected_messages).unwrap_or_default(),
        }
    }
}

macro_rules! select_receivers {
    () => {
        "SELECT id, name, zone_id, online, last_seen, now_playing, cached, schedule_version, created_at, \
         lat, lon, rejected_messages, volume, reported_volume, emergency_volume, amplifier_on FROM receivers"
    };
}

/// Refuses a zone id that does not exist (422: the request names it in its
/// body) or lies outside the user's unit (403).
pub(super) async fn check_zone(
    state: &AppState,
    user: &AuthUser,
    zone: &str,
) -> Result<(), ApiError> {
    check_id("zone", zone)?;
    let scope = Scope::of(&state.db, user).await?;
    let in_scope = scope.zones(&state.db).await?.contains_key(zone);
    let exists: Option<String> = sqlx::query_scalar("SELECT id FROM zones WHERE id = $1")
        .bind(zone)
        .fetch_optional(&state.db)
        .await?;
    match exists {
        Some(_) if in_scope => Ok(()),
        Some(_) => Err(access::out_of_scope("zone", "khu vực", zone)),
        None => Err(ApiError::unprocessable(
            "unknown_zone",
            format!("zone {zone:?} does not exist"),
            format!("Khu vực \"{zone}\" không tồn tại. Hãy tạo khu vực trước."),
        )),
    }
}

async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<NewReceiver>,
) -> Result<(StatusCode, Json<ReceiverCredential>), ApiError> {
    user.require(user.role_kind().manages_devices(), "quản lý cụm loa")?;
    check_id("id", &req.id)?;
    let name = check_text("name", "tên loa", &req.name, 200)?;
    check_zone(&state, &user, &req.zone).await?;
    let token = auth::new_token();
    let inserted = sqlx::query(
        "INSERT INTO receivers (id, name, zone_id, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&req.id)
    .bind(&name)
    .bind(&req.zone)
    .bind(auth::token_hash(&token))
    .bind(now_ms())
    .execute(&state.db)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::duplicate("receiver", "loa", &req.id));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(receiver = %req.id, zone = %req.zone, "receiver created");
    state.distributor.schedules_changed();
    Ok((
        StatusCode::CREATED,
        Json(ReceiverCredential {
            id: req.id,
            token,
            name,
            zone: req.zone,
        }),
    ))
}

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<Receiver>>, ApiError> {
    let scope = Scope::of(&state.db, &user).await?;
    let visible = scope.receivers(&state.db).await?;
    let rows: Vec<ReceiverRow> = sqlx::query_as(concat!(select_receivers!(), " ORDER BY id"))
        .fetch_all(&state.db)
        .await?;
    let now = now_ms();
    Ok(Json(
        rows.into_iter()
            .filter(|r| visible.contains_key(&r.id))
            .map(|r| r.into_api(now))
            .collect(),
    ))
}

/// A receiver in the user's scope, or 404.
async fn fetch(state: &AppState, user: &AuthUser, id: &str) -> Result<Receiver, ApiError> {
    let scope = Scope::of(&state.db, user).await?;
    let visible = scope.receivers(&state.db).await?;
    let row: Option<ReceiverRow> = sqlx::query_as(concat!(select_receivers!(), " WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.db)
        .await?;
    row.filter(|r| visible.contains_key(&r.id))
        .map(|r| r.into_api(now_ms()))
        .ok_or_else(|| ApiError::not_found("receiver", "loa", id))
}

async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Receiver>, ApiError> {
    fetch(&state, &user, &id).await.map(Json)
}

/// Checks a coordinate: finite and within `limit` degrees.
fn check_degrees(field: &str, value: Option<f64>, limit: f64) -> Result<Option<f64>, ApiError> {
    match value {
        Some(v) if !v.is_finite() || v.abs() > limit => Err(ApiError::unprocessable(
            "invalid_position",
            format!("{field} must be between -{limit} and {limit} degrees"),
            "Toạ độ không hợp lệ: vĩ độ từ −90 đến 90, kinh độ từ −180 đến 180.",
        )),
        v => Ok(v),
    }
}

async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(change): ApiJson<ReceiverChange>,
) -> Result<Json<Receiver>, ApiError> {
    user.require(user.role_kind().manages_devices(), "quản lý cụm loa")?;
    let current = fetch(&state, &user, &id).await?;
    let lat = match change.lat {
        Some(v) => check_degrees("lat", v, 90.0)?,
        None => current.lat,
    };
    let lon = match change.lon {
        Some(v) => check_degrees("lon", v, 180.0)?,
        None => current.lon,
    };
    let name = match &change.name {
        Some(n) => check_text("name", "tên loa", n, 200)?,
        None => current.name.clone(),
    };
    let zone = match &change.zone {
        Some(z) => {
            check_zone(&state, &user, z).await?;
            z.clone()
        }
        None => current.zone.clone(),
    };
    sqlx::query("UPDATE receivers SET name = $1, zone_id = $2, lat = $3, lon = $4 WHERE id = $5")
        .bind(&name)
        .bind(&zone)
        .bind(lat)
        .bind(lon)
        .bind(&id)
        .execute(&state.db)
        .await?;
    if zone != current.zone {
        tracing::info!(receiver = %id, from = %current.zone, to = %zone, "receiver moved to another zone");
        state.distributor.schedules_changed();
    }
    fetch(&state, &user, &id).await.map(Json)
}

/// Deletes a receiver and its direct schedule targets; its proof-of-play
/// history is kept.
async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    user.require(user.role_kind().manages_devices(), "quản lý cụm loa")?;
    fetch(&state, &user, &id).await?;
    let mut tx = state.db.begin().await?;
    sqlx::query("DELETE FROM schedule_targets WHERE kind = 'receiver' AND target_id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let deleted = sqlx::query("DELETE FROM receivers WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found("receiver", "loa", &id));
    }
    tx.commit().await?;
    tracing::info!(receiver = %id, "receiver deleted");
    state.distributor.schedules_changed();
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces a receiver's token (the old one stops working at once).
async fn rotate_token(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ReceiverCredential>, ApiError> {
    user.require(user.role_kind().manages_devices(), "quản lý cụm loa")?;
    let current = fetch(&state, &user, &id).await?;
    let token = auth::new_token();
    sqlx::query("UPDATE receivers SET token_hash = $1 WHERE id = $2")
        .bind(auth::token_hash(&token))
        .bind(&id)
        .execute(&state.db)
        .await?;
    tracing::info!(receiver = %id, "receiver token replaced");
    Ok(Json(ReceiverCredential {
        id,
        token,
        name: current.name,
        zone: current.zone,
    }))
}

/// Sets a receiver's normal output volume (technicians and admins, within
/// their unit) and has the distributor publish the new settings.
async fn set_volume(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(change): ApiJson<VolumeChange>,
) -> Result<Response, ApiError> {
    user.require(user.role_kind().manages_devices(), "chỉnh âm lượng cụm loa")?;
    let current = fetch(&state, &user, &id).await?;
    let volume = percent("volume", change.volume)?;
    let emergency_volume = change
        .emergency_volume
        .map(|v| percent("emergency_volume", v))
        .transpose()?;
    let previous = current.volume_set.then_some(current.volume).flatten();
    sqlx::query(
        "UPDATE receivers SET volume = $1, emergency_volume = COALESCE($2, emergency_volume),
         settings_version = MAX(settings_version + 1, $3)
         WHERE id = $4",
    )
    .bind(volume)
    .bind(emergency_volume)
    .bind(now_ms())
    .bind(&id)
    .execute(&state.db)
    .await?;
    state.distributor.settings_changed(&id);
    tracing::info!(receiver = %id, volume, ?emergency_volume, "receiver volume set");
    let mut response = Json(fetch(&state, &user, &id).await?).into_response();
    let mut detail = serde_json::json!({"from": previous, "to": volume});
    if let Some(e) = emergency_volume {
        detail["emergency_from"] = serde_json::json!(current.emergency_volume);
        detail["emergency_to"] = serde_json::json!(e);
    }
    response.extensions_mut().insert(AuditDetail(detail));
    Ok(response)
}

/// Asks a receiver to play a test tone (technicians and admins, within
/// their unit). 202: the command is sent; the receiver plays it unless a
/// programme or broadcast is on air, and its status shows the amplifier.
async fn test_tone(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    user.require(user.role_kind().manages_devices(), "phát âm thử")?;
    fetch(&state, &user, &id).await?;
    let request: ToneRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ToneRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("invalid JSON body: {e}"),
                "Dữ liệu gửi lên không hợp lệ.",
            )
        })?
    };
    let max = loa_protocol::MAX_TEST_TONE_SECS;
    let seconds = match request.seconds {
        None => DEFAULT_TONE_SECS,
        Some(s) if s.is_finite() && s.fract() == 0.0 && (1.0..=f64::from(max)).contains(&s) => {
            s as u32
        }
        Some(s) => {
            return Err(ApiError::bad_request(
                "invalid_seconds",
                format!("seconds must be a whole number from 1 to {max}, not {s}"),
                format!("Thời lượng âm thử phải là số nguyên từ 1 đến {max} giây."),
            ));
        }
    };
    let command = loa_protocol::ReceiverCommand {
        command_id: uuid::Uuid::new_v4().to_string(),
        issued_at: Utc::now(),
        kind: loa_protocol::CommandKind::TestTone { seconds },
    };
    if let Err(error) = state.distributor.send_command(&id, &command).await {
        tracing::error!(receiver = %id, %error, "cannot send the test tone command");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bus_unavailable",
            format!("cannot reach the receivers' MQTT broker: {error}"),
            "Không gửi được lệnh tới cụm loa (chưa kết nối tới máy chủ MQTT). Vui lòng thử lại.",
        ));
    }
    tracing::info!(receiver = %id, seconds, command = %command.command_id, "test tone sent");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(ToneAccepted {
            command_id: command.command_id.clone(),
        }),
    )
        .into_response();
    response.extensions_mut().insert(AuditDetail(
        serde_json::json!({"seconds": seconds, "command_id": command.command_id}),
    ));
    Ok(response)
}
