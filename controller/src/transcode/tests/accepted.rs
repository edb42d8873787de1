//! Uploads that must become a valid programme: every supported format and
//! encoding, with exact duration, -16 LUFS loudness and opusinfo approval.

use std::fs;
use std::process::Command;

use super::*;

#[test]
fn wav_pcm_variants() {
    let ws = Workspace::new();
    let source = ws.speech();
    let variants: &[(&str, &[&str])] = &[
        ("u8.wav", &["-b", "8", "-e", "unsigned-integer"]),
        ("s16.wav", &["-b", "16", "-e", "signed-integer"]),
        ("s24.wav", &["-b", "24", "-e", "signed-integer"]),
        ("s32.wav", &["-b", "32", "-e", "signed-integer"]),
        ("f32.wav", &["-b", "32", "-e", "floating-point"]),
        ("alaw.wav", &["-e", "a-law"]),
        ("ulaw.wav", &["-e", "u-law"]),
    ];
    for (name, encoding) in variants {
        let input = ws.input(name);
        let mut args = vec!["-V1", "-D", s(&source)];
        args.extend_from_slice(encoding);
        args.push(s(&input));
        run("sox", "sox", &args);
        check_good(&ws, &source, &input, 22_050, 1);
    }
}

#[test]
fn mp3_from_espeak_and_lame() {
    let ws = Workspace::new();
    let source = ws.speech();
    let mp3 = ws.input("bantin.mp3");
    run(
        "lame",
        "lame",
        &["--quiet", "-b", "64", s(&source), s(&mp3)],
    );
    check_good(&ws, &source, &mp3, 22_050, 1);
}

#[test]
fn stereo_44k1_mp3_m4a_and_vorbis() {
    let ws = Workspace::new();
    let source = ws.input("stereo44.wav");
    run(
        "sox",
        "sox",
        &[
            "-V1",
            "-D",
            s(&ws.speech()),
            "-r",
            "44100",
            "-c",
            "2",
            s(&source),
        ],
    );
    let mp3 = ws.input("stereo44.mp3");
    run(
        "lame",
        "lame",
        &["--quiet", "-b", "128", s(&source), s(&mp3)],
    );
    check_good(&ws, &source, &mp3, 44_100, 2);
    for (name, codec) in [("stereo44.m4a", "aac"), ("stereo44.ogg", "libvorbis")] {
        let input = ws.input(name);
        run(
            "ffmpeg",
            "ffmpeg",
            &[
                "-hide_banner",
                "-loglevel",
                "error",
                "-i",
                s(&source),
                "-c:a",
                codec,
                s(&input),
            ],
        );
        check_good(&ws, &source, &input, 44_100, 2);
    }
}

#[test]
fn flac_vorbis_and_aac() {
    let ws = Workspace::new();
    let source = ws.speech();
    let flac = ws.input("bantin.flac");
    run("sox", "sox", &["-V1", "-D", s(&source), s(&flac)]);
    check_good(&ws, &source, &flac, 22_050, 1);

    let ogg = ws.input("bantin.ogg");
    let ffmpeg = |args: &[&str]| {
        let mut all = vec!["-hide_banner", "-loglevel", "error", "-y", "-i", s(&source)];
        all.extend_from_slice(args);
        run("ffmpeg", "ffmpeg", &all);
    };
    ffmpeg(&["-c:a", "libvorbis", s(&ogg)]);
    check_good(&ws, &source, &ogg, 22_050, 1);

    let m4a = ws.input("bantin.m4a");
    ffmpeg(&["-c:a", "aac", "-b:a", "96k", s(&m4a)]);
    check_good(&ws, &source, &m4a, 22_050, 1);
}

#[test]
fn loud_source_is_limited_by_the_peak_ceiling() {
    let ws = Workspace::new();
    // espeak peaks at 0 dBFS at about -19 LUFS: +3 dB would clip, so the
    // gain stops at -1 dBFS peak and the result stays below the target.
    let (report, output) = ws.transcode(&ws.speech_loud()).unwrap();
    assert!(report.input_loudness_lufs < -17.0, "{report:?}");
    assert!(
        (report.gain_db - PEAK_CEILING_DBFS).abs() < 0.2,
        "{report:?}"
    );
    let decoded = decode_ogg_opus(&output);
    let peak = peak_dbfs(&decoded.samples);
    // Opus may overshoot the input peak slightly.
    assert!((-3.0..=0.0).contains(&peak), "decoded peak {peak:.2} dBFS");
    assert!(integrated_lufs(&decoded.samples) < TARGET_LUFS - 1.0);
    assert_opusinfo_clean(&output);
}

#[test]
fn output_is_deterministic_and_titled() {
    let ws = Workspace::new();
    let source = ws.speech();
    let options = TranscodeOptions {
        title: Some("Bản tin chuyển đổi số".to_owned()),
        ..TranscodeOptions::default()
    };
    let (first, output) = ws.transcode_with(&source, &options).unwrap();
    let (second, _) = ws.transcode_with(&source, &options).unwrap();
    assert_eq!(first, second);
    let decoded = decode_ogg_opus(&output);
    assert_eq!(decoded.comments, ["TITLE=Bản tin chuyển đổi số"]);
    assert_opusinfo_clean(&output);
}

#[test]
fn streamed_wav_with_unknown_length_is_accepted() {
    // ffmpeg writing to a pipe cannot seek back to fill in the sizes and
    // leaves 0xFFFFFFFF ("unknown") in the RIFF and data chunk headers.
    let ws = Workspace::new();
    let source = ws.speech();
    let streamed = ws.input("streamed.wav");
    let out = Command::new(require("ffmpeg", "ffmpeg"))
        .args(["-hide_banner", "-loglevel", "error", "-i", s(&source)])
        .args(["-f", "wav", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        &out.stdout[4..8],
        &[0xFF; 4],
        "ffmpeg left the size unknown"
    );
    fs::write(&streamed, &out.stdout).unwrap();
    check_good(&ws, &source, &streamed, 22_050, 1);
}

#[test]
fn mp3_and_adts_without_length_header_keep_all_their_audio() {
    // Without a Xing/LAME header the length is only estimated from the
    // first frame's bitrate: for VBR that estimate is wrong, and no audio
    // may be cut because of it. Such files carry no encoder-delay
    // information, so up to ~100 ms of codec delay/padding remains.
    let ws = Workspace::new();
    let source = ws.input("long.wav");
    let speech = ws.speech();
    run(
        "sox",
        "sox",
        &[
            "-V1",
            s(&speech),
            s(&speech),
            s(&speech),
            s(&speech),
            s(&source),
        ],
    );
    let expected_ms = soxi_duration(&source) * 1000.0;
    let vbr = ws.input("vbr-no-xing.mp3");
    run(
        "lame",
        "lame",
        &["--quiet", "-V", "2", "-t", s(&source), s(&vbr)],
    );
    let adts = ws.input("bantin.aac");
    run(
        "ffmpeg",
        "ffmpeg",
        &[
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            s(&source),
            "-c:a",
            "aac",
            "-f",
            "adts",
            s(&adts),
        ],
    );
    for input in [vbr, adts] {
        let (report, output) = ws.transcode(&input).unwrap();
        let extra = report.duration_ms as f64 - expected_ms;
        assert!(
            (0.0..=100.0).contains(&extra),
            "{}: {} ms for {expected_ms:.0} ms of audio",
            input.display(),
            report.duration_ms
        );
        assert_opusinfo_clean(&output);
    }
}
