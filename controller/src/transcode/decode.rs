//! Decoding of an uploaded file into mono f32 chunks at the file's own sample
//! rate, with symphonia. The file is streamed packet by packet (never loaded
//! whole) and every way an upload can be bad is turned into a precise
//! `TranscodeError`: not audio, no audio, corrupt/truncated, too long.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use symphonia::core::audio::GenericAudioBufferRef;
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::{Hint, Probe, ProbeOptions};
use symphonia::core::formats::well_known::{
    FORMAT_ID_ADTS, FORMAT_ID_ISOMP4, FORMAT_ID_MP1, FORMAT_ID_MP2, FORMAT_ID_MP3,
};
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use super::TranscodeError;
use super::mp4::{EditTrim, audio_edit_trim};

/// How far into the file (after any ID3/APE tags) the probe looks for a
/// container marker. Real audio files start within a few bytes; a large
/// window only makes it likelier that random bytes or an image contain
/// something that looks like an MPEG frame header.
const MAX_PROBE_DEPTH: u32 = 64 * 1024;

/// Undecodable packets in a row after which the file is declared corrupt.
const MAX_CONSECUTIVE_ERRORS: u32 = 16;

/// A file whose decodable audio is this much shorter than its header says
/// (both in seconds and as a fraction) is truncated or lying: refused.
const TRUNCATION_TOLERANCE_SECS: f64 = 1.0;
/// See `TRUNCATION_TOLERANCE_SECS`; fraction of the declared length.
const TRUNCATION_TOLERANCE_FRACTION: f64 = 0.02;

/// Highest input sample rate accepted; anything above is a broken header.
const MAX_SAMPLE_RATE: u32 = 768_000;

/// Whether an I/O error symphonia returned while reading the upload comes
/// from its content rather than from the disk: the file ends early, a size
/// field sends a seek before the start of the file (`EINVAL`, found by
/// fuzzing: an APE tag claiming gigabytes), or a reader calls the bytes
/// invalid. Those are the uploader's fault (`422`/`415`); other I/O errors
/// are ours (`500`).
fn caused_by_content(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof | ErrorKind::InvalidInput | ErrorKind::InvalidData
    )
}

/// The probe used for uploads: every format symphonia was built with, but a
/// bounded search window (see `MAX_PROBE_DEPTH`).
fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| {
        let mut probe = Probe::new_with_options(&ProbeOptions {
            max_probe_depth: MAX_PROBE_DEPTH,
            ..ProbeOptions::default()
        });
        symphonia::default::register_enabled_formats(&mut probe);
        probe
    })
}

/// Streams an audio file as mono f32 chunks at its native sample rate.
pub(crate) struct MonoDecoder {
    /// The demuxer, owning the open file.
    format: Box<dyn FormatReader>,
    /// Decoder of the selected audio track.
    decoder: Box<dyn AudioDecoder>,
    /// Packets of other tracks (video, cover art) are skipped.
    track_id: u32,
    /// Native sample rate; all chunks are at this rate.
    sample_rate: u32,
    /// Channel count of the first decoded buffer (reported to the user).
    channels: usize,
    /// Length the container claims, in frames, to detect truncated files.
    declared_frames: Option<u64>,
    /// Frames (per channel) decoded so far.
    frames: u64,
    /// `max_duration` expressed in frames at `sample_rate`.
    max_frames: u64,
    /// The configured limit, for the `TooLong` error.
    limit: Duration,
    /// Scratch planar copy of the last decoded buffer, reused.
    planar: Vec<Vec<f32>>,
    /// The mono chunk handed out by `next_chunk`, reused.
    mono: Vec<f32>,
    /// `mono` holds the first chunk (decoded while opening) not yet handed out.
    pending_first: bool,
    /// Packets decoded successfully.
    packets_ok: u64,
    /// Packets that failed to decode (skipped).
    packet_errors: u64,
    /// Current run of failed packets, see `MAX_CONSECUTIVE_ERRORS`.
    consecutive_errors: u32,
    /// The end of the stream has been reached and checked.
    finished: bool,
    /// MP4 edit list: encoder priming to drop and real length to keep.
    edit: Option<EditTrim>,
    /// Decoded frames still to drop at the start (from `edit`).
    skip_frames: u64,
    /// Frames to keep in total (from `edit`); decoding stops there.
    keep_frames: Option<u64>,
}

