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
//!   requests about [`BURST_GAP`] apart), then about every [`PERIOD`]
//!   ([`SyncSchedule`]) — every [`RETRY`] while the window holds fewer than
//!   [`SETTLED_SAMPLES`] samples with a round trip near its best, spread
//!   over [`SETTLED_SPAN_US`] (a burst that met a congested broker). Every gap is randomised (±50 % in the burst, ±25 %
//!   after it) and the burst starts after a random delay of up to
//!   [`CONNECT_JITTER`]: receivers that (re)connect together — after a power
//!   cut or a broker restart — would otherwise ask in lockstep, and their
//!   requests would queue behind each other at the broker and the
//!   controller, which inflates the round trips and biases the offsets.
//! - [`OffsetFilter`] keeps up to [`WINDOW`] samples. Each sample bounds the
//!   offset to ± half its round trip (the asymmetry of the two legs is at
//!   most the round trip). A sample whose bounds do not overlap those of
//!   most others cannot be honest if they are (a controller clock that
//!   stepped and stepped back, a forged reply) and is left out, however
//!   short its round trip. Of the rest, only those whose round trip is close
//!   to the window's best are used ([`rtt_limit`]: at most the best plus a
//!   quarter of it, or plus [`RTT_SLACK_US`]): a sample delayed on one leg
//!   (broker or network queueing) has a larger RTT and a biased offset, so
//!   it is left out. "Best" counts a sample's age as extra round trip
//!   ([`AGE_DISPERSION`], as NTP's dispersion), so that fresh samples take
//!   over from old ones as drift makes those uncertain.
//! - When the window is full the sample dropped is the worst by that same
//!   measure (the newest [`KEEP_NEWEST`] always stay), so a long spell of
//!   congestion — a live broadcast to a thousand receivers on one broker —
//!   cannot flush out the clean samples taken before it.
//! - The estimate is the median of the kept samples' offsets, each carried
//!   forward to the newest with the clock skew (the rate at which the offset
//!   drifts, a few ppm between two crystals), the Theil–Sen median of
//!   pairwise slopes of the short-RTT samples of any age, once they span
//!   [`SKEW_MIN_SPAN_US`]. A step of the controller's clock (three
//!   consistent samples further from the estimate than [`STEP_US`] plus half
//!   their own RTT) resets the window.
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

/// Samples kept (the lowest-RTT ones of up to [`MAX_AGE_US`]).
pub const WINDOW: usize = 16;
/// The newest samples never dropped for their RTT (step detection looks at them).
pub const KEEP_NEWEST: usize = 3;
/// Requests sent at each (re)connection.
pub const BURST: u32 = 8;
/// Mean gap between the requests of a burst (each one drawn in ±50 %).
pub const BURST_GAP: Duration = Duration::from_millis(100);
/// Mean gap between requests once the burst is over (each one drawn in ±25 %).
pub const PERIOD: Duration = Duration::from_secs(5);
/// Mean gap between requests while the clock is not settled — fewer than
/// [`SETTLED_SAMPLES`] samples with a round trip near the window's best,
/// e.g. the burst met a congested broker (each one drawn in ±50 %).
pub const RETRY: Duration = Duration::from_secs(1);
/// Samples near the window's best round trip for the clock to be settled
/// (see [`OffsetFilter::is_settled`]).
pub const SETTLED_SAMPLES: usize = 3;
/// ... taken at least this far apart, first to last (not all in one burst
/// that may have met a transient spell of congestion).
pub const SETTLED_SPAN_US: i64 = 3_000_000;
/// The first request after a (re)connection waits a random delay up to this.
pub const CONNECT_JITTER: Duration = Duration::from_millis(500);
/// Samples whose RTT exceeds the window's minimum by at most this (or by a
/// quarter of the minimum, whichever is larger) are used for the estimate.
pub const RTT_SLACK_US: i64 = 200;
/// How fast a sample's offset grows uncertain with age (µs per µs): the
/// drift left after the skew correction, as NTP's 15 ppm dispersion rate.
pub const AGE_DISPERSION: f64 = 15e-6;
/// Slack when comparing two samples' bounds (clock reading granularity); the
/// bounds also widen by [`MAX_SKEW`] times the time between the samples.
pub const BOUND_SLACK_US: i64 = 100;
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

