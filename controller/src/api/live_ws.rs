//! `GET /api/v1/live/ws`: a browser's microphone as a live broadcast, for
//! the session's duration.
//!
//! Query: `zones=a,b` and/or `receivers=c` (comma-separated ids),
//! `priority=normal|priority|emergency` (default normal), and optionally
//! `token=…`. The session token is taken from, in order: the
//! `Authorization: Bearer` header, the `token` query parameter, or the
//! `token` field of the first message. Browsers cannot set headers on a
//! WebSocket, and query strings end up in logs, so web pages should send
//! it in the first message.
//!
//! Protocol:
//! 1. The client's first message is text, JSON: `{"sample_rate": 48000,
//!    "format": "f32le"|"s16le"}` (mono PCM; rate 8000–192000 Hz), with
//!    optionally `"token"`, and `"zones"`, `"receivers"`, `"priority"` when
//!    not given in the query. It must come within 10 s.
//! 2. The server answers `{"type":"started","broadcast":{…}}` (the same
//!    object as `GET /broadcasts/{id}`); the broadcast is on air.
//! 3. The client sends binary messages of little-endian mono samples in the
//!    declared format (any length; a sample split across messages is
//!    joined). Each message is stamped with its capture time on arrival
//!    (arrival minus its duration); send small messages (10–40 ms) as they
//!    are recorded. A text message `{"type":"stop"}` ends the broadcast.
//! 4. When the broadcast ends (stopped by the client, by `DELETE
//!    /broadcasts/{id}`, or by the controller shutting down) the server
//!    sends `{"type":"ended","reason":…}` and closes with code 1000.
//!    Closing the socket ends the broadcast (`client_closed`).
//!
//! Errors before the upgrade (bad token or query, unknown targets) are the
//! API's usual JSON errors with their HTTP status. Errors after it are sent
//! as `{"type":"error","code","error","message_vi"}`, then the socket is
//! closed with code 4000 + the HTTP status the error would have (4401,
//! 4409, 4422, …).

use std::time::Duration;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use loa_schedules::{Priority, Targets};
use serde::Deserialize;
use serde_json::json;

use super::broadcasts::live_error;
use super::{ApiError, ApiQuery};
use crate::auth::AuthUser;
use crate::live::clock::now_us;
use crate::live::frames::sample_us;
use crate::live::resample::{MAX_RATE, MIN_RATE};
use crate::live::{EndReason, InputHandle, LiveError, PcmChunk};
use crate::state::AppState;

/// Longest wait for the first (configuration) message.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message accepted: a second of 192 kHz f32 audio, with room.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new().route("/live/ws", get(upgrade))
}

/// Query parameters.
#[derive(Deserialize, Default)]
struct WsQuery {
    /// Session token (see the module docs for the alternatives).
    #[serde(default)]
    token: Option<String>,
    /// Comma-separated zone ids.
    #[serde(default)]
    zones: Option<String>,
    /// Comma-separated receiver ids.
    #[serde(default)]
    receivers: Option<String>,
    /// Priority name.
    #[serde(default)]
    priority: Option<Priority>,
}

/// The client's first message.
#[derive(Deserialize)]
struct Hello {
    /// Rate of the PCM the client sends.
    sample_rate: u32,
    /// `f32le` or `s16le`.
    format: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    zones: Option<Vec<String>>,
    #[serde(default)]
    receivers: Option<Vec<String>>,
    #[serde(default)]
    priority: Option<Priority>,
}

/// Sample encodings accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    F32le,
    S16le,
}

impl Format {
    fn bytes(self) -> usize {
        match self {
            Format::F32le => 4,
            Format::S16le => 2,
        }
    }
}

/// Splits a comma-separated query list, dropping blanks.
fn split_ids(list: Option<&str>) -> Vec<String> {
    list.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Authenticates a bearer token the way every other route does.
async fn user_for_token(state: &AppState, token: &str) -> Result<AuthUser, ApiError> {
    let request = axum::http::Request::builder()
        .header(AUTHORIZATION, format!("Bearer {}", token.trim()))
        .body(())
        .map_err(|_| ApiError::unauthorized())?;
    let (mut parts, ()) = request.into_parts();
    AuthUser::from_request_parts(&mut parts, state).await
}

/// The bearer token of the `Authorization` header, if any.
fn header_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_string())
}

