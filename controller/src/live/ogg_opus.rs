//! A streaming Ogg Opus decoder (RFC 3533 pages, RFC 7845 mapping) for the
//! programme and relay sources. symphonia has no Opus decoder, and the
//! `ogg` crate wants a seekable reader; this reads any `Read` front to back:
//! it checks each page's CRC, resynchronises on the capture pattern after
//! garbage, follows chained streams (a new `OpusHead` at each beginning of
//! stream, as Icecast sends on metadata changes), drops the pre-skip and
//! downmixes to mono 48 kHz.

use std::io::{self, Read};

use opus::{Channels, Decoder};

use super::decode::{PcmSource, SourceError};
use super::frames::RATE;

/// Longest run of bytes skipped looking for a page before giving up.
const MAX_RESYNC_BYTES: usize = 256 * 1024;
/// Largest Opus frame: 120 ms at 48 kHz.
const MAX_FRAME_SAMPLES: usize = 5_760;
/// Undecodable packets in a row after which the stream is declared corrupt.
const MAX_CONSECUTIVE_ERRORS: u32 = 16;
/// Largest packet accepted (a packet spanning pages is bounded by this).
const MAX_PACKET_BYTES: usize = 64 * 1024;

/// Whether `head` (the first bytes of a stream) is an Ogg page whose first
/// packet is an `OpusHead`.
pub fn looks_like_ogg_opus(head: &[u8]) -> bool {
    if head.len() < 27 || &head[..4] != b"OggS" {
        return false;
    }
    let segments = usize::from(head[26]);
    let start = 27 + segments;
    head.get(start..start + 8) == Some(b"OpusHead")
}

/// One Ogg page.
struct Page {
    /// Header type flags: 1 continued, 2 beginning of stream, 4 end of stream.
    flags: u8,
    /// Logical stream serial number.
    serial: u32,
    /// Lacing values.
    segments: Vec<u8>,
    /// Page body.
    body: Vec<u8>,
}

/// What the decoder expects next in the current logical stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The identification header.
    Head,
    /// The comment header.
    Tags,
    /// Audio packets.
    Audio,
}

/// Decodes an Ogg Opus byte stream into mono 48 kHz samples.
pub struct OggOpusReader<R: Read> {
    /// The byte stream.
    reader: R,
    /// The logical stream being decoded.
    serial: Option<u32>,
    /// What comes next in that stream.
    expect: Expect,
    /// The packet being assembled across segments and pages.
    partial: Vec<u8>,
    /// Discarding the tail of a packet whose start was not seen.
    skipping: bool,
    /// Complete packets waiting to be decoded.
    packets: std::collections::VecDeque<Vec<u8>>,
    /// The Opus decoder of the current stream.
    decoder: Option<Decoder>,
    /// Channels of the current stream (1 or 2).
    channels: usize,
    /// Samples still to drop at the start of the current stream.
    pre_skip: usize,
    /// Linear output gain from the header.
    gain: f32,
    /// Decoded interleaved samples, reused.
    decoded: Vec<f32>,
    /// The mono chunk handed out.
    mono: Vec<f32>,
    /// Current run of undecodable packets.
    consecutive_errors: u32,
    /// The byte stream ended.
    eof: bool,
}

impl<R: Read> OggOpusReader<R> {
    /// A decoder reading `reader` from its start.
    pub fn new(reader: R) -> Self {
        OggOpusReader {
            reader,
            serial: None,
            expect: Expect::Head,
            partial: Vec::new(),
            skipping: false,
            packets: Default::default(),
            decoder: None,
            channels: 1,
            pre_skip: 0,
            gain: 1.0,
            decoded: vec![0.0; MAX_FRAME_SAMPLES * 2],
            mono: Vec::new(),
            consecutive_errors: 0,
            eof: false,
        }
    }

    /// Reads the next page, resynchronising past garbage and skipping pages
    /// with a bad CRC; `None` at the end of the stream (a truncated last
    /// page counts as the end).
    fn read_page(&mut self) -> Result<Option<Page>, SourceError> {
        let mut skipped = 0usize;
        loop {
            // Find the capture pattern.
            let mut window = [0u8; 4];
            if read_full(&mut self.reader, &mut window)? < 4 {
                return Ok(None);
            }
            while &window != b"OggS" {
                let mut byte = [0u8; 1];
                if read_full(&mut self.reader, &mut byte)? == 0 {
                    return Ok(None);
                }
                window.copy_within(1.., 0);
                window[3] = byte[0];
                skipped += 1;
                if skipped > MAX_RESYNC_BYTES {
                    return Err(SourceError::Corrupt(
                        "no valid Ogg page found in 256 KiB of data".into(),
                    ));
                }
            }
            let mut header = [0u8; 27];
            header[..4].copy_from_slice(b"OggS");
            if read_full(&mut self.reader, &mut header[4..])? < 23 {
                return Ok(None);
            }
            let nsegs = usize::from(header[26]);
            let mut segments = vec![0u8; nsegs];
            if read_full(&mut self.reader, &mut segments)? < nsegs {
                return Ok(None);
            }
            let len: usize = segments.iter().map(|&s| usize::from(s)).sum();
            let mut body = vec![0u8; len];
            if read_full(&mut self.reader, &mut body)? < len {
                return Ok(None);
            }
            let stored = u32::from_le_bytes(header[22..26].try_into().expect("4 bytes"));
            header[22..26].fill(0);
            let crc = crc32(crc32(crc32(0, &header), &segments), &body);
            if header[4] != 0 || crc != stored {
                tracing::debug!("skipping a damaged Ogg page");
                skipped += 27 + nsegs + len;
                if skipped > MAX_RESYNC_BYTES {
                    return Err(SourceError::Corrupt(
                        "no valid Ogg page found in 256 KiB of data".into(),
                    ));
                }
                continue;
            }
            if skipped > 0 {
                tracing::debug!(skipped, "resynchronised on an Ogg page");
            }
            return Ok(Some(Page {
                flags: header[5],
                serial: u32::from_le_bytes(header[14..18].try_into().expect("4 bytes")),
                segments,
                body,
            }));
        }
    }

