//! The sound-card sink: plays mono 48 kHz audio through cpal (ALSA on Linux).
//!
//! [`write`](AudioSink::write) appends samples to a queue of at most 100 ms
//! ([`QUEUE_FRAMES`](super::QUEUE_FRAMES)); cpal's audio callback takes them
//! from the queue, converts them to the device's sample type and copies each
//! sample to every channel. The writer blocks while the queue is full, so it
//! is paced by the device clock. When the queue runs dry mid-programme the
//! callback plays silence and counts an underrun; an idle callback starts
//! taking audio only once a whole callback's worth is queued (or `stop`
//! drains the rest), so a programme does not begin with a gap.
//!
//! [`delay`](AudioSink::delay) says when the next written sample will be
//! heard: the queued audio plus what the device still holds. The latter is
//! measured in every callback from cpal's timestamps (`playback - callback`,
//! i.e. ALSA's `snd_pcm_delay`) and kept as the wall-clock instant at which
//! the queue's head will be heard, so the player can start a programme at
//! its scheduled instant. Latency inside the device that ALSA does not
//! report (a JACK server's own period, an amplifier's DSP) is not included.
//!
//! Streams are opened with 20 ms callbacks when the device allows (two of
//! them in the device buffer, so about 40 ms of device latency), falling
//! back to nearby sizes and then to the device default. The configuration
//! is 48 kHz, `f32` if offered, mono if offered (else the device's channel
//! layout, every channel carrying the same signal).
//!
//! The device must play 48 kHz itself: we do not resample. ALSA's `default`
//! and `plughw:` devices convert any rate in the plug layer, so this only
//! refuses raw `hw:` devices without 48 kHz ([`SinkError::Unsupported`]).

mod callback;
mod device;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{
    BufferSize, ErrorKind, FromSample, I24, OutputCallbackInfo, SampleFormat, SizedSample,
    StreamConfig,
};

use self::callback::{Shared, fill, stream_error, take_fault};
use self::device::{choose_config, find_device};
use super::{AudioSink, SinkError, frames_to_duration};

/// How long `start` waits for the device's first callback.
const FIRST_CALLBACK_TIMEOUT: Duration = Duration::from_secs(2);
/// A device that stops calling back for this long while audio is queued
/// has failed.
const STALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `stop` waits beyond the queued audio for the queue to drain.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// At most this long is waited in `stop` for the device to play what it holds.
const MAX_DEVICE_WAIT: Duration = Duration::from_millis(500);
/// Underrun warnings are logged at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// A writer whose previous `write` ended less than this long ago is
/// mid-programme: an underrun since then means it was too slow.
const MID_STREAM_GAP: Duration = Duration::from_millis(150);

/// An output on a cpal device (see the module docs).
pub struct CpalSink {
    /// The output device chosen in [`new`](Self::new); each `start` opens a
    /// stream on it.
    device: cpal::Device,
    /// The device's id (`alsa:default`) for logs and errors.
    device_name: String,
    /// The stream layout: 48 kHz, the device's channel count, and the
    /// buffer size that last worked.
    config: StreamConfig,
    /// Buffer sizes to try when opening a stream, best first.
    buffer_sizes: Vec<BufferSize>,
    /// The device's sample type; the callback converts from `f32`.
    sample_format: SampleFormat,
    /// State shared with the audio callback.
    shared: Arc<Shared>,
    /// The running stream, between `start` and `stop`.
    stream: Option<cpal::Stream>,
    /// Underruns already reported in the log.
    reported_underruns: u64,
    /// Device-level xruns already reported in the log.
    reported_xruns: u64,
    /// When an underrun warning was last logged (rate limit).
    last_warning: Option<Instant>,
    /// When the previous `write` returned; tells a starving writer from an
    /// idle one.
    last_write: Option<Instant>,
}

impl CpalSink {
    /// Opens cpal's default host and the default output device, or the
    /// device whose id (`alsa:hw:CARD=PCH,DEV=0`, `hw:0,0`, `default`) or
    /// name matches `device`, and picks a 48 kHz configuration (preferring
    /// `f32`, then mono, then cpal's own ranking: stereo, more channels).
    pub fn new(device: Option<&str>) -> Result<Self, SinkError> {
        let host = cpal::default_host();
        let device = match device {
            None | Some("default") => host
                .default_output_device()
                .ok_or_else(|| SinkError::NoDevice("default".into()))?,
            Some(name) => find_device(&host, name)?,
        };
        let device_name = device
            .id()
            .map(|id| id.to_string())
            .unwrap_or_else(|_| device.to_string());
        let (config, sample_format, buffer_sizes) = choose_config(&device, &device_name)?;
        tracing::info!(
            device = %device_name,
            channels = config.channels,
            format = %sample_format,
            "audio output selected"
        );
        Ok(CpalSink {
            device,
            device_name,
            config,
            buffer_sizes,
            sample_format,
            shared: Arc::new(Shared::new()),
            stream: None,
            reported_underruns: 0,
            reported_xruns: 0,
            last_warning: None,
            last_write: None,
        })
    }

