//! The controller's signing key and message sequence (see
//! [`loa_protocol::signed`]).
//!
//! - The Ed25519 key is created on first start as `signing.key` in the data
//!   directory: 32 random bytes (the seed), written to a temporary file with
//!   mode 0600, synced, then renamed into place, so a crash never leaves a
//!   half-written key. A key file of the wrong size is an error, never
//!   silently replaced (receivers pinned to the old key would refuse
//!   everything). Its public half is served at `GET /api/v1/controller-key`.
//! - Sequence numbers come from one counter for every message and topic.
//!   They are reserved on disk (`signing.seq`) in blocks of [`SEQ_BLOCK`]
//!   before use, so after a restart, even a crash, the counter continues
//!   above anything already sent: a number is skipped at worst, never reused.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::Utc;
use loa_protocol::signed::{self, SealError, SigningKey, VerifyingKey};
use rand::RngCore;

/// File name of the signing key in the data directory.
pub const KEY_FILE: &str = "signing.key";
/// File name of the reserved sequence high-water mark.
pub const SEQ_FILE: &str = "signing.seq";
/// Sequence numbers reserved on disk at a time.
pub const SEQ_BLOCK: u64 = 1024;

/// Why the signing key or sequence could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a Loa signing key ({len} bytes, expected 32); move it away to create a new key (receivers must then trust the new one)"
    )]
    BadKeyFile { path: String, len: usize },
    #[error("{path} does not hold a sequence number")]
    BadSeqFile { path: String },
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Reserved and next sequence numbers.
struct SeqState {
    /// The next number to hand out.
    next: u64,
    /// Numbers up to this one are reserved on disk.
    reserved: u64,
}

/// Signs everything the controller sends to receivers.
pub struct Signer {
    key: SigningKey,
    seq: Mutex<SeqState>,
    seq_path: PathBuf,
}

impl Signer {
    /// Loads the key from `data_dir` (creating it on first start) and
    /// continues the sequence after what was reserved before.
    pub fn open(data_dir: &Path) -> Result<Signer, SigningError> {
        std::fs::create_dir_all(data_dir).map_err(|source| io("create", data_dir, source))?;
        let key_path = data_dir.join(KEY_FILE);
        let key = match std::fs::read(&key_path) {
            Ok(bytes) => {
                let seed: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| SigningError::BadKeyFile {
                            path: key_path.display().to_string(),
                            len: bytes.len(),
                        })?;
                let mode = std::fs::metadata(&key_path)
                    .map_err(|source| io("inspect", &key_path, source))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %key_path.display(), mode = format!("{:o}", mode & 0o777),
                        "signing key readable by others; restricting it to 0600");
                    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|source| io("restrict", &key_path, source))?;
                }
                SigningKey::from_bytes(&seed)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                rand::rng().fill_bytes(&mut seed);
                write_atomic(&key_path, &seed)?;
                let key = SigningKey::from_bytes(&seed);
                tracing::info!(path = %key_path.display(),
                    fingerprint = %signed::fingerprint(&key.verifying_key()),
                    "created the controller's signing key");
                key
            }
            Err(source) => return Err(io("read", &key_path, source)),
        };
        let seq_path = data_dir.join(SEQ_FILE);
        let reserved = match std::fs::read_to_string(&seq_path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| SigningError::BadSeqFile {
                    path: seq_path.display().to_string(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => return Err(io("read", &seq_path, source)),
        };
        tracing::info!(fingerprint = %signed::fingerprint(&key.verifying_key()), next_seq = reserved + 1,
            "controller signing key loaded");
        Ok(Signer {
            key,
            seq: Mutex::new(SeqState {
                next: reserved + 1,
                reserved,
            }),
            seq_path,
        })
    }

    /// The public key receivers verify with.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The signing key (live frames are signed with it directly).
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The next sequence number, reserving a new block on disk first when
    /// the reserved one is used up.
    pub fn next_seq(&self) -> Result<u64, SigningError> {
        let mut state = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        if state.next > state.reserved {
            let reserved = state.next + SEQ_BLOCK - 1;
            write_atomic(&self.seq_path, format!("{reserved}\n").as_bytes())?;
            state.reserved = reserved;
        }
        let seq = state.next;
        state.next += 1;
        Ok(seq)
    }

    /// Wraps `payload` (a JSON message) for `topic` in a signed envelope
    /// with the next sequence number and the current time.
    pub fn seal(&self, topic: &str, payload: &[u8]) -> Result<Vec<u8>, SigningError> {
        // Checked before a sequence number is spent.
        std::str::from_utf8(payload).map_err(|_| SealError::NotText)?;
        let seq = self.next_seq()?;
        Ok(signed::seal(&self.key, topic, seq, Utc::now(), payload)?)
    }
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> SigningError {
    SigningError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` through a synced temporary file (mode 0600) and
/// a rename, then syncs the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SigningError> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    written.map_err(|source| io("write", &tmp, source))?;
    std::fs::rename(&tmp, path).map_err(|source| io("rename into", path, source))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| io("sync", dir, source))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use loa_protocol::signed::{Freshness, Verifier};

    #[test]
    fn the_key_persists_with_mode_0600_and_seq_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let public = signer.public_key();
        let seqs: Vec<u64> = (0..3).map(|_| signer.next_seq().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3]);
        drop(signer);

        let again = Signer::open(dir.path()).unwrap();
        assert_eq!(again.public_key(), public, "same key after a restart");
        let next = again.next_seq().unwrap();
        assert!(next > 3, "seq {next} reused after a restart");
        assert_eq!(next, SEQ_BLOCK + 1);
    }

    #[test]
    fn sealed_messages_verify_with_the_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::open(dir.path()).unwrap();
        let topic = "loa/v1/receivers/r1/acks";
        let bytes = signer.seal(topic, br#"{"report_ids":[]}"#).unwrap();
        let mut verifier = Verifier::new(signer.public_key(), Default::default());
        let opened = verifier
            .verify(topic, &bytes, Utc::now(), Freshness::WithinSecs(60))
            .unwrap();
        assert_eq!(opened.payload, r#"{"report_ids":[]}"#);
        assert!(matches!(
            signer.seal(topic, &[0xff]),
            Err(SigningError::Seal(SealError::NotText))
        ));
    }

    #[test]
    fn a_damaged_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(matches!(
            Signer::open(dir.path()),
            Err(SigningError::BadKeyFile { len: 5, .. })
        ));
        assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap(), b"short");
    }
}
