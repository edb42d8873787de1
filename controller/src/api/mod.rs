//! The HTTP API under `/api/v1`: one module per resource, each exposing its
//! own `router()`, merged here. Every response is JSON (CSV and audio
//! excepted) and every failure is an [`ApiError`].

pub mod access;
mod approvals;
mod audio;
pub mod audit;
mod broadcasts;
mod controller_key;
mod enrollments;
mod error;
mod extract;
mod health;
mod live_ws;
mod login;
mod planning;
mod plays;
mod programmes;
mod receivers;
mod reports;
mod schedules;
mod units;
mod upload;
mod users;
mod zones;

use axum::Router;
use axum::http::StatusCode;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

pub use access::Role;
pub use enrollments::EnrollLimiter;
pub use error::ApiError;
pub use extract::{ApiJson, ApiPath, ApiQuery};

use crate::state::AppState;

/// Longest wait for the next piece of a request body.
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The whole API with its state attached.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(health::router())
        .merge(controller_key::router())
        .merge(login::router())
        .merge(zones::router())
        .merge(receivers::router())
        .merge(enrollments::router())
        .merge(programmes::router(state.max_upload_bytes))
        .merge(schedules::router())
        .merge(plays::router())
        .merge(broadcasts::router())
        .merge(live_ws::router())
        .merge(planning::router())
        .merge(units::router())
        .merge(users::router())
        .merge(approvals::router())
        .merge(reports::router())
        .merge(audit::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ));
    Router::new()
        .nest("/api/v1", api)
        .merge(crate::web::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // A client that stops sending its body (a stalled or hostile upload)
        // is dropped after this long without a byte, freeing the connection
        // and the temporary file; a slow but live upload goes on.
        .layer(RequestBodyTimeoutLayer::new(BODY_IDLE_TIMEOUT))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_route",
        "no such API route",
        "Không có địa chỉ API này.",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this HTTP method is not allowed on this route",
        "Địa chỉ này không hỗ trợ phương thức HTTP đã dùng.",
    )
}
