//! The audio callback and the state it shares with the writer: a queue of
//! mono samples, the device timing that `delay` is computed from, and the
//! counters and errors the writer reports.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use cpal::{ErrorKind, FromSample, OutputCallbackInfo, SizedSample};

use crate::sink::{QUEUE_FRAMES, SinkError, frames_to_duration};

/// What the writer and the audio callback share.
pub(super) struct Shared {
    /// The sample queue and the callback's timing, under one lock so that
    /// `delay` reads a consistent pair.
    pub(super) queue: Mutex<Queue>,
    /// Signalled by the callback after it took samples (and on errors), to
    /// wake a writer waiting for room.
    pub(super) consumed: Condvar,
    /// Callbacks so far; a writer uses it to notice a stalled device.
    pub(super) callbacks: AtomicU64,
    /// Frames the device asked for in the last callback; the queue holds at
    /// least two callbacks' worth, or every callback would starve.
    pub(super) callback_frames: AtomicU64,
    /// Times the queue ran dry while a programme was being written.
    pub(super) underruns: AtomicU64,
    /// Device-level underruns cpal reported and recovered from.
    pub(super) xruns: AtomicU64,
    /// The device's output latency at the last callback (`playback -
    /// callback`), in nanoseconds.
    pub(super) latency_ns: AtomicU64,
}

