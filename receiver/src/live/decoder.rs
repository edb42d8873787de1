//! Opus decoding of live frames: 20 ms packets to 960 mono samples at 48 kHz,
//! with the two ways of filling in for a lost packet (RFC 6716 §4.4):
//! inband FEC (the next packet carries a low-bitrate copy of the lost one,
//! decoded with `decode_fec`) and packet loss concealment (the decoder
//! extrapolates from what it played; decoded from an empty packet). After a
//! few concealed frames in a row the output is plain silence: PLC only
//! makes sense across short gaps.

use loa_protocol::live::FRAME_SAMPLES;

/// Concealed frames in a row after which silence is written instead.
pub const MAX_PLC_RUN: u32 = 5;

/// A libopus decoder for one broadcast.
pub struct LiveDecoder {
    decoder: opus::Decoder,
    out: Vec<f32>,
    /// Frames concealed in a row.
    plc_run: u32,
    /// Packets libopus refused (each concealed instead).
    pub corrupt: u64,
}

impl LiveDecoder {
    pub fn new() -> Result<LiveDecoder, opus::Error> {
        Ok(LiveDecoder {
            decoder: opus::Decoder::new(48_000, opus::Channels::Mono)?,
            out: vec![0.0; FRAME_SAMPLES],
            plc_run: 0,
            corrupt: 0,
        })
    }

    /// Decodes one frame's packet (concealing it if libopus refuses it).
    pub fn decode(&mut self, packet: &[u8]) -> &[f32] {
        self.out.resize(FRAME_SAMPLES, 0.0);
        match self.decoder.decode_float(packet, &mut self.out, false) {
            Ok(n) if n == FRAME_SAMPLES => {
                self.plc_run = 0;
                &self.out
            }
            Ok(n) => {
                // Not a 20 ms packet: keep what was decoded, pad or cut to a frame.
                self.plc_run = 0;
                tracing::debug!(samples = n, "live packet is not 20 ms long");
                self.out.truncate(n.min(FRAME_SAMPLES));
                self.out.resize(FRAME_SAMPLES, 0.0);
                &self.out
            }
            Err(e) => {
                self.corrupt += 1;
                tracing::debug!(error = %e, "undecodable live packet; concealing it");
                self.conceal()
            }
        }
    }

    /// Recovers a lost frame from the inband FEC data of the packet after it.
    pub fn decode_fec(&mut self, next_packet: &[u8]) -> &[f32] {
        self.out.resize(FRAME_SAMPLES, 0.0);
        match self.decoder.decode_float(next_packet, &mut self.out, true) {
            Ok(_) => {
                self.plc_run = 0;
                &self.out
            }
            Err(_) => self.conceal(),
        }
    }

    /// Packet loss concealment for a lost frame (silence after
    /// [`MAX_PLC_RUN`] in a row).
    pub fn conceal(&mut self) -> &[f32] {
        self.out.resize(FRAME_SAMPLES, 0.0);
        self.plc_run += 1;
        if self.plc_run > MAX_PLC_RUN
            || self
                .decoder
                .decode_float(&[], &mut self.out, false)
                .is_err()
        {
            self.out.fill(0.0);
        }
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(frame: usize) -> Vec<f32> {
        (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (frame * FRAME_SAMPLES + i) as f32 / 48_000.0;
                0.5 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
            })
            .collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn fec_and_plc_fill_in_lost_frames() {
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        enc.set_inband_fec(true).unwrap();
        enc.set_packet_loss_perc(10).unwrap();
        enc.set_bitrate(opus::Bitrate::Bits(32_000)).unwrap();
        let packets: Vec<Vec<u8>> = (0..20)
            .map(|f| enc.encode_vec_float(&tone(f), 1500).unwrap())
            .collect();
        let mut dec = LiveDecoder::new().unwrap();
        for p in &packets[..10] {
            assert_eq!(dec.decode(p).len(), FRAME_SAMPLES);
        }
        // Frame 10 is lost; 11 carries its FEC copy.
        let fec = rms(dec.decode_fec(&packets[11]));
        assert!(fec > 0.2, "FEC output rms {fec}");
        assert!(rms(dec.decode(&packets[11])) > 0.2);
        // Frame 12 lost with no successor yet: PLC continues the tone.
        let plc = rms(dec.conceal());
        assert!(plc > 0.05, "PLC output rms {plc}");
        // Long gaps turn to silence.
        for _ in 0..MAX_PLC_RUN {
            dec.conceal();
        }
        assert_eq!(rms(dec.conceal()), 0.0);
        // Garbage is concealed, not an error.
        assert_eq!(dec.decode(&[0xff; 3]).len(), FRAME_SAMPLES);
        assert_eq!(dec.corrupt, 1);
    }
}
