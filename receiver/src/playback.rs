//! One play, from the cached file to the loudspeaker, timed to the sample.
//!
//! 1. **Audio**: the programme's cached file is verified and opened; if it is
//!    missing or corrupt the player waits for the fetcher until the planned
//!    start, then reports the play `missed`.
//! 2. **Lead-in**: with the output open, silence is written until the sink's
//!    queue ends exactly at the planned start: `gap = start − (now +
//!    sink.delay())`, the last piece cut to the sample. The first programme
//!    sample is therefore heard at the planned instant, and `started_at` is
//!    that instant as the sink reports it.
//! 3. **Join in progress**: if the play's start has already passed (the
//!    receiver started late, or got the schedule late), the programme is
//!    joined at the offset that keeps it on the planned timeline, and the
//!    report carries the real `started_at` and a note.
//! 4. **Programme**: frames are written until the end of the audio or the
//!    plan's end. A new schedule during the play keeps it going unless it
//!    removes the event (cut at once, `preempted`) or moves its end earlier
//!    (a higher-priority event cuts in): queued audio past the cut is
//!    cleared, so the switch is heard within a frame.
//! 5. **Live broadcasts**: between chunks the player checks the followed
//!    live broadcast. One of equal or higher priority interrupts the play
//!    at the instant its first sample is due: programme audio is written up
//!    to that instant, and audio queued past it is cleared and put back in
//!    the feed, so the programme later resumes at exactly the sample heard
//!    last ([`ProgrammeFeed`]). When the broadcast ends the programme
//!    resumes, and the report lists the interruption (`interruptions`); a
//!    play cut by a higher-priority event still ends at that event's start.
//!
//! Every sample written is scaled by the output gain: `--emergency-volume`
//! for emergency plays, `--volume` for the others.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};
use loa_protocol::{Interruption, NowPlaying, PlayOutcome};
use loa_schedules::PlannedPlay;

use crate::clock::local_now_us;
use crate::live::drift::SAMPLE_US;
use crate::live::session::LiveExit;
use crate::opus_source::{DecodeError, OpusSource};
use crate::player::{PlayerEvent, PlayerThread};

/// Sample rate of everything written to the sink.
const RATE: i64 = loa_hardware::SAMPLE_RATE as i64;
/// Silence is written in pieces of this many samples (20 ms).
const CHUNK: usize = 960;
/// One chunk, µs.
const FRAME_US: i64 = 20_000;
/// How long the player waits between looks for missing audio.
const AUDIO_POLL: Duration = Duration::milliseconds(250);
/// Audio that arrives after the start is joined only if more than this of
/// the play is left; otherwise the play is reported missed.
const LATE_JOIN_MIN_LEFT: Duration = Duration::seconds(2);
/// Longest sleep between looks at the command channel before a play.
const IDLE_SLICE: Duration = Duration::milliseconds(20);
/// A start later than this is reported as a join in progress.
const LATE_NOTE: Duration = Duration::milliseconds(50);
/// A play not cut by the plan may run this much past its announced duration
/// before it is stopped (the real audio may be a few milliseconds longer).
const OVERRUN_GRACE: Duration = Duration::seconds(1);

/// Samples in `d` at the sink rate (rounded down; negative stays negative).
fn samples(d: Duration) -> i64 {
    d.num_nanoseconds()
        .map(|ns| ns * RATE / 1_000_000_000)
        .unwrap_or(i64::MAX / 2)
}

/// The duration of `n` samples.
fn span(n: i64) -> Duration {
    Duration::nanoseconds(n * 1_000_000_000 / RATE)
}

/// What a step before the first sample decided.
enum Step<T> {
    /// Carry on with this.
    Go(T),
    /// The plan changed or the player is stopping: drop this play for now
    /// (it is not marked done, so the main loop may pick it again).
    Abort,
    /// The play cannot happen; report it with this outcome and detail.
    Fail(PlayOutcome, String),
}

