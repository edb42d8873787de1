//! `POST /api/v1/login`: exchanges a username and password for a bearer
//! token, with per-username throttling of failures (see [`crate::auth`]).

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson};
use crate::auth;
use crate::state::AppState;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new().route("/login", post(login))
}

/// Body of a login request.
#[derive(Deserialize)]
struct LoginRequest {
    /// Login name.
    username: String,
    /// Password in clear (TLS is the deployment's job).
    password: String,
}

/// Answer to a successful login.
#[derive(Serialize)]
struct LoginResponse {
    /// Bearer token for `Authorization: Bearer ...`.
    token: String,
    /// When the token stops working (RFC 3339).
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// Longest username or password considered (longer ones cannot match and
/// would only make argon2 work for nothing).
const MAX_CREDENTIAL_BYTES: usize = 1024;

async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    if let Err(secs) = state.throttle.check(&req.username) {
        return Err(ApiError::too_many_requests(secs));
    }
    let user: Option<(String, String)> = if req.username.len() <= MAX_CREDENTIAL_BYTES {
        sqlx::query_as("SELECT id, password_hash FROM users WHERE username = $1 AND NOT disabled")
            .bind(&req.username)
            .fetch_optional(&state.db)
            .await?
    } else {
        None
    };
    let password = req.password;
    let too_long = password.len() > MAX_CREDENTIAL_BYTES;
    let (user_id, hash) = match user {
        Some((id, hash)) => (Some(id), hash),
        None => (None, auth::dummy_hash().to_string()),
    };
    let matches = !too_long
        && tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
            .await
            .map_err(ApiError::internal)?;
    match (user_id, matches) {
        (Some(user_id), true) => {
            state.throttle.record_success(&req.username);
            let token = auth::create_session(&state.db, &user_id).await?;
            tracing::info!(username = %req.username, "user logged in");
            Ok(Json(LoginResponse {
                token,
                expires_at: chrono::Utc::now() + auth::SESSION_LIFETIME,
            }))
        }
        _ => {
            state.throttle.record_failure(&req.username);
            tracing::info!(username = %req.username, "failed login");
            Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "bad_credentials",
                "wrong username or password",
                "Tên đăng nhập hoặc mật khẩu không đúng.",
            ))
        }
    }
}
