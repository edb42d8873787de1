//! Signed messages: every JSON message the controller publishes to receivers
//! travels inside a [`Signed`] envelope, so a receiver acts only on what its
//! own controller sent, unaltered, once, and recently enough.
//!
//! ```json
//! {"v":1,"topic":"loa/v1/receivers/r1/acks","seq":42,
//!  "issued_at":"2026-12-03T10:00:00.000Z",
//!  "payload":"{\"report_ids\":[\"…\"]}","sig":"<base64 Ed25519>"}
//! ```
//!
//! - `payload` is the exact JSON text of the message (any message type: the
//!   envelope is generic over the payload bytes, which must be UTF-8).
//! - `sig` is an Ed25519 signature by the controller's key over
//!   [`signing_bytes`]: a domain label, then `v`, `topic`, `seq`,
//!   `issued_at` and `payload`, each length-prefixed, so no two different
//!   envelopes sign the same bytes and a signature made for something else
//!   (a live frame) can never pass for a message.
//! - Binding `topic` stops a message for one receiver being replayed to
//!   another (or an ack being replayed as a schedule).
//! - `seq` comes from one controller-wide counter that never goes back,
//!   even across restarts; a [`Verifier`] remembers the last `seq` accepted
//!   per topic (the receiver keeps that map on disk) and refuses anything
//!   not newer.
//! - `issued_at` bounds the age of one-off messages (acks, commands) to
//!   [`MAX_MESSAGE_AGE_SECS`]; retained state (schedules, settings) is
//!   accepted at any age as long as its `seq` is newer, because a receiver
//!   that was offline for days must still get the schedule waiting for it.
//!   The schedule's own rule (a version not newer than the one on disk is
//!   ignored) still applies after the envelope is accepted.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer as _};
use serde::{Deserialize, Serialize};

pub use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::MAX_PAYLOAD_BYTES;

/// Envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;

/// Domain label in front of every signed message; live frames use another.
const MESSAGE_DOMAIN: &[u8] = b"loa/v1 signed message\0";

/// One-off messages (acks, commands) issued longer ago than this, or
/// further in the future, are stale.
pub const MAX_MESSAGE_AGE_SECS: i64 = 600;

/// Recent rejections a receiver reports in its status.
pub const MAX_REPORTED_REJECTIONS: usize = 16;

/// The envelope on the wire (JSON). Field order is the wire order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub v: u8,
    pub topic: String,
    pub seq: u64,
    /// RFC 3339, kept as sent: the signature covers this exact text.
    pub issued_at: String,
    /// The message's exact JSON text.
    pub payload: String,
    /// Base64 (standard, padded) Ed25519 signature over [`signing_bytes`].
    pub sig: String,
}

/// The bytes a [`Signed`] envelope's signature covers.
pub fn signing_bytes(v: u8, topic: &str, seq: u64, issued_at: &str, payload: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        MESSAGE_DOMAIN.len() + 1 + 8 + 12 + topic.len() + issued_at.len() + payload.len(),
    );
    out.extend_from_slice(MESSAGE_DOMAIN);
    out.push(v);
    for field in [
        topic.as_bytes(),
        &seq.to_be_bytes(),
        issued_at.as_bytes(),
        payload.as_bytes(),
    ] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// Why a message could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the payload is not UTF-8 text")]
    NotText,
}

/// Wraps `payload` (a JSON message) for `topic` in a signed envelope.
pub fn seal(
    key: &SigningKey,
    topic: &str,
    seq: u64,
    issued_at: DateTime<Utc>,
    payload: &[u8],
) -> Result<Vec<u8>, SealError> {
    let payload = std::str::from_utf8(payload).map_err(|_| SealError::NotText)?;
    let issued_at = issued_at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let bytes = signing_bytes(ENVELOPE_VERSION, topic, seq, &issued_at, payload);
    let sig = key.sign(&bytes);
    Ok(crate::encode(&Signed {
        v: ENVELOPE_VERSION,
        topic: topic.to_string(),
        seq,
        issued_at,
        payload: payload.to_string(),
        sig: BASE64.encode(sig.to_bytes()),
    }))
}

