//! Who may connect to the embedded MQTT broker (`serve --mqtt/--mqtts`).
//!
//! rumqttd asks [`MqttAuth::check`] about every `CONNECT` that carries a
//! username and password (one without them is refused by rumqttd itself).
//! Accepted are only:
//! - a receiver whose client id and username are both its registered id and
//!   whose password is its token: the token's SHA-256 must equal
//!   `receivers.token_hash`. Lookups are cached for [`CACHE_TTL`], so a
//!   deleted receiver or a replaced token is refused from at most that long
//!   after the change (a connection already open stays open until it drops);
//! - the controller's own clients, with the random per-process
//!   [`Credentials::internal`] and a client id starting with
//!   [`INTERNAL_CLIENT_PREFIX`] (reserved: no receiver may connect under it).
//!
//! There is no anonymous access and no default credential. Refusals are
//! logged at `warn` with the client id and username, never the password.
//!
//! The broker cannot restrict topics (rumqttd has no ACLs): an accepted
//! receiver could subscribe to another receiver's topics. Everything the
//! controller sends is signed (see [`crate::signing`]) and the controller
//! checks that what a receiver publishes carries the receiver id of its
//! topic; read ACLs need Mosquitto (see [`crate::mosquitto`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::SqlitePool;

/// How long a receiver's token hash is trusted from the database.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Client ids starting with this belong to the controller.
pub const INTERNAL_CLIENT_PREFIX: &str = "loa-controller";

/// Username of the controller's internal clients.
pub const INTERNAL_USERNAME: &str = "loa-controller-internal";

/// An MQTT username and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    /// A username and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// A fresh credential for the controller's own clients: a random
    /// 32-byte password, made anew by every process and stored nowhere.
    pub fn internal() -> Self {
        Credentials::new(INTERNAL_USERNAME, crate::auth::new_token())
    }
}

/// Why a connection was refused (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoUsername,
    WrongInternalPassword,
    InternalClientId,
    ClientIdNotUsername,
    ReservedClientId,
    InvalidId,
    UnknownReceiver,
    WrongPassword,
    Database,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NoUsername => "no username",
            Refusal::WrongInternalPassword => "wrong password for the controller's internal user",
            Refusal::InternalClientId => "the internal user must use a controller client id",
            Refusal::ClientIdNotUsername => "client id differs from the username",
            Refusal::ReservedClientId => "client id reserved for the controller",
            Refusal::InvalidId => "username is not a valid receiver id",
            Refusal::UnknownReceiver => "no such receiver (unregistered or deleted)",
            Refusal::WrongPassword => "wrong token",
            Refusal::Database => "the receiver could not be looked up (database error)",
        })
    }
}

