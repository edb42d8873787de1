//! What one receiver played, measured from the recording: whether it is the
//! programme (envelope correlation over its whole length), when its first
//! sample was heard against the scheduled instant, and that nothing else
//! was played.
//!
//! The start is placed by aligning the programme's first 1.5 s (chime and
//! first words) near the whole-programme alignment, so a glitch later in
//! the programme cannot move it; the chime's onset gives a cross-check.

use anyhow::{Result, bail};

use crate::audio::{align, onset, peak, rms};
use crate::jack::RATE;
use crate::recording::Recording;

/// Measurements of one receiver's playout.
#[derive(Debug, Clone)]
pub struct Playout {
    /// Which receiver (for messages).
    pub receiver: String,
    /// Envelope correlation with the source at the best lag (1.0 = identical shape).
    pub correlation: f64,
    /// First sample heard minus scheduled instant, in ms (the figure the
    /// 100 ms requirement is checked on).
    pub offset_ms: f64,
    /// The same from the chime's onset alone (a cross-check).
    pub onset_offset_ms: Option<f64>,
    /// UTC instant of the first sample, ns since the Unix epoch.
    pub first_sample_unix_ns: i128,
    /// Loudest sample played.
    pub peak: f32,
    /// RMS outside the programme relative to RMS inside (0 = silence around it).
    pub outside_ratio: f64,
    /// Xruns the JACK rig reported while the programme played: a dent in
    /// the correlation with xruns is the test rig's, not the receiver's.
    pub rig_xruns: usize,
}

/// Onset threshold: fraction of the peak magnitude.
const ONSET_FRACTION: f32 = 0.2;
/// Length of the programme head aligned for the start (samples).
const HEAD: usize = RATE as usize * 3 / 2;
/// How far from the whole-programme lag the head may lie (samples, 200 ms).
const HEAD_SLACK: usize = RATE as usize / 5;

/// Measures track `track` (1-based) of `recording` against `reference`
/// scheduled at `instant_unix_ns`.
pub fn measure(
    recording: &Recording,
    track: usize,
    receiver: &str,
    reference: &[f32],
    instant_unix_ns: i128,
) -> Result<Playout> {
    let played = &recording.tracks[track - 1];
    let Some(whole) = align(reference, played) else {
        bail!(
            "{receiver}: recording of {:.1} s is shorter than the {:.1} s programme",
            played.len() as f64 / RATE as f64,
            reference.len() as f64 / RATE as f64
        );
    };
    let head = &reference[..HEAD.min(reference.len())];
    let from = whole.lag.saturating_sub(HEAD_SLACK);
    let to = (whole.lag + HEAD_SLACK + head.len()).min(played.len());
    let lag = match align(head, &played[from..to]) {
        Some(a) => from + a.lag,
        None => whole.lag,
    };
    let first = recording.unix_nanos_at(lag);
    let offset_ms = (first - instant_unix_ns) as f64 / 1e6;

    let search_from = lag.saturating_sub(RATE as usize / 20);
    let window = &played[search_from..(lag + head.len()).min(played.len())];
    let onset_offset_ms = match (onset(head, ONSET_FRACTION), onset(window, ONSET_FRACTION)) {
        (Some(r), Some(p)) => {
            let heard = recording.unix_nanos_at(search_from + p);
            let due = instant_unix_ns + r as i128 * 1_000_000_000 / RATE as i128;
            Some((heard - due) as f64 / 1e6)
        }
        _ => None,
    };

    // Everything outside the programme (with 100 ms of slack each side for codec tails).
    let slack = RATE as usize / 10;
    let end = (whole.lag + reference.len()).min(played.len());
    let inside = &played[whole.lag..end];
    let before = &played[..whole.lag.saturating_sub(slack)];
    let after = &played[(end + slack).min(played.len())..];
    let outside: Vec<f32> = before.iter().chain(after).copied().collect();
    let inside_rms = rms(inside);
    let outside_ratio = if inside_rms > 0.0 {
        rms(&outside) / inside_rms
    } else {
        f64::INFINITY
    };
    let rig_xruns = recording.xruns_between(first, recording.unix_nanos_at(end));

    Ok(Playout {
        receiver: receiver.to_string(),
        correlation: whole.correlation,
        offset_ms,
        onset_offset_ms,
        first_sample_unix_ns: first,
        peak: peak(played),
        outside_ratio,
        rig_xruns,
    })
}

impl Playout {
    /// One line for the figures report.
    pub fn summary(&self) -> String {
        let first = chrono::DateTime::from_timestamp_nanos(self.first_sample_unix_ns as i64);
        format!(
            "{}: first sample at {} = instant {:+.2} ms (chime onset {}), envelope correlation {:.3}, \
             peak {:.3}, outside/inside RMS {:.4}, rig xruns during play {}",
            self.receiver,
            first.format("%H:%M:%S%.6f UTC"),
            self.offset_ms,
            self.onset_offset_ms
                .map_or("n/a".into(), |v| format!("{v:+.2} ms")),
            self.correlation,
            self.peak,
            self.outside_ratio,
            self.rig_xruns
        )
    }
}
