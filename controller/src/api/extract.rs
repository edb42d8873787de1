//! Extractors that wrap axum's own (`Json`, `Path`, `Query`) so that their
//! rejections come out in the API's one error shape instead of axum's plain
//! text, plus the small validation helpers every resource shares.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

/// Like [`axum::Json`], but a malformed body, a wrong content type or a
/// field of the wrong type becomes an [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let text = rejection.body_text();
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            text,
            "Dữ liệu phải được gửi ở dạng JSON (Content-Type: application/json).",
        ),
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request(
            "malformed_json",
            text,
            "Dữ liệu gửi lên không phải JSON hợp lệ.",
        ),
        JsonRejection::JsonDataError(_) => ApiError::unprocessable(
            "invalid_fields",
            text,
            "Dữ liệu JSON thiếu trường bắt buộc hoặc có trường sai kiểu. Vui lòng kiểm tra lại.",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            text,
            "Dữ liệu gửi lên quá lớn.",
        ),
        other => ApiError::bad_request(
            "unreadable_body",
            other.body_text(),
            "Không đọc được dữ liệu gửi lên.",
        ),
    }
}

/// Like [`axum::extract::Path`], with rejections as [`ApiError`].
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    let text = rejection.body_text();
    if rejection.status().is_server_error() {
        return ApiError::internal(text);
    }
    ApiError::bad_request("invalid_path", text, "Địa chỉ yêu cầu không hợp lệ.")
}

/// Like [`axum::extract::Query`], with rejections as [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        rejection.body_text(),
        "Tham số truy vấn không hợp lệ.",
    )
}

/// Refuses an id that could not safely name a topic level or a file.
pub fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    if loa_protocol::is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid_id(field, id))
    }
}

/// Trims a human-readable name and refuses it if empty or longer than
/// `max_chars` characters. `field_vi` names the field for the officer.
pub fn check_text(
    field: &str,
    field_vi: &str,
    value: &str,
    max_chars: usize,
) -> Result<String, ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ApiError::unprocessable(
            "missing_field",
            format!("{field} must not be empty"),
            format!("Vui lòng nhập {field_vi}."),
        ));
    }
    if trimmed.chars().count() > max_chars {
        return Err(ApiError::unprocessable(
            "field_too_long",
            format!("{field} is longer than {max_chars} characters"),
            format!(
                "{field_vi} dài quá {max_chars} ký tự.",
                field_vi = capitalise(field_vi)
            ),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_characters",
            format!("{field} contains control characters"),
            format!(
                "{} chứa ký tự điều khiển không hợp lệ.",
                capitalise(field_vi)
            ),
        ));
    }
    Ok(trimmed.to_string())
}

/// Upper-cases the first character (Vietnamese field names start sentences).
fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
