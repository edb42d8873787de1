//! `POST /api/v1/programmes`: a multipart upload (`file`, `title`,
//! `category`, optional `id`). The file is streamed to `DIR/tmp` (never held
//! in memory) with the size limit enforced while streaming, transcoded to Ogg
//! Opus on the blocking pool, moved into the content-addressed store and
//! recorded. Every failure path removes what it wrote: temporary files are
//! `TempPath`s deleted on drop, and a stored file whose row could not be
//! inserted is removed unless another programme shares it.

use axum::Json;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use super::ApiError;
use super::approvals::initial_status;
use super::error::is_unique_violation;
use super::extract::{check_id, check_text};
use super::programmes::{FORM_OVERHEAD_BYTES, Millis, Programme};
use crate::auth::AuthUser;
use crate::db::now_ms;
use crate::state::AppState;
use crate::transcode::{self, TranscodeOptions};

/// Longest accepted text field (title, category, id), in bytes.
const MAX_TEXT_FIELD_BYTES: usize = 4096;

/// What the form carried.
#[derive(Default)]
struct UploadForm {
    /// The uploaded file on disk, its size and its client-side name.
    file: Option<(TempPath, u64, Option<String>)>,
    /// `title` field.
    title: Option<String>,
    /// `category` field.
    category: Option<String>,
    /// Optional `id` field: the programme id to use instead of a generated one.
    id: Option<String>,
    /// Optional `submit` field (`true`): an editor's upload goes straight
    /// to `pending` instead of `draft`.
    submit: bool,
}

/// Handles the upload.
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<Programme>), ApiError> {
    user.require(user.role_kind().edits(), "tải lên chương trình")?;
    // Refuse a declared oversize body before reading any of it: a client
    // waiting on `Expect: 100-continue` then never sends it at all.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_upload_bytes.saturating_add(FORM_OVERHEAD_BYTES)) {
        return Err(ApiError::too_large(state.max_upload_bytes));
    }
    let multipart = multipart.map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected multipart/form-data: {}", e.body_text()),
            "Cần gửi biểu mẫu dạng multipart/form-data gồm tệp âm thanh (file), tiêu đề (title) và thể loại (category).",
        )
    })?;
    let form = read_form(&state, multipart).await?;

    let title = check_text("title", "tiêu đề", form.title.as_deref().unwrap_or(""), 300)?;
    let category = check_text(
        "category",
        "thể loại",
        form.category.as_deref().unwrap_or(""),
        100,
    )?;
    let Some((upload, upload_bytes, original_name)) = form.file else {
        return Err(ApiError::bad_request(
            "missing_file",
            "the form has no `file` field",
            "Chưa chọn tệp âm thanh để tải lên (trường \"file\").",
        ));
    };
    let id = match form.id {
        Some(id) => {
            check_id("id", &id)?;
            if super::programmes::fetch(&state, &id).await.is_ok() {
                return Err(ApiError::duplicate("programme", "chương trình", &id));
            }
            id
        }
        None => uuid::Uuid::new_v4().to_string(),
    };
    // Transcode on the blocking pool, one per CPU at a time.
    let output = state
        .store
        .temp_file(".opus")
        .map_err(ApiError::io)?
        .into_temp_path();
    let permit = state
        .transcode_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let started = std::time::Instant::now();
    // Both temporary paths live in the closure, so they are deleted even if
    // the client goes away while the transcoder is still running.
    let (result, output) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let result = transcode::transcode_file(&upload, &output, &TranscodeOptions::default());
        drop(upload); // the original is not kept
        (result, output)
    })
    .await
    .map_err(ApiError::internal)?;
    let report = result.map_err(transcode_error)?;
    tracing::info!(
        programme = %id,
        upload_bytes,
        duration_ms = report.duration_ms,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "transcoded upload"
    );

    // Store and record atomically with respect to other commits.
    let _guard = state.store.commit_lock().await;
    let stored = state.store.put(output).await.map_err(ApiError::io)?;
    if stored.sha256 != report.sha256 {
        tracing::warn!(stored = %stored.sha256, reported = %report.sha256, "transcoder digest differs from the stored file's");
    }
    let programme = Programme {
        id,
        title,
        category,
        duration_ms: report.duration_ms as i64,
        sha256: stored.sha256.clone(),
        bytes: stored.bytes as i64,
        bitrate: report.bitrate as i64,
        original_name,
        created_at: Millis(now_ms()),
        status: initial_status(&user, form.submit).as_str().to_string(),
        unit_id: Some(user.unit_id.clone()),
        created_by: Some(user.username.clone()),
        reviewed_by: None,
        reviewed_at: None,
        review_note: None,
    };
    let approved_at_once = programme.status == "approved";
    let programme = Programme {
        reviewed_by: approved_at_once.then(|| user.username.clone()),
        reviewed_at: approved_at_once.then_some(programme.created_at.0),
        ..programme
    };
    let inserted = sqlx::query(
        "INSERT INTO programmes (id, title, category, duration_ms, sha256, bytes, bitrate, original_name, created_at, \
             status, unit_id, created_by, reviewed_by, reviewed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&programme.id)
    .bind(&programme.title)
    .bind(&programme.category)
    .bind(programme.duration_ms)
    .bind(&programme.sha256)
    .bind(programme.bytes)
    .bind(programme.bitrate)
    .bind(&programme.original_name)
    .bind(programme.created_at.0)
    .bind(&programme.status)
    .bind(&programme.unit_id)
    .bind(&programme.created_by)
    .bind(&programme.reviewed_by)
    .bind(programme.reviewed_at)
    .execute(&state.db)
    .await;
    if let Err(e) = inserted {
        undo_store(&state, &stored.sha256).await;
        return Err(if is_unique_violation(&e) {
            ApiError::duplicate("programme", "chương trình", &programme.id)
        } else {
            e.into()
        });
    }
    tracing::info!(programme = %programme.id, user = %user.username, sha256 = %programme.sha256, "programme created");
    Ok((StatusCode::CREATED, Json(programme)))
}

