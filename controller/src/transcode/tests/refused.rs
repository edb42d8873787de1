//! Uploads that must be refused with the right error and leave nothing
//! behind: not audio, empty, silent, too long, lying or truncated headers.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::*;

/// Transcodes a file that must be refused, and checks nothing is left.
fn refuse(ws: &Workspace, input: &Path, options: &TranscodeOptions) -> TranscodeError {
    let err = ws
        .transcode_with(input, options)
        .map(|(r, _)| r)
        .expect_err(&format!("{} must be refused", input.display()));
    assert!(
        ws.output_entries().is_empty(),
        "{}: left {:?}",
        input.display(),
        ws.output_entries()
    );
    assert!(!err.message_vi().is_empty());
    err
}

fn refuse_default(ws: &Workspace, input: &Path) -> TranscodeError {
    refuse(ws, input, &TranscodeOptions::default())
}

#[test]
fn images_text_and_random_bytes_are_not_audio() {
    let ws = Workspace::new();
    let mut inputs = Vec::new();
    for name in ["image.png", "image.jpg"] {
        let path = ws.input(name);
        run(
            "ffmpeg",
            "ffmpeg",
            &[
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=320x240",
                "-frames:v",
                "1",
                s(&path),
            ],
        );
        inputs.push(path);
    }
    let video = ws.input("video-only.mp4");
    run(
        "ffmpeg",
        "ffmpeg",
        &[
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=10",
            "-t",
            "2",
            "-c:v",
            "mpeg4",
            s(&video),
        ],
    );
    inputs.push(video);
    let text = format!("{SPEECH}\n").repeat(200);
    for name in ["notes.txt", "not-really.mp3", "not-really.wav"] {
        let path = ws.input(name);
        fs::write(&path, &text).unwrap();
        inputs.push(path);
    }
    // A PNG signature followed by noise, named like audio.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect()
    };
    let fake_png = ws.input("cover.flac");
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(noise(10_000));
    fs::write(&fake_png, bytes).unwrap();
    inputs.push(fake_png);
    for i in 0..60 {
        let len = [300usize, 4_000, 60_000, 1_000_000][i % 4];
        let ext = ["bin", "mp3", "wav", "m4a", "ogg"][i % 5];
        let path = ws.input(&format!("random{i}.{ext}"));
        fs::write(&path, noise(len)).unwrap();
        inputs.push(path);
    }
    for input in &inputs {
        match refuse_default(&ws, input) {
            TranscodeError::NotAudio(_) => {}
            other => panic!("{}: expected NotAudio, got {other:?}", input.display()),
        }
    }
}

#[test]
fn empty_short_and_silent_inputs() {
    let ws = Workspace::new();
    let empty = ws.input("empty.mp3");
    fs::write(&empty, b"").unwrap();
    assert!(matches!(refuse_default(&ws, &empty), TranscodeError::Empty));

    let no_samples = ws.input("no-samples.wav");
    let short = ws.input("short.wav");
    let silent = ws.input("silent.wav");
    let sox_synth = |out: &Path, secs: &str, kind: &[&str]| {
        let mut args = vec![
            "-V1",
            "-n",
            "-r",
            "44100",
            "-c",
            "1",
            "-b",
            "16",
            s(out),
            "synth",
            secs,
        ];
        args.extend_from_slice(kind);
        run("sox", "sox", &args);
    };
    fs::write(&no_samples, wav_header(0)).unwrap();
    sox_synth(&short, "0.2", &["sine", "440"]);
    sox_synth(&silent, "5", &["sine", "440", "vol", "0"]);
    assert!(matches!(
        refuse_default(&ws, &no_samples),
        TranscodeError::Empty
    ));
    assert!(matches!(refuse_default(&ws, &short), TranscodeError::Empty));
    assert!(matches!(
        refuse_default(&ws, &silent),
        TranscodeError::Silent
    ));
}

#[test]
fn too_long_is_refused_while_decoding() {
    let ws = Workspace::new();
    let options = TranscodeOptions {
        max_duration: Duration::from_secs(2),
        ..TranscodeOptions::default()
    };
    match refuse(&ws, &ws.speech(), &options) {
        TranscodeError::TooLong { limit } => assert_eq!(limit, Duration::from_secs(2)),
        other => panic!("expected TooLong, got {other:?}"),
    }
}