async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<WsQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            "websocket_required",
            format!(
                "this route only accepts WebSocket connections: {}",
                rejection.body_text()
            ),
            "Địa chỉ này chỉ nhận kết nối WebSocket.",
        )
    })?;
    let token =
        header_token(&headers).or_else(|| query.token.clone().filter(|t| !t.trim().is_empty()));
    let user = match &token {
        Some(token) => Some(user_for_token(&state, token).await?),
        None => None,
    };
    let targets = Targets {
        zones: split_ids(query.zones.as_deref()),
        receivers: split_ids(query.receivers.as_deref()),
    };
    let query_targets = !(targets.zones.is_empty() && targets.receivers.is_empty());
    if query_targets {
        state
            .live
            .check_targets(&targets)
            .await
            .map_err(live_error)?;
    }
    let session = Session {
        state,
        user,
        targets: query_targets.then_some(targets),
        priority: query.priority,
    };
    Ok(ws
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| session.run(socket))
        .into_response())
}

/// What the upgrade learnt, carried into the socket task.
struct Session {
    state: AppState,
    /// Authenticated before the upgrade, if a token came with it.
    user: Option<AuthUser>,
    /// Targets from the query.
    targets: Option<Targets>,
    /// Priority from the query.
    priority: Option<Priority>,
}

/// Sends an error message and closes with 4000 + its HTTP status.
async fn fail(socket: &mut WebSocket, error: ApiError, english: String) {
    let status = error.status_code();
    let body = json!({
        "type": "error",
        "code": error.code(),
        "error": english,
        "message_vi": error.message_vi(),
    });
    let _ = socket.send(Message::Text(body.to_string().into())).await;
    let code = if status.is_server_error() {
        1011
    } else {
        4000 + status.as_u16()
    };
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(error.code()),
        })))
        .await;
}

/// An [`ApiError`] for a problem with the first message.
fn bad_hello(detail: impl Into<String>) -> (ApiError, String) {
    let detail = detail.into();
    (
        ApiError::bad_request(
            "invalid_hello",
            detail.clone(),
            "Tin nhắn đầu tiên phải là JSON {\"sample_rate\": 48000, \"format\": \"f32le\"} \
             (định dạng f32le hoặc s16le).",
        ),
        detail,
    )
}

