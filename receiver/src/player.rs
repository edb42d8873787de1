//! The player: a dedicated OS thread that owns the audio sink and the
//! amplifier relay (sinks are not `Send`, and blocking audio calls must never
//! run on the async runtime, as in librespot). The async side sends it each
//! newly accepted schedule over a channel; the thread turns the events into a
//! non-overlapping plan with [`loa_schedules::plan`] and plays each planned
//! play at its instant (see [`playback`](crate::playback) for one play).
//!
//! Around plays: the amplifier is switched on and the sink started
//! `prepare` before a play; afterwards both are switched off unless the next
//! play begins within `prepare` + [`KEEP_OPEN_EXTRA`], in which case the
//! sink is kept fed with silence. Planned plays whose window passed without
//! being played (the receiver was off, or busy) are reported `missed`.
//!
//! The thread reports through [`PlayerEvent`]s: the async side persists the
//! ledger and queues the reports, so no disk write ever delays audio.
//!
//! Live broadcasts arrive on the same command channel ([`LiveFeed`]) and are
//! played by this thread too (see [`live`](crate::live)): before each play
//! and between the chunks of a play the thread checks whether the followed
//! broadcast must take the loudspeaker, by the priority rule in
//! [`live::session`](crate::live).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use loa_hardware::{
    AmplifierPower, AudioSink, HardwareError, OutputSpec, SinkError, open_amplifier, open_sink,
};
use loa_protocol::{NowPlaying, PlayOutcome, PlayReport, ProgrammeRef, ReceiverSchedule};
use loa_schedules::PlannedPlay;
use tokio::sync::mpsc::UnboundedSender;

use crate::cache::{Cache, CacheError};
use crate::clock::Clock;
use crate::live::session::Deferral;
pub use crate::live::{LiveEnd, LiveFeed, LiveSummary};
use crate::live::{LiveInput, LiveState};
use crate::reports::report_id_for;

/// The sink stays open between plays this much longer than `prepare`.
pub const KEEP_OPEN_EXTRA: Duration = Duration::seconds(3);
/// A play already under way is joined only if at least this much is left.
pub const MIN_JOIN_REMAINING: Duration = Duration::seconds(1);
/// Longest sleep while idle; the plan is re-checked at least this often.
const IDLE_WAIT: StdDuration = StdDuration::from_secs(60);
/// Longest wait between looks at the time: the receiver's time follows the
/// controller's clock, whose estimate may move (the first exchange after a
/// start, a stepped controller clock), so a wait is never computed far ahead.
const CLOCK_RECHECK: StdDuration = StdDuration::from_millis(250);
/// Readings of the sink's latency, 5 ms apart, when the output opens.
const FLOOR_READINGS: usize = 5;

/// How the player is set up.
#[derive(Clone)]
pub struct PlayerConfig {
    /// This receiver's id, written into every report.
    pub receiver_id: String,
    /// The audio output (`--output`).
    pub output: OutputSpec,
    /// The amplifier relay (`--amplifier`).
    pub amplifier: String,
    /// How long before a play the amplifier is switched on and the sink started.
    pub prepare: StdDuration,
    /// Where the programmes' audio is.
    pub cache: Cache,
    /// Output gain for normal and priority audio, scheduled or live (`--volume`).
    pub volume: f32,
    /// Output gain for emergency audio (`--emergency-volume`).
    pub emergency_volume: f32,
    /// The controller's clock, for live playout.
    pub clock: Clock,
}

/// What the player tells the async side.
#[derive(Debug, Clone, PartialEq)]
pub enum PlayerEvent {
    /// The first sample of a play is about to be heard; `report` is the
    /// report so far, to record in the ledger.
    Started {
        report: PlayReport,
        natural_end: DateTime<Utc>,
    },
    /// An event is dealt with: played, cut, missed or failed.
    Finished {
        report: PlayReport,
        natural_end: DateTime<Utc>,
    },
    /// What is playing now, for the status message.
    NowPlaying(Option<NowPlaying>),
    /// A live broadcast is over (or no longer followed).
    LiveEnded(LiveSummary),
    /// The amplifier was switched on (`true`) or off.
    Amplifier(bool),
    /// A test tone was played, cut short or refused.
    TestTone {
        command_id: String,
        outcome: ToneOutcome,
    },
}

