//! Playing the followed broadcast, in the player thread (which owns the sink).
//!
//! **Playout.** Each frame must be heard at `capture_us + playout_delay_ms`
//! on the controller's clock, i.e. at that instant minus the estimated
//! offset on the local clock ([`Clock`](crate::clock::Clock)). A frame is
//! written when the local clock reaches its playout instant minus the
//! write-ahead `W` ([`LIVE_MARGIN_US`] plus the sink's own latency, measured
//! when the output opens): the sink then holds only ~`W` of audio, so a
//! frame may arrive as late as `playout − W` and still be played (with the
//! default 120 ms playout delay and the WAV sink, 80 ms after capture).
//! Before each write the player compares where the frame's first sample
//! will be heard (`now + sink.delay()`) with where it should be and
//! corrects ([`drift`](super::drift)): silence before the very first frame
//! (re-anchoring from idle), single samples dropped or inserted for small
//! errors, skipping or silence for large ones. Missing frames are concealed
//! ([`jitter`](super::jitter), [`decoder`](super::decoder)).
//!
//! **Clock.** Until the clock exchange has answered, the local clock is
//! assumed to agree with the controller's (both on NTP) if the first frame
//! of a broadcast can be played by it. Otherwise — or if, even with the
//! estimated offset, the first frame would have travelled for more than
//! 2 s or arrived more than 1 s before its capture — the offset is
//! unusable: the broadcast is played a playout delay after the first
//! frame's arrival, out of sync but heard, with a warning, until the clock
//! exchange gives a usable offset.
//!
//! **Priorities** (the rule in the README): a broadcast of priority Q takes
//! the loudspeaker from a scheduled play of priority ≤ Q — the play stops at
//! the first live sample (queued programme audio past that instant is
//! cleared and put back, so not a sample is lost), and resumes where it
//! stopped when the broadcast ends ([`interrupt_for_live`]); its report
//! lists the interruption. A scheduled play of priority > Q holds the
//! broadcast off: live output stops at that play's start, the broadcast's
//! frames are dropped while it plays, and the broadcast resumes after it if
//! still on air. Plays of priority ≤ Q that were due during a broadcast
//! start (from their beginning) once it ends, with the interruption in their
//! report. Emergency broadcasts play at `--emergency-volume` and switch the
//! amplifier on; all others at `--volume`.
//!
//! [`interrupt_for_live`]: crate::player::PlayerThread

use std::time::Duration as StdDuration;

use chrono::Duration;
use loa_protocol::live::FRAME_SAMPLES;
use loa_protocol::{Interruption, NowPlaying, Priority};

use super::drift::{Adjust, SAMPLE_US, drop_samples, insert_samples};
use super::jitter::Step;
use super::{LiveEnd, LiveInput, LiveSummary, TIMEOUT_US};
use crate::clock::local_now_us;
use crate::player::{MIN_JOIN_REMAINING, PlayerEvent, PlayerThread};

/// Audio written ahead of its playout instant, beyond the sink's latency.
pub const LIVE_MARGIN_US: i64 = 40_000;
/// A first frame that travelled longer than this (µs) means the clock
/// offset is unusable.
const MAX_TRANSIT_US: i64 = 2_000_000;
/// A first frame that arrived this long (µs) before its capture instant
/// means the clock offset is unusable.
const MAX_EARLY_US: i64 = 1_000_000;
/// Longest wait between looks at the command channel while on air.
const MAX_WAIT: StdDuration = StdDuration::from_millis(20);

/// Why the on-air loop returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LiveExit {
    /// The broadcast ended (end frame, silence, or output failure).
    Ended,
    /// A higher-priority broadcast replaced it.
    Replaced,
    /// A higher-priority scheduled play starts now.
    Held,
    /// Nothing to play yet (only stale frames were held).
    Idle,
    /// The player is stopping.
    Shutdown,
    /// The audio output failed.
    Failed(String),
}

/// What was on air: the broadcast and when its first and last samples
/// written were heard (local clock, µs).
#[derive(Debug, Clone)]
pub(crate) struct OnAir {
    pub(crate) broadcast_id: String,
    pub(crate) priority: Priority,
    pub(crate) from_us: i64,
    pub(crate) to_us: i64,
}

/// A scheduled play delayed by live broadcasts: it starts `shift` after
/// its planned start, from its beginning.
#[derive(Debug, Clone, Default)]
pub(crate) struct Deferral {
    pub(crate) shift: Duration,
    pub(crate) interruptions: Vec<Interruption>,
}

