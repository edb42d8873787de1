//! The receiver's main loop. [`run`] opens the parts kept on disk (cache,
//! schedule, report queue, ledger), starts the player thread, the fetcher
//! and the MQTT link, then routes between them until shutdown:
//!
//! - link → schedule store → player and fetcher (a newer schedule);
//! - link → report queue (acks delete reports);
//! - player → ledger and report queue → link (reports, written to disk first);
//! - player, fetcher, timer → link (status: now playing, cached programmes,
//!   schedule version), and every ~30 s unacknowledged reports again;
//! - schedule → link: the zone whose live broadcasts to follow.
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
use loa_protocol::{NowPlaying, ReceiverSchedule, ReceiverStatus};
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
    if let Some(report) = ledger.interrupted_play() {
        tracing::warn!(event = %report.event_id, "a play was cut short by the last shutdown; reporting it as failed");
        if !reports.contains(&report.report_id) {
            reports.enqueue(&report)?;
        }
        ledger.mark_finished(&report.event_id, Utc::now())?;
    }
    let store = ScheduleStore::open(dir, &config.receiver_id)?;
    let current = store.current().cloned().map(Arc::new);

    let (player_tx, mut player_rx) = mpsc::unbounded_channel();
    let clock = Clock::new();
    let player_config = PlayerConfig {
        receiver_id: config.receiver_id.clone(),
        output: config.output.clone(),
        amplifier: config.amplifier.clone(),
        prepare: config.prepare,
        cache: cache.clone(),
        volume: config.volume,
        emergency_volume: config.emergency_volume,
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
    let fetcher = Fetcher::new(
        &config.controller,
        &config.token,
        cache.clone(),
        config.cache_grace,
    )?;
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
    let (link, link_task) = Link::start(link_config, inbound_tx, hooks, stop.clone());
    link.set_zone(store.current().and_then(|s| s.zone.as_deref()));
    let clock_task = tokio::spawn(clock::run_sync(clock, link.clone(), stop.clone()));

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
                if let Err(e) = self.ledger.prune(&ids, Utc::now()) {
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
            sent_at: Utc::now(),
            now_playing: self.now_playing.clone(),
            cached,
            schedule_version: self.store.version(),
            heartbeat_secs: Some(self.config.heartbeat.as_secs()),
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
