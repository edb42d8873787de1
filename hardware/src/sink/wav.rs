//! The WAV-file sink: records what a sound card would play, in real time,
//! into a mono 32-bit float 48 kHz WAV file (for demos, tests and boards
//! without a sound card).
//!
//! It behaves like [`CpalSink`](super::cpal::CpalSink) with an ideal device
//! clocked by the wall clock: `start` starts the clock; written samples wait
//! in a queue of at most 100 ms and go to the file when their play time has
//! come, so [`write`](AudioSink::write) blocks like a sound card's,
//! [`delay`](AudioSink::delay) is the queued time, and
//! [`clear`](AudioSink::clear) drops what has not yet "played". If the writer
//! falls behind, the silence a card would play is written too (an
//! underrun), so within a play the file's timeline is the wall clock's. A
//! gap longer than [`MAX_RECORDED_GAP`] (the player idling with the sink
//! started) is not recorded. Samples are clamped to ±1, as a DAC would.
//!
//! Many plays go into one file: the first `start` creates the file, each
//! later one appends to it (also across restarts). The header is rewritten
//! every second of audio, so after a crash the file is valid up to the last
//! second; `stop` finalises it. An existing file that is not a mono 48 kHz
//! float WAV is never overwritten. When the file reaches
//! [`MAX_FILE_SAMPLES`] it is renamed `NAME.1.wav` (`.2`, ... the first free
//! number) and a new `NAME.wav` begins.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{AudioSink, QUEUE_FRAMES, SAMPLE_RATE, SinkError, frames_to_duration};

/// The file format: mono, 48 kHz, 32-bit float.
pub const WAV_SPEC: hound::WavSpec = hound::WavSpec {
    channels: 1,
    sample_rate: SAMPLE_RATE,
    bits_per_sample: 32,
    sample_format: hound::SampleFormat::Float,
};

/// Longest writer gap recorded as silence; longer ones are idle time.
pub const MAX_RECORDED_GAP: Duration = Duration::from_secs(1);

/// Samples per file before it is rotated: 2 GiB of data (3 h 6 min), the
/// limit of readers that take WAV sizes as signed 32-bit numbers.
pub const MAX_FILE_SAMPLES: u32 = (1 << 31) / 4;

/// The header is rewritten after this many samples (1 s).
const FLUSH_SAMPLES: usize = SAMPLE_RATE as usize;

type Writer = hound::WavWriter<BufWriter<File>>;

/// A WAV file written in real time (see the module docs).
pub struct WavSink {
    /// The file; always the newest one when rotating.
    path: PathBuf,
    /// The open file, between `start` and `stop`.
    writer: Option<Writer>,
    /// When the emulated device clock started (`start`).
    origin: Instant,
    /// Device frames skipped as idle time (gaps over [`MAX_RECORDED_GAP`]);
    /// the device position is the frames since `origin` minus these.
    skipped: u64,
    /// Frames written to the file since `start`: the device's play position.
    played: u64,
    /// Samples written but not yet due (at most [`QUEUE_FRAMES`]).
    queue: VecDeque<f32>,
    /// Samples written to the file since the header was last updated.
    unflushed: usize,
    /// A writer has queued audio that has not yet run out; running dry is an
    /// underrun only then.
    feeding: bool,
    /// Times the writer fell behind and silence was recorded.
    underruns: u64,
    /// An error met by `clear` (which cannot return one), for the next `write`.
    fault: Option<SinkError>,
    /// Samples per file before rotating.
    max_file_samples: u32,
}

impl WavSink {
    /// Checks that `path` can hold our recording: creates an empty WAV there
    /// if nothing exists, and refuses an existing file in another format.
    pub fn new(path: impl AsRef<Path>) -> Result<Self, SinkError> {
        let path = path.as_ref().to_path_buf();
        open_writer(&path)?
            .finalize()
            .map_err(|e| wav_error(&path, e))?;
        Ok(WavSink {
            path,
            writer: None,
            origin: Instant::now(),
            skipped: 0,
            played: 0,
            queue: VecDeque::with_capacity(QUEUE_FRAMES),
            unflushed: 0,
            feeding: false,
            underruns: 0,
            fault: None,
            max_file_samples: MAX_FILE_SAMPLES,
        })
    }

