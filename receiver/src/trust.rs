//! Trusting only this receiver's controller (see [`loa_protocol::signed`]).
//!
//! - The controller's Ed25519 public key comes from `--controller-key
//!   BASE64|@FILE` (pinned), or else from the copy kept in the cache
//!   directory (`controller.key`), or else — trust on first use — from
//!   `GET /api/v1/controller-key` with the receiver's token, fetched in the
//!   background ([`fetch_until_known`]) and kept for next time. First use is
//!   logged loudly with the key's fingerprint: until enrollment delivers the
//!   key, whoever answers that first request is trusted.
//! - Every message on a controller-to-receiver topic must be a signed
//!   envelope that [`Trust::open`] accepts; every live frame must carry a
//!   valid signature ([`Trust::decode_frame`]). Until the key is known,
//!   nothing is accepted (the link re-subscribes once it is, so retained
//!   schedule and settings arrive again).
//! - The last sequence number accepted per topic is kept on disk
//!   (`controller-seq.json`, with the key it belongs to), so a replay after a
//!   restart is still refused.
//! - Refusals are logged at `warn` and the recent ones (at most
//!   [`MAX_REPORTED_REJECTIONS`], one per topic and reason per
//!   [`REPEAT_WINDOW_SECS`] so a flood of forged frames cannot hide the rest)
//!   go into every status; [`Trust::rejected_total`] counts them all.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use loa_protocol::live::{FrameError, LiveFrame};
use loa_protocol::signed::{
    self, MAX_REPORTED_REJECTIONS, Rejection, Verifier, VerifyError, VerifyingKey,
};
use loa_protocol::topics::parse_receiver_topic;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::fsutil;

/// The controller's key, kept after first use.
pub const KEY_FILE: &str = "controller.key";
/// Last accepted sequence numbers.
pub const SEQ_FILE: &str = "controller-seq.json";
/// Repeated refusals (same topic and reason) within this many seconds are
/// counted but listed once.
pub const REPEAT_WINDOW_SECS: i64 = 10;
/// A live frame captured further than this (µs) from the controller's clock
/// as estimated is refused as stale: a recorded broadcast replayed later
/// carries its old capture instants (genuine frames arrive within 2 s).
pub const MAX_FRAME_AGE_SYNCED_US: i64 = 30_000_000;
/// The same limit while the clock exchange has no estimate yet (the local
/// clock may be off by a little more).
pub const MAX_FRAME_AGE_UNSYNCED_US: i64 = signed::MAX_MESSAGE_AGE_SECS * 1_000_000;

/// Why the controller's key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("--controller-key: {0}")]
    BadPinnedKey(String),
    #[error("cannot read --controller-key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot keep the controller's key in {path}: {source}")]
    Save {
        path: String,
        source: std::io::Error,
    },
}

/// Parses `--controller-key`: base64 of the 32-byte public key, or `@FILE`
/// holding it.
pub fn parse_pinned(value: &str) -> Result<VerifyingKey, TrustError> {
    let text = match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|source| TrustError::KeyFile {
            path: path.to_string(),
            source,
        })?,
        None => value.to_string(),
    };
    signed::parse_public_key(&text).map_err(TrustError::BadPinnedKey)
}

/// What is kept in [`SEQ_FILE`].
#[derive(Debug, Default, Serialize, Deserialize)]
struct SeqFile {
    /// The key these sequence numbers were accepted under (base64).
    key: String,
    /// Topic → last accepted seq.
    last: BTreeMap<String, u64>,
}

struct State {
    /// `None` until the key is known.
    verifier: Option<Verifier>,
    /// Sequence numbers loaded from disk, for the key they belong to.
    loaded: SeqFile,
    rejections: VecDeque<Rejection>,
}

/// The receiver's trust in its controller. Shared by the link and the
/// main loop (behind an `Arc`).
pub struct Trust {
    dir: PathBuf,
    state: Mutex<State>,
    rejected_total: AtomicU64,
}

