//! Live broadcasts: audio frames fanned out by the broker, and the clock
//! exchange that lets every receiver play a frame at the same instant.
//!
//! | topic | direction | QoS / retain | payload |
//! |---|---|---|---|
//! | `loa/v1/live/zones/{zone}` | controller → every receiver of a zone | 0 | [`LiveFrame`] (binary) |
//! | `loa/v1/live/receivers/{id}` | controller → one receiver | 0 | [`LiveFrame`] (binary) |
//! | `loa/v1/receivers/{id}/clock` | receiver → controller | 0 | [`ClockRequest`] (JSON) |
//! | `loa/v1/receivers/{id}/clock-reply` | controller → receiver | 0 | [`ClockReply`] (JSON) |
//!
//! The controller publishes each 20 ms Opus frame once per target group (a
//! zone, or a single receiver named in the targets); the broker does the
//! fan-out, so nothing on the controller's hot path is per receiver.
//!
//! Every frame carries its broadcast, a sequence number and the instant its
//! first sample was captured, on the controller's clock (Unix microseconds).
//! A receiver plays it at `capture_us + playout_delay_ms`, translated to its
//! own clock with the offset it estimates from the clock exchange
//! (`offset = ((t2 − t1) + (t3 − t4)) / 2`, NTP-style), so all receivers of
//! a broadcast play the same sample at the same instant.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::Priority;
use crate::topics::PREFIX as PREFIX_STR;

/// Duration of one live frame.
pub const FRAME_MS: u32 = 20;
/// Samples per channel in one live frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
/// Largest Opus packet a frame may carry (RFC 6716 caps a 20 ms packet far below).
pub const MAX_OPUS_BYTES: usize = 1500;
/// Size of the fixed binary header of a [`LiveFrame`].
pub const HEADER_BYTES: usize = 40;

/// Size of the Ed25519 signature that ends every [`LiveFrame`].
pub const SIGNATURE_BYTES: usize = 64;

const MAGIC: &[u8; 4] = b"LOAL";
/// Version 2: version 1 plus the trailing signature.
const VERSION: u8 = 2;
/// Domain label in front of the signed bytes of a frame (distinct from
/// [`crate::signed`]'s, so neither signature can pass for the other).
const FRAME_DOMAIN: &[u8] = b"loa/v1 live frame\0";

/// The topic carrying live frames to every receiver of a zone.
pub fn zone_live_topic(zone_id: &str) -> String {
    format!("{PREFIX_STR}/live/zones/{zone_id}")
}

/// The topic carrying live frames to one receiver named in a broadcast's targets.
pub fn receiver_live_topic(receiver_id: &str) -> String {
    format!("{PREFIX_STR}/live/receivers/{receiver_id}")
}

/// A receiver asks for the controller's time on this topic.
pub fn clock_request_topic(receiver_id: &str) -> String {
    format!("{PREFIX_STR}/receivers/{receiver_id}/clock")
}

/// Subscription filter for every receiver's clock requests (controller side).
pub fn clock_request_filter() -> String {
    format!("{PREFIX_STR}/receivers/+/clock")
}

/// The controller answers a receiver's clock request on this topic.
pub fn clock_reply_topic(receiver_id: &str) -> String {
    format!("{PREFIX_STR}/receivers/{receiver_id}/clock-reply")
}

/// What a live frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// 20 ms of Opus audio (inband FEC on).
    Audio = 0,
    /// The broadcast ended; receivers play what they hold, then stop.
    End = 1,
}

/// One 20 ms frame of a live broadcast, in a compact binary layout (JSON
/// would double the size of 50 messages a second to every receiver):
///
/// | bytes | field |
/// |---|---|
/// | 0..4 | magic `LOAL` |
/// | 4 | version (1) |
/// | 5 | kind: 0 audio, 1 end |
/// | 6 | priority: 0 normal, 1 priority, 2 emergency |
/// | 7 | flags (reserved, 0) |
/// | 8..24 | broadcast id (UUID bytes) |
/// | 24..28 | sequence number, big endian, from 0 |
/// | 28..36 | capture instant of the first sample, controller clock, Unix µs, big endian |
/// | 36..38 | playout delay in ms, big endian |
/// | 38..40 | payload length, big endian |
/// | 40..40+n | Opus packet (empty for `End`) |
/// | 40+n..104+n | Ed25519 signature by the controller's key over a domain label, the header and the Opus packet |
///
/// One signature per frame, made once by the controller whatever the number
/// of receivers (the broker does the fan-out); receivers drop frames whose
/// signature does not verify ([`LiveFrame::decode_verified`]). The topic is
/// not signed: a frame is the same bytes on every target group's topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFrame {
    pub kind: FrameKind,
    pub priority: Priority,
    pub broadcast_id: [u8; 16],
    pub seq: u32,
    pub capture_us: i64,
    pub playout_delay_ms: u16,
    pub opus: Vec<u8>,
}

