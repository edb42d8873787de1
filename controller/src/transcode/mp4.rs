//! Gapless trimming for MP4/M4A uploads. AAC encoders prepend priming
//! samples (1024 for ffmpeg, 2112 for Apple) and pad the last frame; the
//! real extent of the audio is recorded in the track's edit list (`elst`).
//! symphonia 0.6's MP4 demuxer ignores edit lists, so this module reads the
//! audio track's edit list itself and the decoder trims accordingly.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// A `moov` box larger than this is not read (sample tables of a 4 h AAC
/// track take a few MB).
const MAX_MOOV_BYTES: u64 = 64 * 1024 * 1024;

/// The part of the audio track the edit list selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EditTrim {
    /// Priming to drop, in media timescale ticks.
    pub(crate) skip_ticks: u64,
    /// Length to keep, in media timescale ticks (`None`: to the end).
    pub(crate) keep_ticks: Option<u64>,
    /// Ticks per second of the audio track (usually its sample rate).
    pub(crate) media_timescale: u32,
}

impl EditTrim {
    /// Converts ticks to frames at `sample_rate`, rounding to nearest.
    pub(crate) fn to_frames(self, ticks: u64, sample_rate: u32) -> u64 {
        let ts = u128::from(self.media_timescale.max(1));
        ((u128::from(ticks) * u128::from(sample_rate) + ts / 2) / ts) as u64
    }
}

/// The edit of the first sound track of the MP4 file at `path`, if it has
/// a simple one (one non-empty edit at normal rate). Any parsing problem
/// yields `None`: trimming is a refinement, symphonia decides validity.
pub(crate) fn audio_edit_trim(path: &Path) -> Option<EditTrim> {
    let moov = read_moov(path).ok()??;
    let movie_timescale = boxes(&moov)
        .find(|(t, _)| t == b"mvhd")
        .and_then(|(_, b)| timescale(b))?;
    boxes(&moov)
        .filter(|(t, _)| t == b"trak")
        .find_map(|(_, trak)| sound_track_trim(trak, movie_timescale))
}

fn sound_track_trim(trak: &[u8], movie_timescale: u32) -> Option<EditTrim> {
    let mdia = child(trak, b"mdia")?;
    let hdlr = child(mdia, b"hdlr")?;
    if hdlr.get(8..12)? != b"soun" {
        return None;
    }
    let media_timescale = timescale(child(mdia, b"mdhd")?)?;
    let elst = child(child(trak, b"edts")?, b"elst")?;
    let version = *elst.first()?;
    let count = u32::from_be_bytes(elst.get(4..8)?.try_into().ok()?) as usize;
    let entry_len = if version == 1 { 20 } else { 12 };
    let mut edits = Vec::new();
    for i in 0..count.min(16) {
        let e = elst.get(8 + i * entry_len..8 + (i + 1) * entry_len)?;
        let (duration, media_time, rate) = if version == 1 {
            (
                u64::from_be_bytes(e[0..8].try_into().ok()?),
                i64::from_be_bytes(e[8..16].try_into().ok()?),
                &e[16..20],
            )
        } else {
            (
                u64::from(u32::from_be_bytes(e[0..4].try_into().ok()?)),
                i64::from(i32::from_be_bytes(e[4..8].try_into().ok()?)),
                &e[8..12],
            )
        };
        if media_time == -1 {
            continue; // empty edit: a delay before the track, nothing to trim
        }
        if rate != [0, 1, 0, 0] {
            return None;
        }
        edits.push((duration, media_time));
    }
    let [(duration, media_time)] = edits.as_slice() else {
        return None;
    };
    let keep_ticks = (*duration > 0).then(|| {
        (u128::from(*duration) * u128::from(media_timescale) / u128::from(movie_timescale.max(1)))
            as u64
    });
    Some(EditTrim {
        skip_ticks: u64::try_from(*media_time).ok()?,
        keep_ticks,
        media_timescale,
    })
}

/// Timescale field of an `mvhd` or `mdhd` box.
fn timescale(full_box: &[u8]) -> Option<u32> {
    let at = if *full_box.first()? == 1 { 20 } else { 12 };
    let ts = u32::from_be_bytes(full_box.get(at..at + 4)?.try_into().ok()?);
    (ts > 0).then_some(ts)
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(data).find(|(t, _)| t == kind).map(|(_, b)| b)
}