impl MonoDecoder {
    /// Opens and probes `path` and decodes up to the first audio so that the
    /// sample rate and channel count are known.
    pub(crate) fn open(path: &Path, max_duration: Duration) -> Result<Self, TranscodeError> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Err(TranscodeError::Empty);
        }
        let mss = MediaSourceStream::new(Box::new(file), Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            // Only a hint: the content decides.
            hint.with_extension(ext);
        }
        let format = probe()
            .probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .map_err(|e| match e {
                SymphoniaError::Unsupported(what) => TranscodeError::NotAudio(what.to_owned()),
                SymphoniaError::IoError(e) if !caused_by_content(&e) => TranscodeError::Io(e),
                // A reader recognised something but could not parse it. Only
                // a file that starts like an audio file is "corrupt audio";
                // random bytes can contain a plausible marker by chance.
                other if starts_like_audio(path) => {
                    TranscodeError::Corrupt(format!("unreadable header: {other}"))
                }
                other => TranscodeError::NotAudio(other.to_string()),
            })?;
        let mut decoder = Self::with_format(format, max_duration)?;
        if decoder.format.format_info().format == FORMAT_ID_ISOMP4 {
            decoder.edit = audio_edit_trim(path);
            tracing::debug!(edit = ?decoder.edit, "MP4 edit list");
        }
        decoder.decode_first()?;
        Ok(decoder)
    }

    /// Selects the audio track of an opened container and builds its decoder.
    fn with_format(format: Box<dyn FormatReader>, limit: Duration) -> Result<Self, TranscodeError> {
        let (track_id, decoder, sample_rate, declared_frames) = select_track(format.as_ref())?;
        Ok(MonoDecoder {
            format,
            decoder,
            track_id,
            sample_rate: sample_rate.unwrap_or(0),
            channels: 0,
            declared_frames,
            frames: 0,
            max_frames: 0,
            limit,
            planar: Vec::new(),
            mono: Vec::new(),
            pending_first: false,
            packets_ok: 0,
            packet_errors: 0,
            consecutive_errors: 0,
            finished: false,
            edit: None,
            skip_frames: 0,
            keep_frames: None,
        })
    }

    /// Decodes the first non-empty buffer to learn the real sample rate and
    /// channel layout (containers do not always declare them).
    fn decode_first(&mut self) -> Result<(), TranscodeError> {
        match self.decode_next()? {
            true => {
                self.pending_first = true;
                Ok(())
            }
            false => {
                if self.packet_errors > 0 {
                    Err(TranscodeError::NotAudio(
                        "no packet of the audio track could be decoded".to_owned(),
                    ))
                } else {
                    Err(TranscodeError::Empty)
                }
            }
        }
    }

    /// Native sample rate of the file, in Hz.
    pub(crate) fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Number of channels of the file (before downmixing).
    pub(crate) fn channels(&self) -> usize {
        self.channels
    }

    /// The next chunk of mono samples, or `None` at the end of the audio.
    pub(crate) fn next_chunk(&mut self) -> Result<Option<&[f32]>, TranscodeError> {
        if self.pending_first {
            self.pending_first = false;
            return Ok(Some(&self.mono));
        }
        if self.decode_next()? {
            Ok(Some(&self.mono))
        } else {
            Ok(None)
        }
    }

    /// Decodes packets until one yields audio (into `self.mono`, returns
    /// true) or the stream ends (checks completeness, returns false).
    fn decode_next(&mut self) -> Result<bool, TranscodeError> {
        while !self.finished {
            let packet = match self.format.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => {
                    self.finish()?;
                    break;
                }
                Err(SymphoniaError::ResetRequired) => {
                    // A chained stream (e.g. concatenated Ogg files): continue
                    // with the new track if it has the same sample rate.
                    let (track_id, decoder, rate, _) = select_track(self.format.as_ref())?;
                    if rate.is_some_and(|r| r != self.sample_rate) {
                        return Err(TranscodeError::Corrupt(
                            "the sample rate changes in the middle of the file".to_owned(),
                        ));
                    }
                    self.track_id = track_id;
                    self.decoder = decoder;
                    self.declared_frames = None;
                    continue;
                }
                Err(SymphoniaError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                    // The file stops in the middle of a packet: truncated. If the
                    // header tells the length, `finish` decides whether the loss
                    // is negligible.
                    tracing::debug!("input ends inside a packet: {e}");
                    self.finish()?;
                    break;
                }
                Err(SymphoniaError::IoError(e)) if caused_by_content(&e) => {
                    return Err(TranscodeError::Corrupt(format!("unreadable file: {e}")));
                }
                Err(SymphoniaError::IoError(e)) => return Err(TranscodeError::Io(e)),
                Err(SymphoniaError::DecodeError(what)) => {
                    self.note_error(what)?;
                    continue;
                }
                Err(other) => return Err(TranscodeError::Corrupt(other.to_string())),
            };
            if packet.track_id != self.track_id {
                continue;
            }
            let buffer = match self.decoder.decode(&packet) {
                Ok(buffer) => buffer,
                Err(SymphoniaError::DecodeError(what)) => {
                    self.note_error(what)?;
                    continue;
                }
                Err(SymphoniaError::IoError(e)) => {
                    // Per symphonia's contract an I/O error from `decode` means a
                    // malformed packet (the packet is in memory), not a disk error.
                    tracing::debug!("undecodable packet: {e}");
                    self.note_error("packet ends early")?;
                    continue;
                }
                Err(other) => return Err(TranscodeError::Corrupt(other.to_string())),
            };
            self.packets_ok += 1;
            self.consecutive_errors = 0;
            if buffer.frames() == 0 {
                continue;
            }
            let rate = buffer.spec().rate();
            if self.channels == 0 {
                if rate == 0 || rate > MAX_SAMPLE_RATE {
                    return Err(TranscodeError::Corrupt(format!(
                        "impossible sample rate {rate} Hz"
                    )));
                }
                self.sample_rate = rate;
                self.channels = buffer.spec().channels().count().max(1);
                self.max_frames = (self.limit.as_secs_f64() * f64::from(rate)).ceil() as u64;
                if let Some(edit) = self.edit {
                    self.skip_frames = edit.to_frames(edit.skip_ticks, rate);
                    self.keep_frames = edit.keep_ticks.map(|t| edit.to_frames(t, rate));
                    self.declared_frames = self.keep_frames.or(self.declared_frames);
                }
            } else if rate != self.sample_rate {
                return Err(TranscodeError::Corrupt(format!(
                    "the sample rate changes from {} Hz to {rate} Hz in the middle of the file",
                    self.sample_rate
                )));
            }
            downmix(&buffer, &mut self.planar, &mut self.mono);
            if self.skip_frames > 0 {
                let skip = self.skip_frames.min(self.mono.len() as u64);
                self.mono.drain(..skip as usize);
                self.skip_frames -= skip;
            }
            if let Some(keep) = self.keep_frames {
                let room = keep.saturating_sub(self.frames);
                self.mono
                    .truncate(room.min(self.mono.len() as u64) as usize);
            }
            if self.mono.is_empty() {
                continue;
            }
            self.frames += self.mono.len() as u64;
            if self.frames > self.max_frames {
                return Err(TranscodeError::TooLong { limit: self.limit });
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Counts an undecodable packet; too many in a row means a corrupt file.
    fn note_error(&mut self, what: &str) -> Result<(), TranscodeError> {
        self.packet_errors += 1;
        self.consecutive_errors += 1;
        tracing::debug!(
            errors = self.packet_errors,
            ok = self.packets_ok,
            "skipping undecodable packet: {what}"
        );
        if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
            return Err(TranscodeError::Corrupt(format!(
                "{} packets in a row could not be decoded (last: {what})",
                self.consecutive_errors
            )));
        }
        Ok(())
    }

    /// End of stream: the decoded length must match what the header promised.
    fn finish(&mut self) -> Result<(), TranscodeError> {
        self.finished = true;
        if self.packets_ok > 0 && self.packet_errors * 10 > self.packets_ok {
            return Err(TranscodeError::Corrupt(format!(
                "{} of {} packets could not be decoded",
                self.packet_errors,
                self.packets_ok + self.packet_errors
            )));
        }
        if let (Some(declared), true) = (self.declared_frames, self.sample_rate > 0) {
            let rate = f64::from(self.sample_rate);
            let missing = declared.saturating_sub(self.frames) as f64;
            if missing > TRUNCATION_TOLERANCE_SECS * rate
                && missing > TRUNCATION_TOLERANCE_FRACTION * declared as f64
            {
                return Err(TranscodeError::Corrupt(format!(
                    "the header declares {:.1} s of audio but only {:.1} s could be decoded \
                     (truncated or corrupt file)",
                    declared as f64 / rate,
                    self.frames as f64 / rate
                )));
            }
        }
        Ok(())
    }
}

