//! The receiver's main loop. [`run`] opens the parts kept on disk (cache,
//! schedule, report queue, ledger), starts the player thread, the fetcher
//! and the MQTT link, then routes between them until shutdown:
//!
//! - link → schedule store → player and fetcher (a newer schedule);
//! - link → report queue (acks delete reports);
//! - player → ledger and report queue → link (reports, written to disk first);
//! - player, fetcher, timer → link (status: now playing, cached programmes,
//!   schedule version), and every ~30 s unacknowledged reports again;
//! - schedule → link: the zone whose live broadcasts to follow;
//! - link → settings store → player (volume from the console); link →
//!   player (commands: a test tone, if recent and not seen before);
//! - player → link: a status at once when the amplifier switches.
//!
//! Live frames and clock replies bypass this loop: the link hands frames to
//! the player thread ([`LiveFeed`](crate::live::LiveFeed)) and replies to
//! the [`Clock`], which a task of its own keeps asking
//! ([`clock::run_sync`](crate::clock::run_sync)).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use loa_protocol::{
    COMMAND_MAX_AGE_SECS, CommandKind, MAX_TEST_TONE_SECS, NowPlaying, ReceiverCommand,
    ReceiverSchedule, ReceiverSettings, ReceiverStatus,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::clock::{self, Clock};
use crate::config::Config;
use crate::fetcher::Fetcher;
use crate::ledger::Ledger;
use crate::link::{Inbound, Link, LinkConfig, LiveHooks};
use crate::player::{Player, PlayerConfig, PlayerEvent, PlayerHandle};
use crate::reports::ReportQueue;
use crate::schedule_store::{Refusal, ScheduleStore};
use crate::settings_store::{SettingsRefusal, SettingsStore, gain_of_percent, percent_of_gain};
use crate::trust::{self, Trust};

/// A play cut short by a restart is joined again if more than this is left of it.
const RESUME_MARGIN: chrono::Duration = chrono::Duration::seconds(1);

/// Unacknowledged reports are sent again after this long.
const RESEND_AFTER: Duration = Duration::from_secs(30);