/// Not audio → 415, other faults in the file → 422, our own faults → 500.
fn transcode_error(e: transcode::TranscodeError) -> ApiError {
    if !e.is_user_error() {
        return ApiError::io(e);
    }
    tracing::info!(error = %e, "upload refused by the transcoder");
    let status = match e {
        transcode::TranscodeError::NotAudio(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, e.code(), e.to_string(), e.message_vi())
}

/// Removes a just-stored file if no programme row refers to it. Caller holds the commit lock.
async fn undo_store(state: &AppState, sha256: &str) {
    let users: Result<i64, _> =
        sqlx::query_scalar("SELECT COUNT(*) FROM programmes WHERE sha256 = $1")
            .bind(sha256)
            .fetch_one(&state.db)
            .await;
    match users {
        Ok(0) => {
            if let Err(e) = state.store.remove(sha256).await {
                tracing::error!(error = %e, "cannot remove audio after a failed insert");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot check audio references after a failed insert")
        }
    }
}

/// Reads every field; the file goes to disk as it arrives.
async fn read_form(state: &AppState, mut multipart: Multipart) -> Result<UploadForm, ApiError> {
    let limit = state.max_upload_bytes;
    let mut form = UploadForm::default();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        match field.name().unwrap_or("") {
            "file" => {
                if form.file.is_some() {
                    return Err(ApiError::bad_request(
                        "duplicate_field",
                        "the form has more than one `file` field",
                        "Mỗi lần chỉ tải lên một tệp âm thanh.",
                    ));
                }
                form.file = Some(stream_to_temp(state, field, limit).await?);
            }
            "title" => form.title = Some(read_text(field, limit).await?),
            "category" => form.category = Some(read_text(field, limit).await?),
            "id" => {
                form.id = Some(read_text(field, limit).await?.trim().to_string())
                    .filter(|s| !s.is_empty())
            }
            "submit" => {
                form.submit = matches!(read_text(field, limit).await?.trim(), "true" | "1" | "on")
            }
            other => tracing::debug!(field = other, "ignoring unknown upload field"),
        }
    }
    Ok(form)
}

/// Streams the file field to a temporary file, refusing it (413) as soon as
/// it passes `limit` bytes. The temporary file is deleted if anything fails.
async fn stream_to_temp(
    state: &AppState,
    mut field: Field<'_>,
    limit: u64,
) -> Result<(TempPath, u64, Option<String>), ApiError> {
    let original_name = field
        .file_name()
        .map(clean_file_name)
        .filter(|n| !n.is_empty());
    let (file, path) = state
        .store
        .temp_file(".upload")
        .map_err(ApiError::io)?
        .into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut written = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        written += chunk.len() as u64;
        if written > limit {
            tracing::info!(limit, "upload refused: larger than the limit");
            return Err(ApiError::too_large(limit));
        }
        file.write_all(&chunk).await.map_err(ApiError::io)?;
    }
    file.flush().await.map_err(ApiError::io)?;
    Ok((path, written, original_name))
}

/// Reads a small text field.
async fn read_text(mut field: Field<'_>, limit: u64) -> Result<String, ApiError> {
    let name = field.name().unwrap_or("").to_string();
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        if buf.len() + chunk.len() > MAX_TEXT_FIELD_BYTES {
            return Err(ApiError::unprocessable(
                "field_too_long",
                format!("field {name:?} is longer than {MAX_TEXT_FIELD_BYTES} bytes"),
                format!("Trường \"{name}\" quá dài."),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| {
        ApiError::bad_request(
            "invalid_utf8",
            format!("field {name:?} is not UTF-8 text"),
            format!("Trường \"{name}\" không phải văn bản UTF-8 hợp lệ."),
        )
    })
}

/// Maps a multipart stream error: the body limit becomes 413, anything else 400.
fn multipart_error(e: MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::too_large(limit);
    }
    ApiError::bad_request(
        "malformed_multipart",
        e.body_text(),
        "Dữ liệu tải lên bị lỗi hoặc bị gián đoạn. Vui lòng thử lại.",
    )
}

/// The last path component of a client-side file name, without control
/// characters, at most 255 characters.
fn clean_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    base.chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect::<String>()
        .trim()
        .to_string()
}