/// The queue proper; see [`Shared::queue`].
pub(super) struct Queue {
    /// Mono samples waiting for the callback, at most `limit`; allocated by
    /// the writer so the callback never allocates.
    pub(super) samples: VecDeque<f32>,
    /// The queue's capacity in samples: [`QUEUE_FRAMES`], or two callbacks.
    pub(super) limit: usize,
    /// When the next sample taken from the queue will be heard, as computed
    /// by the last callback; `None` before the first callback.
    pub(super) head_heard_at: Option<Instant>,
    /// The callback is taking audio from the queue. When idle it waits
    /// until the queue holds a whole callback's worth (or `stop` drains it),
    /// so a programme does not start with a gap; running dry while playing
    /// is an underrun.
    pub(super) playing: bool,
    /// When the last sample the callback took will have been heard.
    pub(super) audio_end_at: Option<Instant>,
    /// `stop` is letting the queue drain; running dry is expected.
    pub(super) draining: bool,
    /// A stream error, to be returned by the next `write` or `stop`.
    pub(super) fault: Option<String>,
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            queue: Mutex::new(Queue {
                samples: VecDeque::with_capacity(QUEUE_FRAMES),
                limit: QUEUE_FRAMES,
                head_heard_at: None,
                playing: false,
                audio_end_at: None,
                draining: false,
                fault: None,
            }),
            consumed: Condvar::new(),
            callbacks: AtomicU64::new(0),
            callback_frames: AtomicU64::new(0),
            underruns: AtomicU64::new(0),
            xruns: AtomicU64::new(0),
            latency_ns: AtomicU64::new(0),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the queue valid (plain data).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The audio callback: moves queued samples into the device buffer, mono to
/// every channel, silence where the queue runs dry, and records when the
/// next queued sample will be heard.
pub(super) fn fill<T: SizedSample + FromSample<f32>>(
    shared: &Shared,
    data: &mut [T],
    channels: usize,
    info: &OutputCallbackInfo,
) {
    let now = Instant::now();
    let ts = info.timestamp();
    // How long the device takes to play this buffer's first frame.
    let latency = ts.playback.duration_since(ts.callback);
    let frames = data.len() / channels;
    let mut q = shared.lock();
    let queued = q.samples.len();
    if !q.playing && (queued >= frames || (q.draining && queued > 0)) {
        q.playing = true;
    }
    let n = if q.playing { frames.min(queued) } else { 0 };
    for (frame, sample) in data.chunks_exact_mut(channels).zip(q.samples.drain(..n)) {
        frame.fill(T::from_sample(sample.clamp(-1.0, 1.0)));
    }
    data[n * channels..].fill(T::EQUILIBRIUM);
    if n > 0 {
        q.audio_end_at = Some(now + latency + frames_to_duration(n));
    }
    if q.playing && n < frames {
        q.playing = false;
        if !q.draining {
            shared.underruns.fetch_add(1, Ordering::Relaxed);
        }
    }
    q.head_heard_at = Some(now + latency + frames_to_duration(frames));
    drop(q);
    shared
        .latency_ns
        .store(latency.as_nanos() as u64, Ordering::Relaxed);
    shared.callbacks.fetch_add(1, Ordering::Relaxed);
    shared
        .callback_frames
        .store(frames as u64, Ordering::Relaxed);
    shared.consumed.notify_all();
}

/// The stream's error callback: xruns are counted (cpal recovers them);
/// anything else kills the stream and is reported by the next `write`.
pub(super) fn stream_error(shared: &Shared, err: cpal::Error) {
    match err.kind() {
        ErrorKind::Xrun => {
            shared.xruns.fetch_add(1, Ordering::Relaxed);
        }
        ErrorKind::RealtimeDenied | ErrorKind::DeviceChanged => {
            tracing::debug!(error = %err, "audio stream notice");
        }
        _ => {
            tracing::warn!(error = %err, "audio stream failed");
            shared.lock().fault = Some(err.to_string());
            shared.consumed.notify_all();
        }
    }
}

/// Takes a pending stream fault (the stream is dead), dropping queued audio.
pub(super) fn take_fault(device_name: &str, queue: &mut Queue) -> Result<(), SinkError> {
    match queue.fault.take() {
        None => Ok(()),
        Some(fault) => {
            queue.samples.clear();
            queue.playing = false;
            Err(SinkError::Backend(format!("{device_name}: {fault}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cpal::{OutputStreamTimestamp, Sample, StreamInstant};

    use super::*;

    /// A callback whose first frame the device plays 21 ms later.
    fn info() -> OutputCallbackInfo {
        OutputCallbackInfo::new(OutputStreamTimestamp {
            callback: StreamInstant::from_millis(1000),
            playback: StreamInstant::from_millis(1021),
        })
    }

    fn queue(shared: &Shared, samples: &[f32]) {
        shared.lock().samples.extend(samples.iter().copied());
    }

    #[test]
    fn fills_every_channel_converting_the_sample_type() {
        let shared = Shared::new();
        let input: Vec<f32> = (0..600).map(|i| (i as f32 / 600.0) - 0.5).collect();
        queue(&shared, &input);
        let mut data = [1i16; 512];
        let before = Instant::now();
        fill(&shared, &mut data, 2, &info());
        for (i, frame) in data.chunks_exact(2).enumerate() {
            let want = i16::from_sample(input[i]);
            assert_eq!(frame, [want, want], "frame {i}");
        }
        let q = shared.lock();
        assert_eq!(q.samples.len(), 600 - 256);
        assert!(q.playing);
        // The next queued sample is heard after the device latency and
        // this buffer.
        let heard = q.head_heard_at.unwrap().duration_since(before);
        let want = Duration::from_millis(21) + frames_to_duration(256);
        assert!(
            heard >= want && heard < want + Duration::from_millis(5),
            "{heard:?}"
        );
        assert_eq!(
            shared.latency_ns.load(Ordering::Relaxed),
            21_000_000,
            "latency is playback - callback"
        );
    }

    #[test]
    fn waits_for_a_full_buffer_before_starting_and_counts_underruns() {
        let shared = Shared::new();
        queue(&shared, &[0.25; 100]);
        let mut data = [1.0f32; 256];
        fill(&shared, &mut data, 1, &info());
        assert!(
            data.iter().all(|&s| s == 0.0),
            "silence until a full buffer is queued"
        );
        assert_eq!(shared.lock().samples.len(), 100, "nothing taken");
        assert_eq!(shared.underruns.load(Ordering::Relaxed), 0);

        queue(&shared, &[0.5; 200]);
        fill(&shared, &mut data, 1, &info());
        assert!(data[..100].iter().all(|&s| s == 0.25));
        assert!(data[100..].iter().all(|&s| s == 0.5));
        // 44 samples left: the next buffer runs dry mid-way.
        let before = Instant::now();
        fill(&shared, &mut data, 1, &info());
        assert!(data[..44].iter().all(|&s| s == 0.5));
        assert!(data[44..].iter().all(|&s| s == 0.0));
        assert_eq!(shared.underruns.load(Ordering::Relaxed), 1);
        let q = shared.lock();
        assert!(!q.playing);
        let end = q.audio_end_at.unwrap().duration_since(before);
        let want = Duration::from_millis(21) + frames_to_duration(44);
        assert!(
            end >= want && end < want + Duration::from_millis(5),
            "{end:?}"
        );
    }

    #[test]
    fn draining_plays_a_short_tail_without_an_underrun() {
        let shared = Shared::new();
        queue(&shared, &[2.0, -2.0, 0.5]);
        shared.lock().draining = true;
        let mut data = [0u8; 8];
        fill(&shared, &mut data, 2, &info());
        assert_eq!(
            &data[..6],
            &[u8::MAX, u8::MAX, 0, 0, 192, 192],
            "clamped to ±1"
        );
        assert_eq!(&data[6..], &[u8::EQUILIBRIUM; 2]);
        assert!(shared.lock().samples.is_empty());
        assert_eq!(shared.underruns.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn stream_errors_are_counted_or_kept_for_the_writer() {
        let shared = Shared::new();
        stream_error(&shared, ErrorKind::Xrun.into());
        assert_eq!(shared.xruns.load(Ordering::Relaxed), 1);
        assert!(shared.lock().fault.is_none());

        queue(&shared, &[0.1; 10]);
        stream_error(
            &shared,
            cpal::Error::with_message(ErrorKind::DeviceNotAvailable, "Device disconnected"),
        );
        let mut q = shared.lock();
        match take_fault("alsa:default", &mut q) {
            Err(SinkError::Backend(msg)) => {
                assert!(msg.contains("alsa:default"), "{msg}");
                assert!(msg.contains("disconnected"), "{msg}");
            }
            other => panic!("expected a backend error, got {other:?}"),
        }
        assert!(q.samples.is_empty());
        assert!(take_fault("alsa:default", &mut q).is_ok(), "reported once");
    }
}
