//! Enrollment: how a receiver with no credentials joins a controller
//! without any shared secret.
//!
//! 1. On first start the receiver creates its own Ed25519 key pair and
//!    shows its [`enrollment_code`] (`ABCD-EFGH`, from the SHA-256 of the
//!    public key), then sends an [`EnrollmentRequest`] to
//!    `POST /api/v1/enrollments` (no credentials). The controller recomputes
//!    the code from the key and refuses a mismatch.
//! 2. A technician compares the code shown by the receiver with the one
//!    listed on the console and accepts it, choosing the receiver's id,
//!    name and zone.
//! 3. The receiver keeps sending an [`EnrollmentClaim`] (its public key and
//!    the time, signed with its device key, see [`claim_signing_bytes`]) to
//!    `POST /api/v1/enrollments/claim`; once accepted, the answer is an
//!    [`EnrollmentGrant`]: its id, a token issued for it (once) and the
//!    controller's signing key, which the receiver pins.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A claim whose timestamp is further than this from the controller's
/// clock is refused (a recorded claim cannot be replayed later).
pub const CLAIM_MAX_SKEW_SECS: i64 = 300;

/// Domain separation for claim signatures: a claim signature can never be
/// mistaken for any other message signed with the device key.
const CLAIM_DOMAIN: &[u8] = b"loa/v1/enrollment-claim\n";

/// Crockford's base32 alphabet (no I, L, O, U).
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Body of `POST /api/v1/enrollments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentRequest {
    /// The receiver's Ed25519 public key, standard base64 of its 32 bytes.
    pub public_key: String,
    /// The code the receiver shows ([`enrollment_code`] of the key).
    pub code: String,
    /// The receiver's host name, to help the technician recognise it.
    pub hostname: String,
    /// An id the receiver was started with (`--id`), as a suggestion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_id: Option<String>,
}

/// Body of `POST /api/v1/enrollments/claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentClaim {
    /// The receiver's public key, standard base64.
    pub public_key: String,
    /// When the claim was made, Unix seconds.
    pub timestamp: i64,
    /// Ed25519 signature by the device key over
    /// [`claim_signing_bytes`]`(public_key, timestamp)`, standard base64.
    pub signature: String,
}

/// Answer to an accepted claim (handed out once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentGrant {
    /// The id the technician gave the receiver.
    pub receiver_id: String,
    /// The receiver's bearer token (audio downloads, MQTT password).
    pub token: String,
    /// The controller's Ed25519 signing key (base64), to pin.
    pub controller_key: String,
    /// The zone the receiver was put in.
    pub zone: String,
}

/// The enrollment code of a public key: the first 40 bits of its SHA-256
/// in Crockford base32, as `XXXX-XXXX`.
pub fn enrollment_code(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let bits = digest[..5]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let chars: String = (0..8)
        .map(|i| CROCKFORD[((bits >> (35 - 5 * i)) & 31) as usize] as char)
        .collect();
    format!("{}-{}", &chars[..4], &chars[4..])
}

/// A code as typed by a person, in its canonical form (`XXXX-XXXX`): case
/// and dashes ignored, `O` read as `0`, `I` and `L` as `1`. `None` if it
/// cannot be a code.
pub fn normalize_code(text: &str) -> Option<String> {
    let mut chars = String::with_capacity(8);
    for c in text.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        if !c.is_ascii() || !CROCKFORD.contains(&(c as u8)) || chars.len() == 8 {
            return None;
        }
        chars.push(c);
    }
    (chars.len() == 8).then(|| format!("{}-{}", &chars[..4], &chars[4..]))
}

/// The bytes a claim signature covers: a domain tag, then
/// `public_key|timestamp`.
pub fn claim_signing_bytes(public_key: &str, timestamp: i64) -> Vec<u8> {
    let mut bytes = CLAIM_DOMAIN.to_vec();
    bytes.extend_from_slice(format!("{public_key}|{timestamp}").as_bytes());
    bytes
}

