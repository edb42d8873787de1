//! From 48 kHz mono samples to published live frames: cutting into 20 ms
//! frames ([`Framer`]), giving each a capture instant on a smooth timeline
//! ([`Timeline`], [`Pacer`]), Opus encoding ([`LiveEncoder`]) and the one
//! publish per target group ([`Publisher`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use loa_protocol::Priority;
use loa_protocol::live::{FRAME_SAMPLES, FrameKind, LiveFrame};
use opus::{Application, Bitrate, Channels, Encoder};

use super::clock::now_us;
use crate::bus::Bus;

/// Live frames are always 48 kHz.
pub const RATE: u32 = 48_000;
/// Duration of one frame in microseconds.
pub const FRAME_US: i64 = 20_000;
/// Opus bitrate of live frames (speech, VoIP application).
pub const BITRATE: u32 = 32_000;
/// Expected packet loss the encoder plans its in-band FEC for.
pub const PACKET_LOSS_PERC: i32 = 10;
/// How many times the `End` frame is sent (QoS 0 may lose one).
pub const END_REPEATS: usize = 3;

/// The instant of sample `index` of a stream whose sample 0 was at `start_us`.
pub fn sample_us(start_us: i64, index: u64, rate: u32) -> i64 {
    start_us + (index as i128 * 1_000_000 / i128::from(rate)) as i64
}

/// Cuts a stream of 48 kHz samples into 960-sample frames, each with the
/// observed capture instant of its first sample.
#[derive(Debug, Default)]
pub struct Framer {
    /// Samples of an incomplete frame.
    buf: Vec<f32>,
    /// Observed capture instant of `buf[0]`.
    buf_start_us: i64,
}

impl Framer {
    /// Adds `samples` whose first was captured at `first_us`; calls `emit`
    /// with every completed frame and its first sample's capture instant.
    pub fn push<E, F>(&mut self, samples: &[f32], first_us: i64, mut emit: F) -> Result<(), E>
    where
        F: FnMut(&[f32], i64) -> Result<(), E>,
    {
        let mut offset = 0;
        if !self.buf.is_empty() {
            let take = (FRAME_SAMPLES - self.buf.len()).min(samples.len());
            self.buf.extend_from_slice(&samples[..take]);
            offset = take;
            if self.buf.len() == FRAME_SAMPLES {
                let frame = std::mem::take(&mut self.buf);
                emit(&frame, self.buf_start_us)?;
                self.buf = frame;
                self.buf.clear();
            }
        }
        while samples.len() - offset >= FRAME_SAMPLES {
            let at = sample_us(first_us, offset as u64, RATE);
            emit(&samples[offset..offset + FRAME_SAMPLES], at)?;
            offset += FRAME_SAMPLES;
        }
        if offset < samples.len() {
            if self.buf.is_empty() {
                self.buf_start_us = sample_us(first_us, offset as u64, RATE);
            }
            self.buf.extend_from_slice(&samples[offset..]);
        }
        Ok(())
    }

    /// Pads what is left with silence into a last frame, if anything is left.
    pub fn flush<E, F>(&mut self, mut emit: F) -> Result<(), E>
    where
        F: FnMut(&[f32], i64) -> Result<(), E>,
    {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.buf.resize(FRAME_SAMPLES, 0.0);
        let frame = std::mem::take(&mut self.buf);
        emit(&frame, self.buf_start_us)
    }
}

/// Where a frame of a captured (live) source goes on the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Send the frame with this capture instant.
    At(i64),
    /// Drop the frame: the source delivers faster than real time and the
    /// timeline is catching up.
    Drop,
}

/// Gives the frames of a captured source (microphone, browser) capture
/// instants exactly 20 ms apart, so receivers play them back to back,
/// while following the instants the source observed:
/// - a frame observed more than `late_us` after its place on the timeline
///   (the source stalled, or its clock is slower than ours) moves the
///   timeline forward to it, leaving a gap;
/// - a frame observed more than `early_us` before its place (the source's
///   clock is faster, or the first frame was stamped late) is dropped, which
///   moves the source 20 ms back towards the timeline.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Capture instant of the next frame; `None` before the first.
    next_us: Option<i64>,
    /// See the type docs.
    late_us: i64,
    /// See the type docs.
    early_us: i64,
    /// Forward jumps so far.
    pub gaps: u64,
    /// Frames dropped to catch up so far.
    pub dropped: u64,
}

impl Timeline {
    /// A timeline with these tolerances.
    pub fn new(late: Duration, early: Duration) -> Self {
        Timeline {
            next_us: None,
            late_us: late.as_micros() as i64,
            early_us: early.as_micros() as i64,
            gaps: 0,
            dropped: 0,
        }
    }

    /// Places the next frame, observed to start at `observed_us`.
    pub fn place(&mut self, observed_us: i64) -> Slot {
        let next = *self.next_us.get_or_insert(observed_us);
        let diff = observed_us - next;
        if diff > self.late_us {
            self.gaps += 1;
            self.next_us = Some(observed_us + FRAME_US);
            return Slot::At(observed_us);
        }
        if diff < -self.early_us {
            self.dropped += 1;
            return Slot::Drop;
        }
        self.next_us = Some(next + FRAME_US);
        Slot::At(next)
    }

