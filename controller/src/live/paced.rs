//! Sources played in real time from a decoder: a stored programme, and the
//! relay (see [`super::relay`]), which shares [`Paced`].

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::decode::{PcmSource, SourceError, open_stream};
use super::frames::{Framer, Pacer};
use super::resample::Resampler48;
use super::{Ctx, EndReason, LiveError, Outcome, Ready};

/// A stall longer than this restarts the timeline (see [`Pacer`]).
const STALL: Duration = Duration::from_millis(60);
/// Longest sleep between stop checks while waiting for a frame's instant.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// Why [`Paced::play`] returned.
#[derive(Debug)]
pub(crate) enum PlayEnd {
    /// The source has no more audio.
    Eof,
    /// A stop was requested.
    Stopped,
}

/// Decoded audio to paced frames; keeps its timeline across several
/// sources (relay reconnections).
pub(crate) struct Paced {
    /// Paces frames in real time.
    pacer: Pacer,
    /// Cuts 48 kHz audio into frames.
    framer: Framer,
    /// Converts the source's rate, rebuilt when it changes.
    resampler: Option<Resampler48>,
    /// Audio decoded so far, in samples at 48 kHz.
    pub samples: u64,
}

impl Paced {
    pub(crate) fn new() -> Self {
        Paced {
            pacer: Pacer::new(STALL),
            framer: Framer::default(),
            resampler: None,
            samples: 0,
        }
    }

    /// Plays `source` until it ends, fails or a stop is requested.
    pub(crate) fn play(
        &mut self,
        ctx: &mut Ctx,
        source: &mut dyn PcmSource,
    ) -> Result<PlayEnd, SourceError> {
        loop {
            if ctx.control.is_stopped() {
                return Ok(PlayEnd::Stopped);
            }
            let Some((chunk, rate)) = source.next_chunk()? else {
                return Ok(PlayEnd::Eof);
            };
            if self.resampler.as_ref().is_none_or(|r| r.rate() != rate) {
                self.resampler = Some(Resampler48::new(rate).map_err(SourceError::NotAudio)?);
            }
            let resampler = self.resampler.as_mut().expect("set above");
            let (pacer, framer, samples) = (&mut self.pacer, &mut self.framer, &mut self.samples);
            let publisher = &mut ctx.publisher;
            let control = &ctx.control;
            let result = resampler.push(chunk, 0, &mut |pcm: &[f32], _| -> Result<(), Halt> {
                *samples += pcm.len() as u64;
                framer.push(pcm, 0, |frame: &[f32], _| -> Result<(), Halt> {
                    let at = loop {
                        if control.is_stopped() {
                            return Err(Halt::Stopped);
                        }
                        if let Some(at) = pacer.wait_next(MAX_WAIT) {
                            break at;
                        }
                    };
                    publisher.audio(frame, at).map_err(Halt::Encoder)
                })
            });
            ctx.publisher
                .stats
                .gaps
                .store(self.pacer.gaps, Ordering::Relaxed);
            match result {
                Ok(()) => {}
                Err(Halt::Stopped) => return Ok(PlayEnd::Stopped),
                Err(Halt::Encoder(e)) => return Err(SourceError::Corrupt(e)),
            }
        }
    }

    /// Sends what is left of a last frame (padded) and the `End` frames.
    pub(crate) fn finish(&mut self, ctx: &mut Ctx) {
        if !ctx.control.is_stopped() {
            let pacer = &mut self.pacer;
            let publisher = &mut ctx.publisher;
            let _ = self.framer.flush(|frame: &[f32], _| -> Result<(), String> {
                let at = loop {
                    if let Some(at) = pacer.wait_next(MAX_WAIT) {
                        break at;
                    }
                };
                publisher.audio(frame, at)
            });
        }
        if ctx.publisher.next_seq() > 0 {
            let at = self.pacer.next_us();
            ctx.publisher.end(at);
        }
    }
}

/// Why frame production stopped inside a chunk.
enum Halt {
    /// A stop was requested.
    Stopped,
    /// libopus failed.
    Encoder(String),
}

impl From<String> for Halt {
    fn from(e: String) -> Self {
        Halt::Encoder(e)
    }
}

/// The thread of a programme broadcast: plays the stored Ogg Opus file once.
pub(crate) fn run_file(mut ctx: Ctx, path: &Path, ready: Ready) -> Outcome {
    let opened = File::open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
        .and_then(|f| {
            open_stream(BufReader::new(f), Some("opus"))
                .map_err(|e| format!("cannot decode {}: {e}", path.display()))
        });
    let mut source = match opened {
        Ok(source) => source,
        Err(e) => {
            let _ = ready.send(Err(LiveError::Internal(e.clone())));
            return Outcome::failed(e);
        }
    };
    let _ = ready.send(Ok(()));
    let mut paced = Paced::new();
    let outcome = match paced.play(&mut ctx, source.as_mut()) {
        Ok(PlayEnd::Eof) => Outcome::new(EndReason::SourceEnded),
        Ok(PlayEnd::Stopped) => Outcome::new(ctx.control.reason().unwrap_or(EndReason::Stopped)),
        Err(e) => Outcome::failed(e.to_string()),
    };
    paced.finish(&mut ctx);
    outcome
}
