//! Users and the caller's own session.
//!
//! - `GET /api/v1/me` → who is logged in: username, role, unit, and what
//!   the role permits (the console shows and hides its buttons by it);
//! - `POST /api/v1/logout` → ends this session (204);
//! - `POST /api/v1/me/password` `{"current","new"}` → changes the caller's
//!   password and ends their other sessions;
//! - `GET /api/v1/users`, `POST /api/v1/users` `{"username","password",
//!   "role","unit_id","display_name"}`, `PATCH /api/v1/users/{id}`
//!   `{"role","unit_id","display_name","password","disabled"}`: admins,
//!   for users in their scope. A disabled user cannot log in and their
//!   sessions end; users are never deleted, so the audit log keeps names.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::access::{self, Role, Scope};
use super::error::is_unique_violation;
use super::extract::check_text;
use super::{ApiError, ApiJson, ApiPath};
use crate::auth::{self, AuthUser};
use crate::db::{from_ms, now_ms};
use crate::state::AppState;

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted (argon2 input is bounded by the login route too).
const MAX_PASSWORD_BYTES: usize = 1024;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/me", get(me))
        .route("/me/password", post(change_own_password))
        .route("/logout", post(logout))
        .route("/users", get(list).post(create))
        .route("/users/{id}", patch(update).get(get_one))
}

/// What a role permits, for the console.
#[derive(Serialize)]
struct Permissions {
    manage_devices: bool,
    edit: bool,
    approve: bool,
    broadcast: bool,
    administer: bool,
}

/// Answer of `GET /me`.
#[derive(Serialize)]
struct Me {
    id: String,
    username: String,
    display_name: Option<String>,
    role: Role,
    role_vi: &'static str,
    unit: access::Unit,
    permissions: Permissions,
    /// When this session's token stops working.
    session_expires_at: Option<DateTime<Utc>>,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_string())
}

async fn me(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
) -> Result<Json<Me>, ApiError> {
    let units = access::all_units(&state.db).await?;
    let unit = units.get(&user.unit_id).cloned().unwrap_or(access::Unit {
        id: user.unit_id.clone(),
        parent_id: None,
        kind: "commune".into(),
        name: user.unit_id.clone(),
    });
    let display_name: Option<String> =
        sqlx::query_scalar("SELECT display_name FROM users WHERE id = $1")
            .bind(&user.user_id)
            .fetch_one(&state.db)
            .await?;
    let expires: Option<i64> = match bearer(&headers) {
        Some(t) => {
            sqlx::query_scalar("SELECT expires_at FROM sessions WHERE token_hash = $1")
                .bind(auth::token_hash(&t))
                .fetch_optional(&state.db)
                .await?
        }
        None => None,
    };
    let role = user.role_kind();
    Ok(Json(Me {
        id: user.user_id.clone(),
        username: user.username.clone(),
        display_name,
        role,
        role_vi: role.label_vi(),
        unit,
        permissions: Permissions {
            manage_devices: role.manages_devices(),
            edit: role.edits(),
            approve: role.approves(),
            broadcast: role.broadcasts(),
            administer: role.administers(),
        },
        session_expires_at: expires.map(from_ms),
    }))
}

async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    if let Some(token) = bearer(&headers) {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(auth::token_hash(&token))
            .execute(&state.db)
            .await?;
    }
    tracing::info!(username = %user.username, "user logged out");
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses a password that is too short, too long or has control characters.
fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < MIN_PASSWORD_CHARS
        || password.len() > MAX_PASSWORD_BYTES
        || password.chars().any(char::is_control)
    {
        return Err(ApiError::unprocessable(
            "weak_password",
            format!(
                "a password needs {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} bytes without control characters"
            ),
            format!("Mật khẩu phải có ít nhất {MIN_PASSWORD_CHARS} ký tự."),
        ));
    }
    Ok(())
}

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// Body of `POST /me/password`.
#[derive(Deserialize)]
struct PasswordChange {
    current: String,
    new: String,
}

async fn change_own_password(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(&user.user_id)
        .fetch_one(&state.db)
        .await?;
    let short_enough = req.current_ok_len();
    let current = req.current;
    let ok = short_enough
        && tokio::task::spawn_blocking(move || auth::verify_password(&current, &stored))
            .await
            .map_err(ApiError::internal)?;
    if !ok {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_credentials",
            "the current password is wrong",
            "Mật khẩu hiện tại không đúng.",
        ));
    }
    check_password(&req.new)?;
    let hashed = hash(req.new).await?;
    let keep = bearer(&headers)
        .map(|t| auth::token_hash(&t))
        .unwrap_or_default();
    let mut tx = state.db.begin().await?;
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(hashed)
        .bind(&user.user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2")
        .bind(&user.user_id)
        .bind(keep)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

impl PasswordChange {
    fn current_ok_len(&self) -> bool {
        self.current.len() <= MAX_PASSWORD_BYTES
    }
}

/// A user as admins see it.
#[derive(Serialize)]
struct UserView {
    id: String,
    username: String,
    display_name: Option<String>,
    role: String,
    unit_id: String,
    disabled: bool,
    created_at: DateTime<Utc>,
}

type UserRow = (String, String, Option<String>, String, String, bool, i64);

fn view(r: UserRow) -> UserView {
    UserView {
        id: r.0,
        username: r.1,
        display_name: r.2,
        role: r.3,
        unit_id: r.4,
        disabled: r.5,
        created_at: from_ms(r.6),
    }
}

/// Every user, by name.
const SELECT_USERS: &str = "SELECT id, username, display_name, role, COALESCE(unit_id, 'root'), \
     disabled, created_at FROM users ORDER BY username";

async fn scoped_users(
    state: &AppState,
    user: &AuthUser,
) -> Result<(Scope, Vec<UserRow>), ApiError> {
    user.require(user.role_kind().administers(), "quản lý người dùng")?;
    let scope = Scope::of(&state.db, user).await?;
    let rows: Vec<UserRow> = sqlx::query_as(SELECT_USERS).fetch_all(&state.db).await?;
    let rows = rows
        .into_iter()
        .filter(|r| scope.covers(Some(&r.4)))
        .collect();
    Ok((scope, rows))
}

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<UserView>>, ApiError> {
    let (_, rows) = scoped_users(&state, &user).await?;
    Ok(Json(rows.into_iter().map(view).collect()))
}

async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    let (_, rows) = scoped_users(&state, &user).await?;
    rows.into_iter()
        .find(|r| r.0 == id)
        .map(|r| Json(view(r)))
        .ok_or_else(|| ApiError::not_found("user", "người dùng", &id))
}