/// What became of a test tone command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToneOutcome {
    /// Played for its full length.
    Played,
    /// Refused: a programme or broadcast is on air (or about to be), or
    /// another tone is playing. The reason, for the log.
    Refused(String),
    /// Cut short by a programme or broadcast, or by a shutdown.
    Cut(String),
    /// The audio output failed.
    Failed(String),
}

/// Why the player could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlayerError {
    #[error("audio output: {0}")]
    Sink(#[from] SinkError),
    #[error("amplifier: {0}")]
    Amplifier(#[from] HardwareError),
    #[error("cannot start the player thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Messages to the player thread.
pub(crate) enum Command {
    /// A newly accepted schedule replaces the plan.
    Schedule(Arc<ReceiverSchedule>),
    /// Stop at once (cutting any play) and close the output.
    Shutdown,
    /// A live frame from the link.
    Live(Box<LiveInput>),
    /// New output gains (linear) from the console's settings; `None` keeps
    /// the emergency gain as it is.
    Volume {
        volume: f32,
        emergency_volume: Option<f32>,
    },
    /// Play a test tone (see [`crate::tone`]).
    TestTone { command_id: String, seconds: u32 },
}

/// Handle to the player thread; dropping it stops the thread and waits for it.
pub struct Player {
    /// Commands to the thread.
    commands: Sender<Command>,
    /// The thread, joined on shutdown.
    thread: Option<JoinHandle<()>>,
    /// Live frames waiting in the command channel.
    live_queued: Arc<AtomicUsize>,
}

impl Player {
    /// Starts the player thread, opening the sink and the amplifier on it.
    /// `done` holds the events already dealt with (from the ledger).
    pub fn spawn(
        config: PlayerConfig,
        done: HashSet<String>,
        events: UnboundedSender<PlayerEvent>,
    ) -> Result<Player, PlayerError> {
        let (commands, command_rx) = mpsc::channel();
        let live_queued = Arc::new(AtomicUsize::new(0));
        let queued = live_queued.clone();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), PlayerError>>(1);
        let thread = std::thread::Builder::new()
            .name("loa-player".into())
            .spawn(move || {
                let opened = open_sink(&config.output)
                    .map_err(PlayerError::from)
                    .and_then(|sink| Ok((sink, open_amplifier(&config.amplifier)?)));
                match opened {
                    Ok((sink, amp)) => {
                        let _ = ready_tx.send(Ok(()));
                        PlayerThread::new(config, sink, amp, done, command_rx, events, queued)
                            .run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Player {
                commands,
                thread: Some(thread),
                live_queued,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(PlayerError::Thread(std::io::Error::other(
                    "player thread died while starting",
                )))
            }
        }
    }

    /// Hands the player a newly accepted schedule.
    pub fn set_schedule(&self, schedule: Arc<ReceiverSchedule>) {
        let _ = self.commands.send(Command::Schedule(schedule));
    }

    /// Where the link hands live frames to the player thread.
    pub fn live_feed(&self) -> LiveFeed {
        LiveFeed::new(self.commands.clone(), self.live_queued.clone())
    }

    /// A clonable handle for sending schedules to the player.
    pub fn handle(&self) -> PlayerHandle {
        PlayerHandle {
            commands: self.commands.clone(),
        }
    }

    /// Stops the thread (cutting any play) and waits for it. Blocks for up
    /// to a few hundred milliseconds.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("player thread panicked");
        }
    }
}

/// Sends schedules to the player thread without owning it.
#[derive(Clone)]
pub struct PlayerHandle {
    /// Commands to the thread.
    commands: Sender<Command>,
}

impl PlayerHandle {
    /// Hands the player a newly accepted schedule.
    pub fn set_schedule(&self, schedule: Arc<ReceiverSchedule>) {
        let _ = self.commands.send(Command::Schedule(schedule));
    }

    /// Sets the output gains (linear); they apply from the next chunk
    /// written, also during a play. `None` keeps the emergency gain.
    pub fn set_volume(&self, volume: f32, emergency_volume: Option<f32>) {
        let _ = self.commands.send(Command::Volume {
            volume,
            emergency_volume,
        });
    }

    /// Asks for a test tone of `seconds`; the outcome comes back as
    /// [`PlayerEvent::TestTone`].
    pub fn test_tone(&self, command_id: String, seconds: u32) {
        let _ = self.commands.send(Command::TestTone {
            command_id,
            seconds,
        });
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The state the player thread owns.
pub(crate) struct PlayerThread {
    /// Set-up, including the cache to read audio from.
    pub(crate) config: PlayerConfig,
    /// The audio output; created on this thread.
    pub(crate) sink: Box<dyn AudioSink>,
    /// The amplifier relay.
    pub(crate) amp: Box<dyn AmplifierPower>,
    /// Whether the sink is started (and the amplifier on).
    pub(crate) output_open: bool,
    /// The schedule in force: its events, programmes and generation time.
    pub(crate) schedule: Option<Arc<ReceiverSchedule>>,
    /// The plan made from the schedule's events, sorted by start.
    pub(crate) plan: Vec<PlannedPlay>,
    /// Events already dealt with; never played again.
    pub(crate) done: HashSet<String>,
    /// Hashes of cached files this thread has verified byte for byte.
    pub(crate) verified: HashSet<String>,
    /// Commands from the async side.
    pub(crate) commands: Receiver<Command>,
    /// Events to the async side.
    pub(crate) events: UnboundedSender<PlayerEvent>,
    /// Set by a shutdown command (or a closed command channel).
    pub(crate) stopping: bool,
    /// The live broadcast followed, if any.
    pub(crate) live: LiveState,
    /// Plays delayed by live broadcasts, by event id.
    pub(crate) deferred: HashMap<String, Deferral>,
    /// The sink's own latency (its delay with nothing queued), measured
    /// when the output opens.
    pub(crate) sink_floor: StdDuration,
    /// Scratch buffer for applying the output gain.
    pub(crate) scratch: Vec<f32>,
    /// When the last programme or broadcast audio written will have been
    /// heard (local clock, µs), and its priority.
    pub(crate) audio_tail: Option<(i64, loa_protocol::Priority)>,
    /// The amplifier state last set (`None` before the first switch).
    pub(crate) amp_on: Option<bool>,
    /// Set while the main loop plays a scheduled play or a broadcast (a
    /// test tone asked for meanwhile is refused).
    pub(crate) on_air: bool,
    /// Set while a test tone plays.
    pub(crate) tone_playing: bool,
    /// A test tone waiting for the main loop: command id and seconds.
    pub(crate) pending_tone: Option<(String, u32)>,
}

impl PlayerThread {
    /// What time it is for the player (see [`Clock::now_utc`]).
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.config.clock.now_utc()
    }

    fn new(
        config: PlayerConfig,
        sink: Box<dyn AudioSink>,
        amp: Box<dyn AmplifierPower>,
        done: HashSet<String>,
        commands: Receiver<Command>,
        events: UnboundedSender<PlayerEvent>,
        live_queued: Arc<AtomicUsize>,
    ) -> Self {
        PlayerThread {
            config,
            sink,
            amp,
            output_open: false,
            schedule: None,
            plan: Vec::new(),
            done,
            verified: HashSet::new(),
            commands,
            events,
            stopping: false,
            live: LiveState::new(live_queued),
            deferred: HashMap::new(),
            sink_floor: StdDuration::ZERO,
            scratch: Vec::new(),
            audio_tail: None,
            amp_on: None,
            on_air: false,
            tone_playing: false,
            pending_tone: None,
        }
    }

    /// The thread's main loop: wait for the next play, play it, repeat.
    fn run(mut self) {
        tracing::info!(output = ?self.config.output, "player ready");
        while !self.stopping {
            let now = self.now();
            self.report_missed(now);
            if let Some(q) = self.live_priority() {
                // The broadcast takes the loudspeaker, unless a play of
                // higher priority is due now.
                let heard = crate::clock::local_now_us() + self.sink.delay().as_micros() as i64;
                self.on_air = true;
                match self.live_holder(q) {
                    Some((at, p)) if at <= heard + 1_000 => self.play(p),
                    _ => self.live_from_idle(),
                }
                self.on_air = false;
                continue;
            }
            if let Some((command_id, seconds)) = self.pending_tone.take() {
                self.test_tone(command_id, seconds);
                continue;
            }
            let next = self.next_play(now);
            let prepare = Duration::from_std(self.config.prepare).unwrap_or(Duration::zero());
            let lead = if self.output_open {
                prepare + KEEP_OPEN_EXTRA
            } else {
                prepare
            };
            match next {
                Some(p) if p.start - now <= lead => {
                    self.on_air = true;
                    self.play(p);
                    self.on_air = false;
                }
                next => {
                    if self.output_open {
                        self.close_output();
                        continue;
                    }
                    let wait = next
                        .map(|p| (p.start - prepare - now).to_std().unwrap_or_default())
                        .unwrap_or(IDLE_WAIT)
                        .clamp(StdDuration::from_millis(1), CLOCK_RECHECK);
                    self.wait_command(wait);
                }
            }
        }
        if let Some(summary) = self.live.finish(LiveEnd::Shutdown) {
            self.emit_live_ended(summary);
        }
        if self.output_open {
            self.close_output();
        }
        tracing::info!("player stopped");
    }

    /// The first planned play not yet dealt with that can still be heard.
    pub(crate) fn next_play(&self, now: DateTime<Utc>) -> Option<PlannedPlay> {
        self.plan
            .iter()
            .find(|p| {
                !self.done.contains(&p.event.id)
                    && (p.start > now || p.end - now >= MIN_JOIN_REMAINING)
            })
            .cloned()
    }

    /// Reports as missed every planned play whose window has passed unplayed.
    /// Events that started before the schedule was made are not counted:
    /// the receiver was never asked to play them in time.
    fn report_missed(&mut self, now: DateTime<Utc>) {
        let Some(generated_at) = self.schedule.as_ref().map(|s| s.generated_at) else {
            return;
        };
        let missed: Vec<PlannedPlay> = self
            .plan
            .iter()
            .filter(|p| {
                !self.done.contains(&p.event.id)
                    && p.start <= now
                    && p.end - now < MIN_JOIN_REMAINING
                    && p.event.starts_at >= generated_at
            })
            .cloned()
            .collect();
        for p in missed {
            tracing::warn!(event = %p.event.id, "play missed: the receiver was not running or was busy at its instant");
            let detail =
                "not played: the receiver was not running (or was busy) at the scheduled time";
            self.finish(
                self.report(&p, PlayOutcome::Missed, None, None, Some(detail.into())),
                &p,
            );
        }
    }

    /// Waits up to `timeout` for a command and applies it.
    fn wait_command(&mut self, timeout: StdDuration) {
        match self.commands.recv_timeout(timeout) {
            Ok(command) => self.apply(command),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.stopping = true,
        }
    }

    /// Applies a command.
    pub(crate) fn apply(&mut self, command: Command) {
        match command {
            Command::Schedule(schedule) => {
                let ids: HashSet<&str> = schedule.events.iter().map(|e| e.id.as_str()).collect();
                self.done.retain(|id| ids.contains(id.as_str()));
                self.deferred.retain(|id, _| ids.contains(id.as_str()));
                self.schedule = Some(schedule);
                self.replan();
                tracing::info!(
                    version = self.schedule.as_ref().map(|s| s.version),
                    plays = self.plan.len(),
                    "new play plan"
                );
            }
            Command::Shutdown => self.stopping = true,
            Command::Live(input) => self.on_live_frame(*input),
            Command::Volume {
                volume,
                emergency_volume,
            } => {
                tracing::info!(volume, ?emergency_volume, "output volume set");
                self.config.volume = volume;
                if let Some(e) = emergency_volume {
                    self.config.emergency_volume = e;
                }
            }
            Command::TestTone {
                command_id,
                seconds,
            } => self.request_tone(command_id, seconds),
        }
    }

    /// Makes the plan from the schedule's events, with the plays delayed by
    /// live broadcasts moved to their new start (a play cut by a
    /// higher-priority event keeps its planned end).
    pub(crate) fn replan(&mut self) {
        let Some(schedule) = &self.schedule else {
            self.plan.clear();
            return;
        };
        let mut plan = loa_schedules::plan(&schedule.events);
        for p in &mut plan {
            if let Some(d) = self.deferred.get(&p.event.id) {
                p.start += d.shift;
                if !p.preempted {
                    p.end += d.shift;
                }
            }
        }
        plan.sort_by_key(|p| p.start);
        self.plan = plan;
    }

    /// Writes samples scaled by `gain`.
    pub(crate) fn write_gained(&mut self, samples: &[f32], gain: f32) -> Result<(), SinkError> {
        if gain == 1.0 {
            return self.sink.write(samples);
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.extend(samples.iter().map(|s| s * gain));
        let result = self.sink.write(&buf);
        self.scratch = buf;
        result
    }

    /// The programme an event refers to.
    pub(crate) fn programme(&self, programme_id: &str) -> Option<ProgrammeRef> {
        self.schedule
            .as_ref()?
            .programmes
            .get(programme_id)
            .cloned()
    }

    /// The path of a programme's verified audio. Each file is hashed once
    /// per run; later uses only check that it is still there and whole.
    pub(crate) fn verified_audio(
        &mut self,
        programme: &ProgrammeRef,
    ) -> Result<std::path::PathBuf, CacheError> {
        let path = self.config.cache.path_for(&programme.sha256)?;
        if self.verified.contains(&programme.sha256)
            && std::fs::metadata(&path).is_ok_and(|m| m.len() == programme.bytes)
        {
            return Ok(path);
        }
        self.verified.remove(&programme.sha256);
        match self.config.cache.verify(programme) {
            Ok(path) => {
                self.verified.insert(programme.sha256.clone());
                Ok(path)
            }
            Err(e @ (CacheError::WrongHash { .. } | CacheError::WrongSize { .. })) => {
                tracing::error!(sha256 = %programme.sha256, error = %e, "cached audio is corrupt; deleting it so it is fetched again");
                let _ = self.config.cache.remove(&programme.sha256);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Switches the amplifier relay, telling the async side when its state
    /// changes (so the status goes out at once).
    pub(crate) fn set_amp(&mut self, on: bool) -> Result<(), HardwareError> {
        self.amp.set_power(on)?;
        if self.amp_on != Some(on) {
            self.amp_on = Some(on);
            tracing::debug!(on, "amplifier switched");
            let _ = self.events.send(PlayerEvent::Amplifier(on));
        }
        Ok(())
    }

    /// Switches the amplifier on and starts the sink.
    pub(crate) fn open_output(&mut self) -> Result<(), SinkError> {
        if let Err(e) = self.set_amp(true) {
            tracing::error!(error = %e, "cannot switch the amplifier on; playing anyway");
        }
        if let Err(e) = self.sink.start() {
            let _ = self.set_amp(false);
            return Err(e);
        }
        self.sink_floor = self.measure_floor();
        self.output_open = true;
        tracing::debug!("audio output opened");
        Ok(())
    }

    /// The sink's own latency with nothing queued: the least of a few
    /// readings over one device period (a sound card's reading depends on
    /// where in its period it is read).
    fn measure_floor(&self) -> StdDuration {
        let mut floor = self.sink.delay();
        for _ in 0..FLOOR_READINGS {
            if floor.is_zero() {
                break;
            }
            std::thread::sleep(StdDuration::from_millis(5));
            floor = floor.min(self.sink.delay());
        }
        tracing::debug!(?floor, "audio output latency");
        floor
    }

    /// Lets queued audio play out, stops the sink, switches the amplifier off.
    pub(crate) fn close_output(&mut self) {
        if let Err(e) = self.sink.stop() {
            tracing::error!(error = %e, "error closing the audio output");
        }
        if let Err(e) = self.set_amp(false) {
            tracing::error!(error = %e, "cannot switch the amplifier off");
        }
        self.output_open = false;
        tracing::debug!("audio output closed");
    }

    /// A report for a planned play.
    pub(crate) fn report(
        &self,
        p: &PlannedPlay,
        outcome: PlayOutcome,
        started_at: Option<DateTime<Utc>>,
        ended_at: Option<DateTime<Utc>>,
        detail: Option<String>,
    ) -> PlayReport {
        PlayReport {
            report_id: report_id_for(&self.config.receiver_id, &p.event.id),
            receiver_id: self.config.receiver_id.clone(),
            event_id: p.event.id.clone(),
            programme_id: p.event.programme_id.clone(),
            schedule_id: p.event.schedule_id.clone(),
            scheduled_at: p.event.starts_at,
            started_at,
            ended_at,
            outcome,
            detail,
            interruptions: self
                .deferred
                .get(&p.event.id)
                .map(|d| d.interruptions.clone())
                .unwrap_or_default(),
        }
    }

    /// Records an event as dealt with and hands its report to the async side.
    pub(crate) fn finish(&mut self, report: PlayReport, p: &PlannedPlay) {
        self.done.insert(p.event.id.clone());
        self.deferred.remove(&p.event.id);
        let _ = self.events.send(PlayerEvent::Finished {
            report,
            natural_end: p.event.natural_end(),
        });
    }
}