/// Programme samples kept after writing, so audio cleared from the sink at
/// a live interruption can be played again on resumption (0.5 s: more than
/// any sink queue plus device latency).
const HISTORY: usize = 24_000;

/// A programme's samples on their way to the sink: decoded frames handed
/// out in pieces of any size, the last [`HISTORY`] samples kept so that
/// samples cleared from the sink can be put back ([`unwrite`](Self::unwrite)).
pub(crate) struct ProgrammeFeed {
    source: OpusSource,
    /// Samples to hand out before decoding more (front first).
    pending: VecDeque<f32>,
    /// The last samples handed out (oldest first).
    history: VecDeque<f32>,
    /// The piece handed out last.
    out: Vec<f32>,
}

impl ProgrammeFeed {
    fn new(source: OpusSource) -> Self {
        ProgrammeFeed {
            source,
            pending: VecDeque::new(),
            history: VecDeque::with_capacity(HISTORY),
            out: Vec::with_capacity(CHUNK),
        }
    }

    /// Up to `max` (> 0) next samples; `None` at the end of the programme.
    fn next(&mut self, max: usize) -> Result<Option<&[f32]>, DecodeError> {
        if self.pending.is_empty() {
            match self.source.next_chunk()? {
                Some(chunk) => self.pending.extend(chunk.iter().copied()),
                None => return Ok(None),
            }
        }
        let n = max.min(self.pending.len());
        self.out.clear();
        self.out.extend(self.pending.drain(..n));
        self.history.extend(self.out.iter().copied());
        let excess = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..excess);
        Ok(Some(&self.out))
    }

    /// Puts the last `n` samples handed out back in front; returns how many
    /// (at most the history kept).
    fn unwrite(&mut self, n: usize) -> usize {
        let n = n.min(self.history.len());
        for _ in 0..n {
            if let Some(sample) = self.history.pop_back() {
                self.pending.push_front(sample);
            }
        }
        n
    }
}

/// How a live interruption of a play ended.
enum Interrupted {
    /// The play reached its end (or the plan's) before the broadcast began.
    NotNeeded,
    /// The broadcast is over (or held off); the play goes on. The
    /// interruption, if the broadcast was heard.
    Resumed(Option<Interruption>),
    /// The play must stop.
    Cut(Cut),
    /// The output failed.
    Failed(String),
}

/// Why the programme stopped before its natural end.
enum Cut {
    /// The plan's end for this play was reached.
    PlanEnd,
    /// The event left the schedule.
    Removed,
    /// The player is shutting down.
    Shutdown,
}

impl PlayerThread {
    /// Plays one planned play (see the module docs) and reports it.
    pub(crate) fn play(&mut self, mut p: PlannedPlay) {
        let source = match self.await_audio(&mut p) {
            Step::Go(s) => s,
            Step::Abort => return,
            Step::Fail(outcome, detail) => return self.fail(&p, outcome, detail),
        };
        self.preverify_following(&p);
        if !self.output_open
            && let Err(e) = self.open_output()
        {
            tracing::error!(error = %e, event = %p.event.id, "cannot open the audio output");
            return self.fail(
                &p,
                PlayOutcome::Failed,
                format!("audio output could not be opened: {e}"),
            );
        }
        let first_heard = match self.lead_in(&mut p) {
            Step::Go(t) => t,
            Step::Abort => return,
            Step::Fail(outcome, detail) => return self.fail(&p, outcome, detail),
        };
        self.programme_out(p, source, first_heard);
    }

