//! Approval of programmes and schedules: `draft → pending → approved |
//! rejected`. Only approved schedules of approved programmes are sent to
//! receivers (and only approved relay schedules start broadcasts).
//!
//! What an editor uploads or schedules starts as `draft` (or `pending` when
//! created with `submit`); what an approver or admin creates is approved at
//! once, since they are the ones who would approve it.
//!
//! - `POST /api/v1/{programmes|schedules}/{id}/submit` (editors): draft or
//!   rejected → pending;
//! - `POST /api/v1/{programmes|schedules}/{id}/approve` `{"note"}`
//!   (approvers): → approved; a schedule needs its programme approved first;
//! - `POST /api/v1/{programmes|schedules}/{id}/reject` `{"note"}`
//!   (approvers): → rejected (an approved schedule stops airing).
//!
//! Each answers the item's new state `{"id","status","reviewed_by",
//! "reviewed_at","review_note"}`; changes are in the audit log with the
//! old and new state.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::access::{Role, Scope};
use super::audit::AuditDetail;
use super::{ApiError, ApiPath};
use crate::auth::AuthUser;
use crate::db::{from_ms, now_ms};
use crate::state::AppState;

/// Longest review note.
const MAX_NOTE_CHARS: usize = 1000;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/programmes/{id}/submit", post(submit_programme))
        .route("/programmes/{id}/approve", post(approve_programme))
        .route("/programmes/{id}/reject", post(reject_programme))
        .route("/schedules/{id}/submit", post(submit_schedule))
        .route("/schedules/{id}/approve", post(approve_schedule))
        .route("/schedules/{id}/reject", post(reject_schedule))
}

/// An approval state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Draft,
    Pending,
    Approved,
    Rejected,
}

impl Status {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "draft" => Status::Draft,
            "pending" => Status::Pending,
            "rejected" => Status::Rejected,
            _ => Status::Approved,
        }
    }

    fn label_vi(self) -> &'static str {
        match self {
            Status::Draft => "bản nháp",
            Status::Pending => "chờ duyệt",
            Status::Approved => "đã duyệt",
            Status::Rejected => "bị từ chối",
        }
    }

    /// The state a new item created by `role` starts in: approved for
    /// those who approve, else pending if `submit`, else draft.
    pub fn initial(role: Role, submit: bool) -> Status {
        if role.approves() {
            Status::Approved
        } else if submit {
            Status::Pending
        } else {
            Status::Draft
        }
    }
}

/// Which table an approval is about.
#[derive(Clone, Copy)]
enum Kind {
    Programme,
    Schedule,
}

impl Kind {
    fn select_sql(self) -> &'static str {
        match self {
            Kind::Programme => "SELECT status, unit_id FROM programmes WHERE id = $1",
            Kind::Schedule => "SELECT status, unit_id FROM schedules WHERE id = $1",
        }
    }
    fn update_sql(self) -> &'static str {
        match self {
            Kind::Programme => {
                "UPDATE programmes SET status = $1, reviewed_by = $2, reviewed_at = $3, \
                 review_note = $4 WHERE id = $5"
            }
            Kind::Schedule => {
                "UPDATE schedules SET status = $1, reviewed_by = $2, reviewed_at = $3, \
                 review_note = $4 WHERE id = $5"
            }
        }
    }
    fn en(self) -> &'static str {
        match self {
            Kind::Programme => "programme",
            Kind::Schedule => "schedule",
        }
    }
    fn vi(self) -> &'static str {
        match self {
            Kind::Programme => "chương trình",
            Kind::Schedule => "lịch phát",
        }
    }
}

/// What was asked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Submit,
    Approve,
    Reject,
}

/// Optional body of approve and reject.
#[derive(Deserialize, Default)]
struct Review {
    #[serde(default)]
    note: Option<String>,
}

/// The answer: the item's approval state.
#[derive(Serialize)]
pub struct ApprovalState {
    id: String,
    status: Status,
    reviewed_by: Option<String>,
    reviewed_at: Option<DateTime<Utc>>,
    review_note: Option<String>,
}

/// Reads an optional JSON body (`{}` or nothing at all is fine).
fn review(body: &Bytes) -> Result<Review, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Review::default());
    }
    let r: Review = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            e.to_string(),
            "Dữ liệu gửi lên không phải JSON hợp lệ.",
        )
    })?;
    if let Some(n) = &r.note
        && (n.chars().count() > MAX_NOTE_CHARS || n.chars().any(|c| c.is_control() && c != '\n'))
    {
        return Err(ApiError::unprocessable(
            "invalid_note",
            format!("the note must be at most {MAX_NOTE_CHARS} characters of text"),
            format!("Ghi chú tối đa {MAX_NOTE_CHARS} ký tự."),
        ));
    }
    Ok(r)
}