/// Runs the receiver until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    let dir = &config.cache_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
    let cache = Cache::open(dir)?;
    let reports = ReportQueue::open(dir)?;
    let mut ledger = Ledger::open(dir)?;
    // The receiver's time (the controller's clock once synchronised; the
    // local monotonic clock until then), immune to jumps of the wall clock.
    let clock = Clock::new();
    if let Some(event) = ledger.resume_interrupted_play(clock.now_utc(), RESUME_MARGIN)? {
        tracing::warn!(%event, "a play was cut short by the last shutdown (power cut, crash or restart); joining it again where its timeline is now");
    } else if let Some(report) = ledger.interrupted_play() {
        tracing::warn!(event = %report.event_id, "a play was cut short by the last shutdown; reporting it as failed");
        if !reports.contains(&report.report_id) {
            reports.enqueue(&report)?;
        }
        ledger.mark_finished(&report.event_id, clock.now_utc())?;
    }
    let store = ScheduleStore::open(dir, &config.receiver_id)?;
    let current = store.current().cloned().map(Arc::new);
    let settings = SettingsStore::open(dir, &config.receiver_id);
    let (volume, emergency_volume) = gains(&config, settings.current());

    let (player_tx, mut player_rx) = mpsc::unbounded_channel();
    let player_config = PlayerConfig {
        receiver_id: config.receiver_id.clone(),
        output: config.output.clone(),
        amplifier: config.amplifier.clone(),
        prepare: config.prepare,
        cache: cache.clone(),
        volume,
        emergency_volume,
        clock: clock.clone(),
    };
    let done = ledger.done_ids();
    let player = tokio::task::spawn_blocking(move || Player::spawn(player_config, done, player_tx))
        .await?
        .context("cannot start the player")?;
    if let Some(schedule) = &current {
        player.set_schedule(schedule.clone());
    }

    let stop = CancellationToken::new();
    let (schedule_tx, schedule_rx) = watch::channel(current);
    let (cached_tx, mut cached_rx) = mpsc::unbounded_channel();
    let fetcher = Fetcher::with_tls(
        &config.controller,
        &config.token,
        cache.clone(),
        config.cache_grace,
        &config.controller_tls,
    )?
    .with_clock(clock.clone());
    let fetcher_task = tokio::spawn({
        let (cache, stop) = (cache.clone(), stop.clone());
        async move {
            match tokio::task::spawn_blocking(move || cache.recover()).await {
                Ok(Err(e)) => tracing::error!(error = %e, "audio cache check failed"),
                Err(e) => tracing::error!(error = %e, "audio cache check panicked"),
                Ok(Ok(_)) => {}
            }
            fetcher.run(schedule_rx, cached_tx, stop).await;
        }
    });
    let (inbound_tx, mut inbound_rx) = mpsc::unbounded_channel();
    let link_config = LinkConfig {
        receiver_id: config.receiver_id.clone(),
        token: config.token.clone(),
        broker: config.broker.clone(),
        keep_alive: Duration::from_secs(15),
    };
    let hooks = LiveHooks {
        clock: clock.clone(),
        frames: player.live_feed(),
    };
    let pinned = config
        .controller_key
        .as_deref()
        .map(trust::parse_pinned)
        .transpose()?;
    let trust = Arc::new(Trust::load(dir, pinned)?);
    let (link, link_task) =
        Link::start(link_config, inbound_tx, hooks, trust.clone(), stop.clone());
    // Trust on first use: until enrollment delivers the key, ask the controller.
    let key_task = (!trust.has_key()).then(|| {
        let (link, stop) = (link.clone(), stop.clone());
        let (controller, token) = (config.controller.clone(), config.token.clone());
        let tls = config.controller_tls.clone();
        tokio::spawn(async move {
            if trust::fetch_until_known(&trust, &controller, &tls, &token, &stop).await {
                link.refresh_controller_topics();
            }
        })
    });
    link.set_zone(store.current().and_then(|s| s.zone.as_deref()));
    let clock_task = tokio::spawn(clock::run_sync(clock.clone(), link.clone(), stop.clone()));

    let mut daemon = Daemon {
        config: &config,
        cache,
        reports,
        ledger,
        store,
        player: player.handle(),
        link,
        schedule_tx,
        now_playing: None,
        last_sent: HashMap::new(),
        settings,
        volume,
        amplifier_on: None,
        seen_commands: HashMap::new(),
        clock,
    };
    daemon
        .serve(&mut inbound_rx, &mut player_rx, &mut cached_rx, shutdown)
        .await;

    tracing::info!("shutting down");
    tokio::task::spawn_blocking(move || player.shutdown()).await?;
    // A play cut by the shutdown is reported (and goes out if the link is still up).
    while let Ok(event) = player_rx.try_recv() {
        daemon.on_player(event);
    }
    stop.cancel();
    let _ = link_task.await;
    let _ = fetcher_task.await;
    let _ = clock_task.await;
    if let Some(task) = key_task {
        let _ = task.await;
    }
    Ok(())
}

/// The routing state of the main loop.
struct Daemon<'a> {
    /// The configuration (for the heartbeat interval and the id).
    config: &'a Config,
    /// The audio cache (to list cached programmes in the status).
    cache: Cache,
    /// Reports waiting for their acknowledgement.
    reports: ReportQueue,
    /// Events already dealt with, and the play in progress.
    ledger: Ledger,
    /// The schedule in force, on disk.
    store: ScheduleStore,
    /// Sends new schedules to the player thread.
    player: PlayerHandle,
    /// The MQTT link.
    link: Link,
    /// Tells the fetcher about each new schedule.
    schedule_tx: watch::Sender<Option<Arc<ReceiverSchedule>>>,
    /// What the player says is playing, for the status.
    now_playing: Option<NowPlaying>,
    /// When each queued report was last published, so it is re-sent only
    /// after [`RESEND_AFTER`] without an acknowledgement.
    last_sent: HashMap<String, Instant>,
    /// The console's output settings, on disk.
    settings: SettingsStore,
    /// The normal output gain in force (linear), for the status.
    volume: f32,
    /// The amplifier state the player last reported.
    amplifier_on: Option<bool>,
    /// Command ids already taken, and when, so a repeated delivery is
    /// ignored; forgotten after twice the commands' maximum age.
    seen_commands: HashMap<String, Instant>,
    /// The receiver's time (see [`Clock::now_utc`]).
    clock: Clock,
}