/// Whether the file begins with the signature of a supported audio format.
fn starts_like_audio(path: &Path) -> bool {
    let mut head = [0u8; 12];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let head = &head[..n];
    let is = |at: usize, magic: &[u8]| head.get(at..at + magic.len()) == Some(magic);
    (is(0, b"RIFF") && is(8, b"WAVE"))
        || is(0, b"fLaC")
        || is(0, b"OggS")
        || is(0, b"ID3")
        || is(4, b"ftyp")
        || is(0, b"FORM")
        || is(0, b"caff")
        || is(0, &[0x1A, 0x45, 0xDF, 0xA3])
        // MPEG audio / ADTS frame sync: 11 or 12 set bits.
        || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0)
}

/// The default audio track of `format` with a decoder for it, its declared
/// sample rate and (exact) length.
#[allow(clippy::type_complexity)]
fn select_track(
    format: &dyn FormatReader,
) -> Result<(u32, Box<dyn AudioDecoder>, Option<u32>, Option<u64>), TranscodeError> {
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| TranscodeError::NotAudio("the file has no audio track".to_owned()))?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| TranscodeError::NotAudio("the audio track has no codec".to_owned()))?;
    // MPEG audio and ADTS streams without a LAME/Xing header have no stated
    // length: symphonia estimates one from the first frame's bitrate, which
    // is wrong for VBR files, and its gapless mode would then cut the audio
    // at the estimate. Such streams carry no delay/padding information
    // anyway, so decode them without trimming and without a length check.
    let estimated_length = [FORMAT_ID_MP1, FORMAT_ID_MP2, FORMAT_ID_MP3, FORMAT_ID_ADTS]
        .contains(&format.format_info().format)
        && track.delay.is_none();
    let options = AudioDecoderOptions::default().gapless(!estimated_length);
    let declared_frames = if estimated_length {
        None
    } else {
        track.num_frames
    };
    let decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &options)
        .map_err(|e| match e {
            SymphoniaError::Unsupported(what) => {
                TranscodeError::NotAudio(format!("unsupported codec: {what}"))
            }
            other => TranscodeError::Corrupt(format!("bad codec parameters: {other}")),
        })?;
    Ok((track.id, decoder, params.sample_rate, declared_frames))
}

/// Averages all channels of `buffer` into `mono` (resized to the frame count).
fn downmix(buffer: &GenericAudioBufferRef<'_>, planar: &mut Vec<Vec<f32>>, mono: &mut Vec<f32>) {
    buffer.copy_to_vecs_planar::<f32>(planar);
    let frames = buffer.frames();
    mono.clear();
    match planar.as_slice() {
        [] => mono.resize(frames, 0.0),
        [only] => mono.extend_from_slice(&only[..frames]),
        [first, rest @ ..] => {
            mono.extend_from_slice(&first[..frames]);
            for plane in rest {
                for (m, s) in mono.iter_mut().zip(plane) {
                    *m += *s;
                }
            }
            let scale = 1.0 / planar.len() as f32;
            for m in mono.iter_mut() {
                *m *= scale;
            }
        }
    }
}