    /// Rotates files after `samples` samples instead of [`MAX_FILE_SAMPLES`].
    pub fn with_max_file_samples(mut self, samples: u32) -> Self {
        self.max_file_samples = samples.max(1);
        self
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Times the writer fell behind the clock and silence was recorded.
    pub fn underruns(&self) -> u64 {
        self.underruns
    }

    /// The emulated device's play position (frames since `start`) at `now`.
    fn position(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        let frames = (nanos * u128::from(SAMPLE_RATE) / 1_000_000_000) as u64;
        frames.saturating_sub(self.skipped)
    }

    /// Writes to the file everything whose play time has come; with `pad`,
    /// also the silence of an underrun.
    fn advance(&mut self, now: Instant, pad: bool) -> Result<(), SinkError> {
        let due = self.position(now);
        if due <= self.played {
            return Ok(());
        }
        let mut need = (due - self.played) as usize;
        let from_queue = need.min(self.queue.len());
        for _ in 0..from_queue {
            let sample = self.queue.pop_front().unwrap_or(0.0);
            self.put(sample)?;
        }
        need -= from_queue;
        if need == 0 || !pad {
            return Ok(());
        }
        if need > MAX_RECORDED_GAP.as_secs() as usize * SAMPLE_RATE as usize {
            // Idle, not starving: do not fill the file with silence.
            self.skipped += need as u64;
            self.feeding = false;
            return Ok(());
        }
        if self.feeding {
            self.feeding = false;
            self.underruns += 1;
            tracing::debug!(path = %self.path.display(), gap = need, "WAV sink underrun");
        }
        for _ in 0..need {
            self.put(0.0)?;
        }
        Ok(())
    }

    /// Appends one sample to the file, rotating and checkpointing as needed.
    fn put(&mut self, sample: f32) -> Result<(), SinkError> {
        let full = self
            .writer
            .as_ref()
            .is_some_and(|w| w.len() >= self.max_file_samples);
        if full {
            self.rotate()?;
        }
        let Some(writer) = self.writer.as_mut() else {
            return Err(not_started(&self.path));
        };
        writer
            .write_sample(sample)
            .map_err(|e| wav_error(&self.path, e))?;
        self.played += 1;
        self.unflushed += 1;
        if self.unflushed >= FLUSH_SAMPLES {
            writer.flush().map_err(|e| wav_error(&self.path, e))?;
            self.unflushed = 0;
        }
        Ok(())
    }

    /// Closes the full file, renames it `NAME.N.EXT`, and opens a new one.
    fn rotate(&mut self) -> Result<(), SinkError> {
        if let Some(writer) = self.writer.take() {
            writer.finalize().map_err(|e| wav_error(&self.path, e))?;
        }
        let rotated = free_rotated_name(&self.path);
        std::fs::rename(&self.path, &rotated)?;
        tracing::info!(
            path = %self.path.display(),
            rotated = %rotated.display(),
            "WAV output full; rotated"
        );
        self.writer = Some(open_writer(&self.path)?);
        self.unflushed = 0;
        Ok(())
    }

    /// Lets the queue play out in real time and writes it.
    fn play_out(&mut self) -> Result<(), SinkError> {
        let end = self.played + self.queue.len() as u64;
        let now_pos = self.position(Instant::now());
        if end > now_pos {
            std::thread::sleep(frames_to_duration((end - now_pos) as usize));
        }
        while let Some(sample) = self.queue.pop_front() {
            self.put(sample)?;
        }
        Ok(())
    }
}

impl AudioSink for WavSink {
    fn start(&mut self) -> Result<(), SinkError> {
        if self.writer.is_some() {
            return Ok(());
        }
        self.writer = Some(open_writer(&self.path)?);
        self.origin = Instant::now();
        self.skipped = 0;
        self.played = 0;
        self.queue.clear();
        self.unflushed = 0;
        self.feeding = false;
        self.fault = None;
        Ok(())
    }

    fn stop(&mut self) -> Result<(), SinkError> {
        if self.writer.is_none() {
            return Ok(());
        }
        let played = self.play_out();
        self.queue.clear();
        self.feeding = false;
        let finalized = match self.writer.take() {
            Some(writer) => writer.finalize().map_err(|e| wav_error(&self.path, e)),
            None => Ok(()),
        };
        played.and(finalized)
    }

    fn write(&mut self, samples: &[f32]) -> Result<(), SinkError> {
        if self.writer.is_none() {
            return Err(not_started(&self.path));
        }
        if let Some(fault) = self.fault.take() {
            return Err(fault);
        }
        let mut rest = samples;
        loop {
            self.advance(Instant::now(), true)?;
            let n = (QUEUE_FRAMES - self.queue.len()).min(rest.len());
            if n > 0 {
                self.queue
                    .extend(rest[..n].iter().map(|s| s.clamp(-1.0, 1.0)));
                self.feeding = true;
                rest = &rest[n..];
            }
            if rest.is_empty() {
                return Ok(());
            }
            // The queue is full: wait until the clock has played room for
            // (part of) the rest.
            std::thread::sleep(frames_to_duration(rest.len().min(QUEUE_FRAMES / 4)));
        }
    }

    fn clear(&mut self) {
        if self.writer.is_some()
            && let Err(e) = self.advance(Instant::now(), true)
        {
            self.fault = Some(e);
        }
        self.queue.clear();
        self.feeding = false;
    }

    fn delay(&self) -> Duration {
        if self.writer.is_none() {
            return Duration::ZERO;
        }
        let queued_end = self.played + self.queue.len() as u64;
        let pending = queued_end.saturating_sub(self.position(Instant::now()));
        frames_to_duration(pending as usize)
    }
}

impl Drop for WavSink {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take()
            && let Err(e) = writer.finalize()
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not finalise WAV file");
        }
    }
}

