//! Who may call the API. Users log in with a password (argon2id hash) and get
//! a random 32-byte bearer token; only the token's SHA-256 is stored, in
//! `sessions`, with a 12-hour expiry. Receivers hold their own token (also
//! stored hashed, in `receivers.token_hash`), accepted only where a receiver
//! needs it: downloading programme audio.
//!
//! Repeated failed logins are throttled per username in memory: after
//! [`MAX_FAILURES`] failures in a row the username is refused with 429 for
//! [`LOCKOUT`], whether or not the user exists. The counter resets on success,
//! when the lockout ends, and on restart (it guards against online guessing,
//! not against an attacker who can restart the controller).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;

use crate::api::ApiError;
use crate::db::now_ms;
use crate::state::AppState;

/// How long a login token stays valid.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Failed logins in a row before a username is locked out.
pub const MAX_FAILURES: u32 = 5;

/// How long a locked-out username is refused.
pub const LOCKOUT: Duration = Duration::from_secs(60);

/// Password hashing failed (a bug or resource exhaustion, never user input).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Hashes a password with argon2id and a random salt (PHC string format).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC `hash`. A malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the username does not exist, so that an
/// unknown user takes as long to refuse as a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password("loa-no-such-user").expect("argon2 with default parameters works")
    })
}

/// A new random bearer token: 32 bytes from the OS-seeded CSPRNG, hex-encoded.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The form a token is stored in: hex SHA-256.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Stores a new session for `user_id` and returns its token (shown once).
/// Expired sessions are swept at the same time.
pub async fn create_session(db: &SqlitePool, user_id: &str) -> Result<String, sqlx::Error> {
    let now = now_ms();
    sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(db)
        .await?;
    let token = new_token();
    sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(token_hash(&token))
        .bind(user_id)
        .bind(now)
        .bind(now + SESSION_LIFETIME.as_millis() as i64)
        .execute(db)
        .await?;
    Ok(token)
}

/// The bearer token of a request, if it carries `Authorization: Bearer ...`.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A logged-in user; extracting it makes a handler require a valid session.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user's id (`users.id`).
    pub user_id: String,
    /// The login name, for logs.
    pub username: String,
    /// The user's role: `admin`, `technician`, `editor`, `approver` or
    /// `viewer` (see [`crate::api::Role`]).
    pub role: String,
    /// The unit the user belongs to (`root` for the first admin); the user
    /// sees and targets only what is under it.
    pub unit_id: String,
}

pub(crate) async fn session_user(
    db: &SqlitePool,
    token: &str,
) -> Result<Option<AuthUser>, sqlx::Error> {
    let row: Option<(String, String, String, String)> = sqlx::query_as(
        "SELECT u.id, u.username, u.role, COALESCE(u.unit_id, 'root') \
         FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.token_hash = $1 AND s.expires_at > $2 AND NOT u.disabled",
    )
    .bind(token_hash(token))
    .bind(now_ms())
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(user_id, username, role, unit_id)| AuthUser {
        user_id,
        username,
        role,
        unit_id,
    }))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        session_user(&state.db, token)
            .await?
            .ok_or_else(ApiError::unauthorized)
    }
}

/// Who is downloading audio: a user, or a receiver with its own token.
#[derive(Debug, Clone)]
pub enum AudioClient {
    /// A logged-in user (e.g. previewing in the web UI).
    User(AuthUser),
    /// A receiver fetching a programme for its cache.
    Receiver {
        /// The receiver's id.
        receiver_id: String,
    },
}

impl FromRequestParts<AppState> for AudioClient {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        if let Some(user) = session_user(&state.db, token).await? {
            return Ok(AudioClient::User(user));
        }
        let receiver: Option<String> =
            sqlx::query_scalar("SELECT id FROM receivers WHERE token_hash = $1")
                .bind(token_hash(token))
                .fetch_optional(&state.db)
                .await?;
        receiver
            .map(|receiver_id| AudioClient::Receiver { receiver_id })
            .ok_or_else(ApiError::unauthorized)
    }
}

/// Per-username failed-login counter (see the module docs).
#[derive(Debug, Default)]
pub struct LoginThrottle {
    /// Failure state by lower-cased username.
    entries: Mutex<HashMap<String, Failures>>,
}

/// Failed attempts for one username.
#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Failures in a row since the last success or lockout end.
    count: u32,
    /// When the last failure happened, to forget stale entries.
    last: Instant,
    /// While set and in the future, every attempt is refused.
    locked_until: Option<Instant>,
}

/// Entries kept before stale ones are swept, bounding memory under a spray of usernames.
const MAX_TRACKED: usize = 10_000;

impl LoginThrottle {
    /// `Err(seconds)` if `username` is locked out, with the seconds left.
    pub fn check(&self, username: &str) -> Result<(), u64> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = username.to_lowercase();
        let now = Instant::now();
        if let Some(f) = entries.get(&key)
            && let Some(until) = f.locked_until
        {
            if until > now {
                return Err((until - now).as_secs().max(1));
            }
            entries.remove(&key);
        }
        Ok(())
    }

    /// Counts a failed attempt; the [`MAX_FAILURES`]th locks the username.
    pub fn record_failure(&self, username: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if entries.len() >= MAX_TRACKED {
            entries.retain(|_, f| {
                now.duration_since(f.last) < LOCKOUT || f.locked_until.is_some_and(|u| u > now)
            });
        }
        let f = entries.entry(username.to_lowercase()).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        f.count += 1;
        f.last = now;
        if f.count >= MAX_FAILURES {
            f.locked_until = Some(now + LOCKOUT);
            tracing::warn!(
                username,
                "too many failed logins; locked for {} s",
                LOCKOUT.as_secs()
            );
        }
    }

    /// Forgets the failures of a username that just logged in.
    pub fn record_success(&self, username: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&username.to_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_round_trip() {
        let h = hash_password("mật khẩu").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("mật khẩu", &h));
        assert!(!verify_password("mat khau", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let a = new_token();
        assert_eq!(a.len(), 64);
        assert_ne!(a, new_token());
        assert_ne!(token_hash(&a), a);
        assert_eq!(token_hash(&a), token_hash(&a));
    }

    #[test]
    fn throttle_locks_after_max_failures_and_resets_on_success() {
        let t = LoginThrottle::default();
        for _ in 0..MAX_FAILURES - 1 {
            assert!(t.check("Admin").is_ok());
            t.record_failure("Admin");
        }
        t.record_success("admin");
        for _ in 0..MAX_FAILURES {
            assert!(t.check("admin").is_ok());
            t.record_failure("admin");
        }
        let secs = t.check("ADMIN").unwrap_err();
        assert!(secs > 0 && secs <= LOCKOUT.as_secs());
        assert!(t.check("other").is_ok());
    }
}
