//! Ingest: what receivers send over MQTT, written to the database.
//!
//! - A status (heartbeat, or the last will the broker publishes for a
//!   receiver that vanished) updates the receiver's `online`, `last_seen`,
//!   `now_playing`, `cached`, `schedule_version`, `amplifier_on` and the
//!   volume it reports (`reported_volume`). When a receiver comes
//!   online, or reports a schedule version older than the one published a
//!   while ago, the [`Distributor`] republishes its schedule.
//! - A play report is inserted into `plays` once per `report_id` (a re-sent
//!   report changes nothing), with the live broadcasts that interrupted it
//!   (`interruptions`, JSON), and, only after the insert is committed, its id
//!   is acknowledged on the receiver's acks topic. Reports are batched: one
//!   transaction and one ack per receiver for what arrived together.
//! - A receiver whose heartbeats stop (three periods, at least
//!   [`MIN_SILENCE`]) is marked offline even if the broker never delivered
//!   its last will (for instance because the broker restarted).
//!
//! Messages from unknown receivers, and reports that would be stored under
//! another receiver, are logged and dropped without an ack. Forged and
//! malformed messages never get this far (see [`crate::bus`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use loa_protocol::{PlayReport, ReceiverStatus, ReportAck};
use sqlx::SqlitePool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusEvent, BusEvents};
use crate::distribution::Distributor;

/// Most events handled in one batch (one transaction for their reports).
const MAX_BATCH: usize = 256;

/// How often silent receivers are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(15);

/// Heartbeat period assumed for a receiver that did not say its own.
const DEFAULT_HEARTBEAT_SECS: u64 = 60;

/// Shortest silence after which a receiver counts as offline.
pub const MIN_SILENCE: Duration = Duration::from_secs(90);

/// How long a receiver may keep reporting an older schedule version after
/// a publication before the schedule is republished to it.
const VERSION_LAG_GRACE_MS: i64 = 60_000;

/// Longest `report_id` accepted; receivers use UUIDs.
const MAX_REPORT_ID_LEN: usize = 128;

/// Starts the ingest task; it ends when `shutdown` is cancelled or the bus
/// shuts down.
pub fn spawn(
    db: SqlitePool,
    bus: Bus,
    events: BusEvents,
    distributor: Distributor,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let ingest = Ingest {
        db,
        bus,
        distributor,
        heartbeats: HashMap::new(),
        connected_before: false,
    };
    tokio::spawn(ingest.run(events, shutdown))
}

/// The ingest task's state.
struct Ingest {
    /// Where statuses and reports are written.
    db: SqlitePool,
    /// Where acknowledgements are published.
    bus: Bus,
    /// Told when a receiver needs its schedule again.
    distributor: Distributor,
    /// Each receiver's announced heartbeat period in seconds, for the
    /// silence sweep (derived from statuses; rebuilt after a restart).
    heartbeats: HashMap<String, u64>,
    /// Whether the bus has connected before (a reconnection, not the start).
    connected_before: bool,
}

