//! The audit log: who did what, when. [`record`] is a middleware on the
//! whole API that writes one `audit_log` row for every request that changes
//! something (every method but GET/HEAD/OPTIONS) and for every login
//! attempt, with its outcome (the HTTP status), so refused attempts are
//! there too (except a device's enrollment claims, recorded only when a
//! credential is handed out or asked for again). The action name comes from the route (`POST
//! /programmes/{id}/approve` → `programmes.approve`); the object is the
//! path's `{id}`, or the `id` of what a `201 Created` answer describes.
//! Handlers may attach an [`AuditDetail`] to their response for more
//! (a rejection's reason, a role change). Passwords and uploaded files are
//! never recorded. Live broadcasts started from a browser microphone (a
//! WebSocket, so no such request) are listed from the `broadcasts` table.
//!
//! `GET /api/v1/audit?limit=&before=&user=&action=&format=csv` lists the
//! log, newest first, for admins and approvers, limited to their scope.

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::access::Scope;
use super::{ApiError, ApiQuery};
use crate::auth::{self, AuthUser};
use crate::db::{from_ms, now_ms};
use crate::state::AppState;

/// Extra detail a handler attaches to its response for the audit row.
#[derive(Debug, Clone)]
pub struct AuditDetail(pub serde_json::Value);

/// Largest login body read to learn the username.
const MAX_LOGIN_BODY: usize = 64 * 1024;
/// Largest `201` answer read to learn the created object's id.
const MAX_CREATED_BODY: u64 = 1 << 20; // created objects are small JSON
/// Most rows one listing returns.
const MAX_LIMIT: i64 = 1000;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(list))
}

/// The action name of a route: `POST /api/v1/programmes/{id}/approve` →
/// `programmes.approve`, `POST /api/v1/zones` → `zones.create`.
pub fn action_name(method: &Method, template: &str) -> String {
    let rest = template.trim_start_matches("/api/v1").trim_matches('/');
    let parts: Vec<&str> = rest
        .split('/')
        .filter(|p| !p.is_empty() && !p.starts_with('{'))
        .collect();
    match (method, parts.as_slice()) {
        (_, ["login"]) => "login".into(),
        (_, ["logout"]) => "logout".into(),
        (&Method::POST, [resource]) => format!("{resource}.create"),
        (&Method::DELETE, [resource]) => format!("{resource}.delete"),
        (&Method::PATCH | &Method::PUT, [resource]) => format!("{resource}.update"),
        (_, [resource, verb, ..]) => format!("{resource}.{verb}"),
        _ => format!("{}.{}", method.as_str().to_lowercase(), parts.join(".")),
    }
}

/// The value of the path's `{id}` (or last `{…}`) segment.
/// Segments are matched from the end, since one of the two may carry the
/// `/api/v1` prefix and the other not.
fn object_from_path(template: &str, path: &str) -> Option<String> {
    template
        .rsplit('/')
        .zip(path.rsplit('/'))
        .find(|(t, _)| t.starts_with('{'))
        .map(|(_, p)| p.to_string())
}

fn bearer(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_string())
}

