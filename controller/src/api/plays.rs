//! Proof of play: `GET /api/v1/plays?receiver=&programme=&schedule=&from=&to=`
//! lists what receivers reported playing (rows written by
//! [`crate::ingest`]), filtered by receiver, programme, schedule and by
//! scheduled instant in `[from, to)` (RFC 3339). `&format=csv` gives the
//! same rows as CSV with a header row, for spreadsheets and reports.
//!
//! Each row lists the live broadcasts that interrupted the play
//! (`"interruptions": [{"broadcast_id", "from", "to"}]`, the programme
//! resumed after each); the CSV has their count in its last column.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use loa_protocol::Interruption;
use serde::{Deserialize, Serialize};

use super::access::Scope;
use super::{ApiError, ApiQuery};
use crate::auth::AuthUser;
use crate::db::from_ms;
use crate::state::AppState;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new().route("/plays", get(list))
}

/// Query parameters; every filter is optional.
#[derive(Deserialize)]
struct PlaysQuery {
    /// Only this receiver.
    #[serde(default)]
    receiver: Option<String>,
    /// Only this programme.
    #[serde(default)]
    programme: Option<String>,
    /// Only this schedule.
    #[serde(default)]
    schedule: Option<String>,
    /// Scheduled at or after this instant (RFC 3339).
    #[serde(default)]
    from: Option<String>,
    /// Scheduled before this instant (RFC 3339).
    #[serde(default)]
    to: Option<String>,
    /// `json` (default) or `csv`.
    #[serde(default)]
    format: Option<String>,
}

/// One proof-of-play row as stored.
#[derive(sqlx::FromRow)]
struct PlayRow {
    receiver_id: String,
    programme_id: String,
    schedule_id: String,
    scheduled_at: i64,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    outcome: String,
    event_id: String,
    detail: Option<String>,
    report_id: String,
    received_at: i64,
    interruptions: Option<String>,
}

/// One proof-of-play row as the API shows it. Field order is also the CSV
/// column order; instants are RFC 3339 UTC.
#[derive(Serialize)]
struct Play {
    /// Receiver that played (or missed) the event.
    receiver_id: String,
    /// Programme of the event.
    programme_id: String,
    /// Schedule the event came from.
    schedule_id: String,
    /// When the play was due.
    scheduled_at: DateTime<Utc>,
    /// When sound started, if it did.
    started_at: Option<DateTime<Utc>>,
    /// When sound stopped, if it did.
    ended_at: Option<DateTime<Utc>>,
    /// `completed`, `preempted`, `missed` or `failed`.
    outcome: String,
    /// The occurrence (`{schedule_id}@{unix ms}`).
    event_id: String,
    /// Why a play was missed or failed.
    detail: Option<String>,
    /// The receiver's id for this report (a re-sent report is stored once).
    report_id: String,
    /// When the controller stored the report.
    received_at: DateTime<Utc>,
    /// Live broadcasts that interrupted the play (it resumed after each).
    interruptions: Vec<Interruption>,
}

/// CSV column names, the same as [`Play`]'s fields (`interruptions` is
/// their count).
const CSV_HEADER: [&str; 12] = [
    "receiver_id",
    "programme_id",
    "schedule_id",
    "scheduled_at",
    "started_at",
    "ended_at",
    "outcome",
    "event_id",
    "detail",
    "report_id",
    "received_at",
    "interruptions",
];