/// Microseconds of a (non-negative) std duration.
fn us(d: StdDuration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// Samples in `us` microseconds (rounded to nearest).
fn samples_in(us: i64) -> i64 {
    (us as f64 / SAMPLE_US).round() as i64
}

impl PlayerThread {
    /// Write-ahead for live frames, µs (see the module docs).
    pub(crate) fn write_ahead_us(&self) -> i64 {
        LIVE_MARGIN_US + us(self.sink_floor)
    }

    /// Controller minus local clock for the followed broadcast, µs.
    pub(crate) fn live_offset(&self) -> i64 {
        match self
            .live
            .session
            .as_ref()
            .and_then(|s| s.fallback_offset_us)
        {
            Some(fallback) => fallback,
            None => self.config.clock.offset_us().unwrap_or(0),
        }
    }

    /// The output gain for audio of `priority`.
    pub(crate) fn gain_for(&self, priority: Priority) -> f32 {
        if priority == Priority::Emergency {
            self.config.emergency_volume
        } else {
            self.config.volume
        }
    }

    pub(crate) fn emit_live_ended(&mut self, summary: LiveSummary) {
        let _ = self.events.send(PlayerEvent::LiveEnded(summary));
    }

    /// Takes a frame from the link.
    pub(crate) fn on_live_frame(&mut self, input: LiveInput) {
        self.live
            .queued
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        let LiveInput { frame, arrived_us } = input;
        if let Some(summary) = self.live.accept(frame, arrived_us) {
            self.emit_live_ended(summary);
        }
        let clock_offset = self.config.clock.offset_us();
        let ahead = self.write_ahead_us();
        let Some(s) = self.live.session.as_mut() else {
            return;
        };
        // How long the first frame took to arrive, by the clock's offset. A
        // synchronised clock is trusted unless that is absurd; the local
        // clock alone only if the frame can be played by it.
        let transit = s.first_arrival_us - (s.first_capture_us - clock_offset.unwrap_or(0));
        let latest = if clock_offset.is_some() {
            MAX_TRANSIT_US
        } else {
            s.delay_us - ahead
        };
        let plausible = (-MAX_EARLY_US..=latest).contains(&transit);
        if !s.clock_checked {
            s.clock_checked = true;
            if clock_offset.is_none() {
                tracing::warn!(broadcast = %s.uuid, "clock not yet synchronised with the controller; assuming the local clock agrees with it");
            }
            if !plausible {
                tracing::warn!(
                    broadcast = %s.uuid,
                    transit_ms = transit / 1000,
                    "the controller's clock and ours disagree; playing this broadcast unsynchronised, a playout delay after arrival"
                );
                s.fallback_offset_us = Some(s.first_capture_us - s.first_arrival_us);
            }
        } else if s.fallback_offset_us.is_some() && clock_offset.is_some() && plausible {
            tracing::info!(broadcast = %s.uuid, "clock synchronised with the controller; the broadcast is now played in sync");
            s.fallback_offset_us = None;
        }
    }

    /// The priority of the followed broadcast if it has audio to play,
    /// after dropping what is past due and ending it if it is over.
    pub(crate) fn live_priority(&mut self) -> Option<Priority> {
        self.live.session.as_ref()?;
        let now = local_now_us();
        let offset = self.live_offset();
        let ahead = self.write_ahead_us();
        if let Some(summary) = self.live.tidy(now, now + offset, ahead) {
            self.emit_live_ended(summary);
        }
        self.live.wants_air()
    }

    /// When (local µs) the first sample of the followed broadcast's next
    /// frame must be heard.
    pub(crate) fn live_next_target_us(&self) -> Option<i64> {
        let s = self.live.session.as_ref()?;
        Some(s.playout.first_playout_us()? - self.live_offset())
    }

    /// The earliest planned play (not yet dealt with) of priority above `q`
    /// that can still be heard: the broadcast must give way at its start.
    pub(crate) fn live_holder(&self, q: Priority) -> Option<(i64, loa_schedules::PlannedPlay)> {
        let now = self.now();
        let now_local = local_now_us();
        self.plan
            .iter()
            .filter(|p| {
                p.event.priority > q
                    && !self.done.contains(&p.event.id)
                    && (p.start > now || p.end - now >= MIN_JOIN_REMAINING)
            })
            .map(|p| {
                let at = now_local + (p.start - now).num_microseconds().unwrap_or(i64::MAX / 4);
                (at, p.clone())
            })
            .min_by_key(|(at, _)| *at)
    }

    /// When the next written sample will be heard, local µs.
    fn heard_next_us(&self) -> i64 {
        local_now_us() + us(self.sink.delay())
    }

    /// Waits up to `timeout` for a command and applies it.
    fn wait_live(&mut self, timeout: StdDuration) {
        match self.commands.recv_timeout(timeout) {
            Ok(command) => self.apply(command),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => self.stopping = true,
        }
    }

    /// Writes `n` samples of silence.
    fn write_silence(&mut self, mut n: usize) -> Result<(), loa_hardware::SinkError> {
        static SILENCE: [f32; FRAME_SAMPLES] = [0.0; FRAME_SAMPLES];
        while n > 0 {
            let k = n.min(FRAME_SAMPLES);
            self.sink.write(&SILENCE[..k])?;
            n -= k;
        }
        Ok(())
    }

    /// Plays the followed broadcast until it ends, is replaced or held off,
    /// or the player stops. `exclude` is a scheduled play it interrupted
    /// (resumed by the caller); other plays of lower or equal priority that
    /// fell due meanwhile are deferred to its end.
    pub(crate) fn live_on_air(&mut self, exclude: Option<&str>) -> (LiveExit, Option<OnAir>) {
        let Some(s) = &self.live.session else {
            return (LiveExit::Ended, None);
        };
        let (id, uuid, priority) = (s.id, s.uuid.clone(), s.priority);
        if !self.output_open
            && let Err(e) = self.open_output()
        {
            tracing::error!(error = %e, broadcast = %uuid, "cannot open the audio output for a live broadcast");
            if let Some(summary) = self.live.finish(LiveEnd::OutputFailed) {
                self.emit_live_ended(summary);
            }
            return (
                LiveExit::Failed(format!("audio output could not be opened: {e}")),
                None,
            );
        }
        if priority == Priority::Emergency
            && let Err(e) = self.set_amp(true)
        {
            tracing::error!(error = %e, "cannot switch the amplifier on for an emergency broadcast");
        }
        let ahead = self.write_ahead_us();
        {
            let offset = self.live_offset();
            let now = local_now_us();
            if let Some(s) = self.live.session.as_mut() {
                s.playout.restart(now + offset, ahead);
            }
        }
        // With no play interrupted (an interrupted play has already filled
        // the queue exactly up to the first live sample), audio queued past
        // the first live sample would make it late: drop it if it is
        // silence (a lead-in) or audio of no higher priority (the tail of a
        // play or broadcast that just ended). The tail of a higher-priority
        // play is let out: the broadcast's first samples are then dropped
        // as late instead.
        if exclude.is_none()
            && let Some(target) = self.live_next_target_us()
            && self.heard_next_us() > target
            && self
                .audio_tail
                .is_none_or(|(end, tail_priority)| end <= target || tail_priority <= priority)
        {
            self.sink.clear();
        }
        tracing::info!(broadcast = %uuid, ?priority, write_ahead_us = ahead, "live broadcast on air");
        let mut from_us: Option<i64> = None;
        let mut frame: Vec<f32> = Vec::with_capacity(FRAME_SAMPLES + 16);
        let exit = loop {
            while let Ok(command) = self.commands.try_recv() {
                self.apply(command);
            }
            if self.stopping {
                break LiveExit::Shutdown;
            }
            match &self.live.session {
                None => break LiveExit::Ended,
                Some(s) if s.id != id => break LiveExit::Replaced,
                Some(_) => {}
            }
            let now = local_now_us();
            let heard = now + us(self.sink.delay());
            let hold = self.live_holder(priority).map(|(at, _)| at);
            if hold.is_some_and(|h| heard >= h) {
                break LiveExit::Held;
            }
            let offset = self.live_offset();
            let s = self.live.session.as_mut().expect("checked above");
            if now - s.last_arrival_us > TIMEOUT_US {
                if let Some(summary) = self.live.finish(LiveEnd::Timeout) {
                    self.emit_live_ended(summary);
                }
                break LiveExit::Ended;
            }
            let step = s.playout.next_step(now + offset, ahead);
            frame.clear();
            let target = match step {
                Step::Wait { until_us } => {
                    let wait = (until_us - (now + offset)).clamp(500, us(MAX_WAIT));
                    self.wait_live(StdDuration::from_micros(wait as u64));
                    continue;
                }
                Step::Idle => break LiveExit::Idle,
                Step::Finished => {
                    if let Some(summary) = self.live.finish(LiveEnd::EndFrame) {
                        self.emit_live_ended(summary);
                    }
                    break LiveExit::Ended;
                }
                Step::Frame(f) => {
                    frame.extend_from_slice(s.decoder.decode(&f.opus));
                    f.playout_us - offset
                }
                Step::Conceal {
                    playout_us, fec, ..
                } => {
                    let out = match &fec {
                        Some(next) => s.decoder.decode_fec(next),
                        None => s.decoder.conceal(),
                    };
                    frame.extend_from_slice(out);
                    playout_us - offset
                }
            };
            let error = heard - target;
            let mut silence = 0usize;
            match s.corrector.plan(error, frame.len()) {
                Adjust::None => {}
                Adjust::Drop(k) => drop_samples(&mut frame, k),
                Adjust::Insert(k) => insert_samples(&mut frame, k),
                Adjust::Reanchor(k) if k > 0 => {
                    if k as usize >= frame.len() {
                        s.late_at_write += 1;
                        continue;
                    }
                    frame.drain(..k as usize);
                }
                Adjust::Reanchor(k) => silence = k.unsigned_abs() as usize,
            }
            if from_us.is_some() && error.abs() < super::drift::REANCHOR_US {
                s.max_error_us = s.max_error_us.max(error.abs());
            }
            // Read per frame: a volume set from the console applies at once.
            let gain = self.gain_for(priority);
            if gain != 1.0 {
                frame.iter_mut().for_each(|x| *x *= gain);
            }
            let mut held = false;
            if let Some(h) = hold {
                let room = samples_in(h - heard) - silence as i64;
                if room <= 0 {
                    break LiveExit::Held;
                }
                if (room as usize) < frame.len() {
                    frame.truncate(room as usize);
                    held = true;
                }
            }
            let first_heard = heard + (silence as f64 * SAMPLE_US).round() as i64;
            let written = self
                .write_silence(silence)
                .and_then(|()| self.sink.write(&frame));
            if let Err(e) = written {
                tracing::error!(error = %e, broadcast = %uuid, "audio output failed during a live broadcast");
                self.close_output();
                if let Some(summary) = self.live.finish(LiveEnd::OutputFailed) {
                    self.emit_live_ended(summary);
                }
                break LiveExit::Failed(format!("audio output failed: {e}"));
            }
            let last_heard = first_heard + (frame.len() as f64 * SAMPLE_US).round() as i64;
            if let Some(s) = self.live.session.as_mut() {
                s.heard_from_us.get_or_insert(first_heard);
                s.heard_to_us = Some(last_heard);
            }
            if from_us.is_none() {
                from_us = Some(first_heard);
                let _ = self.events.send(PlayerEvent::NowPlaying(Some(NowPlaying {
                    programme_id: format!("live:{uuid}"),
                    event_id: uuid.clone(),
                    started_at: self.config.clock.utc_of_local(first_heard),
                })));
                tracing::info!(broadcast = %uuid, heard_at = %self.config.clock.utc_of_local(first_heard), "first live sample written");
            }
            if held {
                break LiveExit::Held;
            }
        };
        let to_us = self.heard_next_us();
        if from_us.is_some() {
            self.audio_tail = Some((to_us, priority));
        }
        tracing::info!(broadcast = %uuid, exit = ?exit, "live broadcast off air");
        let on_air = from_us.map(|from_us| OnAir {
            broadcast_id: uuid,
            priority,
            from_us,
            to_us: to_us.max(from_us),
        });
        if let Some(on_air) = &on_air {
            self.defer_overlapping(on_air, exclude);
        }
        (exit, on_air)
    }

    /// Plays the followed broadcast with no scheduled play under way.
    pub(crate) fn live_from_idle(&mut self) {
        let (_, on_air) = self.live_on_air(None);
        if on_air.is_some() {
            let _ = self.events.send(PlayerEvent::NowPlaying(None));
        }
    }

    /// Defers the planned plays of priority ≤ the broadcast's that fell due
    /// while it was on air (all but `exclude`) to its end.
    fn defer_overlapping(&mut self, on_air: &OnAir, exclude: Option<&str>) {
        let from = self.config.clock.utc_of_local(on_air.from_us);
        let to = self.config.clock.utc_of_local(on_air.to_us);
        let mut changed = false;
        for p in &self.plan {
            let id = p.event.id.as_str();
            if self.done.contains(id)
                || Some(id) == exclude
                || p.event.priority > on_air.priority
                || p.start >= to
                || p.end <= from
            {
                continue;
            }
            let shift = to - p.start;
            if shift <= Duration::zero() {
                continue;
            }
            tracing::info!(event = %id, shift_ms = shift.num_milliseconds(), broadcast = %on_air.broadcast_id, "play held by a live broadcast; it starts when the broadcast ends");
            let deferral = self.deferred.entry(id.to_string()).or_default();
            deferral.shift += shift;
            deferral.interruptions.push(Interruption {
                broadcast_id: on_air.broadcast_id.clone(),
                from: p.start.max(from),
                to,
            });
            changed = true;
        }
        if changed {
            self.replan();
        }
    }
}