    /// Capture instant the next frame would get (for the `End` frame).
    pub fn next_us(&self) -> Option<i64> {
        self.next_us
    }
}

/// Paces a stored or relayed source in real time: frame `n` gets capture
/// instant `start + n × 20 ms` (`start` = when the first frame was ready)
/// and is released at that instant, never earlier. When the source stalls
/// for longer than `stall`, the timeline restarts at the current time (a
/// gap) rather than bursting to catch up.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Capture instant (and release time) of the next frame.
    next_us: Option<i64>,
    /// See the type docs.
    stall_us: i64,
    /// Restarts after a stall.
    pub gaps: u64,
}

impl Pacer {
    /// A pacer whose first frame is due when it is ready.
    pub fn new(stall: Duration) -> Self {
        Pacer {
            next_us: None,
            stall_us: stall.as_micros() as i64,
            gaps: 0,
        }
    }

    /// Waits until the next frame is due (at most `max_wait` at a time,
    /// returning `None` if it is not due yet so the caller can check for a
    /// stop) and returns its capture instant.
    pub fn wait_next(&mut self, max_wait: Duration) -> Option<i64> {
        let now = now_us();
        let mut next = *self.next_us.get_or_insert(now);
        if now - next > self.stall_us {
            self.gaps += 1;
            next = now;
        }
        self.next_us = Some(next);
        let wait = next - now;
        if wait > 0 {
            let wait = Duration::from_micros(wait as u64);
            if wait > max_wait {
                std::thread::sleep(max_wait);
                return None;
            }
            std::thread::sleep(wait);
        }
        self.next_us = Some(next + FRAME_US);
        Some(next)
    }

    /// Capture instant the next frame would get (for the `End` frame).
    pub fn next_us(&self) -> i64 {
        self.next_us.unwrap_or_else(now_us)
    }
}

/// libopus configured for live speech: 48 kHz mono, VoIP application,
/// 32 kb/s, in-band FEC for 10 % loss, one packet per 20 ms frame.
pub struct LiveEncoder {
    /// The libopus encoder.
    encoder: Encoder,
    /// Packet buffer, reused.
    packet: Vec<u8>,
}

impl LiveEncoder {
    /// A new encoder; fails only if libopus does.
    pub fn new() -> Result<Self, String> {
        fn err(what: &'static str) -> impl Fn(opus::Error) -> String {
            move |e| format!("libopus {what}: {e}")
        }
        let mut encoder =
            Encoder::new(RATE, Channels::Mono, Application::Voip).map_err(err("init"))?;
        encoder
            .set_bitrate(Bitrate::Bits(BITRATE as i32))
            .map_err(err("bitrate"))?;
        encoder.set_inband_fec(true).map_err(err("fec"))?;
        encoder
            .set_packet_loss_perc(PACKET_LOSS_PERC)
            .map_err(err("packet loss"))?;
        Ok(LiveEncoder {
            encoder,
            packet: vec![0; loa_protocol::live::MAX_OPUS_BYTES],
        })
    }

    /// Encodes one 960-sample frame into an Opus packet.
    pub fn encode(&mut self, pcm: &[f32]) -> Result<Vec<u8>, String> {
        debug_assert_eq!(pcm.len(), FRAME_SAMPLES);
        let n = self
            .encoder
            .encode_float(pcm, &mut self.packet)
            .map_err(|e| format!("libopus encode: {e}"))?;
        Ok(self.packet[..n].to_vec())
    }
}

/// Counters of one broadcast, shared with the API.
#[derive(Debug, Default)]
pub struct Stats {
    /// Audio frames published (once per frame, whatever the topic count).
    pub frames: AtomicU64,
    /// Publishes (frame × topic) the live link could not queue.
    pub unsent: AtomicU64,
    /// Gaps in the timeline (source stalls).
    pub gaps: AtomicU64,
    /// Frames dropped to keep a fast source in time.
    pub dropped: AtomicU64,
}

/// Publishes the frames of one broadcast: each frame is encoded once and
/// published once per target group (zone topic or receiver topic).
pub struct Publisher {
    /// The live link.
    bus: Bus,
    /// One topic per target group, computed when the broadcast starts.
    topics: Vec<String>,
    /// The broadcast's UUID bytes.
    broadcast_id: [u8; 16],
    /// Priority carried by every frame.
    priority: Priority,
    /// Playout delay carried by every frame.
    playout_delay_ms: u16,
    /// Sequence number of the next frame.
    seq: u32,
    /// The Opus encoder.
    encoder: LiveEncoder,
    /// Shared counters.
    pub stats: Arc<Stats>,
}

impl Publisher {
    /// A publisher for one broadcast.
    pub fn new(
        bus: Bus,
        topics: Vec<String>,
        broadcast_id: [u8; 16],
        priority: Priority,
        playout_delay_ms: u16,
        stats: Arc<Stats>,
    ) -> Result<Self, String> {
        Ok(Publisher {
            bus,
            topics,
            broadcast_id,
            priority,
            playout_delay_ms,
            seq: 0,
            encoder: LiveEncoder::new()?,
            stats,
        })
    }

