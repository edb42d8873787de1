//! End-to-end tests of `transcode_file` on real files made with the Debian
//! tools Loa's CI installs (espeak-ng, sox, lame, ffmpeg, opus-tools). A
//! missing tool fails the test with the package to install. This module has
//! the shared helpers; `accepted` and `refused` hold the tests.

mod accepted;
mod refused;

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(super) use super::*;

/// The Vietnamese sentence every generated input speaks.
pub(super) const SPEECH: &str = "Xin chào bà con. Đây là bản tin chuyển đổi số của xã, \
                      phát vào sáng thứ Ba và thứ Sáu hằng tuần.";

/// Fails with an installation hint when `tool` is not on PATH.
pub(super) fn require(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{tool}` not found on PATH: install the Debian package `{package}`")
        })
}

/// Runs a tool and panics with its stderr if it fails.
pub(super) fn run(tool: &str, package: &str, args: &[&str]) -> String {
    let out = Command::new(require(tool, package))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub(super) fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Test inputs and outputs live in separate directories so "nothing left
/// behind" can be checked on the output side.
pub(super) struct Workspace {
    /// Holds both directories; removed on drop.
    _root: tempfile::TempDir,
    /// Generated inputs.
    pub(super) inputs: PathBuf,
    /// Where transcode_file writes.
    pub(super) outputs: PathBuf,
}

impl Workspace {
    pub(super) fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let inputs = root.path().join("in");
        let outputs = root.path().join("out");
        fs::create_dir(&inputs).unwrap();
        fs::create_dir(&outputs).unwrap();
        Workspace {
            _root: root,
            inputs,
            outputs,
        }
    }

    pub(super) fn input(&self, name: &str) -> PathBuf {
        self.inputs.join(name)
    }

    /// espeak-ng speech, 22.05 kHz mono 16-bit, at espeak's level (peaks at
    /// 0 dBFS, about -19 LUFS).
    pub(super) fn speech_loud(&self) -> PathBuf {
        let wav = self.input("speech-loud.wav");
        if !wav.exists() {
            run(
                "espeak-ng",
                "espeak-ng",
                &["-v", "vi", "-w", s(&wav), SPEECH],
            );
        }
        wav
    }

    /// The same speech with its peaks clipped and 6 dB quieter: about
    /// -25.6 LUFS with peaks at -12 dBFS, so reaching -16 LUFS needs a
    /// positive gain that the -1 dBFS peak ceiling does not limit.
    pub(super) fn speech(&self) -> PathBuf {
        let wav = self.input("speech.wav");
        if !wav.exists() {
            let loud = self.speech_loud();
            run(
                "sox",
                "sox",
                &["-V1", "-D", s(&loud), s(&wav), "gain", "6", "gain", "-12"],
            );
        }
        wav
    }

    pub(super) fn transcode(
        &self,
        input: &Path,
    ) -> Result<(TranscodeReport, PathBuf), TranscodeError> {
        self.transcode_with(input, &TranscodeOptions::default())
    }

    pub(super) fn transcode_with(
        &self,
        input: &Path,
        options: &TranscodeOptions,
    ) -> Result<(TranscodeReport, PathBuf), TranscodeError> {
        let output = self.outputs.join("programme.opus");
        transcode_file(input, &output, options).map(|r| (r, output))
    }

    /// Names in the output directory (temporary files included).
    pub(super) fn output_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.outputs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// Duration of an audio file in seconds according to sox.
pub(super) fn soxi_duration(path: &Path) -> f64 {
    run("soxi", "sox", &["-D", s(path)]).trim().parse().unwrap()
}

/// An Ogg Opus file decoded with libopus, RFC 7845 rules applied.
pub(super) struct Decoded {
    /// OpusHead pre-skip.
    pub(super) pre_skip: u16,
    /// OpusHead input sample rate.
    pub(super) input_rate: u32,
    /// OpusTags vendor string.
    pub(super) vendor: String,
    /// OpusTags comments.
    pub(super) comments: Vec<String>,
    /// 48 kHz mono samples after pre-skip and end trimming.
    pub(super) samples: Vec<f32>,
}

pub(super) fn decode_ogg_opus(path: &Path) -> Decoded {
    let mut reader = ogg::PacketReader::new(BufReader::new(fs::File::open(path).unwrap()));
    let head = reader.read_packet_expected().unwrap();
    assert!(head.first_in_stream() && head.last_in_page());
    assert_eq!(&head.data[..8], b"OpusHead");
    assert_eq!(head.data.len(), 19);
    assert_eq!(head.data[8], 1, "version");
    assert_eq!(head.data[9], 1, "channel count");
    let pre_skip = u16::from_le_bytes([head.data[10], head.data[11]]);
    let input_rate = u32::from_le_bytes(head.data[12..16].try_into().unwrap());
    assert_eq!(&head.data[16..18], &[0, 0], "output gain");
    assert_eq!(head.data[18], 0, "mapping family");

    let tags = reader.read_packet_expected().unwrap();
    assert!(tags.last_in_page());
    assert_eq!(&tags.data[..8], b"OpusTags");
    let u32_at = |d: &[u8], i: usize| u32::from_le_bytes(d[i..i + 4].try_into().unwrap()) as usize;
    let vendor_len = u32_at(&tags.data, 8);
    let vendor = String::from_utf8(tags.data[12..12 + vendor_len].to_vec()).unwrap();
    let mut at = 12 + vendor_len;
    let count = u32_at(&tags.data, at);
    at += 4;
    let mut comments = Vec::new();
    for _ in 0..count {
        let len = u32_at(&tags.data, at);
        comments.push(String::from_utf8(tags.data[at + 4..at + 4 + len].to_vec()).unwrap());
        at += 4 + len;
    }

    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0f32; 5760];
    let mut last_granule = 0;
    let mut previous_page_granule = 0;
    while let Some(packet) = reader.read_packet().unwrap() {
        let n = decoder.decode_float(&packet.data, &mut buf, false).unwrap();
        assert_eq!(n, FRAME_SAMPLES, "20 ms frames");
        all.extend_from_slice(&buf[..n]);
        if packet.last_in_page() {
            let granule = packet.absgp_page();
            assert!(granule > previous_page_granule, "granules increase");
            previous_page_granule = granule;
        }
        if packet.last_in_stream() {
            last_granule = packet.absgp_page();
            break;
        }
    }
    assert!(reader.read_packet().unwrap().is_none(), "nothing after EOS");
    let end = last_granule as usize;
    assert!(
        end <= all.len() && end + FRAME_SAMPLES > all.len(),
        "end trim < 1 frame"
    );
    Decoded {
        pre_skip,
        input_rate,
        vendor,
        comments,
        samples: all[pre_skip as usize..end].to_vec(),
    }
}

pub(super) fn integrated_lufs(samples: &[f32]) -> f64 {
    let mut m = ebur128::EbuR128::new(1, 48_000, ebur128::Mode::I).unwrap();
    m.add_frames_f32(samples).unwrap();
    m.loudness_global().unwrap()
}

pub(super) fn peak_dbfs(samples: &[f32]) -> f64 {
    20.0 * f64::from(samples.iter().fold(0.0f32, |p, s| p.max(s.abs()))).log10()
}

/// RMS envelope in 10 ms windows.
pub(super) fn envelope(samples: &[f32]) -> Vec<f64> {
    samples
        .chunks(480)
        .map(|c| (c.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .collect()
}

pub(super) fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mean = |x: &[f64]| x.iter().sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// The source as 48 kHz mono f32, resampled by sox (an independent
/// implementation) to compare the content against.
pub(super) fn reference_48k(ws: &Workspace, source: &Path) -> Vec<f32> {
    let raw = ws.input("reference.f32");
    run(
        "sox",
        "sox",
        &[
            "-V1",
            s(source),
            "-r",
            "48000",
            "-c",
            "1",
            "-e",
            "floating-point",
            "-b",
            "32",
            s(&raw),
        ],
    );
    fs::read(&raw)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// opusinfo must accept the file without a warning.
pub(super) fn assert_opusinfo_clean(path: &Path) {
    let report = run("opusinfo", "opus-tools", &[s(path)]);
    let lower = report.to_lowercase();
    assert!(
        !lower.contains("warning") && !lower.contains("error"),
        "opusinfo complained:\n{report}"
    );
    assert!(report.contains("Channels: 1"), "{report}");
}

/// Transcodes `input` (made from `source`) and checks everything a stored
/// programme must satisfy.
pub(super) fn check_good(
    ws: &Workspace,
    source: &Path,
    input: &Path,
    rate: u32,
    channels: u16,
) -> TranscodeReport {
    let (report, output) = ws
        .transcode(input)
        .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    assert_eq!(
        ws.output_entries(),
        ["programme.opus"],
        "no temporary file left"
    );
    let expected_ms = soxi_duration(source) * 1000.0;
    assert!(
        (report.duration_ms as f64 - expected_ms).abs() <= 40.0,
        "{}: duration {} ms, source {expected_ms:.0} ms",
        input.display(),
        report.duration_ms
    );
    eprintln!(
        "{}: {} ms (source {expected_ms:.1} ms), input {:.1} LUFS, gain {:+.1} dB, {} b/s",
        input.file_name().unwrap().to_string_lossy(),
        report.duration_ms,
        report.input_loudness_lufs,
        report.gain_db,
        report.bitrate
    );
    assert_eq!(report.input_sample_rate, rate);
    assert_eq!(report.input_channels, channels);
    let bytes = fs::read(&output).unwrap();
    assert_eq!(report.bytes, bytes.len() as u64);
    assert_eq!(report.sha256, hex::encode(Sha256::digest(&bytes)));
    assert!(
        (20_000..=40_000).contains(&report.bitrate),
        "bitrate {}",
        report.bitrate
    );

    let decoded = decode_ogg_opus(&output);
    assert_eq!(decoded.input_rate, rate);
    assert!(decoded.pre_skip > 0);
    assert!(decoded.vendor.starts_with("Loa ") && decoded.vendor.contains("libopus"));
    let decoded_ms = decoded.samples.len() as f64 / 48.0;
    assert!(
        (decoded_ms - report.duration_ms as f64).abs() <= 1.0,
        "decoded {decoded_ms} ms vs reported {} ms",
        report.duration_ms
    );
    let lufs = integrated_lufs(&decoded.samples);
    assert!(
        (lufs - TARGET_LUFS).abs() <= 1.0,
        "{}: output loudness {lufs:.2} LUFS (input {:.2}, gain {:.2})",
        input.display(),
        report.input_loudness_lufs,
        report.gain_db
    );
    assert!(report.gain_db > 5.0, "quiet source needs gain: {report:?}");
    // Same content, aligned (pre-skip and resampler delay handled): the
    // 10 ms loudness envelopes match the sox-resampled source.
    let reference = reference_48k(ws, source);
    let r = correlation(&envelope(&decoded.samples), &envelope(&reference));
    assert!(r > 0.9, "{}: envelope correlation {r:.3}", input.display());
    assert_opusinfo_clean(&output);
    report
}
