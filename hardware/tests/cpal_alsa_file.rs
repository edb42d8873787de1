//! `CpalSink` through real ALSA: the `file` plugin into `null` (TESTING.md
//! set-up 2) records every sample cpal hands to ALSA.
//!
//! `null` takes samples as fast as they come (hundreds of times real time),
//! so the callback outruns the writer and plays silence between writes:
//! this test checks content, conversion and the underrun count, not timing
//! (see `cpal_jack.rs` for that).
//!
//! ALSA reads `$HOME/.asoundrc` when cpal first opens it, so this binary
//! holds a single test that points `HOME` at a temporary directory first.

mod common;

use loa_hardware::sink::cpal::CpalSink;
use loa_hardware::{AudioSink, SAMPLE_RATE};

#[test]
fn tone_burst_reaches_alsa_sample_exact_on_every_channel() {
    let home = tempfile::tempdir().unwrap();
    let raw = home.path().join("out.raw");
    common::write_asoundrc(
        home.path(),
        &format!(
            "pcm.!default {{\n  type file\n  slave.pcm \"null\"\n  file \"{}\"\n  format \"raw\"\n  truncate true\n}}\n",
            raw.display()
        ),
    );
    // SAFETY: this binary runs one test and no other thread reads the
    // environment; ALSA reads HOME when cpal opens it below.
    unsafe { std::env::set_var("HOME", home.path()) };

    let tone = common::tone(0.5, 0.5);
    let mut sink = CpalSink::new(None).unwrap();
    assert_eq!(sink.device_name(), "alsa:default");
    // The file plugin writes the PCM's own format: cpal's choice here.
    assert_eq!(sink.sample_format(), cpal::SampleFormat::F32);
    let channels = usize::from(sink.channels());
    assert!(channels >= 1);

    sink.start().unwrap();
    for chunk in tone.chunks(960) {
        sink.write(chunk).unwrap();
    }
    sink.write(&vec![0.0; SAMPLE_RATE as usize / 2]).unwrap();
    sink.stop().unwrap();

    let samples = common::read_f32_settled(&raw);
    assert_eq!(samples.len() % channels, 0);
    let frames: Vec<&[f32]> = samples.chunks_exact(channels).collect();
    assert!(
        frames.iter().all(|f| f.iter().all(|&s| s == f[0])),
        "every channel carries the same mono signal"
    );
    let mono: Vec<f32> = frames.iter().map(|f| f[0]).collect();
    // Every tone sample arrived, in order, unchanged; only silence (the
    // null device outrunning the writer) may sit between them.
    let played: Vec<f32> = mono.iter().copied().filter(|&s| s != 0.0).collect();
    assert_eq!(played.len(), tone.len(), "tone length in samples");
    assert_eq!(played, tone);
    let peak = played.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert!((0.499..=0.5).contains(&peak), "peak {peak}");
    // Each gap inside the tone is an underrun the sink counted.
    let gaps = common::sound_runs(&mono).len() - 1;
    assert!(
        gaps as u64 <= sink.underruns(),
        "{gaps} gaps but {} underruns counted",
        sink.underruns()
    );
    eprintln!(
        "{} frames recorded, {channels} channels, {gaps} gaps, {} underruns",
        frames.len(),
        sink.underruns()
    );
}