/// The middleware (see the module docs).
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let Some(template) = template else {
        return next.run(request).await; // unknown route: nothing changes
    };
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)
        || template.ends_with("/preview")
    {
        return next.run(request).await;
    }
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(
            || request.uri().path().to_string(),
            |u| u.path().to_string(),
        );
    let action = action_name(&method, &template);
    let user = match bearer(&request) {
        Some(token) => auth::session_user(&state.db, &token).await.ok().flatten(),
        None => None,
    };
    let (request, login_name) = if action == "login" {
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_LOGIN_BODY).await {
            Ok(b) => b,
            Err(_) => {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "login body too large",
                    "Dữ liệu gửi lên quá lớn.",
                )
                .into_response();
            }
        };
        let name = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v["username"]
                    .as_str()
                    .map(|s| s.chars().take(200).collect())
            });
        (Request::from_parts(parts, Body::from(bytes)), name)
    } else {
        (request, None)
    };
    let mut object_id = object_from_path(&template, &path);
    let response = next.run(request).await;
    let status = response.status();
    // Device claims are recorded only when a credential is handed out (200)
    // or asked for again (409): polling while pending, and claims refused
    // before any state is touched, change nothing and anyone can send them.
    if action == "enrollments.claim" && !matches!(status, StatusCode::OK | StatusCode::CONFLICT) {
        return response;
    }
    let detail = response
        .extensions()
        .get::<AuditDetail>()
        .map(|d| d.0.clone());
    let response = if status == StatusCode::CREATED && object_id.is_none() {
        let (parts, body) = response.into_parts();
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let small = axum::body::HttpBody::size_hint(&body)
            .upper()
            .is_none_or(|n| n <= MAX_CREATED_BODY);
        if json && small {
            match axum::body::to_bytes(body, MAX_CREATED_BODY as usize).await {
                Ok(bytes) => {
                    object_id = serde_json::from_slice::<serde_json::Value>(&bytes)
                        .ok()
                        .and_then(|v| v["id"].as_str().map(str::to_string));
                    Response::from_parts(parts, Body::from(bytes))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a created object's answer");
                    return ApiError::internal(e).into_response();
                }
            }
        } else {
            Response::from_parts(parts, body)
        }
    } else {
        response
    };
    let (user_id, username, unit_id) = match (&user, login_name) {
        (Some(u), _) => (
            Some(u.user_id.clone()),
            Some(u.username.clone()),
            Some(u.unit_id.clone()),
        ),
        (None, Some(name)) => {
            let known: Option<(String, String)> = sqlx::query_as(
                "SELECT id, COALESCE(unit_id, 'root') FROM users WHERE username = $1",
            )
            .bind(&name)
            .fetch_optional(&state.db)
            .await
            .ok()
            .flatten();
            match known {
                Some((id, unit)) => (Some(id), Some(name), Some(unit)),
                None => (None, Some(name), None),
            }
        }
        (None, None) => (None, None, None),
    };
    let written = sqlx::query(
        "INSERT INTO audit_log (id, at, user_id, username, unit_id, action, method, path, \
             object_id, status, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(now_ms())
    .bind(user_id)
    .bind(username)
    .bind(unit_id)
    .bind(&action)
    .bind(method.as_str())
    .bind(&path)
    .bind(object_id)
    .bind(i64::from(status.as_u16()))
    .bind(detail.map(|d| d.to_string()))
    .execute(&state.db)
    .await;
    if let Err(e) = written {
        tracing::error!(error = %e, %action, "cannot write the audit log");
    }
    response
}

/// Query of `GET /audit`.
#[derive(Deserialize)]
struct AuditQuery {
    /// Most rows (default 200, at most 1000).
    #[serde(default)]
    limit: Option<i64>,
    /// Only rows before this instant (RFC 3339), for paging.
    #[serde(default)]
    before: Option<DateTime<Utc>>,
    /// Only this username.
    #[serde(default)]
    user: Option<String>,
    /// Only actions starting with this (e.g. `programmes`).
    #[serde(default)]
    action: Option<String>,
    /// `json` (default) or `csv`.
    #[serde(default)]
    format: Option<String>,
}

/// One audit row as the API shows it.
#[derive(Serialize)]
struct Entry {
    /// When.
    at: DateTime<Utc>,
    /// Who (username), if known.
    username: Option<String>,
    /// Their unit.
    unit_id: Option<String>,
    /// What, e.g. `schedules.approve`.
    action: String,
    /// HTTP method and path of the request.
    method: String,
    path: String,
    /// The object acted on.
    object_id: Option<String>,
    /// HTTP status of the answer: 2xx done, 4xx refused.
    status: u16,
    /// Whether it was done.
    ok: bool,
    /// More, when the handler gave it.
    detail: Option<serde_json::Value>,
}

