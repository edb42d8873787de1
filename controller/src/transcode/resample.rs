//! Streaming conversion of mono audio to Loa's internal 48 kHz with rubato's
//! synchronous FFT resampler. Input arrives in chunks of any size; output is
//! handed to a callback, aligned with the input (the resampler's start-up
//! delay is trimmed) and exactly `ceil(n * 48000 / rate)` samples long.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

use super::TranscodeError;

/// Loa's internal sample rate (the Opus rate, `loa_hardware::SAMPLE_RATE`).
pub const OUTPUT_RATE: u32 = 48_000;

/// Approximate number of input frames per FFT block.
const CHUNK_FRAMES: usize = 1024;

/// Receives the 48 kHz output, chunk by chunk.
pub(crate) type Sink<'a> = dyn FnMut(&[f32]) -> Result<(), TranscodeError> + 'a;

/// Resamples a mono stream to 48 kHz, or passes it through when it already is.
pub(crate) struct StreamResampler {
    /// `None` when the input is already at 48 kHz.
    fft: Option<Fft<f32>>,
    /// Input rate, to compute the exact output length.
    input_rate: u32,
    /// Input not yet consumed by the resampler (less than one chunk after `push`).
    pending: Vec<f32>,
    /// Output scratch buffer of `output_frames_max` frames.
    out: Vec<f32>,
    /// Leading output frames still to drop (the resampler's delay).
    to_trim: usize,
    /// Input frames received.
    frames_in: u64,
    /// Output frames handed to the callback.
    frames_out: u64,
}

impl StreamResampler {
    /// A resampler from `input_rate` to 48 kHz.
    pub(crate) fn new(input_rate: u32) -> Result<Self, TranscodeError> {
        let fft = if input_rate == OUTPUT_RATE {
            None
        } else {
            Some(
                Fft::<f32>::new(
                    input_rate as usize,
                    OUTPUT_RATE as usize,
                    CHUNK_FRAMES,
                    1,
                    FixedSync::Both,
                )
                .map_err(|e| TranscodeError::Encoder(format!("resampler: {e}")))?,
            )
        };
        let (out, to_trim) = match &fft {
            Some(f) => (vec![0.0; f.output_frames_max()], f.output_delay()),
            None => (Vec::new(), 0),
        };
        Ok(StreamResampler {
            fft,
            input_rate,
            pending: Vec::new(),
            out,
            to_trim,
            frames_in: 0,
            frames_out: 0,
        })
    }

    /// Feeds `input`; calls `sink` with every 48 kHz chunk that is ready.
    pub(crate) fn push(
        &mut self,
        input: &[f32],
        sink: &mut Sink<'_>,
    ) -> Result<(), TranscodeError> {
        self.frames_in += input.len() as u64;
        if self.fft.is_none() {
            self.frames_out += input.len() as u64;
            return sink(input);
        }
        self.pending.extend_from_slice(input);
        let mut offset = 0;
        loop {
            let fft = self.fft.as_mut().expect("checked above");
            let needed = fft.input_frames_next();
            if self.pending.len() - offset < needed {
                break;
            }
            let indexing = Indexing::new().input_offset(offset);
            let (consumed, produced) = run(fft, &self.pending, &mut self.out, &indexing)?;
            offset += consumed;
            self.emit(produced, None, sink)?;
        }
        self.pending.drain(..offset);
        Ok(())
    }

    /// Flushes the remaining input and the resampler's tail.
    pub(crate) fn finish(&mut self, sink: &mut Sink<'_>) -> Result<(), TranscodeError> {
        if self.fft.is_none() {
            return Ok(());
        }
        let expected = self.expected_output_frames();
        // The last partial chunk, then silence until the delayed tail is out.
        let mut partial = self.pending.len();
        while self.frames_out < expected {
            let fft = self.fft.as_mut().expect("checked above");
            let indexing = Indexing::new().partial_len(partial);
            let (_, produced) = run(fft, &self.pending, &mut self.out, &indexing)?;
            partial = 0;
            self.emit(produced, Some(expected), sink)?;
        }
        self.pending.clear();
        Ok(())
    }

    /// Output length for the input received so far: `ceil(n * 48000 / rate)`.
    pub(crate) fn expected_output_frames(&self) -> u64 {
        (self.frames_in * u64::from(OUTPUT_RATE)).div_ceil(u64::from(self.input_rate))
    }

    /// Passes `self.out[..produced]` to `sink`, minus the start-up delay and
    /// anything beyond `limit`.
    fn emit(
        &mut self,
        produced: usize,
        limit: Option<u64>,
        sink: &mut Sink<'_>,
    ) -> Result<(), TranscodeError> {
        let skip = self.to_trim.min(produced);
        self.to_trim -= skip;
        let mut chunk = &self.out[skip..produced];
        if let Some(limit) = limit {
            let room = limit.saturating_sub(self.frames_out) as usize;
            chunk = &chunk[..chunk.len().min(room)];
        }
        if chunk.is_empty() {
            return Ok(());
        }
        self.frames_out += chunk.len() as u64;
        sink(chunk)
    }
}

/// One `process_into_buffer` call on mono slices.
fn run(
    fft: &mut Fft<f32>,
    input: &[f32],
    out: &mut [f32],
    indexing: &Indexing,
) -> Result<(usize, usize), TranscodeError> {
    let err = |e: &dyn std::fmt::Display| TranscodeError::Encoder(format!("resampler: {e}"));
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

    fn resample_all(rate: u32, input: &[f32], chunk: usize) -> Vec<f32> {
        let mut r = StreamResampler::new(rate).unwrap();
        let mut out = Vec::new();
        let mut sink = |c: &[f32]| -> Result<(), TranscodeError> {
            out.extend_from_slice(c);
            Ok(())
        };
        for piece in input.chunks(chunk) {
            r.push(piece, &mut sink).unwrap();
        }
        r.finish(&mut sink).unwrap();
        out
    }

    fn sine(rate: u32, freq: f32, secs: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n)
            .map(|i| (i as f32 * freq * std::f32::consts::TAU / rate as f32).sin() * 0.5)
            .collect()
    }

    #[test]
    fn length_and_alignment_are_exact() {
        for &(rate, chunk) in &[(44_100, 1000), (8_000, 37), (22_050, 4096), (96_000, 333)] {
            let input = sine(rate, 440.0, 1.3);
            let out = resample_all(rate, &input, chunk);
            let expected = (input.len() as u64 * 48_000).div_ceil(rate as u64) as usize;
            assert_eq!(out.len(), expected, "rate {rate}");
            // The delay is trimmed: the output lines up with a 440 Hz sine at
            // 48 kHz to within one sample (FFT resampling may shift by a
            // fraction of a sample), with no amplitude error.
            let best = (-10..=10)
                .map(|tenth| {
                    let lag = tenth as f32 / 10.0;
                    let err = (10_000..40_000)
                        .map(|i| {
                            let t = (i as f32 + lag) * 440.0 * std::f32::consts::TAU / 48_000.0;
                            (out[i] - 0.5 * t.sin()).abs()
                        })
                        .fold(0.0f32, f32::max);
                    (err, lag)
                })
                .fold((f32::MAX, 0.0), |a, b| if b.0 < a.0 { b } else { a });
            assert!(best.0 < 0.003, "rate {rate}: max error {best:?}");
        }
    }

    #[test]
    fn passthrough_at_48k() {
        let input = sine(48_000, 1000.0, 0.5);
        assert_eq!(resample_all(48_000, &input, 512), input);
    }
}