impl Ingest {
    async fn run(mut self, mut events: BusEvents, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { break };
                    let mut batch = vec![event];
                    while batch.len() < MAX_BATCH {
                        match events.try_recv() {
                            Some(event) => batch.push(event),
                            None => break,
                        }
                    }
                    self.handle_batch(batch).await;
                }
                _ = sweep.tick() => {
                    if let Err(error) = self.sweep_silent(Utc::now()).await {
                        tracing::error!(%error, "cannot check receivers for missed heartbeats");
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        tracing::debug!("ingest task stopped");
    }

    async fn handle_batch(&mut self, batch: Vec<BusEvent>) {
        let mut reports = Vec::new();
        for event in batch {
            match event {
                BusEvent::Connected { session_present } => {
                    let first = !std::mem::replace(&mut self.connected_before, true);
                    // The distributor's first pass republishes everything anyway.
                    if !session_present && !first {
                        // The broker kept nothing for us; it may have lost
                        // the retained schedules as well.
                        self.distributor.republish_all();
                    }
                }
                BusEvent::Status { status, retained } => {
                    if let Err(error) = self.handle_status(&status, retained).await {
                        tracing::error!(receiver = %status.receiver_id, %error,
                            "cannot store receiver status");
                    }
                }
                BusEvent::Play(report) => reports.push(report),
            }
        }
        if !reports.is_empty() {
            self.handle_reports(reports).await;
        }
    }

    async fn handle_status(
        &mut self,
        status: &ReceiverStatus,
        retained: bool,
    ) -> Result<(), sqlx::Error> {
        let id = status.receiver_id.as_str();
        let known: Option<(bool, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT r.online, d.version, d.published_at
             FROM receivers r LEFT JOIN distributions d ON d.receiver_id = r.id
             WHERE r.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db)
        .await?;
        let Some((was_online, published_version, published_at)) = known else {
            tracing::warn!(receiver = id, "ignoring status from an unknown receiver");
            return Ok(());
        };
        let now = Utc::now();
        if !status.online {
            // A last will carries no real state, so keep `cached` and the
            // schedule version; `last_seen` stays when it was last heard.
            sqlx::query(
                "UPDATE receivers SET online = FALSE, now_playing = NULL, amplifier_on = NULL
                 WHERE id = $1",
            )
            .bind(id)
            .execute(&self.db)
            .await?;
            self.heartbeats.remove(id);
            if was_online {
                tracing::info!(receiver = id, "receiver offline");
            }
            return Ok(());
        }
        // A retained status may be old: it was last heard when it was sent.
        let seen = if retained {
            status.sent_at.min(now)
        } else {
            now
        };
        let now_playing = status
            .now_playing
            .as_ref()
            .map(|n| serde_json::to_string(n).expect("serialises"));
        let cached = serde_json::to_string(&status.cached).expect("serialises");
        let schedule_version = status.schedule_version.and_then(|v| i64::try_from(v).ok());
        sqlx::query(
            "UPDATE receivers SET online = TRUE, last_seen = MAX(COALESCE(last_seen, 0), $2),
                 now_playing = $3, cached = $4, schedule_version = $5,
                 amplifier_on = $6, reported_volume = $7
             WHERE id = $1",
        )
        .bind(id)
        .bind(seen.timestamp_millis())
        .bind(now_playing)
        .bind(cached)
        .bind(schedule_version)
        .bind(status.amplifier_on)
        .bind(status.volume.map(i64::from))
        .execute(&self.db)
        .await?;
        if !status.rejected.is_empty() {
            crate::rejections::store(&self.db, id, &status.rejected).await?;
        }
        let heartbeat = status.heartbeat_secs.unwrap_or(DEFAULT_HEARTBEAT_SECS);
        self.heartbeats.insert(id.to_string(), heartbeat);

        if !was_online {
            tracing::info!(receiver = id, schedule_version = ?status.schedule_version, "receiver online");
            self.distributor.receiver_online(id);
        } else if let (Some(published), Some(at)) = (published_version, published_at) {
            let behind = schedule_version.is_none_or(|v| v < published);
            if behind && now.timestamp_millis() - at > VERSION_LAG_GRACE_MS {
                tracing::info!(receiver = id, reported = ?schedule_version, published,
                    "receiver follows an old schedule; republishing");
                self.distributor.receiver_online(id);
            }
        }
        Ok(())
    }

    /// Stores reports, then acknowledges the stored ones per receiver.
    async fn handle_reports(&self, reports: Vec<PlayReport>) {
        let mut by_receiver: BTreeMap<String, Vec<PlayReport>> = BTreeMap::new();
        for report in reports {
            if report.report_id.is_empty() || report.report_id.len() > MAX_REPORT_ID_LEN {
                tracing::warn!(receiver = %report.receiver_id, len = report.report_id.len(),
                    "dropping play report with an invalid report_id");
                continue;
            }
            by_receiver
                .entry(report.receiver_id.clone())
                .or_default()
                .push(report);
        }
        let now = Utc::now();
        let acks = match self.store_reports(&by_receiver, now).await {
            Ok(acks) => acks,
            Err(error) => {
                // Not acknowledged, so the receivers keep and resend them.
                tracing::error!(%error, "cannot store play reports; they will be re-sent");
                return;
            }
        };
        for (receiver_id, report_ids) in acks {
            let count = report_ids.len();
            match self
                .bus
                .publish_ack(&receiver_id, &ReportAck { report_ids })
                .await
            {
                Ok(()) => {
                    tracing::debug!(receiver = %receiver_id, count, "acknowledged play reports")
                }
                Err(error) => {
                    tracing::warn!(receiver = %receiver_id, %error, "cannot acknowledge play reports")
                }
            }
        }
    }

    /// Inserts all reports in one transaction; returns, per receiver, the
    /// report ids now stored under that receiver.
    async fn store_reports(
        &self,
        by_receiver: &BTreeMap<String, Vec<PlayReport>>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, Vec<String>)>, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let mut acks = Vec::new();
        for (receiver_id, reports) in by_receiver {
            let known: Option<String> =
                sqlx::query_scalar("SELECT id FROM receivers WHERE id = $1")
                    .bind(receiver_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if known.is_none() {
                tracing::warn!(receiver = %receiver_id, count = reports.len(),
                    "dropping play reports from an unknown receiver");
                continue;
            }
            let mut stored = Vec::new();
            for report in reports {
                let inserted = sqlx::query(
                    "INSERT INTO plays (report_id, receiver_id, event_id, programme_id, schedule_id,
                         scheduled_at, started_at, ended_at, outcome, detail, received_at,
                         interruptions)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     ON CONFLICT (report_id) DO NOTHING",
                )
                .bind(&report.report_id)
                .bind(&report.receiver_id)
                .bind(&report.event_id)
                .bind(&report.programme_id)
                .bind(&report.schedule_id)
                .bind(report.scheduled_at.timestamp_millis())
                .bind(report.started_at.map(|t| t.timestamp_millis()))
                .bind(report.ended_at.map(|t| t.timestamp_millis()))
                .bind(report.outcome.as_str())
                .bind(report.detail.as_deref())
                .bind(now.timestamp_millis())
                .bind(interruptions_json(report))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    // Seen before: acknowledge again only if it is this receiver's.
                    let owner: Option<String> =
                        sqlx::query_scalar("SELECT receiver_id FROM plays WHERE report_id = $1")
                            .bind(&report.report_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if owner.as_deref() != Some(receiver_id) {
                        tracing::warn!(receiver = %receiver_id, report = %report.report_id,
                            "dropping play report whose id belongs to another receiver");
                        continue;
                    }
                    tracing::debug!(receiver = %receiver_id, report = %report.report_id, "duplicate play report");
                }
                stored.push(report.report_id.clone());
            }
            if !stored.is_empty() {
                acks.push((receiver_id.clone(), stored));
            }
        }
        tx.commit().await?;
        Ok(acks)
    }