impl Trust {
    /// Opens the trust state in `dir`: the pinned key if given, else the one
    /// kept from first use, else none yet.
    pub fn load(dir: &Path, pinned: Option<VerifyingKey>) -> Result<Trust, TrustError> {
        let kept = match std::fs::read_to_string(dir.join(KEY_FILE)) {
            Ok(text) => match signed::parse_public_key(&text) {
                Ok(key) => Some(key),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring the damaged kept controller key");
                    None
                }
            },
            Err(_) => None,
        };
        if let (Some(pinned), Some(kept)) = (pinned, kept)
            && pinned != kept
        {
            tracing::warn!(pinned = %signed::fingerprint(&pinned), kept = %signed::fingerprint(&kept),
                "--controller-key differs from the key trusted before; using --controller-key");
        }
        let loaded: SeqFile = std::fs::read(dir.join(SEQ_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let trust = Trust {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                verifier: None,
                loaded,
                rejections: VecDeque::new(),
            }),
            rejected_total: AtomicU64::new(0),
        };
        if let Some(key) = pinned.or(kept) {
            tracing::info!(fingerprint = %signed::fingerprint(&key),
                source = if pinned.is_some() { "--controller-key" } else { KEY_FILE },
                "trusting the controller's signing key");
            trust.set_key(key);
        }
        Ok(trust)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the controller's key is known.
    pub fn has_key(&self) -> bool {
        self.lock().verifier.is_some()
    }

    /// The trusted key, if known.
    pub fn key(&self) -> Option<VerifyingKey> {
        self.lock().verifier.as_ref().map(|v| *v.key())
    }

    /// Starts trusting `key`, with the sequence numbers kept for it.
    fn set_key(&self, key: VerifyingKey) {
        let mut state = self.lock();
        let encoded = signed::public_key_base64(&key);
        let last = if state.loaded.key == encoded {
            state.loaded.last.clone()
        } else {
            BTreeMap::new()
        };
        state.verifier = Some(Verifier::new(key, last));
    }

    /// Trusts `key` learnt on first use and keeps it in the cache directory.
    pub fn trust_first_use(&self, key: VerifyingKey) -> Result<(), TrustError> {
        let path = self.dir.join(KEY_FILE);
        fsutil::write_atomic(
            &path,
            format!("{}\n", signed::public_key_base64(&key)).as_bytes(),
        )
        .map_err(|source| TrustError::Save {
            path: path.display().to_string(),
            source,
        })?;
        tracing::warn!(fingerprint = %signed::fingerprint(&key), path = %path.display(),
            "TRUST ON FIRST USE: now obeying the controller key fetched over HTTP; compare its \
             fingerprint with the controller's, or pin it with --controller-key");
        self.set_key(key);
        Ok(())
    }

    /// Checks a message received on `topic` at `now` (controller time if
    /// known). Returns its JSON payload if it is to be acted on; `None` if
    /// it was refused (logged, and reported unless it was only a duplicate).
    /// An empty payload (a cleared retained message) passes as empty.
    pub fn open(&self, topic: &str, bytes: &[u8], now: DateTime<Utc>) -> Option<Vec<u8>> {
        if bytes.is_empty() {
            return Some(Vec::new());
        }
        let freshness = parse_receiver_topic(topic)
            .map(|(_, kind)| signed::freshness(kind))
            .unwrap_or(signed::Freshness::WithinSecs(signed::MAX_MESSAGE_AGE_SECS));
        let mut state = self.lock();
        let Some(verifier) = state.verifier.as_mut() else {
            tracing::info!(%topic, "controller key not known yet; message dropped (it is asked for again once the key is known)");
            return None;
        };
        match verifier.verify(topic, bytes, now, freshness) {
            Ok(opened) => {
                let file = SeqFile {
                    key: signed::public_key_base64(verifier.key()),
                    last: verifier.last_seqs().clone(),
                };
                drop(state);
                let path = self.dir.join(SEQ_FILE);
                if let Err(e) = fsutil::write_atomic(&path, &loa_protocol::encode(&file)) {
                    tracing::error!(error = %e, path = %path.display(),
                        "cannot keep the last sequence numbers; a replay after a restart could pass");
                }
                tracing::debug!(%topic, seq = opened.seq, "signed message accepted");
                Some(opened.payload.into_bytes())
            }
            Err(VerifyError::Duplicate { seq }) => {
                tracing::debug!(%topic, seq, "message already accepted; ignored");
                None
            }
            Err(error) => {
                drop(state);
                tracing::warn!(%topic, %error, "REFUSED a message claiming to come from the controller");
                self.reject(topic, error.code(), now);
                None
            }
        }
    }

