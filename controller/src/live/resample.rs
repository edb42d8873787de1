//! Streaming conversion of mono audio to 48 kHz with rubato's synchronous
//! FFT resampler (as `transcode/resample.rs` does for uploads, with smaller
//! blocks for latency), carrying capture instants through: every output
//! chunk comes with the instant of its first sample, derived from the
//! instants the input chunks were stamped with.

use std::collections::VecDeque;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

use super::frames::{RATE, sample_us};

/// Input frames per FFT block: about 10 ms, so a resampled live source
/// waits little for a block to fill.
const CHUNK_FRAMES: usize = 480;

/// Lowest and highest input rates accepted.
pub const MIN_RATE: u32 = 8_000;
/// See [`MIN_RATE`].
pub const MAX_RATE: u32 = 192_000;

/// Receives 48 kHz chunks and the capture instant of each one's first sample.
pub type Sink<'a, E> = dyn FnMut(&[f32], i64) -> Result<(), E> + 'a;

/// Resamples a mono stream to 48 kHz (or passes it through), keeping track
/// of when each sample was captured.
pub struct Resampler48 {
    /// `None` when the input is already at 48 kHz.
    fft: Option<Fft<f32>>,
    /// Input rate.
    rate: u32,
    /// Input not yet consumed by the resampler.
    pending: Vec<f32>,
    /// Output scratch buffer.
    out: Vec<f32>,
    /// Leading output frames still to drop (the resampler's delay).
    to_trim: usize,
    /// Input frames received.
    frames_in: u64,
    /// Output frames handed out.
    frames_out: u64,
    /// (input frame index, capture instant) of recent input chunks.
    stamps: VecDeque<(u64, i64)>,
}

impl Resampler48 {
    /// A resampler from `rate` Hz to 48 kHz.
    pub fn new(rate: u32) -> Result<Self, String> {
        if !(MIN_RATE..=MAX_RATE).contains(&rate) {
            return Err(format!(
                "sample rate {rate} Hz outside {MIN_RATE}..={MAX_RATE}"
            ));
        }
        let fft = if rate == RATE {
            None
        } else {
            Some(
                Fft::<f32>::new(
                    rate as usize,
                    RATE as usize,
                    CHUNK_FRAMES,
                    1,
                    FixedSync::Both,
                )
                .map_err(|e| format!("resampler: {e}"))?,
            )
        };
        let (out, to_trim) = match &fft {
            Some(f) => (vec![0.0; f.output_frames_max()], f.output_delay()),
            None => (Vec::new(), 0),
        };
        Ok(Resampler48 {
            fft,
            rate,
            pending: Vec::new(),
            out,
            to_trim,
            frames_in: 0,
            frames_out: 0,
            stamps: VecDeque::new(),
        })
    }

    /// The input rate.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Feeds `input`, whose first sample was captured at `capture_us`;
    /// calls `sink` with every 48 kHz chunk ready and the capture instant
    /// of its first sample.
    pub fn push<E>(
        &mut self,
        input: &[f32],
        capture_us: i64,
        sink: &mut Sink<'_, E>,
    ) -> Result<(), E>
    where
        E: From<String>,
    {
        if input.is_empty() {
            return Ok(());
        }
        if self.fft.is_none() {
            self.frames_in += input.len() as u64;
            self.frames_out += input.len() as u64;
            return sink(input, capture_us);
        }
        self.stamps.push_back((self.frames_in, capture_us));
        self.frames_in += input.len() as u64;
        self.pending.extend_from_slice(input);
        let mut offset = 0;
        loop {
            let fft = self.fft.as_mut().expect("checked above");
            let needed = fft.input_frames_next();
            if self.pending.len() - offset < needed {
                break;
            }
            let indexing = Indexing::new().input_offset(offset);
            let (consumed, produced) =
                run(fft, &self.pending, &mut self.out, &indexing).map_err(E::from)?;
            offset += consumed;
            self.emit(produced, sink)?;
        }
        self.pending.drain(..offset);
        Ok(())
    }

