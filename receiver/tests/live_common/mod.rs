//! Helpers for the live-broadcast tests: test signals, a broadcast encoded
//! with libopus as the controller does (20 ms frames, inband FEC), frame
//! scheduling on a fake controller clock, and envelope analysis.
#![allow(dead_code)]

use std::collections::HashSet;

use loa_protocol::Priority;
use loa_protocol::live::{FRAME_SAMPLES, FrameKind, LiveFrame};

pub const RATE: f64 = 48_000.0;

/// A tone whose amplitude ramps linearly from `from` to `to` over `secs`:
/// where a programme resumed can be read from its level.
pub fn ramp_tone(freq: f32, secs: f32, from: f32, to: f32) -> Vec<f32> {
    let n = (secs * RATE as f32) as usize;
    (0..n)
        .map(|i| {
            let a = from + (to - from) * i as f32 / n as f32;
            a * (2.0 * std::f32::consts::PI * freq * i as f32 / RATE as f32).sin()
        })
        .collect()
}

/// Speech-like bursts ("syllables") of a tone: 80–230 ms on, 40–130 ms
/// off, with 5 ms ramps, so the envelope has structure to correlate.
pub fn syllables(freq: f32, secs: f32, amplitude: f32, seed: u64) -> Vec<f32> {
    let n = (secs * RATE as f32) as usize;
    let mut out = vec![0.0f32; n];
    let mut state = seed | 1;
    let mut rand = |lo: usize, hi: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        lo + (state % (hi - lo) as u64) as usize
    };
    let ms = |m: usize| m * RATE as usize / 1000;
    let ramp = ms(5);
    let mut at = 0;
    while at < n {
        let on = ms(rand(80, 230));
        let level = amplitude * (0.5 + rand(0, 50) as f32 / 100.0);
        for i in 0..on.min(n - at) {
            let edge = (i.min(on - i) as f32 / ramp as f32).min(1.0);
            let t = (at + i) as f32 / RATE as f32;
            out[at + i] = level * edge * (2.0 * std::f32::consts::PI * freq * t).sin();
        }
        at += on + ms(rand(40, 130));
    }
    out
}

/// Encodes `samples` into 20 ms Opus packets (inband FEC on, as the
/// controller sends them).
pub fn encode(samples: &[f32]) -> Vec<Vec<u8>> {
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    enc.set_bitrate(opus::Bitrate::Bits(32_000)).unwrap();
    enc.set_inband_fec(true).unwrap();
    enc.set_packet_loss_perc(10).unwrap();
    samples
        .chunks(FRAME_SAMPLES)
        .map(|c| {
            let mut frame = c.to_vec();
            frame.resize(FRAME_SAMPLES, 0.0);
            enc.encode_vec_float(&frame, 1500).unwrap()
        })
        .collect()
}

