//! The WAV sink behaves like a sound card clocked by the wall clock: writes
//! are paced, `delay` is the queued time, plays append to one valid file.

mod common;

use std::time::{Duration, Instant};

use loa_hardware::sink::wav::{WAV_SPEC, WavSink};
use loa_hardware::{AudioSink, OutputSpec, SAMPLE_RATE, open_sink};

fn read(path: &std::path::Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path).unwrap();
    assert_eq!(reader.spec(), WAV_SPEC);
    reader.samples::<f32>().map(Result::unwrap).collect()
}

/// Frames of silence `start()` may record before the first write lands.
const MAX_LEAD_IN: usize = 48;

#[test]
fn writes_are_paced_in_real_time_and_plays_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.wav");
    let spec: OutputSpec = format!("wav:{}", path.display()).parse().unwrap();
    let mut sink = open_sink(&spec).unwrap();
    assert!(read(&path).is_empty(), "new() leaves a valid, empty file");

    let tone = common::tone(0.3, 0.5);
    sink.start().unwrap();
    let t0 = Instant::now();
    let mut max_delay = Duration::ZERO;
    for chunk in tone.chunks(960) {
        sink.write(chunk).unwrap();
        max_delay = max_delay.max(sink.delay());
    }
    let written = t0.elapsed();
    let queued = sink.delay();
    sink.stop().unwrap();
    let total = t0.elapsed();
    eprintln!("0.3 s written in {written:?} (queued {queued:?}), stopped after {total:?}");
    // The last 100 ms fit the queue; the rest waited for the clock.
    assert!(
        written >= Duration::from_millis(190) && written < Duration::from_millis(300),
        "{written:?}"
    );
    // Up to 100 ms queued (less by however late the writer woke up).
    assert!(queued >= Duration::from_millis(60), "{queued:?}");
    assert!(max_delay <= Duration::from_millis(101), "{max_delay:?}");
    // stop() played the queue out in real time.
    assert!(
        total >= Duration::from_millis(299) && total < Duration::from_millis(400),
        "{total:?}"
    );
    assert_eq!(sink.delay(), Duration::ZERO);

    let first = read(&path);
    let lead = first.iter().position(|&s| s != 0.0).unwrap();
    assert!(lead <= MAX_LEAD_IN, "lead-in {lead}");
    assert_eq!(&first[lead..], &tone[..], "every sample, nothing after");

    // A second play appends to the same file.
    let marker = vec![0.75f32; SAMPLE_RATE as usize / 10];
    sink.start().unwrap();
    sink.write(&marker).unwrap();
    sink.stop().unwrap();
    let both = read(&path);
    assert_eq!(&both[..first.len()], &first[..]);
    assert!(both.len() - first.len() <= marker.len() + MAX_LEAD_IN);
    assert!(both.ends_with(&marker));
}

#[test]
fn a_late_writer_records_the_silence_a_card_would_play() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.wav");
    let mut sink = WavSink::new(&path).unwrap();
    let tone = common::tone(0.1, 0.5);
    sink.start().unwrap();
    sink.write(&tone).unwrap();
    // The 100 ms queue plays out, then 100 ms of silence.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sink.delay(), Duration::ZERO);
    sink.write(&tone).unwrap();
    sink.stop().unwrap();
    assert_eq!(sink.underruns(), 1);

    let samples = read(&path);
    let runs = common::sound_runs(&samples);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!((runs[0].1, runs[1].1), (tone.len(), tone.len()));
    let gap = runs[1].0 - (runs[0].0 + runs[0].1);
    let gap_ms = gap as f64 * 1000.0 / SAMPLE_RATE as f64;
    assert!((95.0..125.0).contains(&gap_ms), "gap {gap_ms:.1} ms");
}

#[test]
fn the_file_stays_readable_if_the_process_dies_mid_play() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.wav");
    let mut sink = WavSink::new(&path).unwrap();
    let tone = common::tone(1.2, 0.5);
    sink.start().unwrap();
    for chunk in tone.chunks(960) {
        sink.write(chunk).unwrap();
    }
    // No stop(), no destructor: as if the process were killed.
    std::mem::forget(sink);
    let samples = read(&path);
    assert!(
        samples.len() >= SAMPLE_RATE as usize,
        "{} samples",
        samples.len()
    );
    let lead = samples.iter().position(|&s| s != 0.0).unwrap();
    assert!(lead <= MAX_LEAD_IN);
    assert_eq!(&samples[lead..], &tone[..samples.len() - lead]);

    // The next run appends after what the header covers.
    let mut sink = WavSink::new(&path).unwrap();
    sink.start().unwrap();
    sink.write(&[0.75; 480]).unwrap();
    sink.stop().unwrap();
    let after = read(&path);
    assert_eq!(&after[..samples.len()], &samples[..]);
    assert!(after.ends_with(&[0.75; 480]));
}

#[test]
fn an_idle_sink_does_not_fill_the_file_with_silence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idle.wav");
    let mut sink = WavSink::new(&path).unwrap();
    sink.start().unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    sink.write(&[0.5; 480]).unwrap();
    sink.stop().unwrap();
    let samples = read(&path);
    assert_eq!(samples.len(), 480, "an idle gap over 1 s is not recorded");
    assert_eq!(sink.underruns(), 0);
}
