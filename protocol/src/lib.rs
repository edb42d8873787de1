//! The wire protocol between the Loa controller and its receivers.
//!
//! Like snapcast's `common/message/`, both sides compile against this one
//! crate: MQTT topic names live only in [`topics`], payloads only in
//! [`messages`]. Payloads are JSON; [`decode`] bounds their size and turns
//! anything malformed into a typed [`ProtocolError`] instead of a panic.
//! What the controller sends to receivers is signed: JSON messages inside a
//! [`signed::Signed`] envelope, live frames with a trailing signature
//! ([`live::LiveFrame`]).

pub mod enroll;
pub mod live;
pub mod messages;
pub mod signed;
pub mod topics;

pub use loa_schedules::{PlayEvent, Priority};
pub use messages::*;

/// Largest payload a peer accepts (a week of events for one receiver is a few
/// kilobytes; this leaves room without letting a forged message eat memory).
pub const MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;

/// Why a received payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed payload: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Serialises a message for the wire.
pub fn encode<T: serde::Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).expect("protocol messages always serialise")
}

/// Parses a message received from the wire, refusing oversize or malformed payloads.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, ProtocolError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(ProtocolError::TooLarge(payload.len()));
    }
    Ok(serde_json::from_slice(payload)?)
}

/// Whether `id` may name a receiver, zone, programme or schedule: 1–64
/// characters of `a-z`, `A-Z`, `0-9`, `-`, `_`, `.`. Ids become MQTT topic
/// levels and file names, so `/`, `+`, `#` and `..` must never get in.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_a_topic_or_path_are_invalid() {
        for bad in [
            "",
            "a/b",
            "+",
            "#",
            "..",
            ".",
            "a b",
            "thôn-1",
            &"x".repeat(65),
        ] {
            assert!(!is_valid_id(bad), "{bad:?} accepted");
        }
        for good in ["thon-1", "R_01", "a.b", &"x".repeat(64)] {
            assert!(is_valid_id(good), "{good:?} refused");
        }
    }

    #[test]
    fn malformed_and_oversize_payloads_are_refused() {
        assert!(matches!(
            decode::<ReportAck>(b"{not json"),
            Err(ProtocolError::Malformed(_))
        ));
        let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            decode::<ReportAck>(&huge),
            Err(ProtocolError::TooLarge(_))
        ));
    }
}
