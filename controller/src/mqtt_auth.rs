//! Who may connect to the embedded MQTT broker (`serve --mqtt/--mqtts`).
//!
//! [`MqttAuth::verdict`] decides about every `CONNECT` reaching the broker's
//! public listener ([`crate::mqtt_front_end`]). Accepted are only:
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
//! rumqttd itself cannot restrict topics, so receivers reach it only
//! through [`crate::mqtt_front_end`], which checks their login here with
//! [`MqttAuth::verdict`], applies their topic ACL ([`crate::topic_acl`]) and
//! hands them on under a per-process relay credential. The broker's own
//! listener, on loopback, accepts only that relay credential and the
//! controller's internal one ([`MqttAuth::verdict_internal_listener`]).

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

/// Username under which the broker's front end ([`crate::mqtt_front_end`])
/// hands on a receiver it has authenticated.
pub const RELAY_USERNAME: &str = "loa-front-end-relay";

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
    WrongRelayPassword,
    NotThroughFrontEnd,
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
            Refusal::WrongRelayPassword => "wrong password for the front end's relay user",
            Refusal::NotThroughFrontEnd => {
                "receivers must connect through the broker's public listener"
            }
        })
    }
}

/// The embedded broker's authentication handler.
pub struct MqttAuth {
    db: SqlitePool,
    internal: Credentials,
    /// What the front end logs in with on a receiver's behalf (random,
    /// per process, like `internal`).
    relay: Credentials,
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
            relay: Credentials::new(RELAY_USERNAME, crate::auth::new_token()),
            runtime: tokio::runtime::Handle::current(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The credential the front end hands receivers on with.
    pub fn relay_credentials(&self) -> &Credentials {
        &self.relay
    }

    /// The receivers' registry this handler checks against.
    pub fn db(&self) -> &SqlitePool {
        &self.db
    }

    /// Whether this `CONNECT` may reach the broker's internal listener
    /// (behind the front end); refusals are logged.
    pub fn check_internal_listener(&self, client_id: &str, username: &str, password: &str) -> bool {
        match self.verdict_internal_listener(client_id, username, password) {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(client_id, username, %reason, "refused MQTT connection on the internal listener");
                false
            }
        }
    }

    /// The internal listener takes only the controller's own clients and
    /// receivers handed on by the front end (which checked their token and
    /// applies their topic ACL): a receiver's own token is refused there.
    pub fn verdict_internal_listener(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<(), Refusal> {
        if username == self.relay.username {
            if !equal(
                &Sha256::digest(password.as_bytes()),
                &Sha256::digest(self.relay.password.as_bytes()),
            ) {
                return Err(Refusal::WrongRelayPassword);
            }
            if client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
                return Err(Refusal::ReservedClientId);
            }
            if !loa_protocol::is_valid_id(client_id) {
                return Err(Refusal::InvalidId);
            }
            return Ok(());
        }
        if username == self.internal.username {
            return self.verdict_internal(client_id, password);
        }
        Err(Refusal::NotThroughFrontEnd)
    }

    fn verdict_internal(&self, client_id: &str, password: &str) -> Result<(), Refusal> {
        if !equal(
            &Sha256::digest(password.as_bytes()),
            &Sha256::digest(self.internal.password.as_bytes()),
        ) {
            return Err(Refusal::WrongInternalPassword);
        }
        if !client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            return Err(Refusal::InternalClientId);
        }
        Ok(())
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
            return self.verdict_internal(client_id, password);
        }
        if username == self.relay.username {
            // Only the front end itself speaks as the relay user.
            return Err(Refusal::InvalidId);
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

    #[tokio::test]
    async fn the_internal_listener_takes_the_controller_and_the_front_end_only() {
        let (auth, _dir) = auth_with(&[("loa-1", "tok1")]).await;
        let relay = auth.relay_credentials().clone();
        assert_eq!(
            auth.verdict_internal_listener("loa-1", &relay.username, &relay.password),
            Ok(())
        );
        assert_eq!(
            auth.verdict_internal_listener("loa-1", &relay.username, "guess"),
            Err(Refusal::WrongRelayPassword)
        );
        assert_eq!(
            auth.verdict_internal_listener("loa-controller", &relay.username, &relay.password),
            Err(Refusal::ReservedClientId)
        );
        assert_eq!(
            auth.verdict_internal_listener("loa-controller", INTERNAL_USERNAME, "s3cret"),
            Ok(())
        );
        // A receiver's own token does not open the internal listener.
        assert_eq!(
            auth.verdict_internal_listener("loa-1", "loa-1", "tok1"),
            Err(Refusal::NotThroughFrontEnd)
        );
        // Nor does the relay user work on the public side.
        assert!(
            auth.verdict("loa-1", &relay.username, &relay.password)
                .await
                .is_err()
        );
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials::new("u", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
