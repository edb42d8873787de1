//! Enrollment of receivers that created their own key pair (see
//! [`loa_protocol::enroll`]): no shared secret, no default credential.
//!
//! - `POST /api/v1/enrollments` (no credentials; at most
//!   [`MAX_REQUESTS_PER_WINDOW`] per remote address per
//!   [`RATE_WINDOW`], and at most [`MAX_PENDING`] pending at once): a
//!   receiver asks to join with its public key and the code it shows; the
//!   code is recomputed from the key and a mismatch refused. 202 while
//!   pending. A pending request expires [`PENDING_LIFETIME_MS`] after the
//!   receiver last sent it.
//! - `GET /api/v1/enrollments` (technicians, admins): pending requests.
//! - `POST /api/v1/enrollments/{code}/accept` `{"id","name","zone"}`
//!   (technicians, admins; zone within their unit): creates the receiver,
//!   validated as `POST /receivers`, bound to the enrolled key.
//! - `POST /api/v1/enrollments/{code}/reject`.
//! - `POST /api/v1/enrollments/claim` (no credentials, but signed by the
//!   device key, timestamp within 5 min): 202 while pending, 403 if
//!   rejected; once accepted, the first claim gets the receiver's id, zone,
//!   a freshly issued token and the controller's key (200); the token is
//!   created at that moment, only its hash kept, so it never rests in clear
//!   anywhere on the controller. A later claim gets 409.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use loa_protocol::enroll::{self, EnrollmentClaim, EnrollmentGrant, EnrollmentRequest};
use loa_protocol::signed;
use serde::{Deserialize, Serialize};

use super::audit::AuditDetail;
use super::error::is_unique_violation;
use super::extract::{check_id, check_text};
use super::receivers::check_zone;
use super::{ApiError, ApiJson, ApiPath};
use crate::auth::{self, AuthUser};
use crate::db::{from_ms, now_ms};
use crate::state::AppState;

/// A pending request is forgotten this long after the receiver last sent it.
pub const PENDING_LIFETIME_MS: i64 = 24 * 3600 * 1000;
/// Enrollment requests accepted from one remote address per [`RATE_WINDOW`].
pub const MAX_REQUESTS_PER_WINDOW: u32 = 20;
/// The rate-limiting window.
pub const RATE_WINDOW: Duration = Duration::from_secs(600);
/// Most pending (unexpired) requests at once; more are refused with 429.
pub const MAX_PENDING: i64 = 1000;
/// Longest accepted host name.
const MAX_HOSTNAME_CHARS: usize = 253;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/enrollments", get(list).post(request))
        .route("/enrollments/claim", post(claim))
        .route("/enrollments/{code}/accept", post(accept))
        .route("/enrollments/{code}/reject", post(reject))
}

/// Enrollment requests per remote address, in memory (see the module docs).
#[derive(Debug, Default)]
pub struct EnrollLimiter {
    entries: Mutex<HashMap<String, (Instant, u32)>>,
}

impl EnrollLimiter {
    /// Counts a request from `addr`; `false` if it is over the limit.
    fn allow(&self, addr: &str) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if entries.len() > 10_000 {
            entries.retain(|_, (start, _)| now.duration_since(*start) < RATE_WINDOW);
        }
        let entry = entries.entry(addr.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= RATE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= MAX_REQUESTS_PER_WINDOW
    }
}

/// Answer to `POST /enrollments` and to a pending claim.
#[derive(Serialize)]
struct Pending {
    /// The code (as the receiver shows it).
    code: String,
    /// `pending` or `accepted`.
    state: String,
    /// When a pending request will be forgotten unless sent again.
    expires_at: DateTime<Utc>,
}

/// A pending request as listed for technicians.
#[derive(Serialize)]
struct Enrollment {
    code: String,
    hostname: String,
    requested_id: Option<String>,
    remote_addr: Option<String>,
    /// Fingerprint of the device key (compare by eye if in doubt).
    fingerprint: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct EnrollmentRow {
    public_key: String,
    code: String,
    hostname: String,
    requested_id: Option<String>,
    remote_addr: Option<String>,
    created_at: i64,
    state: String,
    receiver_id: Option<String>,
    token_issued: bool,
}

/// Body of `POST /enrollments/{code}/accept`.
#[derive(Deserialize)]
struct Acceptance {
    id: String,
    name: String,
    zone: String,
}

/// Answer to an acceptance.
#[derive(Serialize)]
struct Accepted {
    id: String,
    name: String,
    zone: String,
    code: String,
}

/// Answer to a rejection.
#[derive(Serialize)]
struct Rejected {
    code: String,
    state: &'static str,
}

fn expires(created_at: i64) -> DateTime<Utc> {
    from_ms(created_at + PENDING_LIFETIME_MS)
}

fn is_expired(row: &EnrollmentRow, now: i64) -> bool {
    row.state == "pending" && now - row.created_at > PENDING_LIFETIME_MS
}

fn rejected_error() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "enrollment_rejected",
        "a technician rejected this device's enrollment",
        "Kỹ thuật viên đã từ chối đăng ký thiết bị này.",
    )
}

