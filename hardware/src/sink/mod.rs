//! Audio sinks: the one small trait the player writes samples to, and the
//! name-to-backend table (`cpal`, `cpal:DEVICE`, `wav:PATH`).

use std::time::Duration;

pub mod cpal;
pub mod wav;

/// Every sink takes mono `f32` samples at this rate (Opus's native rate).
pub const SAMPLE_RATE: u32 = 48_000;

/// Queue capacity between `write` and the device: 100 ms, so a pre-empted
/// programme stops quickly. (The cpal sink holds more only for a device
/// whose callbacks ask for more than half of that at once.)
pub const QUEUE_FRAMES: usize = SAMPLE_RATE as usize / 10;

/// Duration of `frames` at [`SAMPLE_RATE`].
pub(crate) fn frames_to_duration(frames: usize) -> Duration {
    Duration::from_nanos(frames as u64 * 1_000_000_000 / u64::from(SAMPLE_RATE))
}

/// Where audio goes, parsed from `--output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// cpal's default output device (`cpal`) or a named one (`cpal:DEVICE`).
    Cpal { device: Option<String> },
    /// A WAV file (`wav:PATH`), written in real time as a sound card would play it.
    Wav { path: std::path::PathBuf },
}

/// Why a sink could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid output {0:?}: expected cpal, cpal:DEVICE or wav:PATH")]
    InvalidSpec(String),
    #[error("no audio output device {0:?}")]
    NoDevice(String),
    #[error("audio device cannot play 48 kHz: {0}")]
    Unsupported(String),
    #[error("audio output failed: {0}")]
    Backend(String),
    #[error("audio file: {0}")]
    Io(#[from] std::io::Error),
}

/// An audio output. Created and driven on one dedicated thread (cpal streams
/// are not `Send` everywhere), so the trait does not require `Send`.
pub trait AudioSink {
    /// Opens the device; after this, [`write`](Self::write) queues audio for playout.
    fn start(&mut self) -> Result<(), SinkError>;
    /// Lets queued audio play out, then closes the device.
    fn stop(&mut self) -> Result<(), SinkError>;
    /// Queues mono samples at [`SAMPLE_RATE`]. Blocks while the queue is
    /// full, so a writer is paced by the device clock; the queue holds at
    /// most ~100 ms, so pre-emption is quick.
    fn write(&mut self, samples: &[f32]) -> Result<(), SinkError>;
    /// Drops queued audio that has not been played yet (for pre-emption).
    fn clear(&mut self);
    /// Time from now until the first sample of the next `write` is heard:
    /// queued audio plus the device's own output latency. The player uses it
    /// to start a programme at its instant to the millisecond.
    fn delay(&self) -> Duration;
}

impl std::str::FromStr for OutputSpec {
    type Err = SinkError;
    fn from_str(s: &str) -> Result<Self, SinkError> {
        match s.split_once(':') {
            None if s == "cpal" => Ok(OutputSpec::Cpal { device: None }),
            Some(("cpal", dev)) if !dev.is_empty() => Ok(OutputSpec::Cpal {
                device: Some(dev.to_string()),
            }),
            Some(("wav", path)) if !path.is_empty() => Ok(OutputSpec::Wav { path: path.into() }),
            _ => Err(SinkError::InvalidSpec(s.to_string())),
        }
    }
}

/// Opens the sink named by `spec` (not yet started).
pub fn open_sink(spec: &OutputSpec) -> Result<Box<dyn AudioSink>, SinkError> {
    match spec {
        OutputSpec::Cpal { device } => Ok(Box::new(cpal::CpalSink::new(device.as_deref())?)),
        OutputSpec::Wav { path } => Ok(Box::new(wav::WavSink::new(path)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_output_specs() {
        assert_eq!(
            "cpal".parse::<OutputSpec>().unwrap(),
            OutputSpec::Cpal { device: None }
        );
        assert_eq!(
            "cpal:hw:CARD=PCH,DEV=0".parse::<OutputSpec>().unwrap(),
            OutputSpec::Cpal {
                device: Some("hw:CARD=PCH,DEV=0".into())
            }
        );
        assert_eq!(
            "wav:/tmp/a b.wav".parse::<OutputSpec>().unwrap(),
            OutputSpec::Wav {
                path: "/tmp/a b.wav".into()
            }
        );
        for bad in ["", "cpal:", "wav:", "wav", "alsa", "file:/x.wav"] {
            assert!(
                matches!(bad.parse::<OutputSpec>(), Err(SinkError::InvalidSpec(s)) if s == bad),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn frames_convert_to_time_at_48k() {
        assert_eq!(frames_to_duration(48_000), Duration::from_secs(1));
        assert_eq!(frames_to_duration(QUEUE_FRAMES), Duration::from_millis(100));
        assert_eq!(frames_to_duration(1), Duration::from_nanos(20_833));
    }
}