    /// Parses a live frame, checks its signature and that it was captured
    /// recently by `controller_now_us` (the clock exchange's estimate, or
    /// `None` to use the local clock with a wider window). A refused frame
    /// is counted and reported (not logged: the link's rate-limited drop
    /// log does that).
    pub fn decode_frame(
        &self,
        topic: &str,
        bytes: &[u8],
        controller_now_us: Option<i64>,
    ) -> Result<LiveFrame, String> {
        let Some(key) = self.key() else {
            return Err("controller key not known yet".into());
        };
        match LiveFrame::decode_verified(bytes, &key) {
            Ok(frame) => {
                let (now_us, limit_us) = match controller_now_us {
                    Some(now) => (now, MAX_FRAME_AGE_SYNCED_US),
                    None => (crate::clock::local_now_us(), MAX_FRAME_AGE_UNSYNCED_US),
                };
                let age_us = now_us.saturating_sub(frame.capture_us);
                if age_us.saturating_abs() > limit_us {
                    self.reject(topic, "stale_frame", Utc::now());
                    return Err(format!(
                        "stale live frame: captured {} s from now (replayed?)",
                        age_us / 1_000_000
                    ));
                }
                Ok(frame)
            }
            Err(e) => {
                let reason = match e {
                    FrameError::BadSignature => "bad_frame_signature",
                    _ => "malformed_frame",
                };
                self.reject(topic, reason, Utc::now());
                Err(e.to_string())
            }
        }
    }

    fn reject(&self, topic: &str, reason: &str, at: DateTime<Utc>) {
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        let repeated = state.rejections.iter().rev().any(|r| {
            r.topic == topic
                && r.reason == reason
                && (at - r.at).num_seconds().abs() < REPEAT_WINDOW_SECS
        });
        if repeated {
            return;
        }
        state.rejections.push_back(Rejection {
            topic: topic.to_string(),
            reason: reason.to_string(),
            at,
        });
        while state.rejections.len() > MAX_REPORTED_REJECTIONS {
            state.rejections.pop_front();
        }
    }

    /// Recent refusals, oldest first, for the status.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.lock().rejections.iter().cloned().collect()
    }

    /// Every message and frame refused since start.
    pub fn rejected_total(&self) -> u64 {
        self.rejected_total.load(Ordering::Relaxed)
    }
}

/// The controller's answer at `GET /api/v1/controller-key`.
#[derive(Debug, Deserialize)]
struct KeyAnswer {
    public_key: String,
}

