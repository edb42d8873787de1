//! Reads a cached programme: an Ogg Opus file (RFC 7845) decoded with
//! libopus into mono `f32` samples at 48 kHz, frame by frame. Honours the
//! header's pre-skip and output gain, trims the last frame to the final
//! granule position, and can skip ahead cheaply (for joining a programme in
//! progress) by counting packet samples without decoding them.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use ogg::PacketReader;

/// Output sample rate (and Opus's granule rate).
const RATE: u32 = 48_000;
/// Largest Opus frame: 120 ms at 48 kHz.
const MAX_FRAME: usize = 5_760;
/// Audio decoded (and dropped) before a skip target so the decoder state has
/// settled: RFC 7845 §4.6 recommends at least 80 ms of pre-roll.
const PRE_ROLL: u64 = 3_840;

/// Why a programme file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot open audio: {0}")]
    Io(#[from] std::io::Error),
    #[error("broken Ogg container: {0}")]
    Ogg(#[from] ogg::OggReadError),
    #[error("not an Ogg Opus file: {0}")]
    NotOpus(String),
    #[error("Opus decoding failed: {0}")]
    Opus(#[from] opus::Error),
}

/// A programme being decoded.
pub struct OpusSource {
    /// The Ogg demuxer over the file.
    reader: PacketReader<BufReader<File>>,
    /// libopus, decoding to one channel (it downmixes stereo streams itself).
    decoder: opus::Decoder,
    /// Serial of the Opus logical stream; packets of other streams are ignored.
    serial: u32,
    /// Decoded samples still to drop from the start (the header's pre-skip).
    pre_skip_left: u64,
    /// Granule position reached: samples produced by the decoder so far,
    /// including pre-skip, in 48 kHz units.
    granule: u64,
    /// Output samples handed out (or skipped) so far: the play position.
    position: u64,
    /// Scratch buffer for one decoded frame.
    frame: Vec<f32>,
    /// Samples at the start of `frame` not yet handed out, left there by a
    /// skip that ended inside a frame.
    tail: Option<usize>,
    /// Set once the end of the stream was reached.
    ended: bool,
}

impl OpusSource {
    /// Opens `path` and reads the Opus identification and comment headers.
    pub fn open(path: &Path) -> Result<OpusSource, DecodeError> {
        let mut reader = PacketReader::new(BufReader::new(File::open(path)?));
        let head = reader
            .read_packet()?
            .ok_or_else(|| DecodeError::NotOpus("empty file".into()))?;
        let data = &head.data;
        if data.len() < 19 || &data[..8] != b"OpusHead" {
            return Err(DecodeError::NotOpus("no OpusHead packet".into()));
        }
        if data[8] >> 4 != 0 {
            return Err(DecodeError::NotOpus(format!(
                "unsupported version {}",
                data[8]
            )));
        }
        let channels = data[9];
        let pre_skip = u16::from_le_bytes([data[10], data[11]]) as u64;
        let gain_q8 = i16::from_le_bytes([data[16], data[17]]);
        let mapping = data[18];
        if mapping != 0 || !(1..=2).contains(&channels) {
            return Err(DecodeError::NotOpus(format!(
                "unsupported channel mapping {mapping} with {channels} channels"
            )));
        }
        let serial = head.stream_serial();
        let mut decoder = opus::Decoder::new(RATE, opus::Channels::Mono)?;
        decoder.set_gain(gain_q8 as i32)?;
        // The comment header follows; it carries no audio.
        loop {
            let packet = reader
                .read_packet()?
                .ok_or_else(|| DecodeError::NotOpus("no OpusTags packet".into()))?;
            if packet.stream_serial() != serial {
                continue;
            }
            if !packet.data.starts_with(b"OpusTags") {
                return Err(DecodeError::NotOpus("no OpusTags packet".into()));
            }
            break;
        }
        Ok(OpusSource {
            reader,
            decoder,
            serial,
            pre_skip_left: pre_skip,
            granule: 0,
            position: 0,
            frame: vec![0.0; MAX_FRAME],
            tail: None,
            ended: false,
        })
    }

    /// Samples handed out or skipped so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next decoded samples (usually one 20 ms frame), or `None` at the
    /// end of the programme. The slice is valid until the next call.
    pub fn next_chunk(&mut self) -> Result<Option<&[f32]>, DecodeError> {
        loop {
            let Some((start, len)) = self.decode_next(true)? else {
                return Ok(None);
            };
            if len > 0 {
                self.position += len as u64;
                return Ok(Some(&self.frame[start..start + len]));
            }
        }
    }

    /// Advances the play position by `samples` without producing them.
    /// Whole packets well before the target are only counted, not decoded.
    pub fn skip(&mut self, samples: u64) -> Result<(), DecodeError> {
        let target = self.position + samples;
        while self.position < target {
            let fast = target - self.position > PRE_ROLL + MAX_FRAME as u64;
            let Some((start, len)) = self.decode_next(!fast)? else {
                return Ok(());
            };
            let take = (len as u64).min(target - self.position) as usize;
            self.position += take as u64;
            if take < len {
                // The target falls inside this frame: keep its tail for the next call.
                self.frame.copy_within(start + take..start + len, 0);
                self.tail = Some(len - take);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Reads one packet of the stream and decodes it (or, with `decode`
    /// false, only counts its samples). Returns where the usable output lies
    /// in `self.frame` after pre-skip and end trimming.
    fn decode_next(&mut self, decode: bool) -> Result<Option<(usize, usize)>, DecodeError> {
        if let Some(len) = self.tail.take() {
            return Ok(Some((0, len)));
        }
        if self.ended {
            return Ok(None);
        }
        let packet = loop {
            match self.reader.read_packet()? {
                None => {
                    self.ended = true;
                    return Ok(None);
                }
                Some(p) if p.stream_serial() == self.serial => break p,
                Some(_) => continue,
            }
        };
        let mut produced = if decode {
            self.decoder
                .decode_float(&packet.data, &mut self.frame, false)?
        } else {
            let n = self.decoder.get_nb_samples(&packet.data)?;
            self.decoder.reset_state()?;
            self.frame[..n.min(MAX_FRAME)].fill(0.0);
            n.min(MAX_FRAME)
        };
        let granule_before = self.granule;
        self.granule += produced as u64;
        if packet.last_in_stream() {
            self.ended = true;
            let end = packet.absgp_page();
            if end >= granule_before && end < self.granule {
                produced = (end - granule_before) as usize;
            }
        }
        let skip = (self.pre_skip_left as usize).min(produced);
        self.pre_skip_left -= skip as u64;
        Ok(Some((skip, produced - skip)))
    }
}