impl From<PlayRow> for Play {
    fn from(r: PlayRow) -> Self {
        let interruptions = match r.interruptions.as_deref() {
            None | Some("") => Vec::new(),
            Some(json) => serde_json::from_str(json).unwrap_or_else(|e| {
                tracing::warn!(report = %r.report_id, error = %e, "unreadable stored interruptions");
                Vec::new()
            }),
        };
        Play {
            receiver_id: r.receiver_id,
            programme_id: r.programme_id,
            schedule_id: r.schedule_id,
            scheduled_at: from_ms(r.scheduled_at),
            started_at: r.started_at.map(from_ms),
            ended_at: r.ended_at.map(from_ms),
            outcome: r.outcome,
            event_id: r.event_id,
            detail: r.detail,
            report_id: r.report_id,
            received_at: from_ms(r.received_at),
            interruptions,
        }
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses an RFC 3339 filter bound. A `+` offset that arrived unencoded in
/// the query string reads as a space; it is put back.
fn parse_instant(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let value = value.trim();
    let parsed = DateTime::parse_from_rfc3339(value).or_else(|e| match value.rfind(' ') {
        Some(i) if i > 10 => {
            DateTime::parse_from_rfc3339(&format!("{}+{}", &value[..i], &value[i + 1..]))
        }
        _ => Err(e),
    });
    parsed.map(|t| t.with_timezone(&Utc)).map_err(|_| {
        ApiError::bad_request(
            "invalid_time",
            format!("{name}={value:?} is not an RFC 3339 instant such as 2026-11-24T00:00:00Z"),
            format!(
                "Thời điểm \"{value}\" (tham số {name}) không hợp lệ. Hãy dùng định dạng RFC 3339, \
                 ví dụ 2026-11-24T00:00:00+07:00."
            ),
        )
    })
}

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<PlaysQuery>,
) -> Result<Response, ApiError> {
    let csv = match q.format.as_deref().map(str::trim) {
        None | Some("") | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_format",
                format!("format={other:?}: expected json or csv"),
                "Định dạng xuất không hợp lệ: chỉ hỗ trợ json hoặc csv.",
            ));
        }
    };
    let from = q
        .from
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(|v| parse_instant("from", v))
        .transpose()?;
    let to =
        q.to.as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|v| parse_instant("to", v))
            .transpose()?;
    let empty_to_none = |s: Option<String>| s.filter(|v| !v.trim().is_empty());
    let rows: Vec<PlayRow> = sqlx::query_as(
        "SELECT receiver_id, programme_id, schedule_id, scheduled_at, started_at, ended_at, outcome, \
                event_id, detail, report_id, received_at, interruptions \
         FROM plays \
         WHERE ($1 IS NULL OR receiver_id = $1) \
           AND ($2 IS NULL OR programme_id = $2) \
           AND ($3 IS NULL OR schedule_id = $3) \
           AND ($4 IS NULL OR scheduled_at >= $4) \
           AND ($5 IS NULL OR scheduled_at < $5) \
         ORDER BY scheduled_at, receiver_id, report_id",
    )
    .bind(empty_to_none(q.receiver))
    .bind(empty_to_none(q.programme))
    .bind(empty_to_none(q.schedule))
    .bind(from.map(|t| t.timestamp_millis()))
    .bind(to.map(|t| t.timestamp_millis()))
    .fetch_all(&state.db)
    .await?;
    // Users below the root see the plays of the receivers under their unit.
    let scope = Scope::of(&state.db, &user).await?;
    let visible = if scope.is_root() {
        None
    } else {
        Some(scope.receivers(&state.db).await?)
    };
    let plays: Vec<Play> = rows
        .into_iter()
        .filter(|r| {
            visible
                .as_ref()
                .is_none_or(|v| v.contains_key(&r.receiver_id))
        })
        .map(Play::from)
        .collect();
    if csv {
        to_csv(&plays)
    } else {
        Ok(Json(plays).into_response())
    }
}

/// The rows as CSV (RFC 4180), header first, same fields as the JSON.
fn to_csv(rows: &[Play]) -> Result<Response, ApiError> {
    let opt = |t: Option<DateTime<Utc>>| t.map(rfc3339).unwrap_or_default();
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .write_record(CSV_HEADER)
        .map_err(ApiError::internal)?;
    for r in rows {
        writer
            .write_record([
                r.receiver_id.as_str(),
                &r.programme_id,
                &r.schedule_id,
                &rfc3339(r.scheduled_at),
                &opt(r.started_at),
                &opt(r.ended_at),
                &r.outcome,
                &r.event_id,
                r.detail.as_deref().unwrap_or(""),
                &r.report_id,
                &rfc3339(r.received_at),
                &r.interruptions.len().to_string(),
            ])
            .map_err(ApiError::internal)?;
    }
    let body = writer.into_inner().map_err(ApiError::internal)?;
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"loa-plays.csv\""),
    );
    Ok(response)
}