    /// The device's id, e.g. `alsa:default`.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Channels the device plays (each gets the same mono signal).
    pub fn channels(&self) -> u16 {
        self.config.channels
    }

    /// The sample type sent to the device.
    pub fn sample_format(&self) -> SampleFormat {
        self.sample_format
    }

    /// Times the queue ran dry while audio was being written (the writer was
    /// too slow; silence was played instead).
    pub fn underruns(&self) -> u64 {
        self.shared.underruns.load(Ordering::Relaxed)
    }

    /// Device-level underruns (xruns) that cpal reported and recovered from.
    pub fn xruns(&self) -> u64 {
        self.shared.xruns.load(Ordering::Relaxed)
    }

    /// The device's own output latency measured at the last callback: how
    /// long after the callback its first sample is heard.
    pub fn output_latency(&self) -> Duration {
        Duration::from_nanos(self.shared.latency_ns.load(Ordering::Relaxed))
    }

    fn build_stream(&mut self) -> Result<cpal::Stream, SinkError> {
        match self.sample_format {
            SampleFormat::F32 => self.build::<f32>(),
            SampleFormat::F64 => self.build::<f64>(),
            SampleFormat::I8 => self.build::<i8>(),
            SampleFormat::I16 => self.build::<i16>(),
            SampleFormat::I24 => self.build::<I24>(),
            SampleFormat::I32 => self.build::<i32>(),
            SampleFormat::I64 => self.build::<i64>(),
            SampleFormat::U8 => self.build::<u8>(),
            SampleFormat::U16 => self.build::<u16>(),
            SampleFormat::U32 => self.build::<u32>(),
            SampleFormat::U64 => self.build::<u64>(),
            other => Err(SinkError::Unsupported(format!(
                "sample format {other} of {}",
                self.device_name
            ))),
        }
    }

    fn build<T: SizedSample + FromSample<f32>>(&mut self) -> Result<cpal::Stream, SinkError> {
        let mut last_error = None;
        for (i, &buffer_size) in self.buffer_sizes.iter().enumerate() {
            let config = StreamConfig {
                buffer_size,
                ..self.config
            };
            let channels = usize::from(config.channels);
            let shared = Arc::clone(&self.shared);
            let on_error = Arc::clone(&self.shared);
            match self.device.build_output_stream(
                config,
                move |data: &mut [T], info: &OutputCallbackInfo| {
                    fill(&shared, data, channels, info)
                },
                move |err| stream_error(&on_error, err),
                None,
            ) {
                Ok(stream) => {
                    // Try what worked first next time.
                    self.buffer_sizes.swap(0, i);
                    self.config.buffer_size = buffer_size;
                    return Ok(stream);
                }
                Err(e) if e.kind() == ErrorKind::UnsupportedConfig => {
                    tracing::debug!(
                        device = %self.device_name,
                        ?buffer_size,
                        error = %e,
                        "buffer size refused"
                    );
                    last_error = Some(e);
                }
                Err(e) => {
                    last_error = Some(e);
                    break;
                }
            }
        }
        Err(SinkError::Backend(format!(
            "cannot open {}: {}",
            self.device_name,
            last_error.map_or_else(|| "no configuration".to_string(), |e| e.to_string())
        )))
    }

    /// Logs underruns and xruns that happened since the last report, at
    /// most one warning per [`WARN_INTERVAL`].
    fn report_underruns(&mut self, mid_stream: bool) {
        let underruns = self.underruns();
        let xruns = self.xruns();
        if underruns == self.reported_underruns && xruns == self.reported_xruns {
            return;
        }
        let now = Instant::now();
        let may_warn = self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= WARN_INTERVAL);
        let starving = underruns > self.reported_underruns && mid_stream;
        if (starving || xruns > self.reported_xruns) && may_warn {
            self.last_warning = Some(now);
            tracing::warn!(
                device = %self.device_name,
                underruns,
                xruns,
                "audio underrun: the device played silence because audio came too late"
            );
        } else {
            tracing::debug!(device = %self.device_name, underruns, xruns, "audio queue ran dry");
        }
        self.reported_underruns = underruns;
        self.reported_xruns = xruns;
    }
}

