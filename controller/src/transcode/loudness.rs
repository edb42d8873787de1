//! Loudness normalisation: EBU R128 integrated loudness (ITU-R BS.1770 with
//! gating, via the `ebur128` crate) and sample peak of the mono 48 kHz
//! signal, and the gain that brings it to Loa's one target.
//!
//! Target: -16 LUFS integrated (the usual level for speech on small
//! speakers and the web), with the gain capped so the sample peak stays at
//! or below -1 dBFS. A quiet recording with loud peaks therefore ends up
//! below -16 LUFS rather than clipped.

use ebur128::{EbuR128, Mode};

use super::TranscodeError;
use super::resample::OUTPUT_RATE;

/// Integrated loudness every programme is normalised to, in LUFS.
pub const TARGET_LUFS: f64 = -16.0;

/// Highest sample peak allowed after the gain, in dBFS.
pub const PEAK_CEILING_DBFS: f64 = -1.0;

/// Measures a mono 48 kHz stream.
pub(crate) struct LoudnessMeter {
    /// The EBU R128 state (integrated mode: keeps gating block energies).
    meter: EbuR128,
    /// Largest absolute sample value seen.
    peak: f32,
}

/// Result of a measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measurement {
    /// Integrated loudness in LUFS; `-inf` when nothing passes the gates.
    pub(crate) integrated_lufs: f64,
    /// Largest absolute sample value (linear, 1.0 = full scale).
    pub(crate) sample_peak: f32,
}

impl LoudnessMeter {
    /// A meter for mono audio at 48 kHz.
    pub(crate) fn new() -> Result<Self, TranscodeError> {
        let meter = EbuR128::new(1, OUTPUT_RATE, Mode::I)
            .map_err(|e| TranscodeError::Encoder(format!("loudness meter: {e}")))?;
        Ok(LoudnessMeter { meter, peak: 0.0 })
    }

    /// Adds samples to the measurement.
    pub(crate) fn add(&mut self, samples: &[f32]) -> Result<(), TranscodeError> {
        self.peak = samples.iter().fold(self.peak, |p, s| p.max(s.abs()));
        self.meter
            .add_frames_f32(samples)
            .map_err(|e| TranscodeError::Encoder(format!("loudness meter: {e}")))
    }

    /// The measurement of everything added.
    pub(crate) fn finish(&self) -> Result<Measurement, TranscodeError> {
        let integrated_lufs = self
            .meter
            .loudness_global()
            .map_err(|e| TranscodeError::Encoder(format!("loudness meter: {e}")))?;
        Ok(Measurement {
            integrated_lufs,
            sample_peak: self.peak,
        })
    }
}

/// Gain in dB that brings `m` to `TARGET_LUFS`, lowered if needed so the
/// peak stays at `PEAK_CEILING_DBFS`. `None` for silence (-inf LUFS).
pub(crate) fn normalisation_gain_db(m: &Measurement) -> Option<f64> {
    if !m.integrated_lufs.is_finite() || m.sample_peak <= 0.0 {
        return None;
    }
    let to_target = TARGET_LUFS - m.integrated_lufs;
    let peak_dbfs = 20.0 * f64::from(m.sample_peak).log10();
    Some(to_target.min(PEAK_CEILING_DBFS - peak_dbfs))
}

/// Converts decibels to a linear amplitude factor.
pub(crate) fn db_to_linear(db: f64) -> f32 {
    10f64.powf(db / 20.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(samples: &[f32]) -> Measurement {
        let mut m = LoudnessMeter::new().unwrap();
        for c in samples.chunks(1000) {
            m.add(c).unwrap();
        }
        m.finish().unwrap()
    }

    fn sine(amplitude: f32, secs: f32) -> Vec<f32> {
        (0..(48_000.0 * secs) as usize)
            .map(|i| amplitude * (i as f32 * 1000.0 * std::f32::consts::TAU / 48_000.0).sin())
            .collect()
    }

    #[test]
    fn full_scale_1khz_sine_reads_minus_3_lufs() {
        // BS.1770: a 0 dBFS 1 kHz sine in one channel is -3.01 LKFS.
        let m = measure(&sine(1.0, 3.0));
        assert!(
            (m.integrated_lufs + 3.01).abs() < 0.1,
            "{}",
            m.integrated_lufs
        );
        assert!((m.sample_peak - 1.0).abs() < 1e-3);
    }

    #[test]
    fn gain_reaches_target_unless_peak_limits() {
        // Sine at -30 dBFS peak: loudness ~ -33 LUFS; +17 dB would put the
        // peak at -13 dBFS, fine.
        let m = measure(&sine(db_to_linear(-30.0), 3.0));
        let g = normalisation_gain_db(&m).unwrap();
        assert!((g - 17.0).abs() < 0.2, "{g}");

        // A quiet signal with one full-scale click: the peak limits the gain
        // to -1 dB.
        let mut s = sine(db_to_linear(-40.0), 3.0);
        s[1000] = 1.0;
        let m = measure(&s);
        let g = normalisation_gain_db(&m).unwrap();
        assert!((g - PEAK_CEILING_DBFS).abs() < 1e-6, "{g}");
    }

    #[test]
    fn silence_has_no_gain() {
        assert!(normalisation_gain_db(&measure(&vec![0.0; 96_000])).is_none());
        // Below the -70 LUFS absolute gate counts as silence too.
        assert!(normalisation_gain_db(&measure(&sine(db_to_linear(-80.0), 2.0))).is_none());
    }
}
