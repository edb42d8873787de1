//! The controller's clock, as seen from this receiver.
//!
//! Live frames carry the instant their first sample was captured on the
//! controller's clock; a receiver plays each frame at that instant plus the
//! playout delay, translated to its own clock. This module estimates the
//! offset between the two clocks NTP-style over MQTT:
//!
//! - the receiver publishes a [`ClockRequest`] `{seq, t1}` (its time when
//!   sending) on its clock topic; the controller answers with a
//!   [`ClockReply`] `{seq, t1, t2, t3}` (its time when the request arrived
//!   and when the reply left); the receiver notes `t4` as soon as the reply
//!   arrives. Then `offset = ((t2 − t1) + (t3 − t4)) / 2` (controller minus
//!   receiver) and `rtt = (t4 − t1) − (t3 − t2)`.
//! - Requests go out in a burst at every (re)connection ([`BURST`]
//!   requests [`BURST_GAP`] apart), then every [`PERIOD`].
//! - [`OffsetFilter`] keeps the last [`WINDOW`] samples and uses only the
//!   lowest-RTT half of them: a sample delayed on one leg (broker or network
//!   queueing) has a larger RTT and a biased offset, so it is left out. The
//!   estimate is the median of those samples' offsets, each carried forward
//!   to the present with the clock skew (the rate at which the offset
//!   drifts, a few ppm between two crystals), estimated with the
//!   Theil–Sen median of pairwise slopes once samples span [`SKEW_MIN_SPAN_US`].
//!   A step of the controller's clock (three consistent samples far from the
//!   estimate) resets the window.
//!
//! The receiver's side of every exchange is [`local_now_us`]: a monotonic
//! clock (never stepped, only slewed) expressed in Unix microseconds as of
//! process start, so a step of the board's wall clock cannot move live
//! playout, and the sinks' `delay()` (measured on the same monotonic clock)
//! converts straight into it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use loa_protocol::live::{ClockReply, ClockRequest};
use tokio_util::sync::CancellationToken;

use crate::link::Link;

/// Samples kept (at [`PERIOD`], about 80 s of history).
pub const WINDOW: usize = 16;
/// Requests sent at each (re)connection.
pub const BURST: u32 = 8;
/// Gap between the requests of a burst.
pub const BURST_GAP: Duration = Duration::from_millis(100);
/// Gap between requests once the burst is over.
pub const PERIOD: Duration = Duration::from_secs(5);
/// Gap between requests while fewer than [`MIN_SAMPLES`] replies arrived.
pub const RETRY: Duration = Duration::from_secs(1);
/// Replies needed before the estimate is trusted.
pub const MIN_SAMPLES: usize = 2;
/// A reply whose round trip took longer than this is useless and dropped.
pub const MAX_RTT_US: i64 = 2_000_000;
/// Samples older than this (relative to the newest) are dropped.
pub const MAX_AGE_US: i64 = 150_000_000;
/// The skew is estimated only from pairs of samples at least this far apart.
pub const SKEW_MIN_SPAN_US: i64 = 10_000_000;
/// The skew estimate is clamped to ± this (crystals are within ±100 ppm).
pub const MAX_SKEW: f64 = 200e-6;
/// Samples further than this from the plain median offset are left out of
/// the skew and the estimate (a step, or an outlier; drift over the whole
/// window at [`MAX_SKEW`] stays well inside).
pub const INLIER_US: i64 = 50_000;
/// Three consistent samples this far from the estimate mean the controller's
/// clock stepped: older samples are dropped.
pub const STEP_US: i64 = 20_000;
/// Requests remembered while waiting for their replies.
const PENDING: usize = 32;

/// The origin of [`local_now_us`]: a monotonic instant and the Unix time then.
fn origin() -> (Instant, i64) {
    static ORIGIN: OnceLock<(Instant, i64)> = OnceLock::new();
    *ORIGIN.get_or_init(|| (Instant::now(), Utc::now().timestamp_micros()))
}

/// The receiver's clock for live playout: monotonic, in Unix microseconds
/// as of process start.
pub fn local_now_us() -> i64 {
    let (at, unix) = origin();
    unix + at.elapsed().as_micros() as i64
}

/// The local-clock reading of a monotonic instant.
pub fn local_us_of(instant: Instant) -> i64 {
    let (at, unix) = origin();
    match instant.checked_duration_since(at) {
        Some(d) => unix + d.as_micros() as i64,
        None => unix - at.duration_since(instant).as_micros() as i64,
    }
}