async fn row_by_key(state: &AppState, key: &str) -> Result<Option<EnrollmentRow>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT public_key, code, hostname, requested_id, remote_addr, created_at, state, \
         receiver_id, token_issued FROM enrollments WHERE public_key = $1",
    )
    .bind(key)
    .fetch_optional(&state.db)
    .await?)
}

/// The one pending, unexpired request with this code (path `{code}`).
async fn pending_by_code(state: &AppState, code: &str) -> Result<EnrollmentRow, ApiError> {
    let not_found = || ApiError::not_found("enrollment", "yêu cầu đăng ký", code);
    let canonical = enroll::normalize_code(code).ok_or_else(not_found)?;
    let rows: Vec<EnrollmentRow> = sqlx::query_as(
        "SELECT public_key, code, hostname, requested_id, remote_addr, created_at, state, \
         receiver_id, token_issued FROM enrollments WHERE code = $1 AND state = 'pending' \
         AND created_at >= $2",
    )
    .bind(&canonical)
    .bind(now_ms() - PENDING_LIFETIME_MS)
    .fetch_all(&state.db)
    .await?;
    let mut rows = rows.into_iter();
    match (rows.next(), rows.next()) {
        (Some(row), None) => Ok(row),
        (None, _) => Err(not_found()),
        (Some(_), Some(_)) => Err(ApiError::conflict(
            "ambiguous_code",
            format!("two pending devices show the code {canonical}; reject both and restart them"),
            format!(
                "Có hai thiết bị cùng mã {canonical}. Hãy từ chối cả hai và khởi động lại chúng."
            ),
        )),
    }
}

/// `POST /enrollments`: a receiver asks to join.
async fn request(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiJson(req): ApiJson<EnrollmentRequest>,
) -> Result<Response, ApiError> {
    let remote = connect.map(|Extension(ConnectInfo(addr))| addr.ip().to_string());
    if !state
        .enroll_limiter
        .allow(remote.as_deref().unwrap_or("unknown"))
    {
        tracing::warn!(remote = ?remote, "enrollment requests over the rate limit");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_enrollments",
            format!(
                "more than {MAX_REQUESTS_PER_WINDOW} enrollment requests from this address in {} min",
                RATE_WINDOW.as_secs() / 60
            ),
            "Quá nhiều yêu cầu đăng ký thiết bị từ địa chỉ này. Vui lòng thử lại sau.",
        ));
    }
    let key = signed::parse_public_key(&req.public_key).map_err(|e| {
        ApiError::bad_request(
            "invalid_public_key",
            format!("public_key: {e}"),
            "Khóa công khai của thiết bị không hợp lệ.",
        )
    })?;
    let public_key = signed::public_key_base64(&key);
    let code = enroll::enrollment_code(&key);
    if enroll::normalize_code(&req.code).as_deref() != Some(code.as_str()) {
        return Err(ApiError::unprocessable(
            "code_mismatch",
            "the enrollment code does not belong to this public key",
            "Mã đăng ký không khớp với khóa của thiết bị.",
        ));
    }
    let hostname = check_text("hostname", "tên máy", &req.hostname, MAX_HOSTNAME_CHARS)?;
    if let Some(id) = &req.requested_id {
        check_id("requested_id", id)?;
    }
    let now = now_ms();
    let bound: Option<String> =
        sqlx::query_scalar("SELECT id FROM receivers WHERE public_key = $1")
            .bind(&public_key)
            .fetch_optional(&state.db)
            .await?;
    let existing = row_by_key(&state, &public_key).await?;
    let answer = |state: &str, created_at: i64| Pending {
        code: code.clone(),
        state: state.to_string(),
        expires_at: expires(created_at),
    };
    match existing {
        Some(row) if row.state == "rejected" => Err(rejected_error()),
        Some(row) if row.state == "accepted" && bound.is_some() => {
            Ok((StatusCode::OK, Json(answer("accepted", row.created_at))).into_response())
        }
        Some(_) => {
            // Pending (or expired, or accepted for a receiver since deleted):
            // waiting again from now.
            sqlx::query(
                "UPDATE enrollments SET hostname = $1, requested_id = $2, remote_addr = $3, \
                 created_at = $4, state = 'pending', receiver_id = NULL, token_issued = FALSE, \
                 decided_at = NULL, decided_by = NULL WHERE public_key = $5",
            )
            .bind(&hostname)
            .bind(&req.requested_id)
            .bind(&remote)
            .bind(now)
            .bind(&public_key)
            .execute(&state.db)
            .await?;
            Ok((StatusCode::ACCEPTED, Json(answer("pending", now))).into_response())
        }
        None => {
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM enrollments WHERE state = 'pending' AND created_at >= $1",
            )
            .bind(now - PENDING_LIFETIME_MS)
            .fetch_one(&state.db)
            .await?;
            if pending >= MAX_PENDING {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_pending",
                    format!("{MAX_PENDING} enrollment requests are already waiting"),
                    "Đã có quá nhiều thiết bị chờ đăng ký. Hãy xử lý các yêu cầu đang chờ trước.",
                ));
            }
            sqlx::query("DELETE FROM enrollments WHERE state = 'pending' AND created_at < $1")
                .bind(now - PENDING_LIFETIME_MS)
                .execute(&state.db)
                .await?;
            sqlx::query(
                "INSERT INTO enrollments (public_key, code, hostname, requested_id, remote_addr, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&public_key)
            .bind(&code)
            .bind(&hostname)
            .bind(&req.requested_id)
            .bind(&remote)
            .bind(now)
            .execute(&state.db)
            .await?;
            tracing::info!(%code, %hostname, remote = ?remote, fingerprint = %signed::fingerprint(&key),
                "a device asks to be enrolled");
            Ok((StatusCode::ACCEPTED, Json(answer("pending", now))).into_response())
        }
    }
}

