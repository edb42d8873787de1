//! Transcoding of uploaded audio into Loa's programme format: Ogg Opus
//! (RFC 7845), mono, 48 kHz, 20 ms frames, speech-tuned, loudness
//! normalised to -16 LUFS (EBU R128) with sample peaks at most -1 dBFS.
//!
//! `transcode_file` is blocking (the API runs it in `spawn_blocking`) and
//! works in two passes with bounded memory whatever the input length:
//!
//! 1. decode (symphonia) → downmix to mono → resample to 48 kHz (rubato) →
//!    measure loudness and peak (ebur128), storing the 48 kHz samples in an
//!    anonymous temporary file next to the output (see `spill`);
//! 2. read them back → apply the normalisation gain → encode (libopus) →
//!    write Ogg pages into a temporary file in the output directory, which
//!    is fsynced and renamed onto `output` only when everything succeeded.
//!
//! On any error nothing is left behind: the spill file has no name and the
//! partial output is deleted.

mod decode;
mod encode;
mod error;
mod loudness;
mod mp4;
mod ogg_opus;
mod resample;
mod spill;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use encode::FRAME_SAMPLES;
pub use error::TranscodeError;
pub use loudness::{PEAK_CEILING_DBFS, TARGET_LUFS};
pub use resample::OUTPUT_RATE;

use decode::MonoDecoder;
use encode::OpusFrameEncoder;
use loudness::{LoudnessMeter, db_to_linear, normalisation_gain_db};
use ogg_opus::{OggOpusWriter, OpusHead};
use resample::StreamResampler;
use spill::SpillWriter;

/// Shortest accepted audio: one EBU R128 gating block (400 ms).
const MIN_SAMPLES: u64 = OUTPUT_RATE as u64 * 4 / 10;

/// How to transcode. `Default` gives Loa's programme format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscodeOptions {
    /// Longest programme accepted; longer uploads fail with `TooLong` as
    /// soon as decoding passes the limit. Default 4 h.
    pub max_duration: Duration,
    /// Opus target bitrate in bits/s (VBR). Default 32 000 (voice).
    pub bitrate: u32,
    /// libopus complexity 0..=10; 10 is best quality. Default 10.
    pub complexity: u8,
    /// Written as the TITLE comment of the Ogg Opus file when set.
    pub title: Option<String>,
}

impl Default for TranscodeOptions {
    fn default() -> Self {
        TranscodeOptions {
            max_duration: Duration::from_secs(4 * 3600),
            bitrate: 32_000,
            complexity: 10,
            title: None,
        }
    }
}

/// What was produced, for the programme record.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscodeReport {
    /// Length of the programme in milliseconds (equal to the source's).
    pub duration_ms: u64,
    /// Lower-case hex SHA-256 of the output file: its name in the store and
    /// what receivers verify.
    pub sha256: String,
    /// Size of the output file in bytes.
    pub bytes: u64,
    /// Average bitrate of the output file (container included), bits/s.
    pub bitrate: u32,
    /// Sample rate of the uploaded audio, Hz.
    pub input_sample_rate: u32,
    /// Channel count of the uploaded audio (downmixed to mono).
    pub input_channels: u16,
    /// Integrated loudness of the upload (after downmix), LUFS.
    pub input_loudness_lufs: f64,
    /// Gain applied to reach the target, dB (negative = attenuated).
    pub gain_db: f64,
}