    /// Hands `self.out[..produced]` (minus the start-up delay) to `sink`.
    fn emit<E>(&mut self, produced: usize, sink: &mut Sink<'_, E>) -> Result<(), E> {
        let skip = self.to_trim.min(produced);
        self.to_trim -= skip;
        if produced == skip {
            return Ok(());
        }
        let at = self.instant_of_output(self.frames_out);
        self.frames_out += (produced - skip) as u64;
        sink(&self.out[skip..produced], at)
    }

    /// Capture instant of output frame `index`: the input frame at the same
    /// time offset, located in the input chunk that holds it.
    fn instant_of_output(&mut self, index: u64) -> i64 {
        let input_index = (index as u128 * u128::from(self.rate) / u128::from(RATE)) as u64;
        while self.stamps.len() > 1 && self.stamps[1].0 <= input_index {
            self.stamps.pop_front();
        }
        match self.stamps.front() {
            Some(&(start, us)) => sample_us(us, input_index.saturating_sub(start), self.rate),
            None => 0,
        }
    }
}

/// One `process_into_buffer` call on mono slices.
fn run(
    fft: &mut Fft<f32>,
    input: &[f32],
    out: &mut [f32],
    indexing: &Indexing,
) -> Result<(usize, usize), String> {
    let err = |e: &dyn std::fmt::Display| format!("resampler: {e}");
    let frames_in = input.len();
    let frames_out = out.len();
    let input = InterleavedSlice::new(input, 1, frames_in).map_err(|e| err(&e))?;
    let mut output = InterleavedSlice::new_mut(out, 1, frames_out).map_err(|e| err(&e))?;
    fft.process_into_buffer(&input, &mut output, Some(indexing))
        .map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_48k_aligned_and_stamped() {
        let rate = 44_100;
        let mut r = Resampler48::new(rate).unwrap();
        let secs = 1.0;
        let n = (rate as f64 * secs) as usize;
        let input: Vec<f32> = (0..n)
            .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin() * 0.5)
            .collect();
        let mut out = Vec::new();
        let mut stamps = Vec::new();
        let t0 = 1_000_000_000i64;
        let mut fed = 0usize;
        for chunk in input.chunks(441) {
            let at = sample_us(t0, fed as u64, rate);
            fed += chunk.len();
            r.push(chunk, at, &mut |c: &[f32], us| -> Result<(), String> {
                stamps.push((out.len(), us));
                out.extend_from_slice(c);
                Ok(())
            })
            .unwrap();
        }
        // All but the last block is out, aligned with a 48 kHz sine.
        assert!(out.len() > 46_000, "{}", out.len());
        let err = (2_000..out.len() - 100)
            .map(|i| {
                let t = i as f32 * 440.0 * std::f32::consts::TAU / 48_000.0;
                (out[i] - 0.5 * t.sin()).abs()
            })
            .fold(0.0f32, f32::max);
        assert!(err < 0.01, "max error {err}");
        // Each chunk's stamp is t0 + its output position (within a sample).
        for (pos, us) in stamps {
            let expected = sample_us(t0, pos as u64, 48_000);
            assert!((us - expected).abs() <= 23, "{pos}: {us} vs {expected}");
        }
    }

    #[test]
    fn a_gap_in_the_input_shows_in_the_stamps() {
        let mut r = Resampler48::new(16_000).unwrap();
        let mut stamps = Vec::new();
        let mut total = 0usize;
        let mut sink = |c: &[f32], us: i64| -> Result<(), String> {
            stamps.push((total, us));
            total += c.len();
            Ok(())
        };
        // One second, then a second chunk stamped 5 s later than continuous.
        r.push(&vec![0.1; 16_000], 0, &mut sink).unwrap();
        r.push(&vec![0.1; 16_000], 6_000_000, &mut sink).unwrap();
        let last = stamps.last().unwrap();
        assert!(last.1 > 5_000_000, "{stamps:?}");
        let first = stamps.first().unwrap();
        assert_eq!(first.1, 0);
    }

    #[test]
    fn rates_out_of_range_are_refused() {
        assert!(Resampler48::new(4_000).is_err());
        assert!(Resampler48::new(400_000).is_err());
        assert!(Resampler48::new(48_000).is_ok());
    }
}
