//! Keeping live playout on time: before each frame is written, the player
//! compares where its first sample will be heard (now + the sink's delay)
//! with where it should be (its playout instant on the local clock). The
//! error comes from the sound card's clock drifting against the system
//! clock, from the clock offset estimate moving, and from glitches.
//!
//! - Over [`REANCHOR_US`] (a frame or more: a clock step, an underrun, a
//!   stall): re-anchor at once — skip the samples already late, or write
//!   silence up to the right instant.
//! - Over [`DEAD_BAND_US`]: drop (playing late) or insert (early) single
//!   samples, at most one per [`ADJUST_EVERY`] samples (5 ms), spread over
//!   the frame, until the error is below half a sample. At 4 samples per
//!   20 ms frame this corrects up to ~4 ms per second, far more than any
//!   crystal drifts, and a sample dropped or repeated here and there in a
//!   smooth waveform is inaudible.
//!
//! The dead band keeps the correction from chasing measurement noise; with
//! it, receivers of one broadcast stay well within 1 ms of each other.

/// One sample at 48 kHz, µs.
pub const SAMPLE_US: f64 = 1e6 / 48_000.0;
/// An error this large (µs) is corrected at once.
pub const REANCHOR_US: i64 = 20_000;
/// Errors within this (µs) are left alone until they grow past it.
pub const DEAD_BAND_US: i64 = 250;
/// At most one sample is dropped or inserted per this many samples.
pub const ADJUST_EVERY: usize = 240;

/// What to do to the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjust {
    /// Write it as it is.
    None,
    /// Remove this many single samples from it (playing late).
    Drop(usize),
    /// Insert this many single samples into it (playing early).
    Insert(usize),
    /// Skip this many samples of the stream (from this frame on; positive)
    /// or write this many samples of silence before it (negative).
    Reanchor(i64),
}

/// The correction state between frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct Corrector {
    /// Correcting an error that passed the dead band, until it is gone.
    active: bool,
    /// Samples dropped so far.
    pub dropped: u64,
    /// Samples inserted so far.
    pub inserted: u64,
    /// Times the stream was re-anchored.
    pub reanchors: u64,
}

impl Corrector {
    pub fn new() -> Corrector {
        Corrector::default()
    }

    /// The adjustment for a frame of `frame_len` samples whose first sample
    /// would be heard `error_us` late (negative: early).
    pub fn plan(&mut self, error_us: i64, frame_len: usize) -> Adjust {
        if error_us.abs() >= REANCHOR_US {
            self.active = false;
            self.reanchors += 1;
            return Adjust::Reanchor((error_us as f64 / SAMPLE_US).round() as i64);
        }
        let samples = (error_us.abs() as f64 / SAMPLE_US).round() as usize;
        if !self.active && error_us.abs() <= DEAD_BAND_US {
            return Adjust::None;
        }
        if samples == 0 {
            self.active = false;
            return Adjust::None;
        }
        self.active = true;
        let k = samples.min((frame_len / ADJUST_EVERY).max(1));
        if error_us > 0 {
            self.dropped += k as u64;
            Adjust::Drop(k)
        } else {
            self.inserted += k as u64;
            Adjust::Insert(k)
        }
    }
}

/// Removes `k` samples from `frame`, evenly spaced, each replaced with its
/// neighbours' mean so no step is introduced.
pub fn drop_samples(frame: &mut Vec<f32>, k: usize) {
    let k = k.min(frame.len().saturating_sub(2) / 2);
    for j in (1..=k).rev() {
        let at = j * frame.len() / (k + 1);
        let at = at.clamp(1, frame.len() - 2);
        frame[at - 1] = (frame[at - 1] + frame[at]) / 2.0;
        frame[at + 1] = (frame[at] + frame[at + 1]) / 2.0;
        frame.remove(at);
    }
}