/// The wall-clock (UTC) instant of a local-clock reading, for reports.
pub fn utc_of_local(local_us: i64) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::microseconds(local_us - local_now_us())
}

/// One completed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Local time when the reply arrived (`t4`).
    pub local_us: i64,
    /// Controller clock minus local clock.
    pub offset_us: i64,
    /// Round trip minus the controller's processing time.
    pub rtt_us: i64,
}

/// Why a clock reply was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply to a request this receiver did not send (seq {0})")]
    Unknown(u64),
    #[error("reply timestamps are inconsistent (negative round trip or processing time)")]
    Inconsistent,
    #[error("round trip of {0} µs is too long to be useful")]
    TooSlow(i64),
}

impl Sample {
    /// The sample made of one exchange, or why it is unusable.
    pub fn from_exchange(t1: i64, t2: i64, t3: i64, t4: i64) -> Result<Sample, ReplyError> {
        // In i128, so that no timestamps a peer sends can overflow.
        let (t1, t2, t3, t4) = (t1 as i128, t2 as i128, t3 as i128, t4 as i128);
        let processing = t3 - t2;
        let rtt = (t4 - t1) - processing;
        if processing < 0 || rtt < 0 {
            return Err(ReplyError::Inconsistent);
        }
        if rtt > MAX_RTT_US as i128 {
            return Err(ReplyError::TooSlow(rtt.min(i64::MAX as i128) as i64));
        }
        let offset = ((t2 - t1) + (t3 - t4)) / 2;
        // Any real offset (even a board booted at 1970) is far below 2^62 µs.
        if offset.abs() > 1 << 62 {
            return Err(ReplyError::Inconsistent);
        }
        Ok(Sample {
            local_us: t4 as i64,
            offset_us: offset as i64,
            rtt_us: rtt as i64,
        })
    }
}

/// The filtered offset: `offset_us` at local time `ref_us`, changing by
/// `skew` µs per µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Controller minus local clock at `ref_us`.
    pub offset_us: f64,
    /// The local time the offset refers to (the newest sample used).
    pub ref_us: i64,
    /// Drift of the offset, µs per µs (e.g. 20e-6 for 20 ppm).
    pub skew: f64,
    /// Samples the estimate was made from.
    pub samples: usize,
}

impl Estimate {
    /// The offset at local time `local_us`.
    pub fn offset_at(&self, local_us: i64) -> i64 {
        (self.offset_us + self.skew * (local_us - self.ref_us) as f64).round() as i64
    }
}

/// The sample window and its filter (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct OffsetFilter {
    /// The newest samples, oldest first.
    samples: VecDeque<Sample>,
}

impl OffsetFilter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Samples in the window.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Adds a sample, dropping the oldest and any too old, and resetting the
    /// window after a step of the controller's clock.
    pub fn push(&mut self, sample: Sample) {
        self.samples
            .retain(|s| sample.local_us - s.local_us <= MAX_AGE_US);
        self.samples.push_back(sample);
        while self.samples.len() > WINDOW {
            self.samples.pop_front();
        }
        self.detect_step();
    }

    /// Three consistent newest samples far from what the older ones say
    /// mean a clock step: keep only them.
    fn detect_step(&mut self) {
        let n = self.samples.len();
        if n < 5 {
            return;
        }
        let newest: Vec<Sample> = self.samples.iter().skip(n - 3).copied().collect();
        let min = newest.iter().map(|s| s.offset_us).min().unwrap_or(0);
        let max = newest.iter().map(|s| s.offset_us).max().unwrap_or(0);
        if max - min > STEP_US / 4 {
            return;
        }
        let older: Vec<Sample> = self.samples.iter().take(n - 3).copied().collect();
        let Some(before) = estimate(&older) else {
            return;
        };
        if newest
            .iter()
            .all(|s| (s.offset_us - before.offset_at(s.local_us)).abs() > STEP_US)
        {
            tracing::warn!(
                from_us = before.offset_at(newest[2].local_us),
                to_us = newest[2].offset_us,
                "the controller's clock stepped; clock samples reset"
            );
            self.samples = newest.into();
        }
    }

    /// The filtered estimate, if there is any sample.
    pub fn estimate(&self) -> Option<Estimate> {
        let samples: Vec<Sample> = self.samples.iter().copied().collect();
        estimate(&samples)
    }
}

