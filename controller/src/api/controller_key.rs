//! `GET /api/v1/controller-key`: the public half of the controller's
//! signing key, for receivers that trust it on first use (and for
//! technicians comparing fingerprints). Needs a receiver token or a user
//! session: the key is not secret, but the answer tells a caller it reached
//! this controller with valid credentials.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use loa_protocol::signed;
use serde::Serialize;

use super::ApiError;
use crate::auth::AudioClient;
use crate::state::AppState;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new().route("/controller-key", get(controller_key))
}

/// The answer.
#[derive(Debug, Serialize)]
struct ControllerKey {
    /// Ed25519 public key, standard base64 of its 32 bytes.
    public_key: String,
    /// Short form to compare by eye (see [`signed::fingerprint`]).
    fingerprint: String,
}

async fn controller_key(
    State(state): State<AppState>,
    client: AudioClient,
) -> Result<Json<ControllerKey>, ApiError> {
    let Some(key) = state.controller_key else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_signing_key",
            "this controller has no signing key loaded",
            "Bộ điều khiển chưa nạp khóa ký.",
        ));
    };
    if let AudioClient::Receiver { receiver_id } = &client {
        tracing::info!(receiver = %receiver_id, "receiver fetched the controller's public key");
    }
    Ok(Json(ControllerKey {
        public_key: signed::public_key_base64(&key),
        fingerprint: signed::fingerprint(&key),
    }))
}