/// Inserts `k` samples into `frame`, evenly spaced, each the mean of its
/// neighbours.
pub fn insert_samples(frame: &mut Vec<f32>, k: usize) {
    if frame.len() < 2 {
        return;
    }
    for j in (1..=k).rev() {
        let at = (j * frame.len() / (k + 1)).clamp(1, frame.len() - 1);
        let mid = (frame[at - 1] + frame[at]) / 2.0;
        frame.insert(at, mid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_errors_are_left_alone() {
        let mut c = Corrector::new();
        assert_eq!(c.plan(0, 960), Adjust::None);
        assert_eq!(c.plan(200, 960), Adjust::None);
        assert_eq!(c.plan(-249, 960), Adjust::None);
    }

    #[test]
    fn errors_past_the_dead_band_are_corrected_gradually_to_zero() {
        let mut c = Corrector::new();
        // 0.5 ms late: 24 samples to drop, at most 4 per 20 ms frame.
        let mut error = 500.0f64;
        let mut frames = 0;
        loop {
            match c.plan(error.round() as i64, 960) {
                Adjust::Drop(k) => {
                    assert!(k <= 4);
                    error -= k as f64 * SAMPLE_US;
                }
                Adjust::None => break,
                other => panic!("{other:?}"),
            }
            frames += 1;
            assert!(frames < 100);
        }
        assert!(error.abs() < SAMPLE_US, "left {error} µs");
        assert_eq!(frames, 6);
        assert_eq!(c.dropped, 24);
        // Early plays get samples inserted, again down to under a sample.
        let mut error = -300.0f64;
        while let Adjust::Insert(k) = c.plan(error.round() as i64, 960) {
            error += k as f64 * SAMPLE_US;
        }
        assert!(error.abs() < SAMPLE_US, "left {error} µs");
        assert!(c.inserted >= 14);
    }

    #[test]
    fn drift_is_followed_within_the_dead_band() {
        // The sound card runs 100 ppm slow relative to the clock: each
        // 20 ms frame is heard 2 µs later than the one before.
        let mut c = Corrector::new();
        let mut error = 0.0f64;
        let mut worst = 0.0f64;
        for _ in 0..50 * 600 {
            match c.plan(error.round() as i64, 960) {
                Adjust::Drop(k) => error -= k as f64 * SAMPLE_US,
                Adjust::Insert(k) => error += k as f64 * SAMPLE_US,
                Adjust::None => {}
                Adjust::Reanchor(_) => panic!("no re-anchoring for drift"),
            }
            worst = worst.max(error.abs());
            error += 2.0;
        }
        assert!(
            worst <= DEAD_BAND_US as f64 + 2.0 * SAMPLE_US,
            "worst {worst} µs"
        );
        // 60 ms of drift in 10 minutes: 2,880 samples dropped in all.
        let expected = 30_000.0 * 2.0 / SAMPLE_US;
        assert!((c.dropped as f64 - expected).abs() < 20.0, "{}", c.dropped);
    }

    #[test]
    fn big_errors_reanchor_at_once() {
        let mut c = Corrector::new();
        assert_eq!(c.plan(25_000, 960), Adjust::Reanchor(1_200));
        assert_eq!(c.plan(-60_000, 960), Adjust::Reanchor(-2_880));
        assert_eq!(c.reanchors, 2);
    }

    #[test]
    fn dropping_and_inserting_keep_a_smooth_waveform() {
        let sine: Vec<f32> = (0..960)
            .map(|i| (2.0 * std::f32::consts::PI * 300.0 * i as f32 / 48_000.0).sin())
            .collect();
        let max_step = |x: &[f32]| {
            x.windows(2)
                .map(|w| (w[1] - w[0]).abs())
                .fold(0.0f32, f32::max)
        };
        let base = max_step(&sine);
        let mut dropped = sine.clone();
        drop_samples(&mut dropped, 4);
        assert_eq!(dropped.len(), 956);
        assert!(max_step(&dropped) <= base * 2.1);
        let mut inserted = sine.clone();
        insert_samples(&mut inserted, 4);
        assert_eq!(inserted.len(), 964);
        assert!(max_step(&inserted) <= base * 1.01);
    }
}