    /// Splits a page into packets of the current stream.
    fn take_page(&mut self, page: Page) {
        let bos = page.flags & 0x02 != 0;
        if bos {
            // A new logical stream: follow it if it is Opus (checked on its head).
            self.serial = Some(page.serial);
            self.expect = Expect::Head;
            self.partial.clear();
            self.skipping = false;
            self.packets.clear();
        } else if self.serial.is_none() {
            // Joined in the middle: follow the first stream seen; its
            // headers are missing, so it cannot be decoded until the next
            // beginning of stream.
            self.serial = Some(page.serial);
        }
        if Some(page.serial) != self.serial {
            return;
        }
        if page.flags & 0x01 != 0 && self.partial.is_empty() {
            // Continuation of a packet whose start we did not see.
            self.skipping = true;
        } else if page.flags & 0x01 == 0 && !self.partial.is_empty() {
            // The previous packet never finished: drop it.
            self.partial.clear();
        }
        let mut offset = 0;
        for &lacing in &page.segments {
            let seg = &page.body[offset..offset + usize::from(lacing)];
            offset += usize::from(lacing);
            if !self.skipping && self.partial.len() + seg.len() <= MAX_PACKET_BYTES {
                self.partial.extend_from_slice(seg);
            }
            if lacing < 255 {
                if self.skipping {
                    self.skipping = false;
                } else {
                    self.packets.push_back(std::mem::take(&mut self.partial));
                }
                self.partial.clear();
            }
        }
    }

    /// Handles one packet; returns whether `self.mono` holds new audio.
    fn take_packet(&mut self, packet: Vec<u8>) -> Result<bool, SourceError> {
        match self.expect {
            Expect::Head => {
                if packet.len() < 19 || &packet[..8] != b"OpusHead" {
                    // Not an Opus stream (or headers missed): ignore until the next one.
                    self.decoder = None;
                    return Ok(false);
                }
                let channels = usize::from(packet[9]);
                let mapping = packet[18];
                if mapping != 0 || !(1..=2).contains(&channels) {
                    return Err(SourceError::NotAudio(format!(
                        "Ogg Opus with {channels} channels in mapping family {mapping} is not supported"
                    )));
                }
                let pre_skip = u16::from_le_bytes([packet[10], packet[11]]);
                let gain_q8 = i16::from_le_bytes([packet[16], packet[17]]);
                let layout = if channels == 2 {
                    Channels::Stereo
                } else {
                    Channels::Mono
                };
                let decoder = Decoder::new(RATE, layout)
                    .map_err(|e| SourceError::Corrupt(format!("libopus decoder: {e}")))?;
                self.decoder = Some(decoder);
                self.channels = channels;
                self.pre_skip = usize::from(pre_skip);
                self.gain = 10f32.powf(f32::from(gain_q8) / 256.0 / 20.0);
                self.expect = Expect::Tags;
                Ok(false)
            }
            Expect::Tags => {
                self.expect = Expect::Audio;
                if packet.starts_with(b"OpusTags") {
                    Ok(false)
                } else {
                    self.decode(&packet)
                }
            }
            Expect::Audio => self.decode(&packet),
        }
    }

    fn decode(&mut self, packet: &[u8]) -> Result<bool, SourceError> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(false);
        };
        let frames = match decoder.decode_float(packet, &mut self.decoded, false) {
            Ok(n) => n,
            Err(e) => {
                self.consecutive_errors += 1;
                tracing::debug!(error = %e, "undecodable Opus packet");
                if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                    return Err(SourceError::Corrupt(format!(
                        "{} Opus packets in a row could not be decoded ({e})",
                        self.consecutive_errors
                    )));
                }
                return Ok(false);
            }
        };
        self.consecutive_errors = 0;
        self.mono.clear();
        let ch = self.channels;
        let scale = self.gain / ch as f32;
        for f in 0..frames {
            let sum: f32 = self.decoded[f * ch..(f + 1) * ch].iter().sum();
            self.mono.push(sum * scale);
        }
        let skip = self.pre_skip.min(self.mono.len());
        self.pre_skip -= skip;
        self.mono.drain(..skip);
        Ok(!self.mono.is_empty())
    }
}