async fn transition(
    state: &AppState,
    user: &AuthUser,
    kind: Kind,
    id: &str,
    step: Step,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let role = user.role_kind();
    match step {
        Step::Submit => user.require(role.edits(), "gửi duyệt")?,
        Step::Approve => user.require(role.approves(), "duyệt")?,
        Step::Reject => user.require(role.approves(), "từ chối")?,
    }
    let note = review(body)?
        .note
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty());
    let row: Option<(String, Option<String>)> = sqlx::query_as(kind.select_sql())
        .bind(id)
        .fetch_optional(&state.db)
        .await?;
    let scope = Scope::of(&state.db, user).await?;
    let (status, _) = row
        .filter(|(_, unit)| scope.covers(unit.as_deref()))
        .ok_or_else(|| ApiError::not_found(kind.en(), kind.vi(), id))?;
    let from = Status::parse(&status);
    let to = match step {
        Step::Submit => Status::Pending,
        Step::Approve => Status::Approved,
        Step::Reject => Status::Rejected,
    };
    let allowed = match step {
        Step::Submit => matches!(from, Status::Draft | Status::Rejected),
        Step::Approve => from != Status::Approved,
        Step::Reject => from != Status::Rejected,
    };
    if !allowed {
        return Err(ApiError::conflict(
            "invalid_transition",
            format!("the {} is {}", kind.en(), from.as_str()),
            format!(
                "Không thể thực hiện: {} này đang ở trạng thái \"{}\".",
                kind.vi(),
                from.label_vi()
            ),
        ));
    }
    if let (Kind::Schedule, Step::Approve) = (kind, step) {
        let programme: Option<String> = sqlx::query_scalar(
            "SELECT p.status FROM schedules s JOIN programmes p ON p.id = s.programme_id \
             WHERE s.id = $1",
        )
        .bind(id)
        .fetch_optional(&state.db)
        .await?;
        if programme.is_some_and(|p| p != "approved") {
            return Err(ApiError::conflict(
                "programme_not_approved",
                "approve the schedule's programme first",
                "Chương trình của lịch phát này chưa được duyệt. Hãy duyệt chương trình trước.",
            ));
        }
    }
    let now = now_ms();
    let (reviewed_by, reviewed_at) = match step {
        Step::Submit => (None, None),
        _ => (Some(user.username.clone()), Some(now)),
    };
    sqlx::query(kind.update_sql())
        .bind(to.as_str())
        .bind(&reviewed_by)
        .bind(reviewed_at)
        .bind(&note)
        .bind(id)
        .execute(&state.db)
        .await?;
    tracing::info!(kind = kind.en(), %id, from = from.as_str(), to = to.as_str(), by = %user.username, "approval state changed");
    if from == Status::Approved || to == Status::Approved {
        state.distributor.schedules_changed();
        if let Kind::Schedule = kind {
            state.live.schedules_changed();
        }
    }
    let mut response = Json(ApprovalState {
        id: id.to_string(),
        status: to,
        reviewed_by,
        reviewed_at: reviewed_at.map(from_ms),
        review_note: note.clone(),
    })
    .into_response();
    response
        .extensions_mut()
        .insert(AuditDetail(serde_json::json!({
            "from": from.as_str(), "to": to.as_str(), "note": note,
        })));
    Ok(response)
}

macro_rules! handler {
    ($name:ident, $kind:expr, $step:expr) => {
        async fn $name(
            State(state): State<AppState>,
            user: AuthUser,
            ApiPath(id): ApiPath<String>,
            body: Bytes,
        ) -> Result<Response, ApiError> {
            transition(&state, &user, $kind, &id, $step, &body).await
        }
    };
}

handler!(submit_programme, Kind::Programme, Step::Submit);
handler!(approve_programme, Kind::Programme, Step::Approve);
handler!(reject_programme, Kind::Programme, Step::Reject);
handler!(submit_schedule, Kind::Schedule, Step::Submit);
handler!(approve_schedule, Kind::Schedule, Step::Approve);
handler!(reject_schedule, Kind::Schedule, Step::Reject);

/// The state a new item created by `user` starts in.
pub fn initial_status(user: &AuthUser, submit: bool) -> Status {
    Status::initial(user.role_kind(), submit)
}