    /// Marks offline the receivers silent for three heartbeat periods.
    async fn sweep_silent(&mut self, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        let online: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT id, last_seen FROM receivers WHERE online")
                .fetch_all(&self.db)
                .await?;
        for (id, last_seen) in online {
            let heartbeat = self
                .heartbeats
                .get(&id)
                .copied()
                .unwrap_or(DEFAULT_HEARTBEAT_SECS);
            let silence = Duration::from_secs(heartbeat.saturating_mul(3)).max(MIN_SILENCE);
            let cutoff = now.timestamp_millis() - silence.as_millis() as i64;
            if last_seen.is_some_and(|seen| seen >= cutoff) {
                continue;
            }
            sqlx::query(
                "UPDATE receivers SET online = FALSE, now_playing = NULL
                 WHERE id = $1 AND online AND COALESCE(last_seen, 0) < $2",
            )
            .bind(&id)
            .bind(cutoff)
            .execute(&self.db)
            .await?;
            self.heartbeats.remove(&id);
            tracing::info!(receiver = %id, silent_secs = silence.as_secs(), "receiver missed heartbeats; offline");
        }
        Ok(())
    }
}

/// The report's interruptions as stored (`plays.interruptions`): a JSON
/// array, or NULL when there were none.
fn interruptions_json(report: &PlayReport) -> Option<String> {
    (!report.interruptions.is_empty())
        .then(|| serde_json::to_string(&report.interruptions).expect("interruptions serialise"))
}