/// The output gains in force: the console's settings if any arrived, else
/// the `--volume` and `--emergency-volume` flags.
fn gains(config: &Config, settings: Option<&ReceiverSettings>) -> (f32, f32) {
    match settings {
        Some(s) => (
            gain_of_percent(s.volume),
            s.emergency_volume
                .map_or(config.emergency_volume, gain_of_percent),
        ),
        None => (config.volume, config.emergency_volume),
    }
}

/// Whether a command issued at `issued_at` is still to be carried out at
/// `now` (issued at most [`COMMAND_MAX_AGE_SECS`] ago, and not further than
/// that in the future — the clocks disagree too much otherwise).
pub(crate) fn command_is_fresh(
    issued_at: chrono::DateTime<Utc>,
    now: chrono::DateTime<Utc>,
) -> bool {
    (now - issued_at).num_seconds().abs() <= COMMAND_MAX_AGE_SECS
}

impl Daemon<'_> {
    async fn serve(
        &mut self,
        inbound: &mut mpsc::UnboundedReceiver<Inbound>,
        player: &mut mpsc::UnboundedReceiver<PlayerEvent>,
        cached: &mut mpsc::UnboundedReceiver<()>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        let mut resend = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                Some(message) = inbound.recv() => self.on_inbound(message),
                Some(event) = player.recv() => self.on_player(event),
                Some(()) = cached.recv() => self.publish_status(),
                _ = heartbeat.tick() => self.publish_status(),
                _ = resend.tick() => self.resend_reports(false),
            }
        }
    }

    fn on_inbound(&mut self, message: Inbound) {
        match message {
            Inbound::Connected => {
                self.publish_status();
                self.resend_reports(true);
            }
            Inbound::Schedule(schedule) => self.on_schedule(schedule),
            Inbound::Settings(settings) => self.on_settings(settings),
            Inbound::Command(command) => self.on_command(command),
            Inbound::Ack(ack) => match self.reports.ack(&ack.report_ids) {
                Ok(n) => {
                    for id in &ack.report_ids {
                        self.last_sent.remove(id);
                    }
                    tracing::info!(
                        acknowledged = n,
                        waiting = self.reports.len(),
                        "play reports acknowledged"
                    );
                }
                Err(e) => tracing::error!(error = %e, "cannot delete acknowledged reports"),
            },
        }
    }

    fn on_schedule(&mut self, schedule: ReceiverSchedule) {
        let version = schedule.version;
        match self.store.offer(schedule) {
            Ok(Ok(())) => {
                let current = Arc::new(self.store.current().cloned().expect("just accepted"));
                tracing::info!(
                    version,
                    events = current.events.len(),
                    "new schedule accepted"
                );
                self.player.set_schedule(current.clone());
                self.link.set_zone(current.zone.as_deref());
                let ids: HashSet<&str> = current.events.iter().map(|e| e.id.as_str()).collect();
                if let Err(e) = self.ledger.prune(&ids, self.clock.now_utc()) {
                    tracing::warn!(error = %e, "cannot prune the play ledger");
                }
                self.schedule_tx.send_replace(Some(current));
                self.publish_status();
            }
            Ok(Err(refusal @ Refusal::NotNewer { .. })) => {
                tracing::debug!(%refusal, "schedule ignored")
            }
            Ok(Err(refusal)) => tracing::warn!(%refusal, "schedule refused"),
            Err(e) => {
                tracing::error!(error = %e, "cannot keep the new schedule on disk; still following the old one")
            }
        }
    }

    fn on_settings(&mut self, settings: ReceiverSettings) {
        let version = settings.version;
        match self.settings.offer(settings) {
            Ok(Ok(())) => {
                let (volume, emergency) = gains(self.config, self.settings.current());
                tracing::info!(version, volume, emergency, "new output settings");
                self.volume = volume;
                self.player.set_volume(volume, Some(emergency));
                self.publish_status();
            }
            Ok(Err(refusal @ SettingsRefusal::NotNewer { .. })) => {
                tracing::debug!(%refusal, "settings ignored")
            }
            Ok(Err(refusal)) => tracing::warn!(%refusal, "settings refused"),
            Err(e) => {
                tracing::error!(error = %e, "cannot keep the new settings on disk; keeping the old ones")
            }
        }
    }

    fn on_command(&mut self, command: ReceiverCommand) {
        let now = self.clock.now_utc();
        let forget = Duration::from_secs(2 * COMMAND_MAX_AGE_SECS as u64);
        self.seen_commands.retain(|_, at| at.elapsed() < forget);
        if !command_is_fresh(command.issued_at, now) {
            tracing::warn!(command = %command.command_id, issued_at = %command.issued_at, "command too old (or from the future); ignored");
            return;
        }
        if command.command_id.is_empty() || command.command_id.len() > 100 {
            tracing::warn!("command with an unusable id ignored");
            return;
        }
        if self
            .seen_commands
            .insert(command.command_id.clone(), Instant::now())
            .is_some()
        {
            tracing::info!(command = %command.command_id, "repeated command ignored");
            return;
        }
        match command.kind {
            CommandKind::TestTone { seconds } => {
                if !(1..=MAX_TEST_TONE_SECS).contains(&seconds) {
                    tracing::warn!(command = %command.command_id, seconds, "test tone length out of range; ignored");
                    return;
                }
                tracing::info!(command = %command.command_id, seconds, "test tone asked for");
                self.player.test_tone(command.command_id, seconds);
            }
        }
    }

    fn on_player(&mut self, event: PlayerEvent) {
        match event {
            PlayerEvent::Started {
                report,
                natural_end,
            } => {
                if let Err(e) = self.ledger.mark_started(&report, natural_end) {
                    tracing::error!(error = %e, "cannot record the play in the ledger");
                }
            }
            PlayerEvent::Finished {
                report,
                natural_end,
            } => {
                if let Err(e) = self.reports.enqueue(&report) {
                    tracing::error!(error = %e, report = %report.report_id, "cannot queue the play report on disk; sending it once");
                }
                if let Err(e) = self.ledger.mark_finished(&report.event_id, natural_end) {
                    tracing::error!(error = %e, "cannot record the play in the ledger");
                }
                if self.link.publish_report(&report) {
                    self.last_sent
                        .insert(report.report_id.clone(), Instant::now());
                }
            }
            PlayerEvent::NowPlaying(now_playing) => {
                self.now_playing = now_playing;
                self.publish_status();
            }
            PlayerEvent::LiveEnded(summary) => {
                tracing::debug!(?summary, "live broadcast summary");
            }
            PlayerEvent::Amplifier(on) => {
                self.amplifier_on = Some(on);
                self.publish_status();
            }
            PlayerEvent::TestTone { .. } => {}
        }
    }

    fn publish_status(&self) {
        let cached = self
            .store
            .current()
            .map(|s| self.cache.cached_programmes(&s.programmes))
            .unwrap_or_default();
        let status = ReceiverStatus {
            receiver_id: self.config.receiver_id.clone(),
            online: true,
            sent_at: self.clock.now_utc(),
            now_playing: self.now_playing.clone(),
            cached,
            schedule_version: self.store.version(),
            heartbeat_secs: Some(self.config.heartbeat.as_secs()),
            amplifier_on: Some(self.amplifier_on.unwrap_or(false)),
            volume: Some(percent_of_gain(self.volume)),
            rejected: self.link.rejections(),
        };
        self.link.publish_status(&status);
    }

    /// Publishes unacknowledged reports: all of them (`all`, after a
    /// reconnection) or those not sent for [`RESEND_AFTER`].
    fn resend_reports(&mut self, all: bool) {
        if !self.link.is_connected() {
            return;
        }
        let pending = self.reports.pending();
        self.last_sent
            .retain(|id, _| pending.iter().any(|r| &r.report_id == id));
        for report in pending {
            let due = all
                || self
                    .last_sent
                    .get(&report.report_id)
                    .is_none_or(|t| t.elapsed() >= RESEND_AFTER);
            if due && self.link.publish_report(&report) {
                self.last_sent
                    .insert(report.report_id.clone(), Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_older_than_a_minute_are_stale() {
        let now: chrono::DateTime<Utc> = "2026-12-03T10:00:00Z".parse().unwrap();
        assert!(command_is_fresh(now, now));
        assert!(command_is_fresh(now - chrono::Duration::seconds(59), now));
        assert!(!command_is_fresh(now - chrono::Duration::seconds(61), now));
        assert!(!command_is_fresh(now + chrono::Duration::seconds(120), now));
    }
}
