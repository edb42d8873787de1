//! The upload path: `loa_controller::transcode::transcode_file`, what
//! `POST /api/v1/programmes` runs on the uploaded bytes (symphonia probe and
//! decode, resample, loudness, Opus encode). Arbitrary bytes (up to 256 KiB)
//! must give a programme or a *user* error (which the API answers with 415
//! or 422), never a panic, a hang or an internal error (a 500).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use loa_controller::transcode::{TranscodeOptions, transcode_file};

/// Larger inputs are skipped: the fuzzer looks for bad structure, not size.
const MAX_INPUT_BYTES: usize = 256 * 1024;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("loa-fuzz-upload-")
            .tempdir()
            .expect("temporary directory");
        dir.keep()
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT_BYTES {
        return;
    }
    let dir = dir();
    let input = dir.join("upload");
    let output = dir.join("programme.opus");
    std::fs::write(&input, data).expect("write the upload");
    let options = TranscodeOptions {
        // Bounded so one input costs little; the limit path is exercised too.
        max_duration: Duration::from_secs(60),
        ..TranscodeOptions::default()
    };
    match transcode_file(&input, &output, &options) {
        Ok(report) => {
            assert!(report.duration_ms > 0 && report.duration_ms <= 60_000 + 1000);
            let written = std::fs::metadata(&output).expect("output exists").len();
            assert_eq!(written, report.bytes);
        }
        Err(e) => assert!(
            e.is_user_error(),
            "internal error (HTTP 500) on upload: {e:?}"
        ),
    }
});