/// The median of the lowest-RTT half of `samples`, with skew (module docs).
fn estimate(samples: &[Sample]) -> Option<Estimate> {
    if samples.is_empty() {
        return None;
    }
    let mut best: Vec<Sample> = samples.to_vec();
    best.sort_by_key(|s| (s.rtt_us, std::cmp::Reverse(s.local_us)));
    best.truncate(samples.len().div_ceil(2));
    // Outliers would tilt the skew: keep samples near the plain median.
    let mut offsets: Vec<f64> = best.iter().map(|s| s.offset_us as f64).collect();
    let plain = median(&mut offsets);
    let inliers: Vec<Sample> = best
        .iter()
        .copied()
        .filter(|s| (s.offset_us as f64 - plain).abs() <= INLIER_US as f64)
        .collect();
    let best = if inliers.is_empty() { best } else { inliers };
    let skew = skew(&best);
    let ref_us = best.iter().map(|s| s.local_us).max()?;
    let mut projected: Vec<f64> = best
        .iter()
        .map(|s| s.offset_us as f64 + skew * (ref_us - s.local_us) as f64)
        .collect();
    Some(Estimate {
        offset_us: median(&mut projected),
        ref_us,
        skew,
        samples: best.len(),
    })
}

/// Theil–Sen slope of offset over local time, from pairs far enough apart;
/// 0 when there are too few.
fn skew(samples: &[Sample]) -> f64 {
    let mut slopes = Vec::new();
    for (i, a) in samples.iter().enumerate() {
        for b in &samples[i + 1..] {
            let dt = b.local_us - a.local_us;
            if dt.abs() >= SKEW_MIN_SPAN_US {
                slopes.push((b.offset_us - a.offset_us) as f64 / dt as f64);
            }
        }
    }
    if slopes.len() < 3 {
        return 0.0;
    }
    median(&mut slopes).clamp(-MAX_SKEW, MAX_SKEW)
}

/// Median (mean of the middle two for an even count); `values` non-empty.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// What [`Clock`] shares between the link, the sync task and the player.
#[derive(Debug, Default)]
struct State {
    filter: OffsetFilter,
    estimate: Option<Estimate>,
    /// Requests sent and not answered yet: (seq, t1).
    pending: VecDeque<(u64, i64)>,
    next_seq: u64,
}

/// The shared offset estimate; cheap to clone. The player reads it under a
/// lock held for microseconds, never across I/O.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    state: Arc<Mutex<State>>,
}

