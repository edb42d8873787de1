//! Topic ACLs and passwords for an external Mosquitto broker
//! (`loa-controller mosquitto-acl`).
//!
//! The embedded broker (rumqttd) authenticates clients but cannot restrict
//! topics; Mosquitto can. This writes:
//! - an `acl_file` in which each receiver user may read only its own
//!   controller-to-receiver topics (schedule, acks, settings, commands,
//!   clock replies), its own live topic and its zone's live topic, and write
//!   only its own status, plays and clock-request topics; the controller
//!   user may read and write every Loa topic; anyone else nothing;
//! - a `password_file` (Mosquitto's own hashed format, made by
//!   `mosquitto_passwd -U`): the controller user (password from
//!   `LOA_BROKER_PASSWORD`) and the receivers whose tokens are given in a
//!   `--tokens` file of `ID TOKEN` lines (each checked against the stored
//!   token hash). The controller keeps only token hashes, so a receiver's
//!   entry is made when its token is known (creation or rotation); entries
//!   of receivers no longer registered are removed, other entries are kept.
//!
//! Mosquitto must run with `allow_anonymous false`, `password_file` and
//! `acl_file` pointing at these files; send it SIGHUP to reload them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use loa_protocol::topics::PREFIX;
use sqlx::SqlitePool;

/// Default Mosquitto username of the controller.
pub const DEFAULT_CONTROLLER_USER: &str = "loa-controller";

/// A registered receiver as the ACL needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclReceiver {
    pub id: String,
    pub zone: String,
}

/// Why the files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MosquittoError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: expected `RECEIVER_ID TOKEN`")]
    TokenLine { path: PathBuf, line: usize },
    #[error("{path} line {line}: receiver {id:?} is not registered")]
    UnknownReceiver {
        path: PathBuf,
        line: usize,
        id: String,
    },
    #[error(
        "{path} line {line}: the token of receiver {id:?} does not match the one the controller issued"
    )]
    WrongToken {
        path: PathBuf,
        line: usize,
        id: String,
    },
    #[error("controller user {0:?} is invalid: use 1-64 characters a-z, A-Z, 0-9, '-', '_', '.'")]
    BadUser(String),
    #[error("cannot run mosquitto_passwd (is mosquitto installed?): {0}")]
    Passwd(String),
}

/// The ACL file: the controller may do everything under Loa's prefix; each
/// receiver only its own topics and its zone's live topic.
pub fn acl_file(controller_user: &str, receivers: &[AclReceiver]) -> String {
    let mut out = String::from(
        "# Loa topic ACLs, written by `loa-controller mosquitto-acl`; do not edit by hand.\n\
         # Anything not listed is denied.\n\n",
    );
    let _ = writeln!(out, "user {controller_user}\ntopic readwrite {PREFIX}/#\n");
    for r in receivers {
        let _ = writeln!(out, "user {}", r.id);
        for topic in crate::topic_acl::receiver_reads(&r.id, Some(&r.zone)) {
            let _ = writeln!(out, "topic read {topic}");
        }
        for topic in crate::topic_acl::receiver_writes(&r.id) {
            let _ = writeln!(out, "topic write {topic}");
        }
        out.push('\n');
    }
    out
}

/// Every registered receiver and its zone, by id.
pub async fn receivers(db: &SqlitePool) -> Result<Vec<AclReceiver>, MosquittoError> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, zone_id FROM receivers ORDER BY id")
            .fetch_all(db)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, zone)| AclReceiver { id, zone })
        .collect())
}

/// What [`write_files`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// Receivers in the ACL file.
    pub receivers: usize,
    /// Password entries set from this run's tokens (and controller password).
    pub passwords_set: usize,
    /// Registered receivers that still have no password entry.
    pub without_password: Vec<String>,
    /// Entries removed because their receiver is gone.
    pub removed: Vec<String>,
}

/// Options of `mosquitto-acl`.
#[derive(Debug, Clone)]
pub struct AclOptions {
    pub acl_file: PathBuf,
    pub password_file: Option<PathBuf>,
    pub controller_user: String,
    pub controller_password: Option<String>,
    pub tokens_file: Option<PathBuf>,
}