/// Body of `POST /users`.
#[derive(Deserialize)]
struct NewUser {
    username: String,
    password: String,
    role: String,
    /// Default: the admin's own unit.
    #[serde(default)]
    unit_id: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
}

fn parse_role(name: &str) -> Result<Role, ApiError> {
    Role::parse(name).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid_role",
            format!("role {name:?} must be admin, technician, editor, approver or viewer"),
            "Vai trò phải là admin, technician, editor, approver hoặc viewer.",
        )
    })
}

fn check_unit_in(
    scope: &Scope,
    units: &std::collections::HashMap<String, access::Unit>,
    unit: &str,
) -> Result<(), ApiError> {
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

/// A username: 1–64 characters of letters, digits, `.`, `_`, `-`, `@`.
fn check_username(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(name.to_string())
    } else {
        Err(ApiError::unprocessable(
            "invalid_username",
            format!("username {name:?} must be 1-64 letters, digits or . _ - @"),
            "Tên đăng nhập chỉ gồm chữ, số và các dấu . _ - @, tối đa 64 ký tự.",
        ))
    }
}

async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    user.require(user.role_kind().administers(), "quản lý người dùng")?;
    let username = check_username(&req.username)?;
    let role = parse_role(&req.role)?;
    check_password(&req.password)?;
    let unit = req.unit_id.clone().unwrap_or_else(|| user.unit_id.clone());
    let units = access::all_units(&state.db).await?;
    let scope = Scope::within(&units, &user.unit_id);
    check_unit_in(&scope, &units, &unit)?;
    let display_name = match req.display_name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => Some(check_text("display_name", "họ tên", n, 200)?),
        _ => None,
    };
    let hashed = hash(req.password).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO users (id, username, password_hash, role, created_at, unit_id, display_name) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&username)
    .bind(hashed)
    .bind(role.as_str())
    .bind(now)
    .bind(&unit)
    .bind(&display_name)
    .execute(&state.db)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                "duplicate_username",
                format!("username {username:?} is taken"),
                format!("Tên đăng nhập \"{username}\" đã được dùng."),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(%username, role = role.as_str(), %unit, by = %user.username, "user created");
    Ok((
        StatusCode::CREATED,
        Json(view((
            id,
            username,
            display_name,
            role.as_str().into(),
            unit,
            false,
            now,
        ))),
    ))
}

/// Body of `PATCH /users/{id}`; absent fields are unchanged.
#[derive(Deserialize)]
struct UserChange {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    unit_id: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
}

async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(change): ApiJson<UserChange>,
) -> Result<Json<UserView>, ApiError> {
    let (scope, rows) = scoped_users(&state, &user).await?;
    let current = rows
        .into_iter()
        .find(|r| r.0 == id)
        .ok_or_else(|| ApiError::not_found("user", "người dùng", &id))?;
    let myself = current.0 == user.user_id;
    let role = match &change.role {
        Some(r) => parse_role(r)?,
        None => parse_role(&current.3).unwrap_or(Role::Viewer),
    };
    let disabled = change.disabled.unwrap_or(current.5);
    if myself && (role != Role::Admin || disabled || change.unit_id.is_some()) {
        return Err(ApiError::conflict(
            "cannot_change_self",
            "admins cannot demote, move or disable themselves",
            "Bạn không thể tự đổi vai trò, đơn vị hoặc khoá tài khoản của chính mình.",
        ));
    }
    let unit = change.unit_id.clone().unwrap_or(current.4.clone());
    let units = access::all_units(&state.db).await?;
    check_unit_in(&scope, &units, &unit)?;
    let display_name = match change.display_name.as_deref().map(str::trim) {
        Some("") => None,
        Some(n) => Some(check_text("display_name", "họ tên", n, 200)?),
        None => current.2.clone(),
    };
    let password = match change.password {
        Some(p) => {
            check_password(&p)?;
            Some(hash(p).await?)
        }
        None => None,
    };
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "UPDATE users SET role = $1, unit_id = $2, display_name = $3, disabled = $4, \
             password_hash = COALESCE($5, password_hash) WHERE id = $6",
    )
    .bind(role.as_str())
    .bind(&unit)
    .bind(&display_name)
    .bind(disabled)
    .bind(&password)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    // A change of password, role, unit or a lock ends the user's sessions.
    if password.is_some() || disabled || role.as_str() != current.3 || unit != current.4 {
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(user = %current.1, role = role.as_str(), %unit, disabled, by = %user.username, "user changed");
    Ok(Json(view((
        id,
        current.1,
        display_name,
        role.as_str().into(),
        unit,
        disabled,
        current.6,
    ))))
}
