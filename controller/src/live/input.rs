//! Captured sources (the controller's microphone, a browser's microphone):
//! chunks of mono PCM stamped with the capture instant of their first
//! sample arrive on a channel; this thread resamples them to 48 kHz, cuts
//! them into frames, places each on the [`Timeline`] and publishes it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use tokio::sync::watch;

use super::clock::now_us;
use super::frames::{Framer, Slot, Timeline};
use super::resample::Resampler48;
use super::{Control, Ctx, EndReason, LiveError, Outcome, Ready};

/// Chunks that may wait for the encoder (a second or more of audio).
pub const QUEUE_CHUNKS: usize = 256;
/// How often the thread checks for a stop while no audio arrives.
const POLL: Duration = Duration::from_millis(50);

/// Mono samples and the capture instant (controller clock, Unix µs) of the first.
#[derive(Debug, Clone)]
pub struct PcmChunk {
    /// Samples in -1..1 at the source's rate.
    pub samples: Vec<f32>,
    /// When the first sample was captured.
    pub capture_us: i64,
}

/// Feeds a browser broadcast (held by its WebSocket task).
pub struct InputHandle {
    /// The broadcast's id.
    pub id: String,
    /// Where chunks go.
    tx: SyncSender<PcmChunk>,
    /// The broadcast's stop requests.
    control: Arc<Control>,
    /// Becomes `true` when the broadcast has ended.
    ended: watch::Receiver<bool>,
    /// Chunks dropped because the encoder fell behind.
    pub dropped: u64,
}

impl InputHandle {
    pub(crate) fn new(
        id: String,
        tx: SyncSender<PcmChunk>,
        control: Arc<Control>,
        ended: watch::Receiver<bool>,
    ) -> Self {
        InputHandle {
            id,
            tx,
            control,
            ended,
            dropped: 0,
        }
    }

    /// Hands a chunk to the encoder without waiting; returns `false` once
    /// the broadcast has ended.
    pub fn push(&mut self, chunk: PcmChunk) -> bool {
        match self.tx.try_send(chunk) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Resolves when the broadcast has ended (stopped through the API, for instance).
    pub async fn ended(&mut self) {
        let _ = self.ended.wait_for(|e| *e).await;
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.control.is_stopped()
    }
}

/// Tolerances of the browser timeline: arrival times jitter with the
/// network and the browser's audio callbacks.
const BROWSER_LATE: Duration = Duration::from_millis(60);
/// See [`BROWSER_LATE`].
const BROWSER_EARLY: Duration = Duration::from_millis(60);

/// The thread of a browser broadcast.
pub(crate) fn run_browser(
    ctx: Ctx,
    rx: Receiver<PcmChunk>,
    sample_rate: u32,
    ready: Ready,
) -> Outcome {
    let resampler = match Resampler48::new(sample_rate) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(LiveError::InvalidAudioFormat(e.clone())));
            return Outcome::failed(e);
        }
    };
    let _ = ready.send(Ok(()));
    let timeline = Timeline::new(BROWSER_LATE, BROWSER_EARLY);
    run_capture(
        ctx,
        rx,
        resampler,
        timeline,
        &|| None,
        EndReason::ClientClosed,
    )
}

/// Encodes and publishes chunks from `rx` until a stop, the end of the
/// channel (`closed` is the reason then) or a fault reported by `fault`.
pub(crate) fn run_capture(
    mut ctx: Ctx,
    rx: Receiver<PcmChunk>,
    mut resampler: Resampler48,
    mut timeline: Timeline,
    fault: &dyn Fn() -> Option<String>,
    closed: EndReason,
) -> Outcome {
    let mut framer = Framer::default();
    let outcome = loop {
        if ctx.control.is_stopped() {
            break Outcome::new(ctx.control.reason().unwrap_or(EndReason::Stopped));
        }
        if let Some(fault) = fault() {
            break Outcome::failed(fault);
        }
        let chunk = match rx.recv_timeout(POLL) {
            Ok(chunk) => chunk,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break Outcome::new(closed),
        };
        let publisher = &mut ctx.publisher;
        let result = resampler.push(&chunk.samples, chunk.capture_us, &mut |pcm: &[f32],
                                                                            at: i64|
         -> Result<
            (),
            String,
        > {
            framer.push(
                pcm,
                at,
                |frame: &[f32], observed: i64| -> Result<(), String> {
                    match timeline.place(observed) {
                        Slot::At(capture_us) => publisher.audio(frame, capture_us),
                        Slot::Drop => Ok(()),
                    }
                },
            )
        });
        if let Err(e) = result {
            break Outcome::failed(e);
        }
        let stats = &ctx.publisher.stats;
        stats.gaps.store(timeline.gaps, Ordering::Relaxed);
        stats.dropped.store(timeline.dropped, Ordering::Relaxed);
    };
    // What is left of a last frame, padded with silence.
    let publisher = &mut ctx.publisher;
    let _ = framer.flush(|frame: &[f32], observed: i64| -> Result<(), String> {
        match timeline.place(observed) {
            Slot::At(capture_us) => publisher.audio(frame, capture_us),
            Slot::Drop => Ok(()),
        }
    });
    if ctx.publisher.next_seq() > 0 {
        let end_at = timeline.next_us().unwrap_or_else(now_us);
        ctx.publisher.end(end_at);
    }
    outcome
}
