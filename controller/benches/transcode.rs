//! Transcoding benchmark: Loa's `transcode_file` against
//! `ffmpeg -c:a libopus` with the same Opus settings (mono 48 kHz, 32 kb/s,
//! complexity 10, 20 ms frames, VoIP) on the same 60 s Vietnamese speech
//! MP3 (44.1 kHz stereo). Prints the median of 3 runs of each and the ratio.
//!
//! Run with `cargo bench -p loa-controller --bench transcode` (or
//! `bench/transcode.sh`). Needs espeak-ng, sox, lame and ffmpeg.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use loa_controller::transcode::{TranscodeOptions, transcode_file};

/// Timed runs of each contender; the median is reported.
const RUNS: usize = 3;

/// Length of the benchmark input.
const SECONDS: u32 = 60;

/// Spoken (and repeated) to make the input.
const TEXT: &str = "Kính thưa bà con nhân dân trong xã. Sau đây là bản tin chuyển đổi số. \
    Ủy ban nhân dân xã đề nghị bà con cài đặt ứng dụng định danh điện tử, \
    thanh toán tiền điện, tiền nước qua ngân hàng và không chia sẻ mã OTP cho bất kỳ ai. \
    Bà con cần hỗ trợ xin liên hệ tổ công nghệ số cộng đồng tại nhà văn hóa thôn.";

fn require(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{tool}` not found on PATH: install the Debian package `{package}`")
        })
}

fn run(tool: &str, package: &str, args: &[&str]) {
    let out = Command::new(require(tool, package))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Generates the 60 s, 44.1 kHz stereo speech MP3.
fn make_input(dir: &Path) -> PathBuf {
    let speech = dir.join("speech.wav");
    run(
        "espeak-ng",
        "espeak-ng",
        &["-v", "vi", "-w", s(&speech), TEXT],
    );
    let out = Command::new(require("soxi", "sox"))
        .args(["-D", s(&speech)])
        .output()
        .expect("soxi");
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let copies = (f64::from(SECONDS) / secs).ceil() as usize;
    let long = dir.join("long.wav");
    let mut args: Vec<&str> = vec!["-V1"];
    args.extend(std::iter::repeat_n(s(&speech), copies));
    let seconds = SECONDS.to_string();
    args.extend(["-r", "44100", "-c", "2", s(&long), "trim", "0", &seconds]);
    run("sox", "sox", &args);
    let mp3 = dir.join("bulletin-60s.mp3");
    run("lame", "lame", &["--quiet", "-b", "128", s(&long), s(&mp3)]);
    mp3
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    // `cargo test --all-targets` also runs this binary, without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "transcode benchmark: skipped (run `cargo bench -p loa-controller --bench transcode`)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let input = make_input(dir.path());
    let loa_out = dir.path().join("loa.opus");
    let ffmpeg_out = dir.path().join("ffmpeg.opus");
    let options = TranscodeOptions::default();
    let ffmpeg = require("ffmpeg", "ffmpeg");
    let ffmpeg_args = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-i",
        s(&input),
        "-ac",
        "1",
        "-ar",
        "48000",
        "-c:a",
        "libopus",
        "-b:a",
        "32k",
        "-compression_level",
        "10",
        "-frame_duration",
        "20",
        "-application",
        "voip",
        s(&ffmpeg_out),
    ];

    // One untimed run each to warm caches (file pages, lazy statics).
    let report = transcode_file(&input, &loa_out, &options).expect("loa transcode");
    run("ffmpeg", "ffmpeg", &ffmpeg_args);

    let mut loa = Vec::new();
    let mut ff = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        transcode_file(&input, &loa_out, &options).expect("loa transcode");
        loa.push(t.elapsed());
        let t = Instant::now();
        let status = Command::new(&ffmpeg)
            .args(ffmpeg_args)
            .status()
            .expect("ffmpeg");
        assert!(status.success());
        ff.push(t.elapsed());
    }
    let (loa, ff) = (median(loa), median(ff));
    let ffmpeg_bytes = std::fs::metadata(&ffmpeg_out).map(|m| m.len()).unwrap_or(0);
    println!(
        "input: {SECONDS} s Vietnamese speech (espeak-ng), MP3 44.1 kHz stereo 128 kb/s; \
         median of {RUNS} runs"
    );
    println!(
        "loa: {} bytes ({} b/s), input {:.1} LUFS, gain {:+.1} dB; ffmpeg: {} bytes",
        report.bytes, report.bitrate, report.input_loudness_lufs, report.gain_db, ffmpeg_bytes
    );
    println!(
        "note: loa also measures EBU R128 loudness and normalises to -16 LUFS (ffmpeg does not), \
         and fsyncs its output; ffmpeg's time includes process start-up; loa links {} \
         (bundled), ffmpeg the system libopus",
        opus::version()
    );
    println!(
        "loa {:.2} s, ffmpeg {:.2} s, ratio loa/ffmpeg {:.2} (target ≤ 1.0)",
        loa.as_secs_f64(),
        ff.as_secs_f64(),
        loa.as_secs_f64() / ff.as_secs_f64()
    );
}