type Row = (
    i64,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<String>,
);

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let role = user.role_kind();
    user.require(
        role.administers() || role.approves(),
        "xem nhật ký thao tác",
    )?;
    let csv = match q.format.as_deref() {
        None | Some("") | Some("json") => false,
        Some("csv") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_format",
                "format must be json or csv",
                "Định dạng xuất không hợp lệ: chỉ hỗ trợ json hoặc csv.",
            ));
        }
    };
    let limit = q.limit.unwrap_or(200).clamp(1, MAX_LIMIT);
    let scope = Scope::of(&state.db, &user).await?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT at, username, unit_id, action, method, path, object_id, status, detail \
         FROM audit_log \
         WHERE ($1 IS NULL OR at < $1) AND ($2 IS NULL OR username = $2) \
           AND ($3 IS NULL OR action LIKE $3 || '%') \
         ORDER BY at DESC, id DESC LIMIT $4",
    )
    .bind(q.before.map(|t| t.timestamp_millis()))
    .bind(q.user.as_deref().filter(|s| !s.is_empty()))
    .bind(q.action.as_deref().filter(|s| !s.is_empty()))
    .bind(limit * 4)
    .fetch_all(&state.db)
    .await?;
    let mut entries: Vec<Entry> = rows
        .into_iter()
        .filter(|r| match &r.2 {
            Some(unit) => scope.covers(Some(unit)),
            None => scope.is_root(),
        })
        .map(|r| Entry {
            at: from_ms(r.0),
            username: r.1,
            unit_id: r.2,
            action: r.3,
            method: r.4,
            path: r.5,
            object_id: r.6,
            status: u16::try_from(r.7).unwrap_or(0),
            ok: (200..300).contains(&r.7),
            detail: r.8.and_then(|d| serde_json::from_str(&d).ok()),
        })
        .collect();
    if q.action
        .as_deref()
        .is_none_or(|a| "broadcasts".starts_with(a) || a.starts_with("broadcasts"))
    {
        entries.extend(browser_broadcasts(&state, &scope, q.before, q.user.as_deref()).await);
        entries.sort_by_key(|e| std::cmp::Reverse(e.at));
    }
    entries.truncate(limit as usize);
    if !csv {
        return Ok(Json(entries).into_response());
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "at",
        "username",
        "unit_id",
        "action",
        "method",
        "path",
        "object_id",
        "status",
        "detail",
    ])
    .map_err(ApiError::internal)?;
    for e in &entries {
        w.write_record([
            e.at.to_rfc3339(),
            e.username.clone().unwrap_or_default(),
            e.unit_id.clone().unwrap_or_default(),
            e.action.clone(),
            e.method.clone(),
            e.path.clone(),
            e.object_id.clone().unwrap_or_default(),
            e.status.to_string(),
            e.detail.as_ref().map(|d| d.to_string()).unwrap_or_default(),
        ])
        .map_err(ApiError::internal)?;
    }
    let mut response = w.into_inner().map_err(ApiError::internal)?.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"loa-audit.csv\""),
    );
    Ok(response)
}

/// Live broadcasts from browser microphones (started over the WebSocket,
/// so not seen by the middleware), as `broadcasts.start` entries.
async fn browser_broadcasts(
    state: &AppState,
    scope: &Scope,
    before: Option<DateTime<Utc>>,
    user: Option<&str>,
) -> Vec<Entry> {
    /// id, started_at, created_by, priority, targets, unit of the user.
    type BroadcastRow = (String, i64, String, String, String, Option<String>);
    let rows: Result<Vec<BroadcastRow>, _> = sqlx::query_as(
        "SELECT b.id, b.started_at, b.created_by, b.priority, b.targets, \
                    COALESCE(u.unit_id, 'root') \
             FROM broadcasts b LEFT JOIN users u ON u.username = b.created_by \
             WHERE b.source LIKE '%\"browser\"%' AND ($1 IS NULL OR b.started_at < $1) \
               AND ($2 IS NULL OR b.created_by = $2) \
             ORDER BY b.started_at DESC LIMIT 500",
    )
    .bind(before.map(|t| t.timestamp_millis()))
    .bind(user.filter(|s| !s.is_empty()))
    .fetch_all(&state.db)
    .await;
    match rows {
        Ok(rows) => rows
            .into_iter()
            .filter(|r| scope.covers(r.5.as_deref()))
            .map(|(id, at, by, priority, targets, unit)| Entry {
                at: from_ms(at),
                username: Some(by),
                unit_id: unit,
                action: "broadcasts.start".into(),
                method: "GET".into(),
                path: "/api/v1/live/ws".into(),
                object_id: Some(id),
                status: 101,
                ok: true,
                detail: Some(serde_json::json!({
                    "priority": priority,
                    "targets": serde_json::from_str::<serde_json::Value>(&targets).ok(),
                    "source": "browser",
                })),
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list browser broadcasts for the audit log");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_named_from_routes() {
        assert_eq!(
            action_name(&Method::POST, "/api/v1/programmes"),
            "programmes.create"
        );
        assert_eq!(
            action_name(&Method::POST, "/api/v1/programmes/{id}/approve"),
            "programmes.approve"
        );
        assert_eq!(
            action_name(&Method::DELETE, "/api/v1/zones/{id}"),
            "zones.delete"
        );
        assert_eq!(
            action_name(&Method::PATCH, "/api/v1/users/{id}"),
            "users.update"
        );
        assert_eq!(action_name(&Method::POST, "/api/v1/login"), "login");
        assert_eq!(
            object_from_path("/api/v1/zones/{id}", "/api/v1/zones/thon-1").as_deref(),
            Some("thon-1")
        );
        assert_eq!(
            object_from_path("/api/v1/zones/{id}/token", "/zones/z/token").as_deref(),
            Some("z")
        );
        assert_eq!(object_from_path("/api/v1/zones", "/api/v1/zones"), None);
    }
}