/// Opens `path` for appending, or creates it with [`WAV_SPEC`]; the header
/// is on disk when this returns.
fn open_writer(path: &Path) -> Result<Writer, SinkError> {
    let existing = match std::fs::metadata(path) {
        Ok(meta) => meta.len() > 0,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_context(path, e)),
    };
    if existing {
        let spec = match hound::WavReader::open(path) {
            Ok(reader) => reader.spec(),
            Err(hound::Error::IoError(e)) if e.kind() != io::ErrorKind::UnexpectedEof => {
                return Err(io_context(path, e));
            }
            Err(e) => {
                return Err(SinkError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: exists and is not a WAV file we can append to ({e}); \
                         refusing to overwrite it",
                        path.display()
                    ),
                )));
            }
        };
        if spec != WAV_SPEC {
            return Err(SinkError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: exists as a {}-channel {} Hz {}-bit {:?} WAV, not mono 48 kHz 32-bit float; \
                     refusing to overwrite it",
                    path.display(),
                    spec.channels,
                    spec.sample_rate,
                    spec.bits_per_sample,
                    spec.sample_format
                ),
            )));
        }
        return hound::WavWriter::append(path).map_err(|e| wav_error(path, e));
    }
    let mut writer = hound::WavWriter::create(path, WAV_SPEC).map_err(|e| wav_error(path, e))?;
    writer.flush().map_err(|e| wav_error(path, e))?;
    Ok(writer)
}

/// `NAME.N.EXT` (or `NAME.N` without extension) with the first free `N`.
fn free_rotated_name(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned());
    (1u32..)
        .map(|n| {
            path.with_file_name(match &ext {
                Some(ext) => format!("{stem}.{n}.{ext}"),
                None => format!("{stem}.{n}"),
            })
        })
        .find(|p| !p.exists())
        .unwrap_or_else(|| path.with_extension("overflow.wav"))
}

fn not_started(path: &Path) -> SinkError {
    SinkError::Backend(format!("WAV output {} is not started", path.display()))
}

fn io_context(path: &Path, e: io::Error) -> SinkError {
    SinkError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn wav_error(path: &Path, e: hound::Error) -> SinkError {
    match e {
        hound::Error::IoError(e) => io_context(path, e),
        other => SinkError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {other}", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> Vec<f32> {
        let mut reader = hound::WavReader::open(path).unwrap();
        assert_eq!(reader.spec(), WAV_SPEC);
        reader.samples::<f32>().map(Result::unwrap).collect()
    }

    #[test]
    fn refuses_to_overwrite_a_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.wav");
        std::fs::write(&text, "not audio").unwrap();
        let err = WavSink::new(&text).err().expect("must refuse");
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read_to_string(&text).unwrap(), "not audio");

        let stereo = dir.path().join("stereo.wav");
        let spec = hound::WavSpec {
            channels: 2,
            ..WAV_SPEC
        };
        hound::WavWriter::create(&stereo, spec)
            .unwrap()
            .finalize()
            .unwrap();
        let err = WavSink::new(&stereo).err().expect("must refuse");
        assert!(err.to_string().contains("2-channel"), "{err}");
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = WavSink::new(dir.path().join("no/such/dir/out.wav"))
            .err()
            .expect("must fail");
        assert!(matches!(err, SinkError::Io(_)), "{err}");
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }

    #[test]
    fn rotates_full_files_keeping_every_sample() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.wav");
        let mut sink = WavSink::new(&path).unwrap().with_max_file_samples(1000);
        sink.start().unwrap();
        let signal: Vec<f32> = (0..2500).map(|i| (i % 100) as f32 / 200.0 + 0.01).collect();
        sink.write(&signal).unwrap();
        sink.stop().unwrap();
        let first = read(&dir.path().join("out.1.wav"));
        let second = read(&dir.path().join("out.2.wav"));
        let last = read(&path);
        assert_eq!(first.len(), 1000);
        assert_eq!(second.len(), 1000);
        let all: Vec<f32> = first.into_iter().chain(second).chain(last).collect();
        // The first sample may lag start() by a few frames of silence.
        let lead = all.iter().position(|&s| s != 0.0).unwrap();
        assert!(lead < 48, "lead-in {lead}");
        assert_eq!(&all[lead..], &signal[..]);
    }

    #[test]
    fn clear_drops_audio_not_yet_played() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clear.wav");
        let mut sink = WavSink::new(&path).unwrap();
        sink.start().unwrap();
        sink.write(&vec![0.25; 4800]).unwrap();
        let queued = sink.delay();
        assert!(queued > Duration::from_millis(90), "{queued:?}");
        std::thread::sleep(Duration::from_millis(30));
        sink.clear();
        assert_eq!(sink.delay(), Duration::ZERO);
        sink.stop().unwrap();
        let played = read(&path).iter().filter(|&&s| s == 0.25).count();
        // About 30 ms of the 100 ms played before clear().
        assert!((1000..2400).contains(&played), "{played} samples played");
    }
}
