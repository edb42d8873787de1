//! Helpers shared by the sink tests: test signals and raw-file reading.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use loa_hardware::SAMPLE_RATE;

/// `secs` of a 1 kHz tone at amplitude `amp`. The 0.1 rad phase keeps
/// every sample non-zero, so silence (exact zeros) and tone never mix up.
pub fn tone(secs: f32, amp: f32) -> Vec<f32> {
    let n = (secs * SAMPLE_RATE as f32).round() as usize;
    let tone: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f32 / SAMPLE_RATE as f32;
            amp * (2.0 * std::f32::consts::PI * 1000.0 * t + 0.1).sin()
        })
        .collect();
    assert!(tone.iter().all(|&s| s != 0.0));
    tone
}

/// Writes `pcm.!default` and friends to `home/.asoundrc`.
pub fn write_asoundrc(home: &Path, config: &str) {
    std::fs::write(home.join(".asoundrc"), config).unwrap();
}

/// Reads a raw little-endian f32 file once its writer (a `cat` behind an
/// ALSA pipe) has stopped growing it.
pub fn read_f32_settled(path: &Path) -> Vec<f32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = u64::MAX;
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len == last || Instant::now() > deadline {
            break;
        }
        last = len;
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Runs of non-zero samples as (start, length).
pub fn sound_runs(samples: &[f32]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, &s) in samples.iter().enumerate() {
        match (s != 0.0, start) {
            (true, None) => start = Some(i),
            (false, Some(b)) => {
                runs.push((b, i - b));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(b) = start {
        runs.push((b, samples.len() - b));
    }
    runs
}