/// The wall-clock (UTC) instant of a local-clock reading, for log lines;
/// reports use [`Clock::utc_of_local`].
pub fn utc_of_local(local_us: i64) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::microseconds(local_us - local_now_us())
}

/// The UTC instant of a reading in Unix microseconds.
fn utc_of_us(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::UNIX_EPOCH)
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
            // The worst sample among the older ones goes (highest RTT plus
            // age dispersion; the oldest of equals): clean samples outlive
            // a spell of congestion, yet fresh ones replace them in time.
            let older = self.samples.len().saturating_sub(KEEP_NEWEST);
            let worst = (0..older)
                .max_by_key(|&i| {
                    let s = &self.samples[i];
                    (quality(s, sample.local_us), std::cmp::Reverse(s.local_us))
                })
                .unwrap_or(0);
            self.samples.remove(worst);
        }
        self.detect_step();
    }

    /// Three consistent newest samples far from what the older ones say —
    /// further than [`STEP_US`] beyond what their own RTT could explain —
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
            .all(|s| (s.offset_us - before.offset_at(s.local_us)).abs() > STEP_US + s.rtt_us / 2)
        {
            tracing::warn!(
                from_us = before.offset_at(newest[2].local_us),
                to_us = newest[2].offset_us,
                "the controller's clock stepped; clock samples reset"
            );
            self.samples = newest.into();
        }
    }

    /// Whether the window holds [`SETTLED_SAMPLES`] samples whose round
    /// trip is near its best ([`rtt_limit`]), taken over at least
    /// [`SETTLED_SPAN_US`]: the best is then no fluke of one quiet moment,
    /// nor are all samples from one congested spell. Until then requests go
    /// out at [`RETRY`], not [`PERIOD`].
    pub fn is_settled(&self) -> bool {
        let Some(min) = self.samples.iter().map(|s| s.rtt_us).min() else {
            return false;
        };
        let limit = rtt_limit(min);
        let near: Vec<i64> = self
            .samples
            .iter()
            .filter(|s| s.rtt_us <= limit)
            .map(|s| s.local_us)
            .collect();
        let span = near
            .iter()
            .max()
            .zip(near.iter().min())
            .map_or(0, |(a, b)| a - b);
        near.len() >= SETTLED_SAMPLES && span >= SETTLED_SPAN_US
    }

    /// The filtered estimate, if there is any sample.
    pub fn estimate(&self) -> Option<Estimate> {
        let samples: Vec<Sample> = self.samples.iter().copied().collect();
        estimate(&samples)
    }
}

/// The largest RTT of a sample used for the estimate, given the window's
/// smallest: a sample with RTT `r` bounds the offset to ± `r`/2, so those
/// much slower than the best say little and are biased by their queueing.
pub fn rtt_limit(min_rtt_us: i64) -> i64 {
    min_rtt_us.saturating_add((min_rtt_us / 4).max(RTT_SLACK_US))
}

/// The offset bounds a sample gives: the truth lies within ± half its RTT.
fn bounds(s: &Sample) -> (i64, i64) {
    let half = s.rtt_us / 2 + BOUND_SLACK_US;
    (s.offset_us - half, s.offset_us + half)
}

/// Whether two samples' bounds overlap, allowing for the drift between them.
fn agree(a: &Sample, b: &Sample) -> bool {
    let drift = (MAX_SKEW * (a.local_us - b.local_us).abs() as f64).ceil() as i64;
    let ((alo, ahi), (blo, bhi)) = (bounds(a), bounds(b));
    alo <= bhi + drift && blo <= ahi + drift
}

/// The samples whose bounds overlap those of at least half of the others
/// (all of them if none does). An honest exchange always contains the true
/// offset in its bounds, so honest samples all agree; one that disagrees
/// with most — a controller clock that stepped and stepped back, a forged
/// reply — is left out, however short its round trip.
fn consistent(samples: &[Sample]) -> Vec<Sample> {
    let n = samples.len();
    let kept: Vec<Sample> = samples
        .iter()
        .enumerate()
        .filter(|&(i, a)| {
            let agreeing = samples
                .iter()
                .enumerate()
                .filter(|&(j, b)| j != i && agree(a, b))
                .count();
            2 * agreeing >= n - 1
        })
        .map(|(_, s)| *s)
        .collect();
    if kept.is_empty() {
        samples.to_vec()
    } else {
        kept
    }
}

