//! Opus encoding with libopus (the `opus` crate): mono, 48 kHz, 20 ms
//! frames, VoIP application (speech), VBR at the requested bitrate, in-band
//! FEC on. Produces one packet per 960-sample frame.

use opus::{Application, Bitrate, Channels, Encoder};

use super::TranscodeError;

/// Samples per Opus frame: 20 ms at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;

/// Largest packet we accept from libopus (the RFC 6716 maximum is 1275
/// bytes per frame).
const MAX_PACKET: usize = 1500;

/// A configured libopus encoder.
pub(crate) struct OpusFrameEncoder {
    /// The libopus encoder state.
    encoder: Encoder,
    /// Output buffer for one packet, reused.
    packet: Vec<u8>,
    /// Samples the encoder delays its output by (becomes OpusHead pre-skip).
    lookahead: u16,
}

fn opus_err(what: &str) -> impl Fn(opus::Error) -> TranscodeError + '_ {
    move |e| TranscodeError::Encoder(format!("libopus {what}: {e}"))
}

impl OpusFrameEncoder {
    /// A mono 48 kHz encoder at `bitrate` bits/s and `complexity` 0..=10.
    pub(crate) fn new(bitrate: u32, complexity: u8) -> Result<Self, TranscodeError> {
        if !(6_000..=510_000).contains(&bitrate) {
            return Err(TranscodeError::Encoder(format!(
                "bitrate {bitrate} outside 6000..=510000"
            )));
        }
        if complexity > 10 {
            return Err(TranscodeError::Encoder(format!(
                "complexity {complexity} outside 0..=10"
            )));
        }
        let mut encoder =
            Encoder::new(48_000, Channels::Mono, Application::Voip).map_err(opus_err("init"))?;
        encoder
            .set_bitrate(Bitrate::Bits(bitrate as i32))
            .map_err(opus_err("bitrate"))?;
        encoder
            .set_complexity(i32::from(complexity))
            .map_err(opus_err("complexity"))?;
        encoder.set_inband_fec(true).map_err(opus_err("fec"))?;
        let lookahead = encoder.get_lookahead().map_err(opus_err("lookahead"))?;
        let lookahead = u16::try_from(lookahead)
            .map_err(|_| TranscodeError::Encoder(format!("lookahead {lookahead}")))?;
        Ok(OpusFrameEncoder {
            encoder,
            packet: vec![0; MAX_PACKET],
            lookahead,
        })
    }

    /// Encoder delay in samples at 48 kHz (the Ogg Opus pre-skip).
    pub(crate) fn lookahead(&self) -> u16 {
        self.lookahead
    }

    /// Encodes exactly one 20 ms frame.
    pub(crate) fn encode(&mut self, frame: &[f32]) -> Result<&[u8], TranscodeError> {
        debug_assert_eq!(frame.len(), FRAME_SAMPLES);
        let n = self
            .encoder
            .encode_float(frame, &mut self.packet)
            .map_err(opus_err("encode"))?;
        Ok(&self.packet[..n])
    }
}