/// Why a received message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a well-formed signed envelope (including unsigned messages).
    #[error("malformed or unsigned message: {0}")]
    Malformed(String),
    /// The signature does not match the controller's key: forged or altered.
    #[error("bad signature (forged or altered message)")]
    BadSignature,
    /// Signed, but for another topic (replayed from another receiver or kind).
    #[error("signed for topic {signed_for:?}, received on another")]
    WrongTopic { signed_for: String },
    /// Not newer than the last message accepted on this topic.
    #[error("replayed: seq {seq} is older than the last accepted {last}")]
    Replayed { seq: u64, last: u64 },
    /// The very message already accepted (a QoS 1 redelivery or the retained
    /// copy on reconnection): harmless, ignored, not reported.
    #[error("duplicate of the message already accepted (seq {seq})")]
    Duplicate { seq: u64 },
    /// Issued too long ago (or too far in the future, when negative).
    #[error("stale: issued {age_secs} s ago (limit {MAX_MESSAGE_AGE_SECS} s)")]
    Stale { age_secs: i64 },
}

impl VerifyError {
    /// Short machine-readable reason, as reported in [`Rejection::reason`].
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::WrongTopic { .. } => "wrong_topic",
            VerifyError::Replayed { .. } => "replayed",
            VerifyError::Duplicate { .. } => "duplicate",
            VerifyError::Stale { .. } => "stale",
        }
    }
}

/// A message that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub seq: u64,
    pub issued_at: DateTime<Utc>,
    /// The message's JSON text, ready for [`crate::decode`].
    pub payload: String,
}

/// How old a message on a topic may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Retained state (schedule, settings): any age, if its `seq` is newer.
    AnyAge,
    /// One-off messages: at most this many seconds old (or ahead).
    WithinSecs(i64),
}

/// The age rule of a controller-to-receiver topic: retained state
/// (schedule, settings) at any age, one-off messages (acks, commands)
/// within [`MAX_MESSAGE_AGE_SECS`].
pub fn freshness(kind: crate::topics::ReceiverTopic) -> Freshness {
    use crate::topics::ReceiverTopic;
    match kind {
        ReceiverTopic::Schedule | ReceiverTopic::Settings => Freshness::AnyAge,
        _ => Freshness::WithinSecs(MAX_MESSAGE_AGE_SECS),
    }
}

/// Checks envelopes against the controller's public key and remembers the
/// last `seq` accepted per topic.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: VerifyingKey,
    last: BTreeMap<String, u64>,
}

impl Verifier {
    /// A verifier trusting `key`, having accepted `last` (topic → seq) before.
    pub fn new(key: VerifyingKey, last: BTreeMap<String, u64>) -> Self {
        Verifier { key, last }
    }

    /// The trusted key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The last `seq` accepted per topic (to keep on disk).
    pub fn last_seqs(&self) -> &BTreeMap<String, u64> {
        &self.last
    }

    /// Checks `bytes` received on `topic` at `now` and, if it passes,
    /// records its `seq` and returns the message.
    pub fn verify(
        &mut self,
        topic: &str,
        bytes: &[u8],
        now: DateTime<Utc>,
        freshness: Freshness,
    ) -> Result<Opened, VerifyError> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(VerifyError::Malformed(format!(
                "{} bytes exceed the {MAX_PAYLOAD_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let envelope: Signed =
            serde_json::from_slice(bytes).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        if envelope.v != ENVELOPE_VERSION {
            return Err(VerifyError::Malformed(format!(
                "unsupported envelope version {}",
                envelope.v
            )));
        }
        let sig: [u8; 64] = BASE64
            .decode(&envelope.sig)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| VerifyError::Malformed("signature is not 64 base64 bytes".into()))?;
        let signed = signing_bytes(
            envelope.v,
            &envelope.topic,
            envelope.seq,
            &envelope.issued_at,
            &envelope.payload,
        );
        self.key
            .verify_strict(&signed, &Signature::from_bytes(&sig))
            .map_err(|_| VerifyError::BadSignature)?;
        if envelope.topic != topic {
            return Err(VerifyError::WrongTopic {
                signed_for: envelope.topic,
            });
        }
        let issued_at = DateTime::parse_from_rfc3339(&envelope.issued_at)
            .map_err(|e| VerifyError::Malformed(format!("issued_at: {e}")))?
            .with_timezone(&Utc);
        if let Some(&last) = self.last.get(topic) {
            if envelope.seq == last {
                return Err(VerifyError::Duplicate { seq: last });
            }
            if envelope.seq < last {
                return Err(VerifyError::Replayed {
                    seq: envelope.seq,
                    last,
                });
            }
        }
        if let Freshness::WithinSecs(limit) = freshness {
            let age_secs = (now - issued_at).num_seconds();
            if age_secs.abs() > limit {
                return Err(VerifyError::Stale { age_secs });
            }
        }
        self.last.insert(topic.to_string(), envelope.seq);
        Ok(Opened {
            seq: envelope.seq,
            issued_at,
            payload: envelope.payload,
        })
    }
}

/// A message a receiver refused, as reported in its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Where it arrived (an MQTT topic).
    pub topic: String,
    /// [`VerifyError::code`] (`bad_signature`, `replayed`, …) or, for live
    /// frames, `bad_frame_signature`, `stale_frame` or `malformed_frame`.
    pub reason: String,
    /// When it was refused.
    pub at: DateTime<Utc>,
}