/// Transcodes `input` (any supported audio file) into an Ogg Opus programme
/// at `output`, atomically. See the module documentation.
pub fn transcode_file(
    input: &Path,
    output: &Path,
    options: &TranscodeOptions,
) -> Result<TranscodeReport, TranscodeError> {
    let started = Instant::now();
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Fail on bad settings before doing any work.
    let mut encoder = OpusFrameEncoder::new(options.bitrate, options.complexity)?;

    // Pass 1: decode, resample, measure, spill.
    let mut decoder = MonoDecoder::open(input, options.max_duration)?;
    let input_sample_rate = decoder.sample_rate();
    let input_channels = u16::try_from(decoder.channels()).unwrap_or(u16::MAX);
    let mut resampler = StreamResampler::new(input_sample_rate)?;
    let mut meter = LoudnessMeter::new()?;
    let mut spill = SpillWriter::new(dir)?;
    {
        let mut sink = |chunk: &[f32]| -> Result<(), TranscodeError> {
            meter.add(chunk)?;
            spill.write(chunk)?;
            Ok(())
        };
        while let Some(chunk) = decoder.next_chunk()? {
            resampler.push(chunk, &mut sink)?;
        }
        resampler.finish(&mut sink)?;
    }
    let samples = spill.len();
    if samples < MIN_SAMPLES {
        return Err(TranscodeError::Empty);
    }
    let measurement = meter.finish()?;
    let gain_db = normalisation_gain_db(&measurement).ok_or(TranscodeError::Silent)?;
    let analysed = started.elapsed();

    // Pass 2: gain, encode, write atomically.
    let pre_skip = encoder.lookahead();
    let head = OpusHead {
        pre_skip,
        input_sample_rate,
    };
    let vendor = format!("Loa {} / {}", env!("CARGO_PKG_VERSION"), opus::version());
    let mut comments = Vec::new();
    if let Some(title) = &options.title {
        comments.push(("TITLE", title.as_str()));
    }
    let serial = stream_serial(
        samples,
        measurement.integrated_lufs,
        measurement.sample_peak,
    );
    let part = tempfile::Builder::new()
        .prefix(".transcode-")
        .suffix(".opus.part")
        .tempfile_in(dir)?;
    let out = HashingWriter::new(BufWriter::with_capacity(64 * 1024, part.as_file()));
    let mut ogg = OggOpusWriter::new(out, serial, head, &vendor, &comments)?;

    let gain = db_to_linear(gain_db);
    let total = u64::from(pre_skip) + samples;
    let frames = total.div_ceil(FRAME_SAMPLES as u64);
    let mut reader = spill.into_reader()?;
    let mut frame = [0f32; FRAME_SAMPLES];
    for k in 1..=frames {
        let n = reader.read(&mut frame)?;
        for s in &mut frame[..n] {
            *s = (*s * gain).clamp(-1.0, 1.0);
        }
        // Past the end: silence flushes the encoder's lookahead.
        frame[n..].fill(0.0);
        let packet = encoder.encode(&frame)?;
        let last = k == frames;
        let granule = if last {
            total
        } else {
            k * FRAME_SAMPLES as u64
        };
        ogg.write_audio(packet, granule, last)?;
    }
    let (buffered, digest, bytes) = ogg.into_inner().finish();
    buffered.into_inner().map_err(|e| e.into_error())?;
    part.as_file().sync_all()?;
    part.persist(output)
        .map_err(|e| TranscodeError::Io(e.error))?;
    // Make the rename durable. The programme is complete at this point, so
    // a failure here is only logged (returning an error would leave the
    // file behind).
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), "cannot fsync the output directory: {e}");
    }

    let duration_ms = (samples * 1000).div_ceil(u64::from(OUTPUT_RATE));
    let bitrate = (bytes * 8 * u64::from(OUTPUT_RATE) / samples) as u32;
    let report = TranscodeReport {
        duration_ms,
        sha256: hex::encode(digest),
        bytes,
        bitrate,
        input_sample_rate,
        input_channels,
        input_loudness_lufs: measurement.integrated_lufs,
        gain_db,
    };
    tracing::info!(
        input = %input.display(),
        output = %output.display(),
        duration_ms,
        input_sample_rate,
        input_channels,
        input_lufs = format_args!("{:.1}", measurement.integrated_lufs),
        gain_db = format_args!("{gain_db:.1}"),
        bytes,
        analyse_ms = analysed.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "transcoded upload to Ogg Opus"
    );
    Ok(report)
}

/// A deterministic Ogg serial number derived from the content, so that the
/// same upload always gives byte-identical output (and the same SHA-256).
fn stream_serial(samples: u64, lufs: f64, peak: f32) -> u32 {
    // FNV-1a over the measurement.
    let mut h: u32 = 0x811c_9dc5;
    let bytes = samples
        .to_le_bytes()
        .into_iter()
        .chain(lufs.to_bits().to_le_bytes())
        .chain(peak.to_bits().to_le_bytes());
    for b in bytes {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// Passes writes through while computing their SHA-256 and length.
struct HashingWriter<W> {
    /// Where the bytes go.
    inner: W,
    /// Digest of everything written.
    hasher: Sha256,
    /// Bytes written.
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The inner writer, the digest and the byte count.
    fn finish(self) -> (W, [u8; 32], u64) {
        (self.inner, self.hasher.finalize().into(), self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