impl<R: Read + Send> PcmSource for OggOpusReader<R> {
    fn next_chunk(&mut self) -> Result<Option<(&[f32], u32)>, SourceError> {
        loop {
            if let Some(packet) = self.packets.pop_front() {
                if self.take_packet(packet)? {
                    return Ok(Some((&self.mono, RATE)));
                }
                continue;
            }
            if self.eof {
                return Ok(None);
            }
            match self.read_page()? {
                Some(page) => self.take_page(page),
                None => self.eof = true,
            }
        }
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, SourceError> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SourceError::Io(e)),
        }
    }
    Ok(n)
}

/// The Ogg CRC-32 (polynomial 0x04C11DB7, no reflection, zero start).
fn crc32(mut crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, entry) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04C1_1DB7
                } else {
                    r << 1
                };
            }
            *entry = r;
        }
        t
    });
    for &b in data {
        crc = (crc << 8) ^ table[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use ogg::writing::{PacketWriteEndInfo, PacketWriter};

    fn head(channels: u8, pre_skip: u16) -> Vec<u8> {
        let mut b = b"OpusHead".to_vec();
        b.push(1);
        b.push(channels);
        b.extend_from_slice(&pre_skip.to_le_bytes());
        b.extend_from_slice(&48_000u32.to_le_bytes());
        b.extend_from_slice(&0i16.to_le_bytes());
        b.push(0);
        b
    }

    /// An Ogg Opus stream of `frames` 20 ms frames of a 440 Hz tone.
    fn stream(serial: u32, frames: usize, channels: u8) -> Vec<u8> {
        let layout = if channels == 2 {
            Channels::Stereo
        } else {
            Channels::Mono
        };
        let mut enc = opus::Encoder::new(48_000, layout, opus::Application::Audio).unwrap();
        let pre_skip = enc.get_lookahead().unwrap() as u16;
        let mut w = PacketWriter::new(Vec::new());
        w.write_packet(
            head(channels, pre_skip),
            serial,
            PacketWriteEndInfo::EndPage,
            0,
        )
        .unwrap();
        w.write_packet(
            b"OpusTags\0\0\0\0\0\0\0\0".to_vec(),
            serial,
            PacketWriteEndInfo::EndPage,
            0,
        )
        .unwrap();
        let mut out = vec![0u8; 1500];
        for f in 0..frames {
            let pcm: Vec<f32> = (0..960 * usize::from(channels))
                .map(|i| {
                    let n = f * 960 + i / usize::from(channels);
                    (n as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin() * 0.5
                })
                .collect();
            let n = enc.encode_float(&pcm, &mut out).unwrap();
            let end = if f + 1 == frames {
                PacketWriteEndInfo::EndStream
            } else if f % 10 == 9 {
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            w.write_packet(out[..n].to_vec(), serial, end, (f as u64 + 1) * 960)
                .unwrap();
        }
        w.into_inner()
    }

    fn decode_all(bytes: &[u8]) -> Vec<f32> {
        let mut r = OggOpusReader::new(bytes);
        let mut out = Vec::new();
        while let Some((chunk, rate)) = r.next_chunk().unwrap() {
            assert_eq!(rate, 48_000);
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn decodes_mono_and_stereo_and_drops_the_pre_skip() {
        let bytes = stream(1, 50, 1);
        assert!(looks_like_ogg_opus(&bytes));
        let pcm = decode_all(&bytes);
        let pre_skip = opus::Encoder::new(48_000, Channels::Mono, opus::Application::Audio)
            .unwrap()
            .get_lookahead()
            .unwrap() as usize;
        assert_eq!(pcm.len(), 50 * 960 - pre_skip);
        let rms =
            (pcm[4800..].iter().map(|s| s * s).sum::<f32>() / (pcm.len() - 4800) as f32).sqrt();
        assert!((rms - 0.35).abs() < 0.05, "rms {rms}");
        let stereo = decode_all(&stream(2, 20, 2));
        assert!(stereo.len() > 18 * 960);
    }

    #[test]
    fn follows_chained_streams_and_survives_garbage() {
        let mut bytes = stream(1, 20, 1);
        bytes.extend_from_slice(b"garbage between streams");
        bytes.extend(stream(2, 30, 1));
        let pcm = decode_all(&bytes);
        assert!(pcm.len() > 48 * 960, "{}", pcm.len());
        // A corrupted byte in the middle costs one page, not the stream.
        let mut damaged = stream(3, 50, 1);
        let mid = damaged.len() / 2;
        damaged[mid] ^= 0xFF;
        let pcm = decode_all(&damaged);
        assert!(
            pcm.len() > 35 * 960 && pcm.len() < 50 * 960,
            "{}",
            pcm.len()
        );
    }

    #[test]
    fn non_opus_is_not_mistaken() {
        assert!(!looks_like_ogg_opus(b"ID3\x04\0\0\0\0\0\0"));
        assert!(!looks_like_ogg_opus(b"OggS"));
        assert!(decode_all(b"just some text, no pages").is_empty());
    }
}
