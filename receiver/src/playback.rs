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

use chrono::{DateTime, Duration, Utc};
use loa_protocol::{NowPlaying, PlayOutcome};
use loa_schedules::PlannedPlay;

use crate::opus_source::OpusSource;
use crate::player::{PlayerEvent, PlayerThread};

/// Sample rate of everything written to the sink.
const RATE: i64 = loa_hardware::SAMPLE_RATE as i64;
/// Silence is written in pieces of this many samples (20 ms).
const CHUNK: usize = 960;
/// How long the player waits between looks for missing audio.
const AUDIO_POLL: Duration = Duration::milliseconds(250);
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
                    let now = Utc::now();
                    if now >= p.start {
                        tracing::error!(event = %p.event.id, error = %e, "audio not available at the scheduled time");
                        return Step::Fail(
                            PlayOutcome::Missed,
                            format!("programme audio not in the cache at the scheduled time: {e}"),
                        );
                    }
                    tracing::debug!(event = %p.event.id, error = %e, "waiting for audio");
                    if !self.idle(p, AUDIO_POLL.min(p.start - now)) {
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
        let until = Utc::now() + d;
        loop {
            if !self.still_planned(p) {
                return false;
            }
            let left = until - Utc::now();
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
        if !changed {
            return true;
        }
        match self.next_play(Utc::now()) {
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
            let heard = Utc::now() + Duration::from_std(self.sink.delay()).unwrap_or_default();
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
            let heard = Utc::now() + Duration::from_std(self.sink.delay()).unwrap_or_default();
            let behind = samples(heard - p.start) - source.position() as i64;
            if behind > 0 {
                let _ = source.skip(behind as u64);
            }
            started_at = p.start + span(source.position() as i64);
            tracing::warn!(event = %p.event.id, late_ms = (started_at - p.start).num_milliseconds(), "joining a play in progress");
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

        let limit_of = |p: &PlannedPlay| {
            samples(
                p.end - p.start
                    + if p.preempted {
                        Duration::zero()
                    } else {
                        OVERRUN_GRACE
                    },
            )
        };
        let mut limit = limit_of(&p);
        // Programme samples written to the sink (counting any skipped at a join).
        let mut written = source.position() as i64;
        let mut failure: Option<String> = None;
        let cut = loop {
            match self.check_during_play(&mut p) {
                Ok(()) => limit = limit_of(&p),
                Err(cut) => break Some(cut),
            }
            if written >= limit {
                break Some(Cut::PlanEnd);
            }
            let chunk = match source.next_chunk() {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break None,
                Err(e) => {
                    failure = Some(format!("programme audio broke off: {e}"));
                    break None;
                }
            };
            let take = chunk.len().min((limit - written) as usize);
            if let Err(e) = self.sink.write(&chunk[..take]) {
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
        let ended_at = Utc::now() + Duration::from_std(self.sink.delay()).unwrap_or_default();
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
        tracing::info!(event = %p.event.id, outcome = outcome.as_str(), %ended_at, "play ended");
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
            match self.plan.iter().find(|q| q.event.id == p.event.id) {
                None => return Err(Cut::Removed),
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
                }
            }
        }
        Ok(())
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