    /// Encodes and publishes one audio frame captured at `capture_us`.
    pub fn audio(&mut self, pcm: &[f32], capture_us: i64) -> Result<(), String> {
        let opus = self.encoder.encode(pcm)?;
        self.send(FrameKind::Audio, capture_us, opus);
        self.stats.frames.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes the `End` frame [`END_REPEATS`] times, 20 ms apart (blocking).
    pub fn end(&mut self, capture_us: i64) {
        let seq = self.seq;
        for i in 0..END_REPEATS {
            if i > 0 {
                std::thread::sleep(Duration::from_micros(FRAME_US as u64));
            }
            self.seq = seq;
            self.send(FrameKind::End, capture_us, Vec::new());
        }
    }

    /// The sequence number the next frame gets.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    fn send(&mut self, kind: FrameKind, capture_us: i64, opus: Vec<u8>) {
        let frame = LiveFrame {
            kind,
            priority: self.priority,
            broadcast_id: self.broadcast_id,
            seq: self.seq,
            capture_us,
            playout_delay_ms: self.playout_delay_ms,
            opus,
        };
        self.seq = self.seq.wrapping_add(1);
        let bytes = frame.encode(self.bus.signer().key());
        for topic in &self.topics {
            if self.bus.publish_frame(topic, &bytes).is_err() {
                self.stats.unsent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(framer: &mut Framer, chunks: &[(usize, i64)]) -> Vec<(usize, i64)> {
        let mut out = Vec::new();
        let mut counter = 0usize;
        for &(len, at) in chunks {
            let samples: Vec<f32> = (0..len).map(|i| (counter + i) as f32).collect();
            counter += len;
            framer
                .push(&samples, at, |pcm: &[f32], us| -> Result<(), ()> {
                    assert_eq!(pcm.len(), FRAME_SAMPLES);
                    out.push((pcm[0] as usize, us));
                    Ok(())
                })
                .unwrap();
        }
        out
    }

    #[test]
    fn framer_cuts_960_sample_frames_with_their_first_sample_instant() {
        let mut f = Framer::default();
        // 10 ms at t=0, 20 ms at t=10 ms, 30 ms at t=30 ms, 2.5 ms at t=60 ms.
        let out = collect(
            &mut f,
            &[(480, 0), (960, 10_000), (1440, 30_000), (120, 60_000)],
        );
        assert_eq!(out, vec![(0, 0), (960, 20_000), (1920, 40_000)]);
        let mut last = Vec::new();
        f.flush(|pcm: &[f32], us| -> Result<(), ()> {
            last.push((pcm[0] as usize, us, pcm[FRAME_SAMPLES - 1]));
            Ok(())
        })
        .unwrap();
        // 3000 samples in, 2880 framed: 120 left, padded with silence.
        assert_eq!(last, vec![(2880, 60_000, 0.0)]);
    }

    #[test]
    fn timeline_is_smooth_under_jitter_and_follows_stalls_and_drift() {
        let mut t = Timeline::new(Duration::from_millis(40), Duration::from_millis(40));
        // Jitter of a few ms either way keeps exact 20 ms steps.
        let observed = [1_000_000, 1_023_000, 1_038_000, 1_061_000];
        let placed: Vec<Slot> = observed.iter().map(|&o| t.place(o)).collect();
        assert_eq!(
            placed,
            vec![
                Slot::At(1_000_000),
                Slot::At(1_020_000),
                Slot::At(1_040_000),
                Slot::At(1_060_000)
            ]
        );
        // A stall of 100 ms: the timeline jumps to the observed instant.
        assert_eq!(t.place(1_180_000), Slot::At(1_180_000));
        assert_eq!(t.gaps, 1);
        assert_eq!(t.place(1_200_000), Slot::At(1_200_000));
        // The source suddenly 50 ms ahead of its place: one frame dropped,
        // then within tolerance again.
        assert_eq!(t.place(1_170_000), Slot::Drop);
        assert_eq!(t.place(1_190_000), Slot::At(1_220_000));
        assert_eq!(t.place(1_210_000), Slot::At(1_240_000));
        assert_eq!(t.dropped, 1);
        assert_eq!(t.next_us(), Some(1_260_000));
    }

    #[test]
    fn encoder_makes_one_small_packet_per_frame() {
        let mut e = LiveEncoder::new().unwrap();
        let pcm: Vec<f32> = (0..FRAME_SAMPLES)
            .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin() * 0.3)
            .collect();
        let mut decoder = opus::Decoder::new(48_000, Channels::Mono).unwrap();
        let mut out = vec![0f32; FRAME_SAMPLES];
        for _ in 0..10 {
            let packet = e.encode(&pcm).unwrap();
            // 32 kb/s is 80 bytes per 20 ms; VBR stays well under the cap.
            assert!(!packet.is_empty() && packet.len() < 400, "{}", packet.len());
            assert_eq!(
                decoder.decode_float(&packet, &mut out, false).unwrap(),
                FRAME_SAMPLES
            );
        }
    }
}