    /// Step 1: waits (until the planned start at the latest) for verified,
    /// decodable audio.
    fn await_audio(&mut self, p: &mut PlannedPlay) -> Step<OpusSource> {
        let Some(programme) = self.programme(&p.event.programme_id) else {
            return Step::Fail(
                PlayOutcome::Missed,
                "the schedule does not describe this programme's audio".into(),
            );
        };
        let mut late_noted = false;
        loop {
            match self.verified_audio(&programme) {
                Ok(path) => {
                    return match OpusSource::open(&path) {
                        Ok(source) => Step::Go(source),
                        Err(e) => Step::Fail(
                            PlayOutcome::Missed,
                            format!("programme audio cannot be decoded: {e}"),
                        ),
                    };
                }
                Err(e) => {
                    // Past the start, audio that arrives late (a fetch
                    // after a power cut, a slow link) is still joined where
                    // the programme's timeline is, until too little is left.
                    let now = self.now();
                    if now >= p.start && now >= p.end - LATE_JOIN_MIN_LEFT {
                        tracing::error!(event = %p.event.id, error = %e, "audio not available in time for the play");
                        return Step::Fail(
                            PlayOutcome::Missed,
                            format!("programme audio not in the cache at the scheduled time: {e}"),
                        );
                    }
                    if now >= p.start && !late_noted {
                        late_noted = true;
                        tracing::warn!(event = %p.event.id, error = %e, "audio not available at the scheduled time; the play will be joined when it arrives");
                    } else {
                        tracing::debug!(event = %p.event.id, error = %e, "waiting for audio");
                    }
                    let wait = if now < p.start {
                        AUDIO_POLL.min(p.start - now)
                    } else {
                        AUDIO_POLL
                    };
                    if !self.idle(p, wait) {
                        return Step::Abort;
                    }
                }
            }
        }
    }

    /// Verifies the audio of the plays following `p` closely, so a
    /// back-to-back switch does not stop to hash a file.
    fn preverify_following(&mut self, p: &PlannedPlay) {
        let horizon = p.end
            + Duration::from_std(self.config.prepare).unwrap_or_default()
            + Duration::seconds(3);
        let following: Vec<String> = self
            .plan
            .iter()
            .filter(|q| q.event.id != p.event.id && q.start >= p.start && q.start <= horizon)
            .map(|q| q.event.programme_id.clone())
            .collect();
        for id in following {
            if let Some(programme) = self.programme(&id) {
                let _ = self.verified_audio(&programme);
            }
        }
    }

    /// Waits for `d` (feeding silence if the output is open) while
    /// applying commands; false if the play should be dropped.
    fn idle(&mut self, p: &mut PlannedPlay, d: Duration) -> bool {
        let until = self.now() + d;
        loop {
            if !self.still_planned(p) {
                return false;
            }
            let left = until - self.now();
            if left <= Duration::zero() {
                return true;
            }
            if self.output_open {
                let n = (samples(left).max(1) as usize).min(CHUNK);
                if let Err(e) = self.sink.write(&SILENCE[..n]) {
                    tracing::error!(error = %e, "audio output failed while idle");
                    self.close_output();
                }
            } else {
                std::thread::sleep(left.min(IDLE_SLICE).to_std().unwrap_or_default());
            }
        }
    }

    /// Applies pending commands; false if `p` is no longer the next play
    /// (with the same start) or the player is stopping. Updates `p`'s end.
    fn still_planned(&mut self, p: &mut PlannedPlay) -> bool {
        let mut changed = false;
        while let Ok(command) = self.commands.try_recv() {
            self.apply(command);
            changed = true;
        }
        if self.stopping {
            return false;
        }
        if let Some(q) = self.live_priority() {
            // The broadcast plays until the play's start even if the play
            // will then hold it off; one of equal or higher priority keeps
            // the loudspeaker past it.
            let heard = local_now_us() + self.sink.delay().as_micros() as i64;
            let start = local_now_us() + (p.start - self.now()).num_microseconds().unwrap_or(0);
            if q >= p.event.priority || start > heard + FRAME_US {
                tracing::debug!(event = %p.event.id, "a live broadcast takes the loudspeaker before the play begins");
                return false;
            }
        }
        if !changed {
            return true;
        }
        match self.next_play(self.now()) {
            Some(q) if q.event.id == p.event.id && q.start == p.start => {
                *p = q;
                true
            }
            _ => {
                tracing::info!(event = %p.event.id, "plan changed before the play began");
                false
            }
        }
    }

