//! Decoding cached programmes: exact length (pre-skip and end trimming),
//! files from an independent encoder (`opusenc`), skipping ahead, refusal of
//! files that are not Ogg Opus.

mod common;

use std::path::Path;
use std::process::Command;

use loa_receiver::opus_source::{DecodeError, OpusSource};

fn decode_all(path: &Path) -> Vec<f32> {
    let mut source = OpusSource::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = source.next_chunk().unwrap() {
        out.extend_from_slice(chunk);
    }
    assert_eq!(source.position(), out.len() as u64);
    out
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|s| s * s).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

#[test]
fn decodes_exactly_the_encoded_length() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::tone(440.0, 1.2345, 0.5);
    let path = dir.path().join("a.opus");
    std::fs::write(&path, common::ogg_opus(&input)).unwrap();
    let out = decode_all(&path);
    assert_eq!(out.len(), input.len());
    // Same waveform (Opus is lossy, but a steady tone comes back closely).
    let diff: Vec<f32> = input
        .iter()
        .zip(&out)
        .skip(4800)
        .map(|(a, b)| a - b)
        .collect();
    assert!(rms(&diff) < 0.1 * rms(&input), "error rms {}", rms(&diff));
}

#[test]
fn reads_files_made_by_opusenc() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("in.wav");
    let input = common::tone(1000.0, 1.5, 0.5);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&wav, spec).unwrap();
    for s in &input {
        writer.write_sample((s * 32767.0) as i16).unwrap();
    }
    writer.finalize().unwrap();
    let opus = dir.path().join("out.opus");
    let status = Command::new("opusenc")
        .args(["--quiet", "--bitrate", "32"])
        .arg(&wav)
        .arg(&opus)
        .status()
        .expect("opusenc (opus-tools) installed");
    assert!(status.success());
    let out = decode_all(&opus);
    assert_eq!(out.len(), input.len(), "pre-skip and end trimming");
    let onset = common::onset(&out, 0.1).unwrap();
    assert!(onset < 48, "tone starts at sample {onset}");
}

#[test]
fn skipping_lands_on_the_same_samples_as_decoding() {
    let dir = tempfile::tempdir().unwrap();
    // A rising ramp of tones makes every position distinguishable by level.
    let input: Vec<f32> = common::tone(600.0, 4.0, 1.0)
        .iter()
        .enumerate()
        .map(|(i, s)| s * (i as f32 / 192_000.0) * 0.8)
        .collect();
    let path = dir.path().join("ramp.opus");
    std::fs::write(&path, common::ogg_opus(&input)).unwrap();
    let full = decode_all(&path);
    for skip in [0u64, 100, 5_000, 96_000, 150_001] {
        let mut source = OpusSource::open(&path).unwrap();
        source.skip(skip).unwrap();
        assert_eq!(source.position(), skip);
        let mut next = Vec::new();
        while next.len() < 4_800 {
            next.extend_from_slice(source.next_chunk().unwrap().unwrap());
        }
        let expected = &full[skip as usize..skip as usize + 4_800];
        let diff: Vec<f32> = expected.iter().zip(&next).map(|(a, b)| a - b).collect();
        assert!(
            rms(&diff) < 0.05 * rms(expected).max(0.01),
            "skip {skip}: error rms {} vs {}",
            rms(&diff),
            rms(expected)
        );
    }
    let mut source = OpusSource::open(&path).unwrap();
    source.skip(10 * 48_000).unwrap();
    assert!(
        source.next_chunk().unwrap().is_none(),
        "skipping past the end ends the programme"
    );
}

#[test]
fn files_that_are_not_ogg_opus_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        ("empty", Vec::new()),
        ("text", b"hello, this is not audio at all".repeat(20)),
        (
            "truncated",
            common::ogg_opus(&common::tone(440.0, 0.5, 0.5))[..40].to_vec(),
        ),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        match OpusSource::open(&path) {
            Err(DecodeError::NotOpus(_) | DecodeError::Ogg(_)) => {}
            Err(e) => panic!("{name}: unexpected error {e}"),
            Ok(_) => panic!("{name}: accepted"),
        }
    }
}
