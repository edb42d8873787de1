//! The controller's own capture device (a microphone or line-in) through
//! cpal: cpal's default input device, or the one named by `--live-input
//! cpal:NAME` (a cpal device id such as `alsa:hw:CARD=USB,DEV=0`, or a
//! device name). It is opened at 48 kHz when it can be (f32, mono
//! preferred), otherwise at its default rate and resampled.
//!
//! Each callback's samples are stamped with cpal's capture timestamp
//! mapped to the wall clock: `now − (callback instant − capture instant)`,
//! i.e. the wall clock at the callback minus what the device had buffered.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{
    BufferSize, DeviceId, ErrorKind, FromSample, InputCallbackInfo, SampleFormat, SizedSample,
    StreamConfig, SupportedBufferSize, SupportedStreamConfigRange,
};

use super::clock::now_us;
use super::frames::{RATE, Timeline};
use super::input::{PcmChunk, QUEUE_CHUNKS, run_capture};
use super::resample::{MAX_RATE, MIN_RATE, Resampler48};
use super::{Ctx, EndReason, LiveError, Outcome, Ready};

/// Tolerances of the microphone timeline (callback jitter is small; the
/// sound card's clock drifts slowly against the system clock).
const LATE: Duration = Duration::from_millis(40);
/// See [`LATE`].
const EARLY: Duration = Duration::from_millis(40);

/// The thread of a microphone broadcast: opens the device, reports to the
/// starter, then encodes until stopped or the device fails.
pub(crate) fn run(ctx: Ctx, device: Option<String>, ready: Ready) -> Outcome {
    let (tx, rx) = sync_channel(QUEUE_CHUNKS);
    let fault = Arc::new(Mutex::new(None::<String>));
    let (stream, rate) = match open(device.as_deref(), tx, fault.clone()) {
        Ok(opened) => opened,
        Err(e) => {
            let _ = ready.send(Err(LiveError::MicrophoneUnavailable(e.clone())));
            return Outcome::failed(e);
        }
    };
    if let Err(e) = stream.play() {
        let e = format!("cannot start capture: {e}");
        let _ = ready.send(Err(LiveError::MicrophoneUnavailable(e.clone())));
        return Outcome::failed(e);
    }
    let resampler = match Resampler48::new(rate) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(LiveError::MicrophoneUnavailable(e.clone())));
            return Outcome::failed(e);
        }
    };
    let _ = ready.send(Ok(()));
    let fault_check = move || fault.lock().unwrap_or_else(|e| e.into_inner()).take();
    let outcome = run_capture(
        ctx,
        rx,
        resampler,
        Timeline::new(LATE, EARLY),
        &fault_check,
        EndReason::SourceFailed,
    );
    drop(stream);
    outcome
}

