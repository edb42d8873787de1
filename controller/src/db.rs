//! The controller's database: SQLite under the data directory (WAL, foreign
//! keys on, a busy timeout), schema migrations embedded in the binary, and
//! the first-start creation of the `admin` user. SQL elsewhere uses portable
//! `$1` placeholders and BIGINT unix milliseconds so PostgreSQL can follow.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rand::Rng;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "loa.db";

/// Name of the user created on first start.
pub const ADMIN_USERNAME: &str = "admin";

/// Why the database could not be opened or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open database: {0}")]
    Open(#[from] sqlx::Error),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot hash the admin password: {0}")]
    Hash(#[from] crate::auth::AuthError),
}

/// Opens (creating if needed) `data_dir/loa.db` and applies migrations.
pub async fn open(data_dir: &Path) -> Result<SqlitePool, DbError> {
    std::fs::create_dir_all(data_dir).map_err(|source| DbError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(data_dir.join(DB_FILE))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    tracing::info!(path = %data_dir.join(DB_FILE).display(), "database ready");
    Ok(pool)
}

/// What [`ensure_admin`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminBootstrap {
    /// Users already existed; nothing changed.
    Existing,
    /// `admin` was created with the password from `LOA_ADMIN_PASSWORD`.
    FromEnvironment,
    /// `admin` was created with this generated password, which must be shown
    /// to the operator once and is stored nowhere in clear.
    Generated(String),
}

/// On a database without users, creates `admin` with `password`, or with a
/// freshly generated one when `password` is `None`. There is no default password.
pub async fn ensure_admin(
    db: &SqlitePool,
    password: Option<&str>,
) -> Result<AdminBootstrap, DbError> {
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(db)
        .await?;
    if users > 0 {
        return Ok(AdminBootstrap::Existing);
    }
    let (password, outcome) = match password {
        Some(p) => (p.to_string(), AdminBootstrap::FromEnvironment),
        None => {
            let p = generate_password();
            (p.clone(), AdminBootstrap::Generated(p))
        }
    };
    let hash = tokio::task::spawn_blocking(move || crate::auth::hash_password(&password))
        .await
        .map_err(|e| crate::auth::AuthError::Hash(e.to_string()))??;
    sqlx::query(
        "INSERT INTO users (id, username, password_hash, role, created_at) VALUES ($1, $2, $3, 'admin', $4)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(ADMIN_USERNAME)
    .bind(hash)
    .bind(now_ms())
    .execute(db)
    .await?;
    tracing::info!(username = ADMIN_USERNAME, "created the first user");
    Ok(outcome)
}

/// A random 20-character password from an alphabet without look-alikes
/// (no 0/O, 1/l/I), about 115 bits of entropy.
fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// The current instant in unix milliseconds, the unit every DB column uses.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A DB instant back as a UTC time.
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_start_creates_admin_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await.unwrap();
        let first = ensure_admin(&db, None).await.unwrap();
        let AdminBootstrap::Generated(p) = first else {
            panic!("expected a generated password, got {first:?}");
        };
        assert_eq!(p.len(), 20);
        assert_eq!(
            ensure_admin(&db, None).await.unwrap(),
            AdminBootstrap::Existing
        );
        drop(db);
        // Reopening applies no migration twice and keeps the user.
        let db = open(dir.path()).await.unwrap();
        assert_eq!(
            ensure_admin(&db, Some("x")).await.unwrap(),
            AdminBootstrap::Existing
        );
    }

    #[test]
    fn generated_passwords_differ() {
        assert_ne!(generate_password(), generate_password());
    }
}
