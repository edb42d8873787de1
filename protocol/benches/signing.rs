//! What signing costs: Ed25519 signing and verification of live frames
//! (per 20 ms frame, the controller signs once and every receiver
//! verifies once) and of signed JSON envelopes. Prints µs per operation;
//! run with `cargo bench -p loa-protocol --bench signing`.

use std::hint::black_box;
use std::time::Instant;

use chrono::Utc;
use loa_protocol::Priority;
use loa_protocol::live::{FrameKind, LiveFrame};
use loa_protocol::signed::{self, Freshness, SigningKey, Verifier};

/// Runs `f` `n` times and returns the mean in µs.
fn mean_us(n: u32, mut f: impl FnMut(u32)) -> f64 {
    for i in 0..n / 10 {
        f(i); // warm-up
    }
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    // A typical 20 ms Opus frame at 32 kbit/s is ~80 bytes; 160 at 64 kbit/s.
    for opus_bytes in [80usize, 160, 400] {
        let frame = LiveFrame {
            kind: FrameKind::Audio,
            priority: Priority::Normal,
            broadcast_id: [1; 16],
            seq: 0,
            capture_us: 1_795_000_000_000_000,
            playout_delay_ms: 120,
            opus: vec![0x5a; opus_bytes],
        };
        let n = 20_000;
        let sign = mean_us(n, |i| {
            let mut f = frame.clone();
            f.seq = i;
            black_box(f.encode(&key));
        });
        let bytes = frame.encode(&key);
        let verify = mean_us(n, |_| {
            black_box(LiveFrame::decode_verified(black_box(&bytes), &public).unwrap());
        });
        let parse = mean_us(n, |_| {
            black_box(LiveFrame::decode(black_box(&bytes)).unwrap());
        });
        println!(
            "live frame, {opus_bytes:>3}-byte Opus packet ({} bytes on the wire): \
             encode+sign {sign:.1} µs, decode+verify {verify:.1} µs (decode alone {parse:.2} µs); \
             verify = {:.2} % of one core at 50 frames/s",
            bytes.len(),
            verify * 50.0 / 1e4
        );
    }

    let topic = "loa/v1/receivers/thon-1/schedule";
    for payload_bytes in [100usize, 10_000, 200_000] {
        let payload = serde_json::to_vec(&"x".repeat(payload_bytes - 2)).unwrap();
        let n = if payload_bytes > 50_000 { 200 } else { 5_000 };
        let seal = mean_us(n, |i| {
            black_box(signed::seal(&key, topic, u64::from(i), Utc::now(), &payload).unwrap());
        });
        let sealed = signed::seal(&key, topic, 1, Utc::now(), &payload).unwrap();
        let open = mean_us(n, |_| {
            let mut verifier = Verifier::new(public, Default::default());
            black_box(
                verifier
                    .verify(topic, black_box(&sealed), Utc::now(), Freshness::AnyAge)
                    .unwrap(),
            );
        });
        println!(
            "signed message, {payload_bytes:>6}-byte payload ({} bytes sealed): seal {seal:.1} µs, verify {open:.1} µs",
            sealed.len()
        );
    }
}