impl AudioSink for CpalSink {
    fn start(&mut self) -> Result<(), SinkError> {
        if self.stream.is_some() {
            return Ok(());
        }
        {
            let mut q = self.shared.lock();
            q.samples.clear();
            q.head_heard_at = None;
            q.playing = false;
            q.draining = false;
            q.audio_end_at = None;
            q.fault = None;
        }
        let stream = self.build_stream()?;
        stream
            .play()
            .map_err(|e| SinkError::Backend(format!("cannot start {}: {e}", self.device_name)))?;
        // Wait for the first callback so `delay` knows the device latency
        // before the player relies on it.
        let deadline = Instant::now() + FIRST_CALLBACK_TIMEOUT;
        let mut q = self.shared.lock();
        while q.head_heard_at.is_none() {
            take_fault(&self.device_name, &mut q)?;
            let now = Instant::now();
            if now >= deadline {
                return Err(SinkError::Backend(format!(
                    "{} did not ask for audio within {FIRST_CALLBACK_TIMEOUT:?}",
                    self.device_name
                )));
            }
            q = self
                .shared
                .consumed
                .wait_timeout(q, (deadline - now).min(Duration::from_millis(10)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(q);
        tracing::debug!(
            device = %self.device_name,
            latency = ?self.output_latency(),
            "audio stream started"
        );
        self.stream = Some(stream);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), SinkError> {
        let Some(stream) = self.stream.take() else {
            return Ok(());
        };
        let shared = Arc::clone(&self.shared);
        let mut q = shared.lock();
        q.draining = true;
        let deadline = Instant::now() + frames_to_duration(q.samples.len()) + DRAIN_GRACE;
        while !q.samples.is_empty() && q.fault.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            q = shared
                .consumed
                .wait_timeout(q, (deadline - now).min(Duration::from_millis(10)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let fault = take_fault(&self.device_name, &mut q);
        let undrained = q.samples.len();
        q.samples.clear();
        q.playing = false;
        let audio_end = q.audio_end_at;
        drop(q);
        fault?;
        // The queue is empty; let the device play what it holds.
        if let Some(t) = audio_end {
            std::thread::sleep(
                t.saturating_duration_since(Instant::now())
                    .min(MAX_DEVICE_WAIT),
            );
        }
        drop(stream);
        self.report_underruns(false);
        if undrained > 0 {
            return Err(SinkError::Backend(format!(
                "{} stopped playing; {undrained} samples were not played",
                self.device_name
            )));
        }
        tracing::debug!(device = %self.device_name, "audio stream stopped");
        Ok(())
    }

    fn write(&mut self, samples: &[f32]) -> Result<(), SinkError> {
        if self.stream.is_none() {
            return Err(SinkError::Backend(format!(
                "{} is not started",
                self.device_name
            )));
        }
        let mid_stream = self
            .last_write
            .is_some_and(|t| t.elapsed() < MID_STREAM_GAP);
        let shared = Arc::clone(&self.shared);
        let mut q = shared.lock();
        let mut rest = samples;
        let mut seen_callbacks = shared.callbacks.load(Ordering::Relaxed);
        let mut last_progress = Instant::now();
        let result = loop {
            if let Err(e) = take_fault(&self.device_name, &mut q) {
                break Err(e);
            }
            q.draining = false;
            let wanted = 2 * shared.callback_frames.load(Ordering::Relaxed) as usize;
            if q.limit < wanted {
                let more = wanted - q.samples.len();
                q.samples.reserve(more);
                q.limit = wanted;
                tracing::debug!(device = %self.device_name, frames = wanted, "audio queue enlarged");
            }
            let n = q.limit.saturating_sub(q.samples.len()).min(rest.len());
            if n > 0 {
                q.samples.extend(rest[..n].iter().copied());
                rest = &rest[n..];
            }
            if rest.is_empty() {
                break Ok(());
            }
            q = shared
                .consumed
                .wait_timeout(q, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            let callbacks = shared.callbacks.load(Ordering::Relaxed);
            if callbacks != seen_callbacks {
                seen_callbacks = callbacks;
                last_progress = Instant::now();
            } else if last_progress.elapsed() >= STALL_TIMEOUT {
                q.samples.clear();
                q.playing = false;
                break Err(SinkError::Backend(format!(
                    "{} stopped asking for audio for {STALL_TIMEOUT:?}",
                    self.device_name
                )));
            }
        };
        drop(q);
        if result.is_err() {
            // The stream is dead; the player may start a new one.
            self.stream = None;
        }
        self.report_underruns(mid_stream);
        self.last_write = Some(Instant::now());
        result
    }

    fn clear(&mut self) {
        let mut q = self.shared.lock();
        q.samples.clear();
        q.playing = false;
    }

    fn delay(&self) -> Duration {
        let q = self.shared.lock();
        let queued = frames_to_duration(q.samples.len());
        let device = match q.head_heard_at {
            Some(t) => t.saturating_duration_since(Instant::now()),
            None => self.output_latency(),
        };
        queued + device
    }
}