/// A claim made at `now` by the holder of `key`.
pub fn sign_claim(key: &SigningKey, now: DateTime<Utc>) -> EnrollmentClaim {
    let public_key = BASE64.encode(key.verifying_key().as_bytes());
    let timestamp = now.timestamp();
    let signature = key.sign(&claim_signing_bytes(&public_key, timestamp));
    EnrollmentClaim {
        public_key,
        timestamp,
        signature: BASE64.encode(signature.to_bytes()),
    }
}

/// Why a claim is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("public key: {0}")]
    BadKey(String),
    #[error("the signature is not valid base64 of 64 bytes")]
    MalformedSignature,
    #[error("the signature does not match the public key")]
    BadSignature,
    #[error(
        "the timestamp is {0} s away from the controller's clock (at most {CLAIM_MAX_SKEW_SECS} s)"
    )]
    Stale(i64),
}

/// Checks a claim at `now`: a valid key, a signature by it, a timestamp
/// within [`CLAIM_MAX_SKEW_SECS`]. Returns the key.
pub fn verify_claim(
    claim: &EnrollmentClaim,
    now: DateTime<Utc>,
) -> Result<VerifyingKey, ClaimError> {
    let key = crate::signed::parse_public_key(&claim.public_key).map_err(ClaimError::BadKey)?;
    let signature: [u8; 64] = BASE64
        .decode(claim.signature.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(ClaimError::MalformedSignature)?;
    key.verify(
        &claim_signing_bytes(&claim.public_key, claim.timestamp),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| ClaimError::BadSignature)?;
    let skew = now.timestamp().saturating_sub(claim.timestamp);
    if skew.saturating_abs() > CLAIM_MAX_SKEW_SECS {
        return Err(ClaimError::Stale(skew));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn codes_are_short_crockford_and_typo_tolerant() {
        let code = enrollment_code(&key(1).verifying_key());
        assert_eq!(code.len(), 9);
        assert_eq!(&code[4..5], "-");
        assert!(
            code.chars()
                .filter(|c| *c != '-')
                .all(|c| CROCKFORD.contains(&(c as u8)))
        );
        assert_ne!(code, enrollment_code(&key(2).verifying_key()));
        assert_eq!(
            normalize_code(&code.to_lowercase().replace('-', "")),
            Some(code.clone())
        );
        assert_eq!(normalize_code("o1il-abcd"), Some("0111-ABCD".into()));
        assert_eq!(normalize_code("ABCD-EFG"), None);
        assert_eq!(normalize_code("ABCD-EFGHJ"), None);
        assert_eq!(normalize_code("ABCD-EFGU"), None);
        assert_eq!(normalize_code("ÁBCD-EFGH"), None);
    }

    #[test]
    fn claims_verify_only_with_the_right_key_and_time() {
        let now = Utc::now();
        let claim = sign_claim(&key(1), now);
        assert_eq!(verify_claim(&claim, now), Ok(key(1).verifying_key()));
        let late = now + chrono::Duration::seconds(CLAIM_MAX_SKEW_SECS + 1);
        assert!(matches!(
            verify_claim(&claim, late),
            Err(ClaimError::Stale(_))
        ));
        let other = EnrollmentClaim {
            public_key: sign_claim(&key(2), now).public_key,
            ..claim.clone()
        };
        assert_eq!(verify_claim(&other, now), Err(ClaimError::BadSignature));
        let moved = EnrollmentClaim {
            timestamp: claim.timestamp + 1,
            ..claim.clone()
        };
        assert_eq!(verify_claim(&moved, now), Err(ClaimError::BadSignature));
        let garbled = EnrollmentClaim {
            signature: "abc".into(),
            ..claim
        };
        assert_eq!(
            verify_claim(&garbled, now),
            Err(ClaimError::MalformedSignature)
        );
    }
}
