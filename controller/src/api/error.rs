//! The one error type every API handler returns, and how it becomes a
//! response: always JSON `{"error", "code", "message_vi"}` with a 4xx status
//! for anything a client can cause. A 500 is logged with its detail and
//! answered with a generic message, so internals never reach the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An API failure: what status to answer, and what to tell the user in
/// English (for developers and logs) and Vietnamese (for the commune officer).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status of the response.
    status: StatusCode,
    /// Stable machine-readable code (`not_found`, `invalid_id`, ...) a UI can branch on.
    code: &'static str,
    /// English explanation; for a 500 this is the internal detail, logged but never sent.
    error: String,
    /// Vietnamese explanation with diacritics, shown to the officer.
    message_vi: String,
    /// Seconds after which a refused request may be retried (429 only).
    retry_after_secs: Option<u64>,
}

/// The JSON body of every error response.
#[derive(Serialize)]
struct ErrorBody<'a> {
    /// English explanation.
    error: &'a str,
    /// Machine-readable code.
    code: &'a str,
    /// Vietnamese explanation.
    message_vi: &'a str,
}

impl ApiError {
    /// An error with an explicit status, code and both messages.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        error: impl Into<String>,
        message_vi: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            error: error.into(),
            message_vi: message_vi.into(),
            retry_after_secs: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(
        code: &'static str,
        error: impl Into<String>,
        vi: impl Into<String>,
    ) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, error, vi)
    }

    /// 422: the request is well-formed but its content is not acceptable.
    pub fn unprocessable(
        code: &'static str,
        error: impl Into<String>,
        vi: impl Into<String>,
    ) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, error, vi)
    }

    /// 409: the request conflicts with what is stored.
    pub fn conflict(code: &'static str, error: impl Into<String>, vi: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, error, vi)
    }

    /// 401: no valid credential was presented.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, invalid or expired bearer token",
            "Bạn chưa đăng nhập hoặc phiên đăng nhập đã hết hạn. Vui lòng đăng nhập lại.",
        )
    }

    /// 403: the credential is valid but may not do this.
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this credential may not perform this operation",
            "Bạn không có quyền thực hiện thao tác này.",
        )
    }

    /// 404 for a resource named in the path. `what` is the English noun,
    /// `what_vi` the Vietnamese one (e.g. `"programme"`, `"chương trình"`).
    pub fn not_found(what: &str, what_vi: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id:?} not found"),
            format!("Không tìm thấy {what_vi} có mã \"{id}\"."),
        )
    }

    /// 409 for an id that is already taken.
    pub fn duplicate(what: &str, what_vi: &str, id: &str) -> Self {
        Self::conflict(
            "duplicate_id",
            format!("{what} {id:?} already exists"),
            format!("Đã có {what_vi} với mã \"{id}\". Vui lòng chọn mã khác."),
        )
    }

    /// 400 for an id that is not 1–64 characters of `A-Za-z0-9-_.`.
    pub fn invalid_id(field: &str, id: &str) -> Self {
        Self::bad_request(
            "invalid_id",
            format!("{field} {id:?} is not a valid id: use 1-64 characters of A-Z a-z 0-9 - _ ."),
            format!(
                "Mã \"{id}\" ({field}) không hợp lệ: chỉ dùng chữ cái không dấu, chữ số, dấu gạch \
                 ngang, gạch dưới hoặc dấu chấm, tối đa 64 ký tự."
            ),
        )
    }

    /// 413: an upload exceeded the configured limit.
    pub fn too_large(limit_bytes: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds the {limit_bytes}-byte limit"),
            format!(
                "Tệp tải lên quá lớn. Dung lượng tối đa cho phép là {}.",
                human_size(limit_bytes)
            ),
        )
    }

    /// 429: too many attempts; retry after `secs` seconds.
    pub fn too_many_requests(secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many failed attempts; retry in {secs} s"),
            format!("Đăng nhập sai quá nhiều lần. Vui lòng thử lại sau {secs} giây."),
        );
        e.retry_after_secs = Some(secs);
        e
    }

    /// 500: something failed on our side. The detail is logged when the
    /// response is produced and never sent to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            detail.to_string(),
            "Lỗi hệ thống, vui lòng thử lại sau.",
        )
    }

    /// An I/O failure: 507 when the disk is full (the officer is told to
    /// call the technician; nothing was stored), else a 500.
    pub fn io(e: impl std::error::Error + 'static) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::StorageFull
            {
                tracing::error!(error = %e, "disk full");
                return Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "disk_full",
                    "the controller's disk is full; nothing was stored",
                    "Ổ đĩa của máy chủ đã đầy nên chưa lưu được. Không có gì bị mất; \
                     hãy báo kỹ thuật viên giải phóng dung lượng rồi thử lại.",
                );
            }
            source = err.source();
        }
        Self::internal(e)
    }

    /// The HTTP status this error is answered with.
    pub fn status_code(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The Vietnamese message.
    pub fn message_vi(&self) -> &str {
        &self.message_vi
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.error)
    }
}

impl std::error::Error for ApiError {}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(format!("database: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let generic;
        let error: &str = if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(status = %self.status, code = self.code, detail = %self.error, "request failed");
            generic = "internal server error";
            generic
        } else if self.status.is_server_error() {
            // Our own state (a full disk, ...), said plainly without internals.
            tracing::error!(status = %self.status, code = self.code, detail = %self.error, "request failed");
            &self.error
        } else {
            tracing::debug!(status = %self.status, code = self.code, detail = %self.error, "request refused");
            &self.error
        };
        let body = ErrorBody {
            error,
            code: self.code,
            message_vi: &self.message_vi,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A size for people: `512 MB`, `1,5 MB`, `64 KB` (Vietnamese decimal comma).
fn human_size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let b = bytes as f64;
    if b >= 10.0 * MIB {
        format!("{:.0} MB", b / MIB)
    } else if b >= MIB {
        format!("{:.1} MB", b / MIB).replace('.', ",")
    } else {
        format!("{} KB", (bytes.div_ceil(1024)))
    }
}

/// Whether a database error is a unique/primary-key violation (an id taken
/// by a concurrent request between our check and our insert).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_size(512 * 1024 * 1024), "512 MB");
        assert_eq!(human_size(1_000_000), "977 KB");
        assert_eq!(human_size(1536 * 1024), "1,5 MB");
        assert_eq!(human_size(64 * 1024), "64 KB");
    }

    #[tokio::test]
    async fn server_errors_hide_their_detail() {
        let response = ApiError::internal("secret path /var/lib/loa").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(!v.to_string().contains("secret"), "{v}");
        assert_eq!(v["code"], "internal_error");
        let e = ApiError::not_found("zone", "khu vực", "x");
        assert_eq!(e.status_code(), StatusCode::NOT_FOUND);
        assert!(e.message_vi().contains("khu vực"));
    }
}
