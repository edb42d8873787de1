//! Decoding of streamed or stored audio for the relay and programme sources:
//! anything symphonia reads (MP3, AAC in ADTS, Ogg Vorbis, FLAC, WAV, …)
//! plus Ogg Opus ([`super::ogg_opus`]), read front to back without seeking,
//! as mono f32 chunks at the stream's own rate. Unlike the upload
//! transcoder it tolerates what live streams do: starting mid-stream,
//! chained streams, a sample rate that changes, no declared length.

use std::io::{self, Read};
use std::sync::OnceLock;

use symphonia::core::audio::GenericAudioBufferRef;
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::{Hint, Probe, ProbeOptions};
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSourceStream, ReadOnlySource};
use symphonia::core::meta::MetadataOptions;

use super::ogg_opus::{OggOpusReader, looks_like_ogg_opus};

/// How far into a stream the probe looks for a format marker.
const MAX_PROBE_DEPTH: u32 = 256 * 1024;
/// Undecodable packets in a row after which the stream is declared corrupt.
const MAX_CONSECUTIVE_ERRORS: u32 = 32;
/// Bytes looked at to recognise Ogg Opus before handing the stream to symphonia.
const SNIFF_BYTES: usize = 512;
/// Highest sample rate accepted from a stream.
const MAX_SAMPLE_RATE: u32 = 192_000;

/// Why a source stopped delivering audio.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the bytes failed (network error, disk error).
    #[error("read error: {0}")]
    Io(#[from] io::Error),
    /// The data is not audio in a format we decode.
    #[error("not a supported audio stream: {0}")]
    NotAudio(String),
    /// The audio cannot be decoded.
    #[error("corrupt audio stream: {0}")]
    Corrupt(String),
}

/// A decoded stream of mono chunks.
pub trait PcmSource: Send {
    /// The next chunk of mono samples and its sample rate, or `None` at
    /// the end of the stream.
    fn next_chunk(&mut self) -> Result<Option<(&[f32], u32)>, SourceError>;
}

/// Opens a byte stream as a decoded source: Ogg Opus with our own decoder,
/// anything else through symphonia's probe. Fails if the stream is not
/// audio, or ends before its format is recognised.
pub fn open_stream<R>(
    reader: R,
    hint_extension: Option<&str>,
) -> Result<Box<dyn PcmSource>, SourceError>
where
    R: Read + Send + Sync + 'static,
{
    let mut reader = reader;
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    (&mut reader)
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)?;
    if head.is_empty() {
        return Err(SourceError::NotAudio("the stream is empty".into()));
    }
    let replay = io::Cursor::new(head.clone()).chain(reader);
    if looks_like_ogg_opus(&head) {
        let mut source = OggOpusReader::new(replay);
        // Decode up to the first audio so a stream that is not really
        // Opus fails here, not later.
        let first = source.next_chunk()?.map(|(pcm, _)| pcm.to_vec());
        return match first {
            Some(first) => Ok(Box::new(Primed {
                first: Some(first),
                current: Vec::new(),
                rate: 48_000,
                inner: source,
            })),
            None => Err(SourceError::NotAudio(
                "the Ogg Opus stream holds no audio".into(),
            )),
        };
    }
    let source = SymphoniaSource::open(replay, hint_extension)?;
    Ok(Box::new(source))
}

/// A source whose first chunk was decoded while opening.
struct Primed<S> {
    /// The first chunk, handed out by the first `next_chunk`.
    first: Option<Vec<f32>>,
    /// Holds the first chunk while it is borrowed.
    current: Vec<f32>,
    /// Its rate.
    rate: u32,
    /// The rest.
    inner: S,
}

impl<S: PcmSource> PcmSource for Primed<S> {
    fn next_chunk(&mut self) -> Result<Option<(&[f32], u32)>, SourceError> {
        if let Some(first) = self.first.take() {
            self.current = first;
            return Ok(Some((&self.current, self.rate)));
        }
        self.inner.next_chunk()
    }
}

/// The probe: every format symphonia was built with, with a search window
/// wide enough for a stream joined between frames.
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

/// A stream decoded by symphonia.
pub struct SymphoniaSource {
    /// The demuxer.
    format: Box<dyn FormatReader>,
    /// Decoder of the selected track.
    decoder: Box<dyn AudioDecoder>,
    /// The selected track.
    track_id: u32,
    /// Rate of the last chunk.
    rate: u32,
    /// Scratch planar buffer.
    planar: Vec<Vec<f32>>,
    /// The mono chunk handed out.
    mono: Vec<f32>,
    /// `mono` holds the first chunk, decoded while opening.
    pending_first: bool,
    /// Current run of undecodable packets.
    consecutive_errors: u32,
}

