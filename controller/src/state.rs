//! The state every HTTP handler shares. Cloning it is cheap: each part is a
//! handle (pool, `Arc`s).

use std::sync::Arc;

use sqlx::SqlitePool;

use crate::auth::LoginThrottle;
use crate::distribution::Distributor;
use crate::live::LiveHub;
use crate::store::AudioStore;

/// Shared handles for the API.
#[derive(Clone)]
pub struct AppState {
    /// The database; the only place state lives.
    pub db: SqlitePool,
    /// Content-addressed audio files and the temporary upload area.
    pub store: AudioStore,
    /// Told when schedules, receivers or programmes change so receivers get
    /// their recomputed play events.
    pub distributor: Distributor,
    /// Largest accepted upload in bytes (`--max-upload-bytes`).
    pub max_upload_bytes: u64,
    /// Failed-login counters (in memory, see [`crate::auth`]).
    pub throttle: Arc<LoginThrottle>,
    /// Bounds concurrent transcodes to the number of CPUs, so a burst of
    /// uploads queues instead of starving the rest of the controller.
    pub transcode_slots: Arc<tokio::sync::Semaphore>,
    /// Live broadcasts; disabled (refusing to start any) unless set with
    /// [`AppState::with_live`].
    pub live: LiveHub,
    /// The public half of the controller's signing key, served to
    /// receivers; `None` until set with [`AppState::with_controller_key`].
    pub controller_key: Option<loa_protocol::signed::VerifyingKey>,
    /// Enrollment requests per remote address (in memory, see
    /// [`crate::api::EnrollLimiter`]).
    pub enroll_limiter: Arc<crate::api::EnrollLimiter>,
}

impl AppState {
    /// Bundles the handles; the throttle starts empty and live broadcasting
    /// is disabled.
    pub fn new(
        db: SqlitePool,
        store: AudioStore,
        distributor: Distributor,
        max_upload_bytes: u64,
    ) -> Self {
        AppState {
            db,
            store,
            distributor,
            max_upload_bytes,
            throttle: Arc::new(LoginThrottle::default()),
            transcode_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            live: LiveHub::disabled(),
            controller_key: None,
            enroll_limiter: Arc::default(),
        }
    }

    /// The same state with live broadcasting through `live`.
    pub fn with_live(mut self, live: LiveHub) -> Self {
        self.live = live;
        self
    }

    /// The same state serving `key` at `GET /api/v1/controller-key`.
    pub fn with_controller_key(mut self, key: loa_protocol::signed::VerifyingKey) -> Self {
        self.controller_key = Some(key);
        self
    }
}