/// Fetches the controller's key (trust on first use) until it succeeds or
/// `stop` is cancelled, retrying with backoff (1 s … 30 s). Returns whether
/// the key is now known.
pub async fn fetch_until_known(
    trust: &Trust,
    controller: &str,
    tls: &crate::controller_http::ControllerTls,
    token: &str,
    stop: &CancellationToken,
) -> bool {
    use crate::controller_http::error_chain;
    let url = format!("{}/api/v1/controller-key", controller.trim_end_matches('/'));
    let client = match tls.client(|b| b.timeout(Duration::from_secs(10))) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client for the controller key");
            return false;
        }
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let fetched = async {
            let answer: KeyAnswer = client
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| error_chain(&e))?
                .error_for_status()
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| error_chain(&e))?;
            signed::parse_public_key(&answer.public_key)
        }
        .await;
        match fetched {
            Ok(key) => match trust.trust_first_use(key) {
                Ok(()) => return true,
                Err(e) => {
                    // Trusted for this run anyway; next start asks again.
                    tracing::error!(error = %e, "cannot keep the controller's key");
                    trust.set_key(key);
                    return true;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, %url, retry_in = ?backoff,
                    "cannot fetch the controller's signing key; obeying nothing from the controller until it is known");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loa_protocol::signed::SigningKey;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3; 32])
    }

    #[test]
    fn replays_are_refused_after_a_restart_and_refusals_are_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let topic = "loa/v1/receivers/r1/acks";
        let now = Utc::now();
        let first = signed::seal(&key(), topic, 7, now, b"{}").unwrap();
        let trust = Trust::load(dir.path(), Some(key().verifying_key())).unwrap();
        assert_eq!(trust.open(topic, &first, now), Some(b"{}".to_vec()));
        drop(trust);

        let trust = Trust::load(dir.path(), Some(key().verifying_key())).unwrap();
        let older = signed::seal(&key(), topic, 6, now, b"{}").unwrap();
        assert_eq!(trust.open(topic, &older, now), None);
        assert_eq!(trust.open(topic, &older, now), None);
        assert_eq!(trust.rejected_total(), 2);
        let listed = trust.rejections();
        assert_eq!(listed.len(), 1, "a repeat within the window is listed once");
        assert_eq!(listed[0].reason, "replayed");
        // The retained copy arriving again is not a refusal.
        assert_eq!(trust.open(topic, &first, now), None);
        assert_eq!(trust.rejected_total(), 2);
    }

    #[test]
    fn nothing_is_accepted_before_the_key_is_known_and_first_use_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let topic = "loa/v1/receivers/r1/schedule";
        let now = Utc::now();
        let message = signed::seal(&key(), topic, 1, now, b"{}").unwrap();
        let trust = Trust::load(dir.path(), None).unwrap();
        assert!(!trust.has_key());
        assert_eq!(trust.open(topic, &message, now), None);
        trust.trust_first_use(key().verifying_key()).unwrap();
        assert_eq!(trust.open(topic, &message, now), Some(b"{}".to_vec()));
        let reopened = Trust::load(dir.path(), None).unwrap();
        assert_eq!(reopened.key(), Some(key().verifying_key()));
    }

    #[test]
    fn forged_and_replayed_live_frames_are_refused() {
        use loa_protocol::Priority;
        use loa_protocol::live::FrameKind;
        let dir = tempfile::tempdir().unwrap();
        let trust = Trust::load(dir.path(), Some(key().verifying_key())).unwrap();
        let now = Utc::now().timestamp_micros();
        let frame = LiveFrame {
            kind: FrameKind::Audio,
            priority: Priority::Emergency,
            broadcast_id: [1; 16],
            seq: 0,
            capture_us: now,
            playout_delay_ms: 120,
            opus: vec![1, 2, 3],
        };
        let topic = "loa/v1/live/zones/z";
        assert_eq!(
            trust.decode_frame(topic, &frame.encode(&key()), Some(now)),
            Ok(frame.clone())
        );
        let forged = frame.encode(&SigningKey::from_bytes(&[4; 32]));
        assert!(trust.decode_frame(topic, &forged, Some(now)).is_err());
        // Genuine, but recorded an hour ago and replayed now.
        let old = LiveFrame {
            capture_us: now - 3_600_000_000,
            ..frame.clone()
        };
        assert!(
            trust
                .decode_frame(topic, &old.encode(&key()), Some(now))
                .is_err()
        );
        assert!(
            trust
                .decode_frame(topic, &old.encode(&key()), None)
                .is_err()
        );
        // A minute off passes only while the clock is not synchronised.
        let skewed = LiveFrame {
            capture_us: now - 60_000_000,
            ..frame
        };
        assert!(
            trust
                .decode_frame(topic, &skewed.encode(&key()), Some(now))
                .is_err()
        );
        assert!(
            trust
                .decode_frame(topic, &skewed.encode(&key()), None)
                .is_ok()
        );
        let reasons: Vec<String> = trust.rejections().into_iter().map(|r| r.reason).collect();
        assert_eq!(reasons, ["bad_frame_signature", "stale_frame"]);
        assert_eq!(trust.rejected_total(), 4);
    }

    #[test]
    fn pinned_keys_parse_from_text_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = signed::public_key_base64(&key().verifying_key());
        assert_eq!(parse_pinned(&text).unwrap(), key().verifying_key());
        let file = dir.path().join("k");
        std::fs::write(&file, format!("{text}\n")).unwrap();
        assert_eq!(
            parse_pinned(&format!("@{}", file.display())).unwrap(),
            key().verifying_key()
        );
        assert!(parse_pinned("nope").is_err());
        assert!(parse_pinned("@/nonexistent/key").is_err());
    }
}