/// `GET /enrollments`: pending requests, oldest first.
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<Enrollment>>, ApiError> {
    user.require(user.role_kind().manages_devices(), "quản lý cụm loa")?;
    let now = now_ms();
    let rows: Vec<EnrollmentRow> = sqlx::query_as(
        "SELECT public_key, code, hostname, requested_id, remote_addr, created_at, state, \
         receiver_id, token_issued FROM enrollments WHERE state = 'pending' \
         ORDER BY created_at, code",
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .filter(|r| !is_expired(r, now))
            .map(|r| Enrollment {
                fingerprint: signed::parse_public_key(&r.public_key)
                    .map(|k| signed::fingerprint(&k))
                    .unwrap_or_default(),
                code: r.code,
                hostname: r.hostname,
                requested_id: r.requested_id,
                remote_addr: r.remote_addr,
                created_at: from_ms(r.created_at),
                expires_at: expires(r.created_at),
            })
            .collect(),
    ))
}

/// `POST /enrollments/{code}/accept`: creates the receiver for the device.
async fn accept(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(code): ApiPath<String>,
    ApiJson(req): ApiJson<Acceptance>,
) -> Result<Response, ApiError> {
    user.require(user.role_kind().manages_devices(), "chấp nhận thiết bị")?;
    let row = pending_by_code(&state, &code).await?;
    check_id("id", &req.id)?;
    let name = check_text("name", "tên loa", &req.name, 200)?;
    check_zone(&state, &user, &req.zone).await?;
    let now = now_ms();
    let mut tx = state.db.begin().await?;
    // The token is issued at the first claim; until then the stored hash
    // belongs to a random token nobody knows.
    let inserted = sqlx::query(
        "INSERT INTO receivers (id, name, zone_id, token_hash, created_at, public_key) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&req.id)
    .bind(&name)
    .bind(&req.zone)
    .bind(auth::token_hash(&auth::new_token()))
    .bind(now)
    .bind(&row.public_key)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::duplicate("receiver", "loa", &req.id));
        }
        Err(e) => return Err(e.into()),
    }
    let updated = sqlx::query(
        "UPDATE enrollments SET state = 'accepted', receiver_id = $1, decided_at = $2, \
         decided_by = $3, token_issued = FALSE WHERE public_key = $4 AND state = 'pending'",
    )
    .bind(&req.id)
    .bind(now)
    .bind(&user.user_id)
    .bind(&row.public_key)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(ApiError::not_found("enrollment", "yêu cầu đăng ký", &code));
    }
    tx.commit().await?;
    tracing::info!(receiver = %req.id, zone = %req.zone, code = %row.code, hostname = %row.hostname,
        by = %user.username, "enrollment accepted; receiver created");
    state.distributor.schedules_changed();
    let mut response = (
        StatusCode::CREATED,
        Json(Accepted {
            id: req.id.clone(),
            name,
            zone: req.zone.clone(),
            code: row.code.clone(),
        }),
    )
        .into_response();
    response
        .extensions_mut()
        .insert(AuditDetail(serde_json::json!({
            "receiver_id": req.id,
            "zone": req.zone,
            "hostname": row.hostname,
            "remote_addr": row.remote_addr,
        })));
    Ok(response)
}