/// Base64 (standard) text of a public key, as served by the controller.
pub fn public_key_base64(key: &VerifyingKey) -> String {
    BASE64.encode(key.as_bytes())
}

/// Parses a base64 public key (surrounding whitespace allowed).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = BASE64
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?
        .try_into()
        .map_err(|_| "an Ed25519 public key is 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// A short, human-comparable fingerprint of a public key: the first 8
/// bytes of its SHA-512 (the hash Ed25519 already uses), hex in groups of 4.
pub fn fingerprint(key: &VerifyingKey) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha512::digest(key.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    hex.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    const TOPIC: &str = "loa/v1/receivers/r1/acks";

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn now() -> DateTime<Utc> {
        "2026-12-03T10:00:00Z".parse().unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::new(key(1).verifying_key(), BTreeMap::new())
    }

    fn sealed(seq: u64, topic: &str, at: DateTime<Utc>) -> Vec<u8> {
        seal(&key(1), topic, seq, at, br#"{"report_ids":["a"]}"#).unwrap()
    }

    const FRESH: Freshness = Freshness::WithinSecs(MAX_MESSAGE_AGE_SECS);

    #[test]
    fn a_signed_message_opens_once() {
        let mut v = verifier();
        let bytes = sealed(5, TOPIC, now());
        let opened = v.verify(TOPIC, &bytes, now(), FRESH).unwrap();
        assert_eq!(opened.payload, r#"{"report_ids":["a"]}"#);
        assert_eq!(opened.seq, 5);
        assert_eq!(v.last_seqs().get(TOPIC), Some(&5));
        let ack: crate::ReportAck = crate::decode(opened.payload.as_bytes()).unwrap();
        assert_eq!(ack.report_ids, ["a"]);
        assert_eq!(
            v.verify(TOPIC, &bytes, now(), FRESH),
            Err(VerifyError::Duplicate { seq: 5 })
        );
    }

    #[test]
    fn forged_signature_is_rejected() {
        let mut v = verifier();
        let forged = seal(&key(2), TOPIC, 1, now(), b"{}").unwrap();
        assert_eq!(
            v.verify(TOPIC, &forged, now(), FRESH),
            Err(VerifyError::BadSignature)
        );
        assert!(
            v.last_seqs().is_empty(),
            "a rejected message records nothing"
        );
    }

    #[test]
    fn altered_fields_are_rejected() {
        let mut v = verifier();
        let good: Signed = serde_json::from_slice(&sealed(1, TOPIC, now())).unwrap();
        let alter = |f: &dyn Fn(&mut Signed)| {
            let mut s = good.clone();
            f(&mut s);
            crate::encode(&s)
        };
        for bytes in [
            alter(&|s| s.payload = r#"{"report_ids":["b"]}"#.into()),
            alter(&|s| s.seq = 99),
            alter(&|s| s.issued_at = "2026-12-03T10:00:01.000Z".into()),
            alter(&|s| s.topic = "loa/v1/receivers/r2/acks".into()),
        ] {
            let topic = serde_json::from_slice::<Signed>(&bytes).unwrap().topic;
            assert_eq!(
                v.verify(&topic, &bytes, now(), FRESH),
                Err(VerifyError::BadSignature)
            );
        }
        let mut bad_sig = good.clone();
        bad_sig.sig = "AAAA".into();
        assert!(matches!(
            v.verify(TOPIC, &crate::encode(&bad_sig), now(), FRESH),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn a_message_for_another_topic_is_rejected() {
        let mut v = verifier();
        let other = "loa/v1/receivers/r2/acks";
        let bytes = sealed(1, other, now());
        assert_eq!(
            v.verify(TOPIC, &bytes, now(), FRESH),
            Err(VerifyError::WrongTopic {
                signed_for: other.into()
            })
        );
    }

    #[test]
    fn older_sequence_numbers_are_replays_even_after_a_restart() {
        let mut v = verifier();
        v.verify(TOPIC, &sealed(10, TOPIC, now()), now(), FRESH)
            .unwrap();
        assert_eq!(
            v.verify(TOPIC, &sealed(9, TOPIC, now()), now(), FRESH),
            Err(VerifyError::Replayed { seq: 9, last: 10 })
        );
        // A restarted receiver loads the map it kept on disk.
        let mut restarted = Verifier::new(key(1).verifying_key(), v.last_seqs().clone());
        assert!(matches!(
            restarted.verify(TOPIC, &sealed(3, TOPIC, now()), now(), FRESH),
            Err(VerifyError::Replayed { seq: 3, last: 10 })
        ));
        // Sequences are per topic: another topic starts fresh.
        let other = "loa/v1/receivers/r1/schedule";
        restarted
            .verify(other, &sealed(4, other, now()), now(), Freshness::AnyAge)
            .unwrap();
        restarted
            .verify(TOPIC, &sealed(11, TOPIC, now()), now(), FRESH)
            .unwrap();
    }

    #[test]
    fn old_one_off_messages_are_stale_but_retained_state_is_not() {
        let mut v = verifier();
        let old = now() - Duration::days(3);
        assert_eq!(
            v.verify(TOPIC, &sealed(1, TOPIC, old), now(), FRESH),
            Err(VerifyError::Stale {
                age_secs: 3 * 86_400
            })
        );
        let ahead = now() + Duration::seconds(MAX_MESSAGE_AGE_SECS + 1);
        assert!(matches!(
            v.verify(TOPIC, &sealed(2, TOPIC, ahead), now(), FRESH),
            Err(VerifyError::Stale { age_secs }) if age_secs < 0
        ));
        let recent = now() - Duration::seconds(MAX_MESSAGE_AGE_SECS - 1);
        v.verify(TOPIC, &sealed(3, TOPIC, recent), now(), FRESH)
            .unwrap();
        let schedule = "loa/v1/receivers/r1/schedule";
        v.verify(
            schedule,
            &sealed(4, schedule, old),
            now(),
            Freshness::AnyAge,
        )
        .unwrap();
    }

    #[test]
    fn malformed_and_unsigned_messages_are_rejected() {
        let mut v = verifier();
        for bytes in [
            &b"{not json"[..],
            br#"{"report_ids":["a"]}"#,
            br#"{"v":2,"topic":"t","seq":1,"issued_at":"x","payload":"{}","sig":""}"#,
        ] {
            assert!(
                matches!(
                    v.verify(TOPIC, bytes, now(), FRESH),
                    Err(VerifyError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            v.verify(TOPIC, &huge, now(), FRESH),
            Err(VerifyError::Malformed(_))
        ));
        assert_eq!(
            seal(&key(1), TOPIC, 1, now(), &[0xff, 0xfe]),
            Err(SealError::NotText)
        );
    }

    #[test]
    fn public_keys_round_trip_as_base64() {
        let public = key(1).verifying_key();
        let text = public_key_base64(&public);
        assert_eq!(parse_public_key(&format!(" {text}\n")).unwrap(), public);
        assert!(parse_public_key("AAAA").is_err());
        assert!(parse_public_key("not base64!").is_err());
        let fp = fingerprint(&public);
        assert_eq!(fp.len(), 19);
        assert_ne!(fp, fingerprint(&key(2).verifying_key()));
    }
}