/// A canonical 44-byte WAV header for 16-bit mono 44.1 kHz PCM.
fn wav_header(data_bytes: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&(36 + data_bytes).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // PCM
    h.extend_from_slice(&1u16.to_le_bytes()); // mono
    h.extend_from_slice(&44_100u32.to_le_bytes());
    h.extend_from_slice(&88_200u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_bytes.to_le_bytes());
    h
}

#[test]
fn lying_headers_and_truncated_files_are_corrupt() {
    let ws = Workspace::new();
    // A header promising 10 minutes, followed by a little garbage.
    let lying = ws.input("ten-minutes.wav");
    let mut bytes = wav_header(10 * 60 * 88_200);
    bytes.extend((0..5_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    fs::write(&lying, bytes).unwrap();
    // Only a header.
    let header_only = ws.input("header-only.wav");
    fs::write(&header_only, wav_header(10 * 60 * 88_200)).unwrap();
    // Half of real MP3 and FLAC files (their headers state the full length).
    let source = ws.input("long.wav");
    run(
        "sox",
        "sox",
        &[
            "-V1",
            s(&ws.speech()),
            s(&ws.speech()),
            s(&ws.speech()),
            s(&source),
        ],
    );
    let mp3 = ws.input("full.mp3");
    run(
        "lame",
        "lame",
        &["--quiet", "-b", "64", s(&source), s(&mp3)],
    );
    let flac = ws.input("full.flac");
    run("sox", "sox", &["-V1", "-D", s(&source), s(&flac)]);
    let mut inputs = vec![lying, header_only];
    for full in [mp3, flac] {
        let bytes = fs::read(&full).unwrap();
        let cut = ws.input(&format!(
            "cut-{}",
            full.file_name().unwrap().to_string_lossy()
        ));
        fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        inputs.push(cut);
    }
    for input in &inputs {
        match refuse_default(&ws, input) {
            TranscodeError::Corrupt(detail) => {
                eprintln!("{}: {detail}", input.display())
            }
            other => panic!("{}: expected Corrupt, got {other:?}", input.display()),
        }
    }
}

#[test]
fn existing_output_is_replaced_only_on_success() {
    let ws = Workspace::new();
    let output = ws.outputs.join("programme.opus");
    fs::write(&output, b"previous").unwrap();
    let text = ws.input("text.mp3");
    fs::write(&text, "không phải âm thanh").unwrap();
    assert!(transcode_file(&text, &output, &TranscodeOptions::default()).is_err());
    assert_eq!(fs::read(&output).unwrap(), b"previous");
    assert_eq!(ws.output_entries(), ["programme.opus"]);
    let report = transcode_file(&ws.speech(), &output, &TranscodeOptions::default()).unwrap();
    assert_eq!(fs::metadata(&output).unwrap().len(), report.bytes);
}

#[test]
fn missing_input_or_output_directory_is_io() {
    let ws = Workspace::new();
    let missing = ws.input("missing.mp3");
    assert!(matches!(
        transcode_file(
            &missing,
            &ws.outputs.join("x.opus"),
            &TranscodeOptions::default()
        ),
        Err(TranscodeError::Io(_))
    ));
    let nowhere = ws.outputs.join("no-such-dir").join("x.opus");
    let err = transcode_file(&ws.speech(), &nowhere, &TranscodeOptions::default()).unwrap_err();
    assert!(matches!(err, TranscodeError::Io(_)), "{err:?}");
    assert!(!err.is_user_error());
}

/// Found by fuzzing (`fuzz/`, target `upload_decode`): an APE tag whose size
/// field points before the start of the file made symphonia seek there; the
/// `EINVAL` came back as an internal I/O error, which the API answers with
/// `500`. It is the upload's fault and must be refused as such.
#[test]
fn a_tag_size_pointing_before_the_file_is_the_uploads_fault() {
    let ws = Workspace::new();
    let input = ws.input("ape-tag.mp3");
    let mut bytes = vec![0xff, 0x00, 0x00];
    bytes.extend_from_slice(b"APETAGEX");
    bytes.extend_from_slice(&[
        0xd0, 0x07, 0x00, 0x00, 0x9b, 0x3a, 0x9b, 0xa6, 0xc6, 0xd6, 0xd9, 0x4a, 0xd9, 0xeb, 0x4a,
        0x4a, 0x00, 0x00, 0xc7, 0xa6, 0xc6, 0xd6, 0xd9, 0xeb, 0x4a, 0xd9, 0xeb, 0x4a,
    ]);
    fs::write(&input, &bytes).unwrap();
    let err = refuse_default(&ws, &input);
    assert!(err.is_user_error(), "{err:?}");
}