    /// Step 2: silence until the sink's queue ends at the planned start.
    /// Returns when the next written sample will be heard.
    fn lead_in(&mut self, p: &mut PlannedPlay) -> Step<DateTime<Utc>> {
        loop {
            if !self.still_planned(p) {
                return Step::Abort;
            }
            let heard = self.now() + Duration::from_std(self.sink.delay()).unwrap_or_default();
            let gap = samples(p.start - heard);
            if gap <= 0 {
                return Step::Go(heard);
            }
            let n = (gap as usize).min(CHUNK);
            if let Err(e) = self.sink.write(&SILENCE[..n]) {
                self.close_output();
                return Step::Fail(PlayOutcome::Failed, format!("audio output failed: {e}"));
            }
            if n as i64 == gap {
                return Step::Go(heard + span(gap));
            }
        }
    }

    /// Steps 3 and 4: the programme itself, then the report.
    fn programme_out(
        &mut self,
        mut p: PlannedPlay,
        mut source: OpusSource,
        first_heard: DateTime<Utc>,
    ) {
        let mut started_at = first_heard;
        let late = first_heard - p.start;
        if late > Duration::zero() {
            // Join in progress; skipping may itself take a moment, so catch up once more.
            let _ = source.skip(samples(late).max(0) as u64);
            let heard = self.now() + Duration::from_std(self.sink.delay()).unwrap_or_default();
            let behind = samples(heard - p.start) - source.position() as i64;
            if behind > 0 {
                let _ = source.skip(behind as u64);
            }
            started_at = p.start + span(source.position() as i64);
            let late_ms = (started_at - p.start).num_milliseconds();
            if started_at - p.start > LATE_NOTE {
                tracing::warn!(event = %p.event.id, late_ms, "joining a play in progress");
            } else {
                tracing::debug!(event = %p.event.id, late_ms, "started a few samples late; kept on the planned timeline");
            }
        }
        let joined_note = (started_at - p.start > LATE_NOTE).then(|| {
            format!(
                "joined in progress {} ms after the planned start",
                (started_at - p.start).num_milliseconds()
            )
        });
        let mut progress = self.report(
            &p,
            PlayOutcome::Failed,
            Some(started_at),
            None,
            Some("play in progress".into()),
        );
        let natural_end = p.event.natural_end();
        let _ = self.events.send(PlayerEvent::Started {
            report: progress.clone(),
            natural_end,
        });
        self.done.insert(p.event.id.clone());
        let _ = self.events.send(PlayerEvent::NowPlaying(Some(NowPlaying {
            programme_id: p.event.programme_id.clone(),
            event_id: p.event.id.clone(),
            started_at,
        })));
        tracing::info!(event = %p.event.id, programme = %p.event.programme_id, %started_at, planned = %p.start, "play started");

        // A plan end (cut by a higher-priority event) is a wall-clock
        // instant: time spent interrupted by live broadcasts counts against it.
        let limit_of = |p: &PlannedPlay, interrupted: Duration| {
            samples(if p.preempted {
                p.end - p.start - interrupted
            } else {
                p.end - p.start + OVERRUN_GRACE
            })
        };
        let mut interrupted = Duration::zero();
        let mut limit = limit_of(&p, interrupted);
        // Programme samples written to the sink (counting any skipped at a join).
        let mut written = source.position() as i64;
        let mut feed = ProgrammeFeed::new(source);
        let mut failure: Option<String> = None;
        let cut = loop {
            match self.check_during_play(&mut p) {
                Ok(()) => limit = limit_of(&p, interrupted),
                Err(cut) => break Some(cut),
            }
            if let Some(q) = self.live_priority()
                && q >= p.event.priority
                && written < limit
            {
                let gain = self.gain_for(p.event.priority);
                match self.interrupt_for_live(&mut p, &mut feed, &mut written, limit, gain) {
                    Interrupted::NotNeeded => {}
                    Interrupted::Resumed(interruption) => {
                        if let Some(i) = interruption {
                            interrupted += i.to - i.from;
                            progress.interruptions.push(i);
                        }
                        limit = limit_of(&p, interrupted);
                        let _ = self.events.send(PlayerEvent::NowPlaying(Some(NowPlaying {
                            programme_id: p.event.programme_id.clone(),
                            event_id: p.event.id.clone(),
                            started_at,
                        })));
                        continue;
                    }
                    Interrupted::Cut(cut) => break Some(cut),
                    Interrupted::Failed(why) => {
                        failure = Some(why);
                        break None;
                    }
                }
            }
            if written >= limit {
                break Some(Cut::PlanEnd);
            }
            let max = ((limit - written) as usize).min(CHUNK);
            let chunk = match feed.next(max) {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break None,
                Err(e) => {
                    failure = Some(format!("programme audio broke off: {e}"));
                    break None;
                }
            };
            let take = chunk.len();
            // Read per chunk: a volume set from the console applies at once.
            let gain = self.gain_for(p.event.priority);
            if let Err(e) = self.write_gained(chunk, gain) {
                failure = Some(format!("audio output failed: {e}"));
                break None;
            }
            written += take as i64;
        };
        // Cut at once if told to, or if audio past a new, earlier end is
        // already queued (the cut then comes up to one queue length early).
        let overshoot = written > limit;
        if matches!(cut, Some(Cut::Removed | Cut::Shutdown))
            || (matches!(cut, Some(Cut::PlanEnd)) && overshoot)
        {
            self.sink.clear();
        }
        let ended_at = self.now() + Duration::from_std(self.sink.delay()).unwrap_or_default();
        self.audio_tail = Some((
            local_now_us() + self.sink.delay().as_micros() as i64,
            p.event.priority,
        ));
        let (outcome, detail) = match (&failure, &cut) {
            (Some(why), _) => (PlayOutcome::Failed, Some(why.clone())),
            (None, None) => (PlayOutcome::Completed, joined_note),
            (None, Some(Cut::PlanEnd)) if p.preempted => (
                PlayOutcome::Preempted,
                Some("cut by a higher-priority play".to_string()),
            ),
            (None, Some(Cut::PlanEnd)) => (
                PlayOutcome::Completed,
                Some(
                    "audio ran past its announced duration; stopped at the planned end".to_string(),
                ),
            ),
            (None, Some(Cut::Removed)) => (
                PlayOutcome::Preempted,
                Some("cut: the event was removed from the schedule".to_string()),
            ),
            (None, Some(Cut::Shutdown)) => (
                PlayOutcome::Failed,
                Some("cut: the receiver was shut down during the play".to_string()),
            ),
        };
        if failure.is_some() {
            tracing::error!(event = %p.event.id, detail = ?detail, "play failed");
            self.close_output();
        }
        tracing::info!(event = %p.event.id, outcome = outcome.as_str(), %ended_at, interruptions = progress.interruptions.len(), "play ended");
        progress.outcome = outcome;
        progress.ended_at = Some(ended_at);
        progress.detail = detail;
        let _ = self.events.send(PlayerEvent::NowPlaying(None));
        self.finish(progress, &p);
    }

