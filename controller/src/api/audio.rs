//! `GET /api/v1/programmes/{id}/audio`: the Ogg Opus file, for receivers
//! (with their own token) and users whose unit can see the programme (404
//! otherwise, as for `GET /programmes/{id}`). Supports a single HTTP byte range
//! (`206 Partial Content`, `416` when unsatisfiable) so an interrupted
//! download can resume, and an `ETag` equal to the file's SHA-256.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiPath};
use crate::auth::AudioClient;
use crate::state::AppState;
use crate::store::{AudioStore, StoreError};

/// A byte range resolved against the file length: `start..start+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Number of bytes.
    pub len: u64,
}

/// What to do with a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send the whole file (also for syntax we do not
    /// support, such as several ranges, as RFC 9110 allows).
    Full,
    /// Send this part.
    Partial(ByteRange),
    /// The range lies outside the file.
    Unsatisfiable,
}

/// Parses a `Range` header value (`bytes=a-b`, `bytes=a-`, `bytes=-n`).
pub fn parse_range(value: &str, file_len: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match parse(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if file_len > 0 => {
                let len = n.min(file_len);
                RangeRequest::Partial(ByteRange {
                    start: file_len - len,
                    len,
                })
            }
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        // bytes=a- : from a to the end.
        (false, true) => match parse(first) {
            Some(a) if a < file_len => RangeRequest::Partial(ByteRange {
                start: a,
                len: file_len - a,
            }),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        // bytes=a-b
        (false, false) => match (parse(first), parse(last)) {
            (Some(a), Some(b)) if a <= b && a < file_len => RangeRequest::Partial(ByteRange {
                start: a,
                len: b.min(file_len - 1) - a + 1,
            }),
            (Some(a), Some(b)) if a <= b => RangeRequest::Unsatisfiable,
            _ => RangeRequest::Full,
        },
        (true, true) => RangeRequest::Full,
    }
}

/// Serves a programme's audio.
pub async fn get(
    State(state): State<AppState>,
    client: AudioClient,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let AudioClient::User(user) = &client {
        super::programmes::fetch_visible(&state, user, &id).await?;
    }
    let sha256: Option<String> = sqlx::query_scalar("SELECT sha256 FROM programmes WHERE id = $1")
        .bind(&id)
        .fetch_optional(&state.db)
        .await?;
    let sha256 = sha256.ok_or_else(|| ApiError::not_found("programme", "chương trình", &id))?;
    let (file, file_len) = state.store.open_audio(&sha256).await.map_err(|e| match e {
        StoreError::Missing(_) => ApiError::internal(format!("programme {id}: {e}")),
        other => ApiError::internal(other),
    })?;
    let etag = format!("\"{sha256}\"");
    if let AudioClient::Receiver { receiver_id } = &client {
        tracing::debug!(receiver = %receiver_id, programme = %id, "receiver downloads audio");
    }

    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok(with_common_headers(
            StatusCode::NOT_MODIFIED.into_response(),
            &etag,
        ));
    }

    // A Range is honoured only if If-Range (when present) names this file.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .map(|v| v.to_str().ok() == Some(etag.as_str()))
        .unwrap_or(true);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) if if_range_ok => parse_range(value, file_len),
        _ => RangeRequest::Full,
    };

    let response = match range {
        RangeRequest::Full => {
            let stream = AudioStore::range_stream(file, 0, file_len)
                .await
                .map_err(ApiError::internal)?;
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(file_len));
            r
        }
        RangeRequest::Partial(ByteRange { start, len }) => {
            let stream = AudioStore::range_stream(file, start, len)
                .await
                .map_err(ApiError::internal)?;
            let mut r = Response::new(Body::from_stream(stream));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::try_from(format!("bytes {start}-{}/{file_len}", start + len - 1))
                    .map_err(ApiError::internal)?,
            );
            r
        }
        RangeRequest::Unsatisfiable => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("requested range is outside the {file_len}-byte file"),
                "Đoạn dữ liệu yêu cầu nằm ngoài tệp âm thanh.",
            )
            .into_response();
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::try_from(format!("bytes */{file_len}")).map_err(ApiError::internal)?,
            );
            return Ok(r);
        }
    };
    let mut response = with_common_headers(response, &etag);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/ogg"));
    Ok(response)
}

/// Headers every successful audio answer carries.
fn with_common_headers(mut response: Response, etag: &str) -> Response {
    let h = response.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::try_from(etag) {
        h.insert(header::ETAG, v);
    }
    // Content-addressed: the bytes behind this ETag never change.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(start: u64, len: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, len })
    }

    #[test]
    fn ranges_resolve_against_the_file_length() {
        assert_eq!(parse_range("bytes=0-9", 100), part(0, 10));
        assert_eq!(parse_range("bytes=90-200", 100), part(90, 10));
        assert_eq!(parse_range("bytes=10-", 100), part(10, 90));
        assert_eq!(parse_range("bytes=-30", 100), part(70, 30));
        assert_eq!(parse_range("bytes=-300", 100), part(0, 100));
        assert_eq!(parse_range("bytes=99-99", 100), part(99, 1));
    }

    #[test]
    fn out_of_file_ranges_are_unsatisfiable() {
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(
            parse_range("bytes=100-120", 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(parse_range("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), RangeRequest::Unsatisfiable);
    }

    #[test]
    fn unsupported_or_malformed_ranges_mean_the_whole_file() {
        for v in [
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=0-1,5-6",
            "bytes=-",
            "bytes=0",
        ] {
            assert_eq!(parse_range(v, 100), RangeRequest::Full, "{v}");
        }
    }
}