/// How good a sample is now: its RTT plus twice the offset uncertainty its
/// age adds ([`AGE_DISPERSION`] per µs, as NTP's dispersion), so that a
/// fresh sample with a slightly longer round trip beats an old one.
fn quality(s: &Sample, newest_us: i64) -> i64 {
    let age = newest_us.saturating_sub(s.local_us).max(0);
    s.rtt_us
        .saturating_add((2.0 * AGE_DISPERSION * age as f64).min(i64::MAX as f64 / 2.0) as i64)
}

/// Samples near the median of `samples`' offsets (so that outliers cannot
/// tilt the skew); all of them if none is.
fn near_median(samples: Vec<Sample>) -> Vec<Sample> {
    let mut offsets: Vec<f64> = samples.iter().map(|s| s.offset_us as f64).collect();
    let plain = median(&mut offsets);
    let inliers: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| (s.offset_us as f64 - plain).abs() <= INLIER_US as f64)
        .collect();
    if inliers.is_empty() { samples } else { inliers }
}

/// The median of the consistent samples whose quality (RTT, plus age) is
/// near the best, projected to the newest of them with the skew of the
/// samples whose RTT is near the smallest (module docs).
fn estimate(samples: &[Sample]) -> Option<Estimate> {
    if samples.is_empty() {
        return None;
    }
    let consistent = consistent(samples);
    let newest = consistent.iter().map(|s| s.local_us).max()?;
    // The skew, from every sample with a short round trip, whatever its age.
    let min_rtt = consistent.iter().map(|s| s.rtt_us).min()?;
    let fast: Vec<Sample> = consistent
        .iter()
        .copied()
        .filter(|s| s.rtt_us <= rtt_limit(min_rtt))
        .collect();
    let skew = skew(&near_median(fast));
    // The offset, from the best samples now.
    let min_quality = consistent.iter().map(|s| quality(s, newest)).min()?;
    let best: Vec<Sample> = consistent
        .iter()
        .copied()
        .filter(|s| quality(s, newest) <= rtt_limit(min_quality))
        .collect();
    let best = near_median(best);
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

    /// Whether the estimate rests on several good samples
    /// ([`OffsetFilter::is_settled`]); the sync task asks faster until it does.
    pub fn is_settled(&self) -> bool {
        self.lock().filter.is_settled()
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

    /// What time it is for this receiver: the controller's clock by the
    /// exchange's estimate, or else the local monotonic clock (anchored to
    /// the wall clock at process start). Scheduled plays, reports and
    /// message ages are judged by it, so a jump of the board's wall clock
    /// (no RTC, a bad NTP step, a technician's `date -s`) moves nothing.
    pub fn now_utc(&self) -> DateTime<Utc> {
        utc_of_us(self.controller_now_us().unwrap_or_else(local_now_us))
    }

    /// The [`now_utc`](Self::now_utc) instant of a local-clock reading, for reports.
    pub fn utc_of_local(&self, local_us: i64) -> DateTime<Utc> {
        utc_of_us(local_us + self.offset_us().unwrap_or(0))
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

/// When to send clock requests (module docs): a burst after each
/// (re)connection, then a slow period, every gap randomised so that a fleet
/// of receivers does not ask in lockstep. Pure (no I/O, no clock), so the
/// benchmark's lightweight receivers follow exactly this schedule too.
#[derive(Debug, Clone)]
pub struct SyncSchedule {
    /// xorshift64* state; never 0.
    rng: u64,
    /// Requests of the current burst still to send.
    burst_left: u32,
}

impl SyncSchedule {
    /// A schedule whose jitter is drawn from `seed` (any value).
    pub fn new(seed: u64) -> SyncSchedule {
        // splitmix64 of the seed, so nearby seeds give unrelated sequences.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        SyncSchedule {
            rng: z.max(1),
            burst_left: 0,
        }
    }

    /// A schedule seeded from the process's random hasher keys and `salt`
    /// (e.g. the receiver id), different on every start.
    pub fn random(salt: &str) -> SyncSchedule {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(salt.as_bytes());
        h.write_i64(Utc::now().timestamp_micros());
        SyncSchedule::new(h.finish())
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `mean` scaled by a factor drawn uniformly in [1 − `spread`, 1 + `spread`).
    fn around(&mut self, mean: Duration, spread: f64) -> Duration {
        mean.mul_f64(1.0 - spread + 2.0 * spread * self.unit())
    }

    /// The link (re)connected: a new burst starts after the returned delay.
    pub fn on_connect(&mut self) -> Duration {
        self.burst_left = BURST;
        CONNECT_JITTER.mul_f64(self.unit())
    }

    /// A request was just sent; `settled` tells whether the clock has
    /// enough good replies ([`Clock::is_settled`]). Returns the delay before
    /// the next request.
    pub fn after_request(&mut self, settled: bool) -> Duration {
        self.burst_left = self.burst_left.saturating_sub(1);
        if self.burst_left > 0 {
            self.around(BURST_GAP, 0.5)
        } else if settled {
            self.around(PERIOD, 0.25)
        } else {
            self.around(RETRY, 0.5)
        }
    }
}

/// Sends clock requests over `link` until `shutdown`, on a [`SyncSchedule`].
pub async fn run_sync(clock: Clock, link: Link, shutdown: CancellationToken) {
    // How often the connection state is looked at.
    let tick = Duration::from_millis(50);
    let mut schedule = SyncSchedule::random(&format!("{:p}", Arc::as_ptr(&clock.state)));
    let mut seen = 0u64;
    let mut next_due = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        let wake = next_due.clamp(now, now + tick);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
        if !link.is_connected() {
            continue;
        }
        let generation = link.connection_generation();
        if generation != seen {
            seen = generation;
            next_due = tokio::time::Instant::now() + schedule.on_connect();
            continue;
        }
        let now = tokio::time::Instant::now();
        if now < next_due {
            continue;
        }
        link.publish_clock_request(&clock.request());
        next_due = now + schedule.after_request(clock.is_settled());
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
    fn near_minimum_rtt_rejects_asymmetric_queueing() {
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
    fn only_samples_near_the_minimum_rtt_count() {
        // What a loaded broker does: two clean exchanges (300 µs each way),
        // and fourteen that queued 0.6–3 ms, mostly on the way back (the
        // reply waits behind live frames), so their offsets lean negative.
        // The lowest-RTT half (eight samples) would take six of them in.
        let offset = 80_000;
        let mut seed = 3;
        let mut filter = OffsetFilter::new();
        for i in 0..WINDOW as i64 {
            let (up, down) = if i == 4 || i == 11 {
                (300, 300)
            } else {
                let queued = 600 + noise(&mut seed, 2_400);
                (300 + queued / 5, 300 + queued * 4 / 5)
            };
            filter.push(exchange(i * 200_000, offset, up, down));
        }
        let e = filter.estimate().unwrap();
        // Exactly the two clean samples (RTT 600, limit 900).
        assert_eq!(e.samples, 2);
        assert_eq!(e.offset_at(e.ref_us), offset);
        // The old rule, for comparison: the median of the lowest-RTT half.
        let mut half: Vec<Sample> = filter.samples.iter().copied().collect();
        half.sort_by_key(|s| s.rtt_us);
        half.truncate(WINDOW / 2);
        let mut offsets: Vec<f64> = half.iter().map(|s| s.offset_us as f64).collect();
        let old = median(&mut offsets) - offset as f64;
        assert!(old < -150.0, "the lowest-RTT half is biased: {old}");
    }

    #[test]
    fn a_sample_outside_the_others_bounds_is_left_out() {
        let mut filter = OffsetFilter::new();
        // Honest samples with all kinds of asymmetry: every one's bounds
        // contain the truth (0), so all agree and none is left out.
        let mut seed = 5;
        for i in 0..6 {
            let up = 200 + noise(&mut seed, 3_000);
            let down = 200 + noise(&mut seed, 3_000);
            filter.push(exchange(i * 1_000_000, 0, up, down));
        }
        let samples: Vec<Sample> = filter.samples.iter().copied().collect();
        assert_eq!(consistent(&samples).len(), samples.len());
        // The shortest round trip of all, but 8 ms off: it cannot be honest
        // if the others are (their bounds overlap each other's, not its).
        filter.push(exchange(6_000_000, 8_000, 100, 100));
        let samples: Vec<Sample> = filter.samples.iter().copied().collect();
        let kept = consistent(&samples);
        assert_eq!(kept.len(), samples.len() - 1);
        assert!(kept.iter().all(|s| s.offset_us != 8_000));
        let e = filter.estimate().unwrap();
        // What the honest samples' bounds allow (each is within ± 1.7 ms).
        assert!(e.offset_at(e.ref_us).abs() <= 1_700, "{e:?}");
        assert!(bounds(&samples[6]).0 > 7_000);
        // Bounds widen with the time between samples (drift at MAX_SKEW).
        let a = exchange(0, 0, 100, 100);
        let b = exchange(100_000_000, 12_000, 100, 100);
        assert!(agree(&a, &b) && !agree(&a, &exchange(1_000_000, 12_000, 100, 100)));
    }

    #[test]
    fn fresh_samples_take_over_as_old_ones_age() {
        // Quiet at connection (RTT 300 µs), then a long congested spell with
        // round trips of 1.5 ms while the offset drifts 20 ppm: 100 s later
        // the old samples, however clean, are 2 ms stale.
        let drift = |t: i64| t / 50_000;
        let mut filter = OffsetFilter::new();
        for i in 0..4 {
            filter.push(exchange(i * 100_000, drift(i * 100_000), 150, 150));
        }
        let t = 100_000_000;
        filter.push(exchange(t, drift(t), 700, 800));
        // Old: 300 µs + 2 × 15 ppm × 100 s = 3.3 ms; new: 1.5 ms.
        let e = filter.estimate().unwrap();
        assert_eq!(e.samples, 1);
        let err = e.offset_at(t) - drift(t);
        assert!(err.abs() <= 750, "error {err} µs");
        // A few seconds after the quiet spell, the old samples still win.
        let mut filter = OffsetFilter::new();
        for i in 0..4 {
            filter.push(exchange(i * 100_000, 0, 150, 150));
        }
        filter.push(exchange(5_000_000, 0, 700, 800));
        assert_eq!(filter.estimate().unwrap().samples, 4);
    }

    #[test]
    fn settled_takes_several_samples_near_the_best_rtt() {
        let mut filter = OffsetFilter::new();
        assert!(!filter.is_settled());
        // A burst that met a congested broker: one less bad than the rest.
        for (i, down) in [27_000, 68_000, 140_000, 310_000].into_iter().enumerate() {
            filter.push(exchange(i as i64 * 100_000, 0, 300, down));
        }
        assert!(!filter.is_settled());
        // Quiet again: two clean samples are not yet three.
        filter.push(exchange(1_000_000, 0, 300, 300));
        filter.push(exchange(2_500_000, 0, 300, 350));
        assert!(!filter.is_settled());
        filter.push(exchange(4_000_000, 0, 320, 300));
        assert!(filter.is_settled());
        // Three in one burst are not enough either: they may all have met
        // the same spell of congestion.
        let mut burst = OffsetFilter::new();
        for i in 0..8 {
            burst.push(exchange(i * 100_000, 0, 300, 20_000 + i * 50));
        }
        assert!(!burst.is_settled());
        let mut schedule = SyncSchedule::new(9);
        schedule.on_connect();
        for _ in 0..BURST {
            schedule.after_request(filter.is_settled());
        }
        assert!(schedule.after_request(filter.is_settled()) >= PERIOD * 3 / 4);
    }

    #[test]
    fn the_rtt_limit_is_relative_with_a_floor() {
        assert_eq!(rtt_limit(0), RTT_SLACK_US);
        assert_eq!(rtt_limit(300), 300 + RTT_SLACK_US);
        assert_eq!(rtt_limit(4_000), 5_000);
        assert_eq!(rtt_limit(i64::MAX), i64::MAX);
    }

    #[test]
    fn congestion_does_not_flush_out_clean_samples() {
        let offset = -3_000;
        let mut seed = 11;
        let mut filter = OffsetFilter::new();
        // Eight clean samples at connection (burst)...
        for i in 0..8 {
            filter.push(exchange(i * 100_000, offset, 250, 270));
        }
        // ... then a long broadcast to a thousand receivers: every reply
        // queues 20–100 ms behind live frames (requests 0–10 ms), for far
        // longer than the window holds.
        for i in 0..40 {
            let up = 250 + noise(&mut seed, 10_000);
            let down = 20_000 + noise(&mut seed, 80_000);
            filter.push(exchange(1_000_000 + i * 2_500_000, offset, up, down));
        }
        assert_eq!(filter.len(), WINDOW);
        let e = filter.estimate().unwrap();
        let err = e.offset_at(e.ref_us) - offset;
        // The clean samples survive and are the only ones used (the newest
        // congested one was taken 98.5 s after them: no skew from 8 samples
        // within 0.7 s).
        assert_eq!(e.samples, 8);
        assert!(err.abs() <= 10, "error {err} µs");
        assert_eq!(e.skew, 0.0);
    }

    #[test]
    fn congested_samples_are_not_a_clock_step() {
        let mut filter = OffsetFilter::new();
        for i in 0..8 {
            filter.push(exchange(i * 1_000_000, 0, 300, 300));
        }
        // Three replies that each waited ~60 ms: offsets ~ −30 ms, consistent
        // with each other, further than STEP_US from the estimate — but no
        // further than their RTT explains. Not a step.
        for i in 8..11 {
            filter.push(exchange(i * 1_000_000, 0, 300, 60_000 + i * 100));
        }
        assert_eq!(filter.len(), 11);
        assert_eq!(filter.estimate().unwrap().offset_at(11_000_000), 0);
    }

    #[test]
    fn the_schedule_is_a_jittered_burst_then_a_jittered_period() {
        let mut schedule = SyncSchedule::new(1);
        for round in 0..3 {
            let first = schedule.on_connect();
            assert!(first < CONNECT_JITTER, "{first:?}");
            let mut gaps = Vec::new();
            for _ in 0..BURST - 1 {
                let gap = schedule.after_request(false);
                assert!(
                    gap >= BURST_GAP / 2 && gap < BURST_GAP * 3 / 2,
                    "round {round}: {gap:?}"
                );
                gaps.push(gap);
            }
            // Not all equal: the gaps are drawn.
            assert!(gaps.iter().any(|g| *g != gaps[0]), "{gaps:?}");
            // The burst's last request sent: the slow period, or the retry
            // rate while not settled.
            let unsettled = schedule.after_request(false);
            assert!(unsettled >= RETRY / 2 && unsettled < RETRY * 3 / 2);
            for _ in 0..20 {
                let gap = schedule.after_request(true);
                assert!(gap >= PERIOD * 3 / 4 && gap < PERIOD * 5 / 4, "{gap:?}");
            }
        }
    }

    #[test]
    fn receivers_that_connect_together_do_not_ask_together() {
        // A thousand receivers reconnect in the same instant (a broker
        // restart): when does each send its first and its ninth request?
        let mut firsts = Vec::new();
        let mut ninths = Vec::new();
        for seed in 0..1_000u64 {
            let mut schedule = SyncSchedule::new(seed);
            let mut t = schedule.on_connect();
            firsts.push(t.as_micros() as i64);
            for _ in 0..BURST {
                t += schedule.after_request(true);
            }
            ninths.push(t.as_micros() as i64);
        }
        // Busiest 10 ms slot: in lockstep it would hold all thousand.
        let busiest = |times: &[i64]| {
            let mut slots = std::collections::HashMap::new();
            for t in times {
                *slots.entry(t / 10_000).or_insert(0) += 1;
            }
            slots.into_values().max().unwrap_or(0)
        };
        assert!(busiest(&firsts) <= 40, "{}", busiest(&firsts));
        assert!(busiest(&ninths) <= 40, "{}", busiest(&ninths));
        // Same seed, same schedule; another seed, another one.
        let draw = |seed| {
            let mut s = SyncSchedule::new(seed);
            (s.on_connect(), s.after_request(false))
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
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