impl Session {
    async fn run(self, mut socket: WebSocket) {
        let (mut handle, format, rate) = match self.start(&mut socket).await {
            Ok(started) => started,
            Err((error, english)) => {
                tracing::debug!(code = error.code(), %english, "live WebSocket refused");
                fail(&mut socket, error, english).await;
                return;
            }
        };
        let id = handle.id.clone();
        let hub = self.state.live.clone();
        let mut carry: Vec<u8> = Vec::new();
        let reason = loop {
            tokio::select! {
                message = socket.recv() => match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        let arrived = now_us();
                        carry.extend_from_slice(&bytes);
                        let whole = carry.len() / format.bytes() * format.bytes();
                        let samples = decode(&carry[..whole], format);
                        carry.drain(..whole);
                        if samples.is_empty() {
                            continue;
                        }
                        // Captured over the message's length, ending on arrival.
                        let duration = sample_us(0, samples.len() as u64, rate);
                        let chunk = PcmChunk { samples, capture_us: arrived - duration };
                        if !handle.push(chunk) {
                            break None;
                        }
                    }
                    Some(Ok(Message::Text(text))) => {
                        let stop = serde_json::from_str::<serde_json::Value>(text.as_str())
                            .is_ok_and(|v| v["type"] == "stop");
                        if stop {
                            break Some(EndReason::Stopped);
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break Some(EndReason::ClientClosed),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(broadcast = %id, error = %e, "live WebSocket failed");
                        break Some(EndReason::ClientClosed);
                    }
                },
                () = handle.ended() => break None,
            }
        };
        if handle.dropped > 0 {
            tracing::warn!(broadcast = %id, chunks = handle.dropped, "browser audio dropped: encoder behind");
        }
        let ended = match reason {
            Some(reason) => hub.stop(&id, reason).await.ok(),
            None => hub.get(&id).await.ok().flatten(),
        };
        drop(handle);
        let end_reason = ended
            .and_then(|b| b.end_reason)
            .unwrap_or_else(|| EndReason::ClientClosed.as_str().to_string());
        let _ = socket
            .send(Message::Text(
                json!({"type": "ended", "reason": end_reason})
                    .to_string()
                    .into(),
            ))
            .await;
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: Utf8Bytes::from_static("ended"),
            })))
            .await;
    }

    /// Reads the first message, authenticates, starts the broadcast.
    async fn start(
        &self,
        socket: &mut WebSocket,
    ) -> Result<(InputHandle, Format, u32), (ApiError, String)> {
        let first = tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await;
        let text = match first {
            Err(_) => {
                return Err(bad_hello(format!(
                    "no first message within {} s",
                    HELLO_TIMEOUT.as_secs()
                )));
            }
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => return Err(bad_hello("the first message must be JSON text")),
            Ok(Some(Err(e))) => return Err(bad_hello(e.to_string())),
            Ok(None) => return Err(bad_hello("the connection closed before the first message")),
        };
        let hello: Hello = serde_json::from_str(text.as_str())
            .map_err(|e| bad_hello(format!("malformed first message: {e}")))?;
        let format = match hello.format.trim().to_ascii_lowercase().as_str() {
            "f32le" | "f32" => Format::F32le,
            "s16le" | "s16" => Format::S16le,
            other => {
                return Err(bad_hello(format!(
                    "unknown format {other:?}: use f32le or s16le"
                )));
            }
        };
        if !(MIN_RATE..=MAX_RATE).contains(&hello.sample_rate) {
            let e = LiveError::InvalidAudioFormat(format!(
                "sample rate {} Hz outside {MIN_RATE}..={MAX_RATE}",
                hello.sample_rate
            ));
            let english = e.to_string();
            return Err((live_error(e), english));
        }
        let user = match (&self.user, hello.token.as_deref()) {
            (Some(user), _) => user.clone(),
            (None, Some(token)) => user_for_token(&self.state, token)
                .await
                .map_err(|e| (e, "missing, invalid or expired bearer token".to_string()))?,
            (None, None) => {
                return Err((
                    ApiError::unauthorized(),
                    "missing, invalid or expired bearer token".to_string(),
                ));
            }
        };
        let targets = self.targets.clone().unwrap_or_else(|| Targets {
            zones: hello.zones.clone().unwrap_or_default(),
            receivers: hello.receivers.clone().unwrap_or_default(),
        });
        let priority = self.priority.or(hello.priority).unwrap_or_default();
        super::access::authorize_broadcast(&self.state.db, &user, &targets)
            .await
            .map_err(|e| (e.clone(), e.to_string()))?;
        let (broadcast, handle) = self
            .state
            .live
            .start_input(targets, priority, hello.sample_rate, user.username.clone())
            .await
            .map_err(|e| {
                let english = e.to_string();
                (live_error(e), english)
            })?;
        let started = json!({"type": "started", "broadcast": broadcast});
        if socket
            .send(Message::Text(started.to_string().into()))
            .await
            .is_err()
        {
            // Gone already: the caller's loop sees the closed socket.
            tracing::debug!(broadcast = %broadcast.id, "live WebSocket closed at start");
        }
        Ok((handle, format, hello.sample_rate))
    }
}

/// Little-endian PCM to f32 in -1..1 (non-finite values become silence).
fn decode(bytes: &[u8], format: Format) -> Vec<f32> {
    match format {
        Format::F32le => bytes
            .chunks_exact(4)
            .map(|b| {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if v.is_finite() {
                    v.clamp(-1.0, 1.0)
                } else {
                    0.0
                }
            })
            .collect(),
        Format::S16le => bytes
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_formats_decode() {
        let f: Vec<u8> = [0.5f32, -2.0, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(decode(&f, Format::F32le), vec![0.5, -1.0, 0.0]);
        let s: Vec<u8> = [16384i16, -32768]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(decode(&s, Format::S16le), vec![0.5, -1.0]);
    }

    #[test]
    fn id_lists_split_on_commas() {
        assert_eq!(split_ids(Some(" a, b,,c ")), vec!["a", "b", "c"]);
        assert!(split_ids(None).is_empty());
    }
}
