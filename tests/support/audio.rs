//! Audio analysis for the checks: RMS envelopes, normalised
//! cross-correlation with a best-lag search, onsets, WAV input/output.
//!
//! Opus (and MP3 before it) change waveforms but keep envelopes, so "the
//! receiver played the source" means: the 10 ms RMS envelope of the
//! recording, at the best lag, correlates with the source's. The best lag,
//! refined on a 0.25 ms grid, also says where the programme's first sample
//! lies in the recording.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Samples per 10 ms at 48 kHz: the envelope window of the similarity check.
pub const COARSE_WINDOW: usize = 480;
/// Window (2 ms) and hop (0.25 ms) of the fine envelope used to place the start precisely.
const FINE_WINDOW: usize = 96;
const FINE_HOP: usize = 12;
/// How far (samples, 40 ms) around the coarse lag the fine search looks.
const FINE_SPAN: usize = 1920;

/// Where the reference sits in a longer signal and how alike the two are there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alignment {
    /// Index in the signal of the reference's first sample.
    pub lag: usize,
    /// Pearson correlation of the 10 ms RMS envelopes at `lag` (1.0 = same shape).
    pub correlation: f64,
}

/// RMS over windows of `window` samples starting every `hop` samples, for
/// `count` windows from `start` (samples past the end count as silence).
pub fn rms_envelope(x: &[f32], start: usize, count: usize, window: usize, hop: usize) -> Vec<f32> {
    (0..count)
        .map(|i| {
            let from = (start + i * hop).min(x.len());
            let to = (from + window).min(x.len());
            let sum: f64 = x[from..to].iter().map(|&s| (s as f64) * (s as f64)).sum();
            (sum / window as f64).sqrt() as f32
        })
        .collect()
}

/// Pearson correlation of two equally long sequences (0 if either is flat).
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    if a.is_empty() {
        return 0.0;
    }
    let (ma, mb) = (
        a.iter().map(|&v| v as f64).sum::<f64>() / n,
        b.iter().map(|&v| v as f64).sum::<f64>() / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Finds `reference` inside `signal`: the lag with the highest envelope
/// correlation (10 ms windows), refined to 0.25 ms. `None` if the signal is
/// shorter than the reference.
pub fn align(reference: &[f32], signal: &[f32]) -> Option<Alignment> {
    if reference.len() < COARSE_WINDOW || signal.len() < reference.len() {
        return None;
    }
    let ref_env = rms_envelope(
        reference,
        0,
        reference.len() / COARSE_WINDOW,
        COARSE_WINDOW,
        COARSE_WINDOW,
    );
    let sig_env = rms_envelope(
        signal,
        0,
        signal.len() / COARSE_WINDOW,
        COARSE_WINDOW,
        COARSE_WINDOW,
    );
    let max_lag = (signal.len() - reference.len()) / COARSE_WINDOW;
    let coarse = (0..=max_lag.min(sig_env.len().saturating_sub(ref_env.len())))
        .map(|lag| (lag, pearson(&ref_env, &sig_env[lag..lag + ref_env.len()])))
        .max_by(|a, b| a.1.total_cmp(&b.1))?
        .0
        * COARSE_WINDOW;

    // Fine: 2 ms windows on a 0.25 ms grid, within ±40 ms of the coarse lag.
    let base = coarse.saturating_sub(FINE_SPAN);
    let last = (coarse + FINE_SPAN).min(signal.len() - reference.len());
    let count = (reference.len() - FINE_WINDOW) / FINE_HOP;
    let ref_fine = rms_envelope(reference, 0, count, FINE_WINDOW, FINE_HOP);
    let steps = (last - base) / FINE_HOP;
    let sig_fine = rms_envelope(signal, base, count + steps + 1, FINE_WINDOW, FINE_HOP);
    let best = (0..=steps)
        .map(|j| (j, pearson(&ref_fine, &sig_fine[j..j + count])))
        .max_by(|a, b| a.1.total_cmp(&b.1))?
        .0;
    let lag = base + best * FINE_HOP;
    Some(Alignment {
        lag,
        correlation: envelope_correlation(reference, &signal[lag..]),
    })
}

/// Correlation of the 10 ms envelopes of `reference` and the start of `signal`.
pub fn envelope_correlation(reference: &[f32], signal: &[f32]) -> f64 {
    let count = reference.len().min(signal.len()) / COARSE_WINDOW;
    pearson(
        &rms_envelope(reference, 0, count, COARSE_WINDOW, COARSE_WINDOW),
        &rms_envelope(signal, 0, count, COARSE_WINDOW, COARSE_WINDOW),
    )
}

/// Index of the first sample whose magnitude reaches `fraction` of the peak.
pub fn onset(x: &[f32], fraction: f32) -> Option<usize> {
    let peak = peak(x);
    if peak <= 0.0 {
        return None;
    }
    x.iter().position(|s| s.abs() >= fraction * peak)
}

/// Largest magnitude.
pub fn peak(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, s| m.max(s.abs()))
}