/// The embedded broker's authentication handler.
pub struct MqttAuth {
    db: SqlitePool,
    internal: Credentials,
    /// The controller's runtime: rumqttd calls [`MqttAuth::check`] from its
    /// own, and the database pool lives on this one.
    runtime: tokio::runtime::Handle,
    /// Receiver id → (token hash, or `None` if unknown; when looked up).
    cache: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl MqttAuth {
    /// A handler checking receivers against `db` and the controller's own
    /// clients against `internal`. Must be called within a tokio runtime.
    pub fn new(db: SqlitePool, internal: Credentials) -> MqttAuth {
        MqttAuth {
            db,
            internal,
            runtime: tokio::runtime::Handle::current(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this `CONNECT` may proceed; refusals are logged.
    pub async fn check(&self, client_id: &str, username: &str, password: &str) -> bool {
        match self.verdict(client_id, username, password).await {
            Ok(()) => {
                tracing::debug!(client_id, username, "MQTT client authenticated");
                true
            }
            Err(reason) => {
                tracing::warn!(client_id, username, %reason, "refused MQTT connection");
                false
            }
        }
    }

    /// Accepts or says why not.
    pub async fn verdict(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<(), Refusal> {
        if username.is_empty() {
            return Err(Refusal::NoUsername);
        }
        if username == self.internal.username {
            if !equal(
                &Sha256::digest(password.as_bytes()),
                &Sha256::digest(self.internal.password.as_bytes()),
            ) {
                return Err(Refusal::WrongInternalPassword);
            }
            if !client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
                return Err(Refusal::InternalClientId);
            }
            return Ok(());
        }
        if client_id != username {
            return Err(Refusal::ClientIdNotUsername);
        }
        if client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            return Err(Refusal::ReservedClientId);
        }
        if !loa_protocol::is_valid_id(username) {
            return Err(Refusal::InvalidId);
        }
        let stored = self.token_hash(username).await?;
        let Some(stored) = stored else {
            return Err(Refusal::UnknownReceiver);
        };
        let offered = crate::auth::token_hash(password);
        if equal(offered.as_bytes(), stored.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal::WrongPassword)
        }
    }

    /// The stored token hash of `id`, from the cache if fresh.
    async fn token_hash(&self, id: &str) -> Result<Option<String>, Refusal> {
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((hash, at)) = cache.get(id)
                && at.elapsed() < CACHE_TTL
            {
                return Ok(hash.clone());
            }
        }
        let db = self.db.clone();
        let key = id.to_string();
        let found = self
            .runtime
            .spawn(async move {
                sqlx::query_scalar::<_, String>("SELECT token_hash FROM receivers WHERE id = $1")
                    .bind(key)
                    .fetch_optional(&db)
                    .await
            })
            .await;
        let hash = match found {
            Ok(Ok(hash)) => hash,
            Ok(Err(error)) => {
                tracing::error!(receiver = id, %error, "cannot look up an MQTT client's token");
                return Err(Refusal::Database);
            }
            Err(error) => {
                tracing::error!(receiver = id, %error, "MQTT token look-up task failed");
                return Err(Refusal::Database);
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: at most one entry per id tried within the TTL.
        cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        cache.insert(id.to_string(), (hash.clone(), Instant::now()));
        Ok(hash)
    }
}

/// Compares without stopping at the first difference.
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn auth_with(receivers: &[(&str, &str)]) -> (MqttAuth, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).await.unwrap();
        sqlx::query("INSERT INTO zones (id, name, created_at) VALUES ('z', 'Z', 0)")
            .execute(&db)
            .await
            .unwrap();
        for (id, token) in receivers {
            sqlx::query(
                "INSERT INTO receivers (id, name, zone_id, token_hash, created_at) \
                 VALUES ($1, $1, 'z', $2, 0)",
            )
            .bind(id)
            .bind(crate::auth::token_hash(token))
            .execute(&db)
            .await
            .unwrap();
        }
        (
            MqttAuth::new(db, Credentials::new(INTERNAL_USERNAME, "s3cret")),
            dir,
        )
    }

    #[tokio::test]
    async fn receivers_need_their_own_id_and_token() {
        let (auth, _dir) = auth_with(&[("loa-1", "tok1"), ("loa-2", "tok2")]).await;
        assert_eq!(auth.verdict("loa-1", "loa-1", "tok1").await, Ok(()));
        assert_eq!(
            auth.verdict("loa-1", "loa-1", "tok2").await,
            Err(Refusal::WrongPassword)
        );
        assert_eq!(
            auth.verdict("loa-1", "loa-2", "tok2").await,
            Err(Refusal::ClientIdNotUsername)
        );
        assert_eq!(
            auth.verdict("loa-3", "loa-3", "tok1").await,
            Err(Refusal::UnknownReceiver)
        );
        assert_eq!(auth.verdict("x", "", "").await, Err(Refusal::NoUsername));
        assert_eq!(
            auth.verdict("a/#", "a/#", "tok1").await,
            Err(Refusal::InvalidId)
        );
    }

    #[tokio::test]
    async fn internal_clients_need_the_process_credential_and_a_reserved_id() {
        let (auth, _dir) = auth_with(&[("loa-controller-x", "t")]).await;
        assert_eq!(
            auth.verdict("loa-controller", INTERNAL_USERNAME, "s3cret")
                .await,
            Ok(())
        );
        assert_eq!(
            auth.verdict("loa-controller", INTERNAL_USERNAME, "guess")
                .await,
            Err(Refusal::WrongInternalPassword)
        );
        assert_eq!(
            auth.verdict("loa-1", INTERNAL_USERNAME, "s3cret").await,
            Err(Refusal::InternalClientId)
        );
        // A receiver registered under a reserved id cannot take over the
        // controller's session.
        assert_eq!(
            auth.verdict("loa-controller-x", "loa-controller-x", "t")
                .await,
            Err(Refusal::ReservedClientId)
        );
    }

    #[tokio::test]
    async fn a_deleted_receiver_is_refused_once_the_cache_expires() {
        let (auth, _dir) = auth_with(&[("loa-1", "tok1")]).await;
        assert_eq!(auth.verdict("loa-1", "loa-1", "tok1").await, Ok(()));
        sqlx::query("DELETE FROM receivers WHERE id = 'loa-1'")
            .execute(&auth.db)
            .await
            .unwrap();
        // Age the cache entry instead of waiting for it.
        auth.cache.lock().unwrap().clear();
        assert_eq!(
            auth.verdict("loa-1", "loa-1", "tok1").await,
            Err(Refusal::UnknownReceiver)
        );
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials::new("u", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