/// `POST /enrollments/{code}/reject`.
async fn reject(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(code): ApiPath<String>,
) -> Result<Response, ApiError> {
    user.require(user.role_kind().manages_devices(), "từ chối thiết bị")?;
    let row = pending_by_code(&state, &code).await?;
    sqlx::query(
        "UPDATE enrollments SET state = 'rejected', decided_at = $1, decided_by = $2 \
         WHERE public_key = $3 AND state = 'pending'",
    )
    .bind(now_ms())
    .bind(&user.user_id)
    .bind(&row.public_key)
    .execute(&state.db)
    .await?;
    tracing::info!(code = %row.code, hostname = %row.hostname, by = %user.username, "enrollment rejected");
    let mut response = Json(Rejected {
        code: row.code.clone(),
        state: "rejected",
    })
    .into_response();
    response
        .extensions_mut()
        .insert(AuditDetail(serde_json::json!({
            "hostname": row.hostname,
            "remote_addr": row.remote_addr,
        })));
    Ok(response)
}

/// `POST /enrollments/claim`: the device proves it holds its key and, once
/// accepted, receives its credential (once).
async fn claim(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EnrollmentClaim>,
) -> Result<Response, ApiError> {
    let key = enroll::verify_claim(&req, Utc::now()).map_err(|e| {
        let vi = match e {
            enroll::ClaimError::Stale(_) => {
                "Đồng hồ của thiết bị lệch quá 5 phút so với bộ điều khiển. Hãy chỉnh giờ thiết bị."
            }
            _ => "Chữ ký của thiết bị không hợp lệ.",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_claim", e.to_string(), vi)
    })?;
    let public_key = signed::public_key_base64(&key);
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_enrollment",
            "no enrollment request for this key (expired or never sent); send it again",
            "Không có yêu cầu đăng ký cho thiết bị này (đã hết hạn hoặc chưa gửi).",
        )
    };
    let row = row_by_key(&state, &public_key)
        .await?
        .ok_or_else(not_found)?;
    let now = now_ms();
    match row.state.as_str() {
        "rejected" => return Err(rejected_error()),
        "pending" if is_expired(&row, now) => return Err(not_found()),
        "pending" => {
            return Ok((
                StatusCode::ACCEPTED,
                Json(Pending {
                    code: row.code,
                    state: "pending".into(),
                    expires_at: expires(row.created_at),
                }),
            )
                .into_response());
        }
        _ => {}
    }
    if row.token_issued {
        return Err(ApiError::conflict(
            "credential_already_issued",
            "this device's credential was already handed out; a technician can issue a new \
             token (POST /receivers/{id}/token)",
            "Thông tin đăng nhập của thiết bị đã được cấp rồi. Kỹ thuật viên có thể cấp lại mã \
             truy cập cho loa.",
        ));
    }
    let Some(controller_key) = state.controller_key else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_signing_key",
            "this controller has no signing key loaded",
            "Bộ điều khiển chưa nạp khóa ký.",
        ));
    };
    let receiver_id = row.receiver_id.clone().unwrap_or_default();
    let zone: Option<String> =
        sqlx::query_scalar("SELECT zone_id FROM receivers WHERE id = $1 AND public_key = $2")
            .bind(&receiver_id)
            .bind(&public_key)
            .fetch_optional(&state.db)
            .await?;
    let Some(zone) = zone else {
        return Err(ApiError::new(
            StatusCode::GONE,
            "receiver_deleted",
            "the receiver created for this device was deleted; enroll again",
            "Loa được tạo cho thiết bị này đã bị xóa. Hãy đăng ký lại.",
        ));
    };
    let token = auth::new_token();
    let mut tx = state.db.begin().await?;
    let issued = sqlx::query(
        "UPDATE enrollments SET token_issued = TRUE WHERE public_key = $1 AND NOT token_issued",
    )
    .bind(&public_key)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if issued == 0 {
        return Err(ApiError::conflict(
            "credential_already_issued",
            "this device's credential was already handed out",
            "Thông tin đăng nhập của thiết bị đã được cấp rồi.",
        ));
    }
    sqlx::query("UPDATE receivers SET token_hash = $1 WHERE id = $2")
        .bind(auth::token_hash(&token))
        .bind(&receiver_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(receiver = %receiver_id, code = %row.code, "enrolled device collected its credential");
    let mut response = Json(EnrollmentGrant {
        receiver_id: receiver_id.clone(),
        token,
        controller_key: signed::public_key_base64(&controller_key),
        zone,
    })
    .into_response();
    response.extensions_mut().insert(AuditDetail(
        serde_json::json!({"receiver_id": receiver_id, "code": row.code}),
    ));
    Ok(response)
}