/// Root mean square (0 for an empty slice).
pub fn rms(x: &[f32]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Reads a WAV file as mono f32 (channels averaged) and its sample rate.
pub fn read_wav_mono(path: &Path) -> Result<(Vec<f32>, u32)> {
    let mut reader =
        hound::WavReader::open(path).with_context(|| format!("open {}", path.display()))?;
    let spec = reader.spec();
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()?
        }
    };
    let channels = spec.channels as usize;
    if channels == 0 {
        bail!("{} has no channels", path.display());
    }
    let mono = interleaved
        .chunks(channels)
        .map(|c| c.iter().sum::<f32>() / channels as f32)
        .collect();
    Ok((mono, spec.sample_rate))
}

/// Writes mono 48 kHz f32 samples as a WAV file.
pub fn write_wav(path: &Path, samples: &[f32]) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: crate::jack::RATE,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut writer = hound::WavWriter::create(path, spec)
        .with_context(|| format!("create {}", path.display()))?;
    for &s in samples {
        writer.write_sample(s)?;
    }
    writer.finalize()?;
    Ok(())
}

/// Writes several mono 48 kHz f32 tracks as one multichannel WAV (the
/// shortest track sets the length).
pub fn write_wav_channels(path: &Path, channels: &[&[f32]]) -> Result<()> {
    if channels.is_empty() {
        bail!("no channels to write to {}", path.display());
    }
    let spec = hound::WavSpec {
        channels: channels.len() as u16,
        sample_rate: crate::jack::RATE,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let len = channels.iter().map(|c| c.len()).min().unwrap_or(0);
    let mut writer = hound::WavWriter::create(path, spec)
        .with_context(|| format!("create {}", path.display()))?;
    for i in 0..len {
        for channel in channels {
            writer.write_sample(channel[i])?;
        }
    }
    writer.finalize()?;
    Ok(())
}

/// Writes mono f32 samples as raw little-endian f32 (the recorder's clip format).
pub fn write_f32(path: &Path, samples: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise in [-1, 1) (xorshift), so the tests need no rand crate.
    fn noise(n: usize, mut seed: u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Speech-like test signal: noise bursts of varying length and level.
    fn bursts(seconds: f32, seed: u64) -> Vec<f32> {
        let n = (seconds * 48_000.0) as usize;
        let carrier = noise(n, seed);
        let gate = noise(n / 4800 + 1, seed ^ 0x9e37);
        carrier
            .iter()
            .enumerate()
            .map(|(i, c)| c * gate[i / 4800].max(0.0))
            .collect()
    }

    #[test]
    fn finds_a_delayed_scaled_noisy_copy_to_the_quarter_millisecond() {
        let reference = bursts(4.0, 7);
        let lag = 48_000 + 12_345;
        let mut signal = vec![0.0f32; lag];
        signal.extend(reference.iter().map(|s| s * 0.3));
        signal.extend(vec![0.0; 48_000]);
        let hiss = noise(signal.len(), 99);
        for (s, h) in signal.iter_mut().zip(&hiss) {
            *s += h * 0.003;
        }
        let found = align(&reference, &signal).unwrap();
        assert!(
            found.lag.abs_diff(lag) <= FINE_HOP,
            "lag {} vs {lag}",
            found.lag
        );
        assert!(
            found.correlation > 0.95,
            "correlation {}",
            found.correlation
        );
    }

    #[test]
    fn unrelated_audio_does_not_correlate() {
        let reference = bursts(3.0, 1);
        let other = bursts(6.0, 2);
        let found = align(&reference, &other).unwrap();
        assert!(found.correlation < 0.6, "correlation {}", found.correlation);
    }

    #[test]
    fn silence_does_not_correlate_and_has_no_onset() {
        let reference = bursts(2.0, 3);
        let silence = vec![0.0f32; 48_000 * 3];
        assert_eq!(align(&reference, &silence).unwrap().correlation, 0.0);
        assert_eq!(onset(&silence, 0.2), None);
    }

    #[test]
    fn too_short_signal_has_no_alignment() {
        assert_eq!(align(&bursts(2.0, 4), &bursts(1.0, 5)), None);
    }

    #[test]
    fn onset_is_the_first_loud_sample() {
        let mut x = vec![0.001f32; 1000];
        x.extend([0.5, -1.0, 0.2]);
        assert_eq!(onset(&x, 0.2), Some(1000));
    }

    #[test]
    fn wav_round_trip() {
        let dir = std::env::temp_dir().join(format!("loa-e2e-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.wav");
        let x = bursts(0.5, 6);
        write_wav(&path, &x).unwrap();
        let (y, rate) = read_wav_mono(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((rate, y), (48_000, x));
    }
}