impl SymphoniaSource {
    /// Probes `reader` and decodes up to the first audio.
    pub fn open<R>(reader: R, hint_extension: Option<&str>) -> Result<Self, SourceError>
    where
        R: Read + Send + Sync + 'static,
    {
        let mss = MediaSourceStream::new(Box::new(ReadOnlySource::new(reader)), Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = hint_extension {
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
                SymphoniaError::IoError(e) if e.kind() != io::ErrorKind::UnexpectedEof => {
                    SourceError::Io(e)
                }
                other => SourceError::NotAudio(other.to_string()),
            })?;
        let (track_id, decoder) = select_track(format.as_ref())?;
        let mut source = SymphoniaSource {
            format,
            decoder,
            track_id,
            rate: 0,
            planar: Vec::new(),
            mono: Vec::new(),
            pending_first: false,
            consecutive_errors: 0,
        };
        if !source.decode_next()? {
            return Err(SourceError::NotAudio(
                "the stream ended before any audio".into(),
            ));
        }
        source.pending_first = true;
        Ok(source)
    }

    /// Decodes until a packet yields audio (into `self.mono`) or the stream ends.
    fn decode_next(&mut self) -> Result<bool, SourceError> {
        loop {
            let packet = match self.format.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(false),
                Err(SymphoniaError::ResetRequired) => {
                    // A chained stream: continue with its new track.
                    let (track_id, decoder) = select_track(self.format.as_ref())?;
                    self.track_id = track_id;
                    self.decoder = decoder;
                    continue;
                }
                Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(false);
                }
                Err(SymphoniaError::IoError(e)) => return Err(SourceError::Io(e)),
                Err(SymphoniaError::DecodeError(what)) => {
                    self.note_error(what)?;
                    continue;
                }
                Err(other) => return Err(SourceError::Corrupt(other.to_string())),
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
                Err(SymphoniaError::IoError(_)) => {
                    self.note_error("packet ends early")?;
                    continue;
                }
                Err(other) => return Err(SourceError::Corrupt(other.to_string())),
            };
            self.consecutive_errors = 0;
            if buffer.frames() == 0 {
                continue;
            }
            let rate = buffer.spec().rate();
            if rate == 0 || rate > MAX_SAMPLE_RATE {
                return Err(SourceError::Corrupt(format!(
                    "impossible sample rate {rate} Hz"
                )));
            }
            self.rate = rate;
            downmix(&buffer, &mut self.planar, &mut self.mono);
            return Ok(true);
        }
    }

    fn note_error(&mut self, what: &str) -> Result<(), SourceError> {
        self.consecutive_errors += 1;
        tracing::debug!(
            errors = self.consecutive_errors,
            "skipping undecodable packet: {what}"
        );
        if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
            return Err(SourceError::Corrupt(format!(
                "{} packets in a row could not be decoded (last: {what})",
                self.consecutive_errors
            )));
        }
        Ok(())
    }
}

impl PcmSource for SymphoniaSource {
    fn next_chunk(&mut self) -> Result<Option<(&[f32], u32)>, SourceError> {
        if self.pending_first {
            self.pending_first = false;
            return Ok(Some((&self.mono, self.rate)));
        }
        if self.decode_next()? {
            Ok(Some((&self.mono, self.rate)))
        } else {
            Ok(None)
        }
    }
}

/// The default audio track and a decoder for it.
fn select_track(format: &dyn FormatReader) -> Result<(u32, Box<dyn AudioDecoder>), SourceError> {
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| SourceError::NotAudio("the stream has no audio track".into()))?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| SourceError::NotAudio("the audio track has no codec".into()))?;
    // Streams have no trustworthy length: never trim to one.
    let options = AudioDecoderOptions::default().gapless(false);
    let decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &options)
        .map_err(|e| match e {
            SymphoniaError::Unsupported(what) => {
                SourceError::NotAudio(format!("unsupported codec: {what}"))
            }
            other => SourceError::Corrupt(format!("bad codec parameters: {other}")),
        })?;
    Ok((track.id, decoder))
}

/// Averages all channels of `buffer` into `mono`.
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