/// Iterates the boxes in `data` as (type, payload).
fn boxes(mut data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let size = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as u64;
        let kind: [u8; 4] = data.get(4..8)?.try_into().ok()?;
        let (header, size) = match size {
            0 => (8, data.len() as u64),
            1 => (16, u64::from_be_bytes(data.get(8..16)?.try_into().ok()?)),
            n => (8, n),
        };
        let size = usize::try_from(size).ok()?;
        if size < header || size > data.len() {
            return None;
        }
        let payload = &data[header..size];
        data = &data[size..];
        Some((kind, payload))
    })
}

/// The payload of the top-level `moov` box, wherever it is in the file.
fn read_moov(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut pos = 0u64;
    while pos + 8 <= len {
        file.seek(SeekFrom::Start(pos))?;
        let mut header = [0u8; 16];
        file.read_exact(&mut header[..8])?;
        let mut size = u64::from(u32::from_be_bytes(header[0..4].try_into().unwrap()));
        let mut header_len = 8;
        if size == 1 {
            file.read_exact(&mut header[8..16])?;
            size = u64::from_be_bytes(header[8..16].try_into().unwrap());
            header_len = 16;
        } else if size == 0 {
            size = len - pos;
        }
        if size < header_len {
            return Ok(None);
        }
        if &header[4..8] == b"moov" {
            let payload = size - header_len;
            if payload > MAX_MOOV_BYTES {
                return Ok(None);
            }
            let mut moov = vec![0; payload as usize];
            file.read_exact(&mut moov)?;
            return Ok(Some(moov));
        }
        pos = pos.saturating_add(size);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(payload);
        b
    }

    /// Version-0 `mvhd`/`mdhd` payload with the given timescale.
    fn header_with_timescale(timescale: u32) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        p.extend_from_slice(&timescale.to_be_bytes());
        p.extend_from_slice(&[0u8; 8]);
        p
    }

    fn file_with_edits(handler: &[u8; 4], edits: &[(u32, i32)]) -> tempfile::NamedTempFile {
        let mut elst = vec![0u8; 4];
        elst.extend_from_slice(&(edits.len() as u32).to_be_bytes());
        for (duration, media_time) in edits {
            elst.extend_from_slice(&duration.to_be_bytes());
            elst.extend_from_slice(&media_time.to_be_bytes());
            elst.extend_from_slice(&[0, 1, 0, 0]);
        }
        let mut hdlr = vec![0u8; 8];
        hdlr.extend_from_slice(handler);
        hdlr.extend_from_slice(&[0u8; 13]);
        let mdia = [
            mp4_box(b"mdhd", &header_with_timescale(44_100)),
            mp4_box(b"hdlr", &hdlr),
        ]
        .concat();
        let trak = [
            mp4_box(b"tkhd", &[0u8; 84]),
            mp4_box(b"edts", &mp4_box(b"elst", &elst)),
            mp4_box(b"mdia", &mdia),
        ]
        .concat();
        let moov = [
            mp4_box(b"mvhd", &header_with_timescale(1000)),
            mp4_box(b"trak", &trak),
        ]
        .concat();
        let file = [
            mp4_box(b"ftyp", b"M4A \0\0\0\0"),
            mp4_box(b"mdat", &[0xAA; 100]),
            mp4_box(b"moov", &moov),
        ]
        .concat();
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, &file).unwrap();
        tmp
    }

    #[test]
    fn reads_the_sound_track_edit_after_mdat() {
        let f = file_with_edits(b"soun", &[(-1i32 as u32, -1), (6046, 1024)]);
        // The first entry is an empty edit (media_time -1): ignored.
        let trim = audio_edit_trim(f.path()).unwrap();
        assert_eq!(
            trim,
            EditTrim {
                skip_ticks: 1024,
                keep_ticks: Some(266_628),
                media_timescale: 44_100
            }
        );
        assert_eq!(trim.to_frames(1024, 22_050), 512);
    }

    #[test]
    fn ignores_video_tracks_complex_edits_and_non_mp4() {
        let video = file_with_edits(b"vide", &[(6046, 1024)]);
        assert_eq!(audio_edit_trim(video.path()), None);
        let two = file_with_edits(b"soun", &[(1000, 0), (1000, 5000)]);
        assert_eq!(audio_edit_trim(two.path()), None);
        let mut text = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut text, b"not an mp4 at all").unwrap();
        assert_eq!(audio_edit_trim(text.path()), None);
    }
}