/// What a receiver should play: every packet decoded in order.
pub fn decode(packets: &[Vec<u8>]) -> Vec<f32> {
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0.0f32; FRAME_SAMPLES];
    for p in packets {
        let n = dec.decode_float(p, &mut buf, false).unwrap();
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// What a receiver should play when only the frames in `received` arrive
/// in time: the others concealed as the receiver does (inband FEC from the
/// next packet if that one arrived, else PLC).
pub fn decode_as_received(packets: &[Vec<u8>], received: &HashSet<u32>) -> Vec<f32> {
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0.0f32; FRAME_SAMPLES];
    for (seq, p) in packets.iter().enumerate() {
        let seq = seq as u32;
        let n = if received.contains(&seq) {
            dec.decode_float(p, &mut buf, false).unwrap()
        } else if received.contains(&(seq + 1)) {
            dec.decode_float(&packets[seq as usize + 1], &mut buf, true)
                .unwrap()
        } else {
            dec.decode_float(&[], &mut buf, false).unwrap()
        };
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// The frames of [`lossy_order`] that arrive before their playout instant.
pub fn in_time(order: &[(u32, i64)]) -> HashSet<u32> {
    order
        .iter()
        .filter(|(_, extra)| *extra < 50_000)
        .map(|(seq, _)| *seq)
        .collect()
}

/// A broadcast as the controller frames it.
#[derive(Debug, Clone)]
pub struct Broadcast {
    pub id: [u8; 16],
    pub priority: Priority,
    /// Capture instant of frame 0, controller clock, µs.
    pub start_us: i64,
    pub delay_ms: u16,
    pub packets: Vec<Vec<u8>>,
}

impl Broadcast {
    pub fn uuid(&self) -> String {
        loa_receiver::live::uuid_string(&self.id)
    }

    pub fn capture_us(&self, seq: u32) -> i64 {
        self.start_us + i64::from(seq) * 20_000
    }

    /// When frame 0 must be heard, controller clock, µs.
    pub fn playout_us(&self) -> i64 {
        self.start_us + i64::from(self.delay_ms) * 1000
    }

    pub fn frame(&self, seq: u32) -> LiveFrame {
        LiveFrame {
            kind: FrameKind::Audio,
            priority: self.priority,
            broadcast_id: self.id,
            seq,
            capture_us: self.capture_us(seq),
            playout_delay_ms: self.delay_ms,
            opus: self.packets[seq as usize].clone(),
        }
    }

    pub fn end(&self) -> LiveFrame {
        let seq = self.packets.len() as u32;
        LiveFrame {
            kind: FrameKind::End,
            priority: self.priority,
            broadcast_id: self.id,
            seq,
            capture_us: self.capture_us(seq),
            playout_delay_ms: self.delay_ms,
            opus: Vec::new(),
        }
    }
}

/// How a test link mangles a broadcast: frame sequence numbers in the
/// order they are sent, each with its extra delay (µs) beyond the normal
/// send instant (capture + 20 ms); missing numbers are lost.
pub fn lossy_order(frames: u32) -> Vec<(u32, i64)> {
    let mut out = Vec::new();
    let mut seq = 0;
    while seq < frames {
        match seq {
            // Two frames swapped (both in time).
            s if s % 25 == 11 && s + 1 < frames => {
                out.push((s + 1, 0));
                out.push((s, 2_000));
                seq += 2;
                continue;
            }
            // Isolated losses: recovered by FEC from the next frame.
            s if s % 10 == 3 => {}
            // A burst of two: the first by PLC, the second by FEC.
            s if s % 40 == 26 => {
                seq += 2;
                continue;
            }
            // Held up in the network past its playout instant: late.
            s if s % 40 == 17 => out.push((s, 400_000)),
            s => out.push((s, 0)),
        }
        seq += 1;
    }
    out
}

/// Mean power of `x` over windows of `win` samples every `hop` samples.
pub fn envelope(x: &[f32], win: usize, hop: usize) -> Vec<f32> {
    let mut prefix = Vec::with_capacity(x.len() + 1);
    prefix.push(0.0f64);
    for &s in x {
        prefix.push(prefix.last().unwrap() + f64::from(s) * f64::from(s));
    }
    (0..x.len().saturating_sub(win) / hop)
        .map(|k| ((prefix[k * hop + win] - prefix[k * hop]) / win as f64).sqrt() as f32)
        .collect()
}

/// Normalised cross-correlation of two equally long series.
pub fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let mb = b.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x) - ma, f64::from(y) - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt().max(1e-12)
}

/// Where in `recording` (sample index) `reference` best matches, searched
/// within `from..to`, by the correlation of 2 ms envelopes on a 0.25 ms
/// grid; with that correlation.
pub fn locate(recording: &[f32], reference: &[f32], from: usize, to: usize) -> (usize, f64) {
    const WIN: usize = 96;
    const HOP: usize = 12;
    let reference_env = envelope(reference, WIN, HOP);
    let end = (to + reference.len() + WIN).min(recording.len());
    let from = from.min(end);
    let recording_env = envelope(&recording[from..end], WIN, HOP);
    let mut best = (from, f64::MIN);
    for lag in 0..recording_env.len().saturating_sub(reference_env.len()) {
        let c = correlation(
            &recording_env[lag..lag + reference_env.len()],
            &reference_env,
        );
        if c > best.1 {
            best = (from + lag * HOP, c);
        }
    }
    best
}

/// Root mean square.
pub fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|s| s * s).sum::<f32>() / x.len().max(1) as f32).sqrt()
}