/// Writes the ACL file and, if asked, updates the password file.
pub async fn write_files(db: &SqlitePool, opts: &AclOptions) -> Result<Written, MosquittoError> {
    if !loa_protocol::is_valid_id(&opts.controller_user) {
        return Err(MosquittoError::BadUser(opts.controller_user.clone()));
    }
    let receivers = receivers(db).await?;
    write_atomic(
        &opts.acl_file,
        acl_file(&opts.controller_user, &receivers).as_bytes(),
    )?;
    let mut written = Written {
        receivers: receivers.len(),
        ..Written::default()
    };
    let Some(password_file) = &opts.password_file else {
        return Ok(written);
    };
    let mut plain: Vec<(String, String)> = Vec::new();
    if let Some(password) = &opts.controller_password {
        plain.push((opts.controller_user.clone(), password.clone()));
    }
    if let Some(path) = &opts.tokens_file {
        plain.extend(read_tokens(db, path).await?);
    }
    let mut entries = match std::fs::read_to_string(password_file) {
        Ok(text) => parse_password_file(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(source) => {
            return Err(MosquittoError::Read {
                path: password_file.clone(),
                source,
            });
        }
    };
    written.passwords_set = plain.len();
    entries.extend(hash_passwords(&plain)?);
    let known: std::collections::HashSet<&str> = receivers
        .iter()
        .map(|r| r.id.as_str())
        .chain([opts.controller_user.as_str()])
        .collect();
    written.removed = entries
        .keys()
        .filter(|u| !known.contains(u.as_str()))
        .cloned()
        .collect();
    entries.retain(|u, _| known.contains(u.as_str()));
    written.without_password = receivers
        .iter()
        .filter(|r| !entries.contains_key(&r.id))
        .map(|r| r.id.clone())
        .collect();
    let mut text = String::new();
    for (user, hash) in &entries {
        let _ = writeln!(text, "{user}:{hash}");
    }
    write_atomic(password_file, text.as_bytes())?;
    Ok(written)
}

/// `ID TOKEN` lines, each checked against the database.
async fn read_tokens(
    db: &SqlitePool,
    path: &Path,
) -> Result<Vec<(String, String)>, MosquittoError> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|source| MosquittoError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(id), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(MosquittoError::TokenLine {
                path: path.to_path_buf(),
                line: n + 1,
            });
        };
        let stored: Option<String> =
            sqlx::query_scalar("SELECT token_hash FROM receivers WHERE id = $1")
                .bind(id)
                .fetch_optional(db)
                .await?;
        match stored {
            None => {
                return Err(MosquittoError::UnknownReceiver {
                    path: path.to_path_buf(),
                    line: n + 1,
                    id: id.to_string(),
                });
            }
            Some(hash) if hash != crate::auth::token_hash(token) => {
                return Err(MosquittoError::WrongToken {
                    path: path.to_path_buf(),
                    line: n + 1,
                    id: id.to_string(),
                });
            }
            Some(_) => out.push((id.to_string(), token.to_string())),
        }
    }
    Ok(out)
}

/// `user:hash` lines of a Mosquitto password file.
fn parse_password_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(u, h)| !u.is_empty() && !h.is_empty())
        .map(|(u, h)| (u.to_string(), h.trim_end().to_string()))
        .collect()
}

/// Hashes `user:password` pairs the way Mosquitto wants them, through
/// `mosquitto_passwd -U` on a private temporary file (never on the command
/// line, where `ps` would show them).
fn hash_passwords(plain: &[(String, String)]) -> Result<Vec<(String, String)>, MosquittoError> {
    if plain.is_empty() {
        return Ok(Vec::new());
    }
    let mut file =
        tempfile::NamedTempFile::new().map_err(|e| MosquittoError::Passwd(e.to_string()))?;
    for (user, password) in plain {
        writeln!(file, "{user}:{password}").map_err(|e| MosquittoError::Passwd(e.to_string()))?;
    }
    file.flush()
        .map_err(|e| MosquittoError::Passwd(e.to_string()))?;
    let output = Command::new("mosquitto_passwd")
        .arg("-U")
        .arg(file.path())
        .output()
        .map_err(|e| MosquittoError::Passwd(e.to_string()))?;
    if !output.status.success() {
        return Err(MosquittoError::Passwd(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    let hashed =
        std::fs::read_to_string(file.path()).map_err(|e| MosquittoError::Passwd(e.to_string()))?;
    Ok(parse_password_file(&hashed).into_iter().collect())
}

/// Writes `bytes` to `path` through a temporary file and a rename, readable
/// by the owner only (the password file holds hashes of credentials).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MosquittoError> {
    let err = |source| MosquittoError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_receiver_gets_only_its_own_topics_and_its_zone() {
        let acl = acl_file(
            "loa-controller",
            &[
                AclReceiver {
                    id: "loa-1".into(),
                    zone: "thon-1".into(),
                },
                AclReceiver {
                    id: "loa-2".into(),
                    zone: "thon-2".into(),
                },
            ],
        );
        let block = |user: &str| -> Vec<String> {
            acl.split("\n\n")
                .find(|b| b.lines().any(|l| l == format!("user {user}")))
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("topic "))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(block("loa-controller"), ["topic readwrite loa/v1/#"]);
        assert_eq!(
            block("loa-1"),
            [
                "topic read loa/v1/receivers/loa-1/schedule",
                "topic read loa/v1/receivers/loa-1/acks",
                "topic read loa/v1/receivers/loa-1/settings",
                "topic read loa/v1/receivers/loa-1/commands",
                "topic read loa/v1/receivers/loa-1/clock-reply",
                "topic read loa/v1/live/receivers/loa-1",
                "topic read loa/v1/live/zones/thon-1",
                "topic write loa/v1/receivers/loa-1/status",
                "topic write loa/v1/receivers/loa-1/plays",
                "topic write loa/v1/receivers/loa-1/clock",
            ]
        );
        assert!(!block("loa-2").iter().any(|l| l.contains("loa-1")));
        assert!(!acl.contains('+') && !acl.contains("pattern"));
    }

    #[test]
    fn password_files_parse_by_user() {
        let m = parse_password_file("a:$7$x\n\nbad\nb:$7$y\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m["b"], "$7$y");
    }
}