    /// Applies commands that arrived during a play: `Err` if the play must
    /// stop at once, otherwise `p` carries the (possibly earlier) planned end.
    fn check_during_play(&mut self, p: &mut PlannedPlay) -> Result<(), Cut> {
        let mut changed = false;
        while let Ok(command) = self.commands.try_recv() {
            self.apply(command);
            changed = true;
        }
        if self.stopping {
            return Err(Cut::Shutdown);
        }
        if changed {
            self.refresh_play(p)?;
        }
        Ok(())
    }

    /// Takes the (possibly new) plan's end for the play under way: `Err` if
    /// its event left the schedule.
    fn refresh_play(&mut self, p: &mut PlannedPlay) -> Result<(), Cut> {
        match self.plan.iter().find(|q| q.event.id == p.event.id) {
            None => Err(Cut::Removed),
            Some(q) => {
                // Only the end matters now: the play already started.
                let end = if q.preempted {
                    q.end
                } else {
                    p.start + Duration::milliseconds(q.event.duration_ms as i64)
                };
                p.end = end;
                p.preempted = q.preempted;
                self.done.insert(p.event.id.clone());
                Ok(())
            }
        }
    }

    /// Hands the loudspeaker to the followed live broadcast in the middle of
    /// play `p` (see the module docs), and takes it back when the broadcast
    /// is over.
    fn interrupt_for_live(
        &mut self,
        p: &mut PlannedPlay,
        feed: &mut ProgrammeFeed,
        written: &mut i64,
        limit: i64,
        gain: f32,
    ) -> Interrupted {
        let now = local_now_us();
        let switch_at = self
            .live_next_target_us()
            .unwrap_or(now + self.write_ahead_us());
        // Programme audio queued past the switch is taken back.
        let queued = self.sink.delay();
        if now + queued.as_micros() as i64 > switch_at {
            self.sink.clear();
            let left = self.sink.delay();
            let dropped =
                samples(Duration::from_std(queued.saturating_sub(left)).unwrap_or_default());
            let back = feed.unwrite(dropped.clamp(0, *written) as usize);
            *written -= back as i64;
            tracing::debug!(event = %p.event.id, samples = back, "programme audio queued past the live switch taken back");
        }
        // Programme up to the switch.
        loop {
            let heard = local_now_us() + self.sink.delay().as_micros() as i64;
            let gap = ((switch_at - heard) as f64 / SAMPLE_US).round() as i64;
            if gap <= 0 {
                break;
            }
            if *written >= limit {
                return Interrupted::NotNeeded;
            }
            let max = (gap.min(limit - *written) as usize).min(CHUNK);
            let chunk = match feed.next(max) {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Interrupted::NotNeeded,
                Err(e) => return Interrupted::Failed(format!("programme audio broke off: {e}")),
            };
            let n = chunk.len() as i64;
            if let Err(e) = self.write_gained(chunk, gain) {
                return Interrupted::Failed(format!("audio output failed: {e}"));
            }
            *written += n;
        }
        tracing::info!(event = %p.event.id, position_ms = *written * 1000 / RATE, "play interrupted by a live broadcast");
        let (exit, on_air) = self.live_on_air(Some(&p.event.id));
        match exit {
            LiveExit::Shutdown => return Interrupted::Cut(Cut::Shutdown),
            LiveExit::Failed(why) => return Interrupted::Failed(why),
            LiveExit::Ended | LiveExit::Replaced | LiveExit::Held | LiveExit::Idle => {}
        }
        if let Err(cut) = self.refresh_play(p) {
            return Interrupted::Cut(cut);
        }
        let interruption = on_air.map(|on| Interruption {
            broadcast_id: on.broadcast_id,
            from: self.config.clock.utc_of_local(on.from_us),
            to: self.config.clock.utc_of_local(on.to_us),
        });
        if let Some(i) = &interruption {
            tracing::info!(event = %p.event.id, broadcast = %i.broadcast_id, from = %i.from, to = %i.to, "play resumes after a live broadcast");
        }
        Interrupted::Resumed(interruption)
    }

    /// Reports a play that did not happen (or broke off before its first sample).
    fn fail(&mut self, p: &PlannedPlay, outcome: PlayOutcome, detail: String) {
        tracing::error!(event = %p.event.id, outcome = outcome.as_str(), %detail, "play not made");
        let report = self.report(p, outcome, None, None, Some(detail));
        self.finish(report, p);
    }
}

/// 20 ms of silence.
static SILENCE: [f32; CHUNK] = [0.0; CHUNK];