/// Why a live frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than its header and signature")]
    Short(usize),
    #[error("not a Loa live frame (bad magic)")]
    BadMagic,
    #[error("unsupported live frame version {0}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("unknown priority {0}")]
    Priority(u8),
    #[error("payload length {declared} does not match the {actual} bytes present")]
    Length { declared: usize, actual: usize },
    #[error("Opus packet of {0} bytes exceeds {MAX_OPUS_BYTES}")]
    TooLarge(usize),
    #[error("bad signature (forged or altered frame)")]
    BadSignature,
}

impl LiveFrame {
    /// The instant (controller clock, Unix µs) this frame's first sample must be heard.
    pub fn playout_us(&self) -> i64 {
        self.capture_us + i64::from(self.playout_delay_ms) * 1000
    }

    /// Serialises the frame for the wire, signed with the controller's `key`.
    pub fn encode(&self, key: &SigningKey) -> Vec<u8> {
        let mut out = self.unsigned_bytes();
        let signature = key.sign(&framed(&out));
        out.extend_from_slice(&signature.to_bytes());
        out
    }

    /// Header and payload, without the signature.
    fn unsigned_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.opus.len() + SIGNATURE_BYTES);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.kind as u8);
        out.push(priority_byte(self.priority));
        out.push(0);
        out.extend_from_slice(&self.broadcast_id);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.capture_us.to_be_bytes());
        out.extend_from_slice(&self.playout_delay_ms.to_be_bytes());
        out.extend_from_slice(&(self.opus.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.opus);
        out
    }

    /// Parses a frame and checks its signature against the controller's
    /// `key`; what receivers do with every frame. Never panics.
    pub fn decode_verified(bytes: &[u8], key: &VerifyingKey) -> Result<Self, FrameError> {
        let frame = Self::decode(bytes)?;
        let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_BYTES);
        let signature: [u8; SIGNATURE_BYTES] = signature.try_into().expect("64 bytes");
        key.verify_strict(&framed(signed), &Signature::from_bytes(&signature))
            .map_err(|_| FrameError::BadSignature)?;
        Ok(frame)
    }

    /// Parses a frame received from the wire without checking its signature
    /// (for observers and tests; receivers use [`LiveFrame::decode_verified`]).
    /// Never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.len() < HEADER_BYTES + SIGNATURE_BYTES {
            return Err(FrameError::Short(bytes.len()));
        }
        if &bytes[0..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        if bytes[4] != VERSION {
            return Err(FrameError::Version(bytes[4]));
        }
        let kind = match bytes[5] {
            0 => FrameKind::Audio,
            1 => FrameKind::End,
            k => return Err(FrameError::Kind(k)),
        };
        let priority = match bytes[6] {
            0 => Priority::Normal,
            1 => Priority::Priority,
            2 => Priority::Emergency,
            p => return Err(FrameError::Priority(p)),
        };
        let mut broadcast_id = [0u8; 16];
        broadcast_id.copy_from_slice(&bytes[8..24]);
        let seq = u32::from_be_bytes(bytes[24..28].try_into().expect("4 bytes"));
        let capture_us = i64::from_be_bytes(bytes[28..36].try_into().expect("8 bytes"));
        let playout_delay_ms = u16::from_be_bytes(bytes[36..38].try_into().expect("2 bytes"));
        let declared = usize::from(u16::from_be_bytes(
            bytes[38..40].try_into().expect("2 bytes"),
        ));
        let payload = &bytes[HEADER_BYTES..bytes.len() - SIGNATURE_BYTES];
        if declared != payload.len() {
            return Err(FrameError::Length {
                declared,
                actual: payload.len(),
            });
        }
        if payload.len() > MAX_OPUS_BYTES {
            return Err(FrameError::TooLarge(payload.len()));
        }
        Ok(LiveFrame {
            kind,
            priority,
            broadcast_id,
            seq,
            capture_us,
            playout_delay_ms,
            opus: payload.to_vec(),
        })
    }
}

