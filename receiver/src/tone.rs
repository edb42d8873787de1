//! The test tone a technician plays from the console to check a
//! loudspeaker: a 1 kHz sine at [`TONE_DBFS`] (peak) × the normal output
//! gain, for 1–30 s, through the same sink and amplifier relay as every
//! play, in the player thread.
//!
//! A tone never interrupts a programme: it is refused while a scheduled
//! play or a live broadcast is on air, or while a play is due within the
//! `--prepare-ms` lead, or while another tone plays; and a tone that is
//! playing stops at once (its queued audio cleared) when a broadcast takes
//! the loudspeaker or a play's lead-in begins. Outcomes go back to the async
//! side as [`PlayerEvent::TestTone`] for the log.

use chrono::Duration;

use crate::player::{PlayerEvent, PlayerThread, ToneOutcome};

/// Frequency of the tone, Hz.
pub const TONE_HZ: u32 = 1_000;
/// Peak level of the tone before the output gain, dBFS.
pub const TONE_DBFS: f32 = -12.0;
/// Samples per written piece (20 ms; a whole number of 1 kHz periods, so
/// every piece starts at phase 0).
const PIECE: usize = 960;
/// Fade in and out, samples (5 ms), so the tone starts and stops without a click.
const RAMP: usize = 240;

/// Linear peak amplitude of the tone before the output gain.
pub fn tone_amplitude() -> f32 {
    10f32.powf(TONE_DBFS / 20.0)
}

/// One [`PIECE`] of the tone at amplitude 1.
fn piece() -> Vec<f32> {
    let rate = loa_hardware::SAMPLE_RATE as f32;
    (0..PIECE)
        .map(|i| (2.0 * std::f32::consts::PI * TONE_HZ as f32 * i as f32 / rate).sin())
        .collect()
}

impl PlayerThread {
    /// Takes a tone command: queued for the main loop, or refused at once
    /// if something is on air.
    pub(crate) fn request_tone(&mut self, command_id: String, seconds: u32) {
        let refusal = if self.tone_playing || self.pending_tone.is_some() {
            Some("a test tone is already playing")
        } else if self.on_air {
            Some("a programme or broadcast is on air")
        } else {
            None
        };
        match refusal {
            Some(why) => self.tone_done(command_id, ToneOutcome::Refused(why.into())),
            None => self.pending_tone = Some((command_id, seconds)),
        }
    }

    /// Why a tone must not play (or go on) now, if it must not.
    fn tone_blocked(&mut self) -> Option<&'static str> {
        if self.live_priority().is_some() {
            return Some("a live broadcast is on air");
        }
        let now = self.now();
        let prepare = Duration::from_std(self.config.prepare).unwrap_or_default();
        match self.next_play(now) {
            Some(p) if p.start <= now => Some("a scheduled programme is on air"),
            Some(p) if p.start - prepare <= now => Some("a scheduled programme starts now"),
            _ => None,
        }
    }

    /// Plays the tone (from the main loop), then closes the output.
    pub(crate) fn test_tone(&mut self, command_id: String, seconds: u32) {
        if let Some(why) = self.tone_blocked() {
            return self.tone_done(command_id, ToneOutcome::Refused(why.into()));
        }
        if !self.output_open
            && let Err(e) = self.open_output()
        {
            tracing::error!(error = %e, "cannot open the audio output for a test tone");
            return self.tone_done(command_id, ToneOutcome::Failed(e.to_string()));
        }
        tracing::info!(command = %command_id, seconds, volume = self.config.volume, "test tone");
        self.tone_playing = true;
        let unit = piece();
        let total = seconds as usize * loa_hardware::SAMPLE_RATE as usize;
        let mut buf = vec![0f32; PIECE];
        let mut written = 0usize;
        let mut outcome = ToneOutcome::Played;
        while written < total {
            while let Ok(command) = self.commands.try_recv() {
                self.apply(command);
            }
            if self.stopping {
                outcome = ToneOutcome::Cut("the receiver is stopping".into());
                break;
            }
            if let Some(why) = self.tone_blocked() {
                outcome = ToneOutcome::Cut(why.into());
                break;
            }
            // Read per piece: a volume change applies at once.
            let level = tone_amplitude() * self.config.volume;
            let n = PIECE.min(total - written);
            for (i, (out, s)) in buf.iter_mut().zip(&unit).take(n).enumerate() {
                let at = written + i;
                let ramp = (at.min(total - 1 - at) as f32 / RAMP as f32).min(1.0);
                *out = s * level * ramp;
            }
            if let Err(e) = self.sink.write(&buf[..n]) {
                outcome = ToneOutcome::Failed(e.to_string());
                break;
            }
            written += n;
        }
        if matches!(outcome, ToneOutcome::Cut(_)) {
            // The programme or broadcast must not wait behind queued tone.
            self.sink.clear();
        }
        self.tone_playing = false;
        if !matches!(&outcome, ToneOutcome::Cut(why) if why != "the receiver is stopping") {
            // Let the tone play out, then amplifier off. When a programme
            // takes over the output stays open for it.
            self.close_output();
        }
        self.tone_done(command_id, outcome);
    }

    fn tone_done(&mut self, command_id: String, outcome: ToneOutcome) {
        match &outcome {
            ToneOutcome::Played => tracing::info!(command = %command_id, "test tone played"),
            ToneOutcome::Refused(why) => {
                tracing::warn!(command = %command_id, reason = %why, "test tone refused: it never interrupts a programme")
            }
            ToneOutcome::Cut(why) => {
                tracing::warn!(command = %command_id, reason = %why, "test tone cut short")
            }
            ToneOutcome::Failed(why) => {
                tracing::error!(command = %command_id, error = %why, "test tone failed")
            }
        }
        let _ = self.events.send(PlayerEvent::TestTone {
            command_id,
            outcome,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_pieces_are_whole_periods_at_minus_12_dbfs() {
        let p = piece();
        // Whole periods: the piece ends where the next begins (phase 0).
        assert!(p[0].abs() < 1e-6);
        assert!(
            (p[PIECE - 48 + 12] - 1.0).abs() < 1e-4,
            "quarter period is the peak"
        );
        let amp = tone_amplitude();
        assert!((20.0 * amp.log10() - TONE_DBFS).abs() < 1e-3);
        assert!((amp - 0.2512).abs() < 1e-3);
    }
}
