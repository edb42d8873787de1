//! The test programme: a short chime then a Vietnamese sentence spoken by
//! `espeak-ng -v vi`, encoded to MP3 with `lame` — an upload like a commune
//! officer's recorded bulletin. The 48 kHz WAV it was encoded from is the
//! reference the recordings are compared with.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::audio::read_wav_mono;
use crate::process::run_tool;

/// What the bulletin says.
pub const TEXT: &str = "Thông báo của Ủy ban nhân dân xã về chuyển đổi số. \
    Từ tuần này, bà con có thể làm thủ tục hành chính trên cổng dịch vụ công trực tuyến.";

/// A generated bulletin and its reference audio.
pub struct TestBulletin {
    /// The MP3 to upload.
    pub mp3: PathBuf,
    /// The 48 kHz mono WAV the MP3 was encoded from.
    pub wav: PathBuf,
    /// `wav`'s samples: what a receiver should play, up to level and codec changes.
    pub reference: Vec<f32>,
}

impl TestBulletin {
    /// Generates the bulletin files in `dir`: a 250 ms 880 Hz chime with a
    /// sharp start (a crisp marker for timing), 300 ms of silence, then speech.
    pub fn generate(dir: &Path) -> Result<Self> {
        let p = |name: &str| dir.join(name);
        let fmt = ["-r", "48000", "-c", "1", "-b", "16"];
        run_tool(
            Command::new("espeak-ng")
                .args(["-v", "vi", "-s", "150", "-w"])
                .arg(p("speech.wav"))
                .arg(TEXT),
        )?;
        run_tool(
            Command::new("sox")
                .arg("-n")
                .args(fmt)
                .arg(p("chime.wav"))
                .args(["synth", "0.25", "sine", "880", "vol", "0.5"]),
        )?;
        run_tool(
            Command::new("sox")
                .arg("-n")
                .args(fmt)
                .arg(p("gap.wav"))
                .args(["trim", "0", "0.3"]),
        )?;
        run_tool(
            Command::new("sox")
                .arg(p("speech.wav"))
                .args(fmt)
                .arg(p("speech48.wav"))
                .args(["norm", "-3"]),
        )?;
        run_tool(Command::new("sox").args([
            p("chime.wav"),
            p("gap.wav"),
            p("speech48.wav"),
            p("bulletin.wav"),
        ]))?;
        run_tool(
            Command::new("lame")
                .args(["--quiet", "-b", "64"])
                .args([p("bulletin.wav"), p("bulletin.mp3")]),
        )?;
        let (reference, rate) = read_wav_mono(&p("bulletin.wav"))?;
        if rate != 48_000 || reference.len() < 48_000 * 3 {
            bail!(
                "generated bulletin is {} samples at {rate} Hz; expected ≥ 3 s at 48 kHz",
                reference.len()
            );
        }
        Ok(TestBulletin {
            mp3: p("bulletin.mp3"),
            wav: p("bulletin.wav"),
            reference,
        })
    }

    /// Length of the reference in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.reference.len() as u64 * 1000 / 48_000
    }
}
