//! Temporary storage of the decoded mono 48 kHz signal between the loudness
//! pass and the encoding pass.
//!
//! Loudness normalisation needs the whole programme measured before the
//! first sample can be encoded. Keeping 4 h of f32 in memory would take
//! 2.7 GB and decoding the upload twice would double the slowest stage, so
//! the samples go to an anonymous temporary file (`O_TMPFILE`-style: it has
//! no name and disappears when closed, even if the process is killed) in the
//! output directory. For typical bulletins (minutes, ~11.5 MB per minute)
//! the data never leaves the page cache.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Bytes per stored sample (f32 little-endian).
const SAMPLE_BYTES: usize = 4;

/// Buffer size for reading and writing the spill file.
const IO_BUFFER: usize = 256 * 1024;

/// Appends samples to the spill file.
pub(crate) struct SpillWriter {
    /// Buffered anonymous temporary file.
    file: BufWriter<File>,
    /// Samples written so far.
    samples: u64,
}

impl SpillWriter {
    /// A new anonymous temporary file in `dir`.
    pub(crate) fn new(dir: &Path) -> io::Result<Self> {
        let file = tempfile::tempfile_in(dir)?;
        Ok(SpillWriter {
            file: BufWriter::with_capacity(IO_BUFFER, file),
            samples: 0,
        })
    }

    /// Appends `samples`.
    pub(crate) fn write(&mut self, samples: &[f32]) -> io::Result<()> {
        let mut bytes = [0u8; 4096];
        for chunk in samples.chunks(bytes.len() / SAMPLE_BYTES) {
            for (dst, s) in bytes.chunks_exact_mut(SAMPLE_BYTES).zip(chunk) {
                dst.copy_from_slice(&s.to_le_bytes());
            }
            self.file.write_all(&bytes[..chunk.len() * SAMPLE_BYTES])?;
        }
        self.samples += samples.len() as u64;
        Ok(())
    }

    /// Number of samples written.
    pub(crate) fn len(&self) -> u64 {
        self.samples
    }

    /// Finishes writing and rewinds for reading.
    pub(crate) fn into_reader(self) -> io::Result<SpillReader> {
        let mut file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(SpillReader {
            file: BufReader::with_capacity(IO_BUFFER, file),
            remaining: self.samples,
            bytes: Vec::new(),
        })
    }
}

/// Reads the samples back in order.
pub(crate) struct SpillReader {
    /// Buffered spill file.
    file: BufReader<File>,
    /// Samples not read yet.
    remaining: u64,
    /// Byte scratch buffer, reused.
    bytes: Vec<u8>,
}

impl SpillReader {
    /// Fills `out` with the next samples; returns how many were read (less
    /// than `out.len()` only at the end, 0 once everything was read).
    pub(crate) fn read(&mut self, out: &mut [f32]) -> io::Result<usize> {
        let n = out
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.bytes.resize(n * SAMPLE_BYTES, 0);
        self.file.read_exact(&mut self.bytes)?;
        for (dst, src) in out.iter_mut().zip(self.bytes.chunks_exact(SAMPLE_BYTES)) {
            *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpillWriter::new(dir.path()).unwrap();
        let data: Vec<f32> = (0..10_000).map(|i| (i as f32 * 0.37).sin() * 1.5).collect();
        for c in data.chunks(777) {
            w.write(c).unwrap();
        }
        assert_eq!(w.len(), 10_000);
        let mut r = w.into_reader().unwrap();
        let mut back = Vec::new();
        let mut buf = [0f32; 960];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        assert_eq!(back, data);
        // Anonymous: nothing visible in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
