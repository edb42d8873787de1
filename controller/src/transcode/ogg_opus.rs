//! The Ogg Opus container (RFC 7845) around the encoded packets: an
//! `OpusHead` page, an `OpusTags` page, then audio pages whose granule
//! position counts 48 kHz samples including the pre-skip. The last page is
//! flagged end-of-stream and its granule position trims the encoder padding
//! so the decoded length equals the source length.

use std::io::{self, Write};

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

/// Audio packets per Ogg page: 50 × 20 ms = 1 s, a good seeking granularity
/// at a few hundred bytes of overhead per minute.
const PACKETS_PER_PAGE: usize = 50;

/// The fields of the identification header Loa varies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpusHead {
    /// Samples (at 48 kHz) the decoder drops at the start: the encoder lookahead.
    pub(crate) pre_skip: u16,
    /// Sample rate of the original upload (informational for players).
    pub(crate) input_sample_rate: u32,
}

impl OpusHead {
    /// The 19-byte `OpusHead` packet: version 1, mono, gain 0, mapping family 0.
    fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(19);
        b.extend_from_slice(b"OpusHead");
        b.push(1); // version
        b.push(1); // channel count
        b.extend_from_slice(&self.pre_skip.to_le_bytes());
        b.extend_from_slice(&self.input_sample_rate.to_le_bytes());
        b.extend_from_slice(&0i16.to_le_bytes()); // output gain
        b.push(0); // channel mapping family 0: mono/stereo, no table
        b
    }
}

/// The `OpusTags` comment packet.
fn tags_packet(vendor: &str, comments: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"OpusTags");
    b.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    b.extend_from_slice(vendor.as_bytes());
    b.extend_from_slice(&(comments.len() as u32).to_le_bytes());
    for (key, value) in comments {
        let entry = format!("{key}={value}");
        b.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        b.extend_from_slice(entry.as_bytes());
    }
    b
}

/// Writes one logical Ogg Opus stream.
pub(crate) struct OggOpusWriter<W: Write> {
    /// Ogg page framing.
    packets: PacketWriter<'static, W>,
    /// Stream serial number.
    serial: u32,
    /// Audio packets in the current (unflushed) page.
    in_page: usize,
}

impl<W: Write> OggOpusWriter<W> {
    /// Starts a stream: writes the two header pages.
    pub(crate) fn new(
        out: W,
        serial: u32,
        head: OpusHead,
        vendor: &str,
        comments: &[(&str, &str)],
    ) -> io::Result<Self> {
        let mut packets = PacketWriter::new(out);
        // RFC 7845 §3: each header packet on a page of its own, granule 0.
        packets.write_packet(head.to_bytes(), serial, PacketWriteEndInfo::EndPage, 0)?;
        packets.write_packet(
            tags_packet(vendor, comments),
            serial,
            PacketWriteEndInfo::EndPage,
            0,
        )?;
        Ok(OggOpusWriter {
            packets,
            serial,
            in_page: 0,
        })
    }

    /// Appends an audio packet ending at `granule` (48 kHz samples since the
    /// start, pre-skip included). `last` ends the stream; its granule may be
    /// below the packet's end to trim padding.
    pub(crate) fn write_audio(
        &mut self,
        packet: &[u8],
        granule: u64,
        last: bool,
    ) -> io::Result<()> {
        self.in_page += 1;
        let end = if last {
            PacketWriteEndInfo::EndStream
        } else if self.in_page >= PACKETS_PER_PAGE {
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        if end != PacketWriteEndInfo::NormalPacket {
            self.in_page = 0;
        }
        self.packets
            .write_packet(packet.to_vec(), self.serial, end, granule)
    }

    /// The underlying writer (after the end-of-stream packet).
    pub(crate) fn into_inner(self) -> W {
        self.packets.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_rfc_7845() {
        let head = OpusHead {
            pre_skip: 312,
            input_sample_rate: 44_100,
        }
        .to_bytes();
        assert_eq!(
            head,
            [
                b'O', b'p', b'u', b's', b'H', b'e', b'a', b'd', 1, 1, 0x38, 0x01, 0x44, 0xAC, 0, 0,
                0, 0, 0
            ]
        );
        let tags = tags_packet("Loa", &[("TITLE", "Bản tin")]);
        let mut expected = b"OpusTags\x03\0\0\0Loa\x01\0\0\0".to_vec();
        let entry = "TITLE=Bản tin";
        expected.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        expected.extend_from_slice(entry.as_bytes());
        assert_eq!(tags, expected);
    }
}
