//! What the recorder captured: one track per receiver on one sample clock,
//! the map from sample index to UTC instant, and the xruns JACK reported.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::jack::RATE;

/// The recorded tracks and their timing.
pub struct Recording {
    /// Directory the files were read from.
    pub dir: PathBuf,
    /// One track per recorder port, port 1 first; mono 48 kHz.
    pub tracks: Vec<Vec<f32>>,
    /// Per JACK cycle: (index of its first frame, JACK µs of the cycle start).
    timeline: Vec<(u64, u64)>,
    /// (JACK µs, Unix ns) pairs bracketing the recording.
    clock: Vec<(u64, i128)>,
    /// Instants (Unix ns) of the xruns JACK reported while recording.
    pub xruns: Vec<i128>,
    /// What the recorder's source port put out (when it had one), on the
    /// same sample clock as `tracks`.
    pub source: Option<Vec<f32>>,
    /// Clips the source started: (index of the first sample, clip number).
    pub clip_starts: Vec<(usize, u32)>,
}

impl Recording {
    /// Reads the recorder's files from `dir`.
    pub fn load(dir: &Path, ports: usize) -> Result<Self> {
        let mut tracks = Vec::new();
        for k in 1..=ports {
            tracks.push(read_f32(&dir.join(format!("in_{k}.f32")))?);
        }
        let source_path = dir.join("source.f32");
        let source = if source_path.exists() {
            Some(read_f32(&source_path)?)
        } else {
            None
        };
        let starts_path = dir.join("source.txt");
        let clip_starts = if starts_path.exists() {
            read_columns(&starts_path)?
                .into_iter()
                .map(|v| (v[0] as usize, v[1] as u32))
                .collect()
        } else {
            Vec::new()
        };
        let timeline = read_columns(&dir.join("timeline.txt"))?
            .into_iter()
            .map(|v| (v[0] as u64, v[1] as u64))
            .collect::<Vec<_>>();
        let clock = read_columns(&dir.join("clock.txt"))?
            .into_iter()
            .map(|v| (v[0] as u64, v[1]))
            .collect::<Vec<_>>();
        if timeline.is_empty() || clock.is_empty() {
            bail!(
                "recording in {} has no timing (was the recorder running?)",
                dir.display()
            );
        }
        let mut recording = Recording {
            dir: dir.to_path_buf(),
            tracks,
            timeline,
            clock,
            xruns: Vec::new(),
            source,
            clip_starts,
        };
        let xruns_path = dir.join("xruns.txt");
        if xruns_path.exists() {
            recording.xruns = read_columns(&xruns_path)?
                .into_iter()
                .map(|v| recording.jack_to_unix_nanos(v[0] * 1000))
                .collect();
        }
        Ok(recording)
    }

    /// UTC instant (ns since the Unix epoch) at which sample `index` of any
    /// track went through the JACK graph: its cycle's start time plus its
    /// position in the cycle.
    pub fn unix_nanos_at(&self, index: usize) -> i128 {
        let index = index as u64;
        let pos = self.timeline.partition_point(|&(frame, _)| frame <= index);
        let (frame, usecs) = self.timeline[pos.saturating_sub(1)];
        let jack_ns =
            usecs as i128 * 1000 + (index as i128 - frame as i128) * 1_000_000_000 / RATE as i128;
        self.jack_to_unix_nanos(jack_ns)
    }

    /// Index of the first sample heard at or after `unix_nanos` (the
    /// inverse of [`unix_nanos_at`](Self::unix_nanos_at); clamped to the
    /// recording).
    pub fn index_at_unix_nanos(&self, unix_nanos: i128) -> usize {
        let len = self
            .tracks
            .first()
            .or(self.source.as_ref())
            .map_or(0, Vec::len);
        let (mut lo, mut hi) = (0usize, len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.unix_nanos_at(mid) < unix_nanos {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Converts a JACK clock reading (ns) to Unix ns with the nearest clock pair.
    fn jack_to_unix_nanos(&self, jack_ns: i128) -> i128 {
        let jack_us = (jack_ns / 1000).max(0) as u64;
        let &(pair_us, pair_unix) = self
            .clock
            .iter()
            .min_by_key(|(us, _)| us.abs_diff(jack_us))
            .expect("clock is not empty");
        pair_unix + (jack_ns - pair_us as i128 * 1000)
    }

    /// Number of xruns between two instants (Unix ns).
    pub fn xruns_between(&self, from: i128, to: i128) -> usize {
        self.xruns.iter().filter(|&&t| t >= from && t <= to).count()
    }

    /// Wall-clock length of the recording in seconds.
    pub fn seconds(&self) -> f64 {
        self.tracks.first().map_or(0, Vec::len) as f64 / RATE as f64
    }

    /// Writes the source (if any) and every track as one multichannel
    /// 32-bit float WAV: channel 1 the source, then one channel per track.
    pub fn save_rig_wav(&self, path: &Path) -> Result<()> {
        let mut channels: Vec<&[f32]> = Vec::new();
        if let Some(source) = &self.source {
            channels.push(source);
        }
        channels.extend(self.tracks.iter().map(Vec::as_slice));
        crate::audio::write_wav_channels(path, &channels)
    }

    /// Writes track `k` (1-based) as a 32-bit float WAV for listening.
    pub fn save_wav(&self, k: usize, path: &Path) -> Result<()> {
        crate::audio::write_wav(path, &self.tracks[k - 1])
    }
}

/// Raw f32 little-endian samples.
fn read_f32(path: &Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Whitespace-separated integer columns, one row per non-empty line.
fn read_columns(path: &Path) -> Result<Vec<Vec<i128>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split_whitespace()
                .map(|f| {
                    f.parse::<i128>()
                        .with_context(|| format!("bad number {f:?} in {}", path.display()))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect()
}