/// Opens the device and starts nothing yet; returns the stream and its rate.
fn open(
    name: Option<&str>,
    tx: SyncSender<PcmChunk>,
    fault: Arc<Mutex<Option<String>>>,
) -> Result<(cpal::Stream, u32), String> {
    let host = cpal::default_host();
    let device = match name {
        None | Some("default") => host
            .default_input_device()
            .ok_or_else(|| "no default audio input device".to_string())?,
        Some(name) => find_device(&host, name)?,
    };
    let label = device
        .id()
        .map(|id| id.to_string())
        .unwrap_or_else(|_| "input device".to_string());
    let ranges: Vec<SupportedStreamConfigRange> = device
        .supported_input_configs()
        .map_err(|e| format!("cannot query {label}: {e}"))?
        .collect();
    let (config, format, buffer) = choose(&device, &ranges).ok_or_else(|| {
        format!("{label} offers no usable input configuration (need {MIN_RATE}-{MAX_RATE} Hz)")
    })?;
    tracing::info!(device = %label, rate = config.sample_rate, channels = config.channels,
        format = %format, "microphone opened");
    // The device's default period can be huge (16,384 frames through ALSA's
    // JACK plugin, ~340 ms): frames would then reach receivers after their
    // playout instant. Ask for short periods first, the default last.
    let mut last_error = None;
    let mut opened = None;
    for size in buffer_candidates(&buffer) {
        let config = StreamConfig {
            buffer_size: size,
            ..config
        };
        let tx = tx.clone();
        let fault = fault.clone();
        let built = match format {
            SampleFormat::F32 => build::<f32>(&device, &config, tx, fault),
            SampleFormat::I16 => build::<i16>(&device, &config, tx, fault),
            SampleFormat::I32 => build::<i32>(&device, &config, tx, fault),
            SampleFormat::U16 => build::<u16>(&device, &config, tx, fault),
            SampleFormat::U8 => build::<u8>(&device, &config, tx, fault),
            SampleFormat::I8 => build::<i8>(&device, &config, tx, fault),
            SampleFormat::F64 => build::<f64>(&device, &config, tx, fault),
            other => return Err(format!("unsupported sample format {other} on {label}")),
        };
        match built {
            Ok(stream) => {
                tracing::info!(device = %label, buffer = ?size, "microphone period chosen");
                opened = Some(stream);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let stream = opened.ok_or_else(|| {
        format!(
            "cannot open {label}: {}",
            last_error.map_or_else(|| "no buffer size accepted".to_string(), |e| e.to_string())
        )
    })?;
    Ok((stream, config.sample_rate))
}

/// Finds an input device by id (`alsa:NAME` or `NAME`) or by name.
fn find_device(host: &cpal::Host, name: &str) -> Result<cpal::Device, String> {
    if let Ok(id) = name.parse::<DeviceId>()
        && let Some(device) = host.device_by_id(&id)
    {
        return Ok(device);
    }
    if let Some(device) = host.device_by_id(&DeviceId::new(host.id(), name)) {
        return Ok(device);
    }
    let devices = host
        .input_devices()
        .map_err(|e| format!("cannot list audio input devices: {e}"))?;
    for device in devices {
        if device.description().is_ok_and(|d| d.name() == name) {
            return Ok(device);
        }
    }
    Err(format!("no audio input device {name:?}"))
}

/// Short capture periods to ask for, best first (960 frames = one 20 ms
/// frame at 48 kHz).
const PERIOD_CANDIDATES: [u32; 5] = [960, 1024, 512, 480, 2048];

/// The buffer sizes to try for a device offering `supported`, ending with
/// the device's default.
fn buffer_candidates(supported: &SupportedBufferSize) -> Vec<BufferSize> {
    let mut sizes: Vec<BufferSize> = match *supported {
        SupportedBufferSize::Range { min, max } => PERIOD_CANDIDATES
            .iter()
            .filter(|&&p| (min..=max).contains(&p))
            .map(|&p| BufferSize::Fixed(p))
            .collect(),
        SupportedBufferSize::Unknown => PERIOD_CANDIDATES
            .iter()
            .map(|&p| BufferSize::Fixed(p))
            .collect(),
    };
    sizes.push(BufferSize::Default);
    sizes
}

/// Picks 48 kHz if any range offers it (f32 first, then mono), else the
/// device's default configuration if its rate is usable.
fn choose(
    device: &cpal::Device,
    ranges: &[SupportedStreamConfigRange],
) -> Option<(StreamConfig, SampleFormat, SupportedBufferSize)> {
    let at_48k = ranges
        .iter()
        .filter(|r| r.contains_rate(RATE) && usable(r.sample_format()))
        .max_by(|a, b| {
            (a.sample_format() == SampleFormat::F32)
                .cmp(&(b.sample_format() == SampleFormat::F32))
                .then_with(|| (a.channels() == 1).cmp(&(b.channels() == 1)))
                .then_with(|| a.cmp_default_heuristics(b))
        });
    if let Some(range) = at_48k {
        let supported = range.with_sample_rate(RATE);
        return Some((
            supported.config(),
            supported.sample_format(),
            *supported.buffer_size(),
        ));
    }
    let default = device.default_input_config().ok()?;
    let rate = default.sample_rate();
    ((MIN_RATE..=MAX_RATE).contains(&rate) && usable(default.sample_format())).then(|| {
        (
            default.config(),
            default.sample_format(),
            *default.buffer_size(),
        )
    })
}

fn usable(format: SampleFormat) -> bool {
    matches!(
        format,
        SampleFormat::F32
            | SampleFormat::I16
            | SampleFormat::I32
            | SampleFormat::U16
            | SampleFormat::U8
            | SampleFormat::I8
            | SampleFormat::F64
    )
}

/// Builds the input stream: each callback downmixes to mono f32, stamps
/// the chunk and hands it over without waiting (a full queue drops it).
fn build<T>(
    device: &cpal::Device,
    config: &StreamConfig,
    tx: SyncSender<PcmChunk>,
    fault: Arc<Mutex<Option<String>>>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + Send + 'static,
    f32: FromSample<T>,
{
    let channels = usize::from(config.channels.max(1));
    device.build_input_stream::<T, _, _>(
        *config,
        move |data: &[T], info: &InputCallbackInfo| {
            let wall = now_us();
            let ts = info.timestamp();
            let buffered = ts.callback.duration_since(ts.capture);
            let capture_us = wall - buffered.as_micros() as i64;
            let samples: Vec<f32> = data
                .chunks_exact(channels)
                .map(|frame| {
                    frame.iter().map(|s| s.to_sample::<f32>()).sum::<f32>() / channels as f32
                })
                .collect();
            let _ = tx.try_send(PcmChunk {
                samples,
                capture_us,
            });
        },
        move |err: cpal::Error| match err.kind() {
            // Overruns are recovered by cpal; the timeline absorbs the gap.
            ErrorKind::Xrun | ErrorKind::RealtimeDenied | ErrorKind::DeviceChanged => {
                tracing::debug!(error = %err, "microphone stream notice");
            }
            _ => {
                tracing::warn!(error = %err, "microphone stream failed");
                let mut f = fault.lock().unwrap_or_else(|e| e.into_inner());
                f.get_or_insert_with(|| format!("microphone stream error: {err}"));
            }
        },
        None,
    )
}