/// The bytes a frame's signature covers: the domain label, then header and payload.
fn framed(unsigned: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_DOMAIN.len() + unsigned.len());
    out.extend_from_slice(FRAME_DOMAIN);
    out.extend_from_slice(unsigned);
    out
}

fn priority_byte(p: Priority) -> u8 {
    match p {
        Priority::Normal => 0,
        Priority::Priority => 1,
        Priority::Emergency => 2,
    }
}

/// A receiver's request for the controller's time (JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockRequest {
    /// Echoed back so the receiver pairs reply and request.
    pub seq: u64,
    /// Receiver clock when sent, Unix µs.
    pub t1_us: i64,
}

/// The controller's answer to a [`ClockRequest`] (JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReply {
    pub seq: u64,
    /// Copied from the request.
    pub t1_us: i64,
    /// Controller clock when the request arrived, Unix µs.
    pub t2_us: i64,
    /// Controller clock when the reply was sent, Unix µs.
    pub t3_us: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> LiveFrame {
        LiveFrame {
            kind: FrameKind::Audio,
            priority: Priority::Emergency,
            broadcast_id: [7; 16],
            seq: 123_456,
            capture_us: 1_795_000_000_123_456,
            playout_delay_ms: 120,
            opus: vec![1, 2, 3, 250],
        }
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    #[test]
    fn frames_round_trip() {
        let f = frame();
        let bytes = f.encode(&key());
        assert_eq!(bytes.len(), HEADER_BYTES + 4 + SIGNATURE_BYTES);
        assert_eq!(LiveFrame::decode(&bytes), Ok(f.clone()));
        assert_eq!(
            LiveFrame::decode_verified(&bytes, &key().verifying_key()),
            Ok(f.clone())
        );
        assert_eq!(f.playout_us(), 1_795_000_000_243_456);
        let end = LiveFrame {
            kind: FrameKind::End,
            opus: Vec::new(),
            ..f
        };
        let public = key().verifying_key();
        assert_eq!(
            LiveFrame::decode_verified(&end.encode(&key()), &public),
            Ok(end)
        );
    }

    #[test]
    fn forged_and_altered_frames_fail_verification() {
        let public = key().verifying_key();
        let forged = frame().encode(&SigningKey::from_bytes(&[1; 32]));
        assert_eq!(
            LiveFrame::decode_verified(&forged, &public),
            Err(FrameError::BadSignature)
        );
        let good = frame().encode(&key());
        // Any byte of header, payload or signature changed: refused.
        for i in [7, 8, 27, 35, HEADER_BYTES, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert!(
                LiveFrame::decode_verified(&bad, &public).is_err(),
                "byte {i} altered and accepted"
            );
        }
        // A frame signed without the signature bytes (v1 layout) is too short.
        let mut unsigned = good.clone();
        unsigned.truncate(good.len() - SIGNATURE_BYTES);
        assert!(LiveFrame::decode_verified(&unsigned, &public).is_err());
    }

    #[test]
    fn malformed_frames_are_refused() {
        let good = frame().encode(&key());
        assert_eq!(LiveFrame::decode(&good[..10]), Err(FrameError::Short(10)));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(LiveFrame::decode(&bad), Err(FrameError::BadMagic));
        let mut bad = good.clone();
        bad[4] = 1;
        assert_eq!(LiveFrame::decode(&bad), Err(FrameError::Version(1)));
        let mut bad = good.clone();
        bad[5] = 9;
        assert_eq!(LiveFrame::decode(&bad), Err(FrameError::Kind(9)));
        let mut bad = good.clone();
        bad[6] = 3;
        assert_eq!(LiveFrame::decode(&bad), Err(FrameError::Priority(3)));
        let mut bad = good.clone();
        bad.push(0);
        assert!(matches!(
            LiveFrame::decode(&bad),
            Err(FrameError::Length { .. })
        ));
    }

    #[test]
    fn topics_are_distinct_from_receiver_topics() {
        assert_eq!(zone_live_topic("thon-1"), "loa/v1/live/zones/thon-1");
        assert_eq!(receiver_live_topic("loa-1"), "loa/v1/live/receivers/loa-1");
        assert_eq!(
            crate::topics::parse_receiver_topic(&clock_request_topic("loa-1")),
            None
        );
        assert_eq!(clock_request_filter(), "loa/v1/receivers/+/clock");
    }
}