impl Clock {
    /// A clock with no samples yet.
    pub fn new() -> Clock {
        Clock::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new request stamped now; remembered so its reply can be checked.
    pub fn request(&self) -> ClockRequest {
        let mut state = self.lock();
        state.next_seq += 1;
        let request = ClockRequest {
            seq: state.next_seq,
            t1_us: local_now_us(),
        };
        state.pending.push_back((request.seq, request.t1_us));
        while state.pending.len() > PENDING {
            state.pending.pop_front();
        }
        request
    }

    /// Takes a reply received at local time `t4_us`.
    pub fn on_reply(&self, reply: &ClockReply, t4_us: i64) -> Result<Sample, ReplyError> {
        let mut state = self.lock();
        let Some(i) = state
            .pending
            .iter()
            .position(|&(seq, t1)| seq == reply.seq && t1 == reply.t1_us)
        else {
            return Err(ReplyError::Unknown(reply.seq));
        };
        state.pending.remove(i);
        let sample = Sample::from_exchange(reply.t1_us, reply.t2_us, reply.t3_us, t4_us)?;
        self.add_locked(&mut state, sample);
        Ok(sample)
    }

    /// Adds a sample directly (tests, or another time source).
    pub fn add_sample(&self, sample: Sample) {
        let mut state = self.lock();
        self.add_locked(&mut state, sample);
    }

    fn add_locked(&self, state: &mut State, sample: Sample) {
        let was_synced = state.filter.len() >= MIN_SAMPLES;
        state.filter.push(sample);
        state.estimate = state.filter.estimate();
        if !was_synced
            && let Some(e) = state.estimate
            && state.filter.len() >= MIN_SAMPLES
        {
            tracing::info!(
                offset_us = e.offset_at(sample.local_us),
                rtt_us = sample.rtt_us,
                "clock synchronised with the controller"
            );
        }
    }

    /// Replies taken into the current window.
    pub fn samples(&self) -> usize {
        self.lock().filter.len()
    }

    /// Whether enough replies arrived to trust the estimate.
    pub fn is_synced(&self) -> bool {
        self.samples() >= MIN_SAMPLES
    }

    /// The current estimate, if synced.
    pub fn estimate(&self) -> Option<Estimate> {
        let state = self.lock();
        (state.filter.len() >= MIN_SAMPLES)
            .then_some(state.estimate)
            .flatten()
    }

    /// Controller minus local clock now, if synced.
    pub fn offset_us(&self) -> Option<i64> {
        self.estimate().map(|e| e.offset_at(local_now_us()))
    }

    /// The controller's clock now (Unix µs), if synced.
    pub fn controller_now_us(&self) -> Option<i64> {
        let now = local_now_us();
        self.estimate().map(|e| now + e.offset_at(now))
    }

    /// The local-clock instant of a controller-clock instant, if synced.
    pub fn to_local_us(&self, controller_us: i64) -> Option<i64> {
        let e = self.estimate()?;
        let guess = controller_us - e.offset_at(local_now_us());
        Some(controller_us - e.offset_at(guess))
    }
}

/// Sends clock requests over `link` until `shutdown`: a burst at every
/// (re)connection, then one every [`PERIOD`] ([`RETRY`] while unsynced).
pub async fn run_sync(clock: Clock, link: Link, shutdown: CancellationToken) {
    let tick = Duration::from_millis(50);
    let mut seen = 0u64;
    let mut burst_left = 0u32;
    let mut next_due = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        if !link.is_connected() {
            continue;
        }
        let generation = link.connection_generation();
        if generation != seen {
            seen = generation;
            burst_left = BURST;
            next_due = tokio::time::Instant::now();
        }
        let now = tokio::time::Instant::now();
        if now < next_due {
            continue;
        }
        link.publish_clock_request(&clock.request());
        let gap = if burst_left > 0 {
            burst_left -= 1;
            BURST_GAP
        } else if clock.is_synced() {
            PERIOD
        } else {
            RETRY
        };
        next_due = now + gap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exchange with true offset `offset`, one-way delays `up` and `down`,
    /// sent at local time `t1`.
    fn exchange(t1: i64, offset: i64, up: i64, down: i64) -> Sample {
        let t2 = t1 + up + offset;
        let t3 = t2 + 50;
        let t4 = t3 - offset + down;
        Sample::from_exchange(t1, t2, t3, t4).unwrap()
    }

    /// A small deterministic pseudo-random sequence (xorshift).
    fn noise(seed: &mut u64, max: i64) -> i64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed % (max as u64 + 1)) as i64
    }

    #[test]
    fn ntp_formula() {
        let s = exchange(1_000_000, 2_500_000, 300, 300);
        assert_eq!(s.offset_us, 2_500_000);
        assert_eq!(s.rtt_us, 600);
        // An asymmetric exchange is biased by half the asymmetry.
        let s = exchange(1_000_000, -7_000, 4_300, 300);
        assert_eq!(s.offset_us, -7_000 + 2_000);
        assert_eq!(s.rtt_us, 4_600);
        assert_eq!(
            Sample::from_exchange(10, 20, 15, 30),
            Err(ReplyError::Inconsistent)
        );
        assert_eq!(
            Sample::from_exchange(0, 5, 5, 3_000_000),
            Err(ReplyError::TooSlow(3_000_000))
        );
        // Absurd timestamps do not overflow.
        assert!(Sample::from_exchange(i64::MIN, i64::MAX, i64::MAX, i64::MIN + 1).is_err());
        assert!(Sample::from_exchange(i64::MIN, 0, 0, i64::MAX).is_err());
        // A board whose clock still says 1970 is 56 years behind: fine.
        let years_56 = 56 * 365 * 86_400 * 1_000_000i64;
        assert_eq!(exchange(1_000, years_56, 100, 100).offset_us, years_56);
    }

    #[test]
    fn lowest_rtt_half_rejects_asymmetric_queueing() {
        let offset = 1_234_567;
        let mut seed = 42;
        let mut filter = OffsetFilter::new();
        let mut plain = Vec::new();
        for i in 0..WINDOW as i64 {
            // Base path 200 µs each way ± 40 µs; every other sample waits
            // 1–9 ms in a queue on the way up only.
            let up = 200
                + noise(&mut seed, 40)
                + if i % 2 == 0 {
                    1_000 + noise(&mut seed, 8_000)
                } else {
                    0
                };
            let down = 200 + noise(&mut seed, 40);
            let s = exchange(i * 100_000, offset, up, down);
            plain.push(s.offset_us as f64);
            filter.push(s);
        }
        let e = filter.estimate().unwrap();
        let err = e.offset_at(e.ref_us) - offset;
        let mean_err = plain.iter().sum::<f64>() / plain.len() as f64 - offset as f64;
        assert!(err.abs() <= 40, "filtered error {err} µs");
        assert!(
            mean_err.abs() > 1_000.0,
            "the plain mean should be biased: {mean_err}"
        );
        assert_eq!(e.samples, WINDOW / 2);
    }

    #[test]
    fn outliers_do_not_move_the_estimate() {
        let offset = -50_000;
        let mut filter = OffsetFilter::new();
        for i in 0..12 {
            filter.push(exchange(i * 5_000_000, offset, 300, 320));
        }
        // Garbage: offsets seconds away, but with long round trips.
        filter.push(exchange(60_000_000, offset + 3_000_000, 900_000, 10));
        filter.push(exchange(61_000_000, offset - 400_000, 10, 800_000));
        // A single low-RTT outlier is outvoted by the median.
        filter.push(exchange(62_000_000, offset + 15_000, 150, 150));
        let e = filter.estimate().unwrap();
        let err = e.offset_at(62_000_000) - offset;
        assert!(err.abs() <= 20, "error {err} µs");
    }

    #[test]
    fn skew_is_tracked() {
        // The controller's clock runs 50 ppm fast: the offset grows 50 µs/s.
        let skew = 50e-6;
        let mut seed = 7;
        let mut filter = OffsetFilter::new();
        let at = |t: i64| 10_000 + (skew * t as f64) as i64;
        let mut t = 0;
        for _ in 0..WINDOW {
            let jitter = noise(&mut seed, 60);
            filter.push(exchange(t, at(t), 300 + jitter, 300));
            t += 5_000_000;
        }
        let e = filter.estimate().unwrap();
        assert!((e.skew - skew).abs() < 5e-6, "skew {}", e.skew);
        // Five seconds after the last sample, the estimate is still right;
        // a plain median of the window would lag by ~2 ms.
        let later = t + 5_000_000;
        let err = e.offset_at(later) - at(later);
        assert!(err.abs() <= 100, "error {err} µs");
    }

    #[test]
    fn a_clock_step_resets_the_window() {
        let mut filter = OffsetFilter::new();
        for i in 0..10 {
            filter.push(exchange(i * 5_000_000, 0, 300, 300));
        }
        // The controller's clock jumps 1 s ahead.
        for i in 10..12 {
            filter.push(exchange(i * 5_000_000, 1_000_000, 300, 300));
            assert!(filter.estimate().unwrap().offset_us.abs() < 1_000.0);
        }
        filter.push(exchange(12 * 5_000_000, 1_000_000, 300, 300));
        assert_eq!(filter.len(), 3);
        assert_eq!(filter.estimate().unwrap().offset_at(60_000_000), 1_000_000);
    }

    #[test]
    fn old_samples_age_out() {
        let mut filter = OffsetFilter::new();
        filter.push(exchange(0, 5, 100, 100));
        filter.push(exchange(MAX_AGE_US + 1, 5, 100, 100));
        assert_eq!(filter.len(), 1);
    }

    #[test]
    fn replies_must_match_a_request() {
        let clock = Clock::new();
        assert!(!clock.is_synced());
        assert_eq!(clock.controller_now_us(), None);
        let forged = ClockReply {
            seq: 99,
            t1_us: 0,
            t2_us: 0,
            t3_us: 0,
        };
        assert_eq!(clock.on_reply(&forged, 10), Err(ReplyError::Unknown(99)));
        for _ in 0..2 {
            let request = clock.request();
            let t2 = request.t1_us + 1_000_000 + 200;
            let reply = ClockReply {
                seq: request.seq,
                t1_us: request.t1_us,
                t2_us: t2,
                t3_us: t2 + 10,
            };
            let t4 = request.t1_us + 410;
            let sample = clock.on_reply(&reply, t4).unwrap();
            assert_eq!(sample.offset_us, 1_000_000);
            // A duplicate reply is refused.
            assert_eq!(
                clock.on_reply(&reply, t4),
                Err(ReplyError::Unknown(request.seq))
            );
        }
        assert!(clock.is_synced());
        let local = clock.to_local_us(5_000_000_000).unwrap();
        assert_eq!(local, 5_000_000_000 - 1_000_000);
        let now = clock.controller_now_us().unwrap() - local_now_us();
        assert!((now - 1_000_000).abs() < 1_000, "{now}");
    }
}
