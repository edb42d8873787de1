//! Distribution: computes each receiver's play events over the horizon from
//! every schedule that touches it (directly or through its zone) and
//! publishes them as a retained, versioned [`loa_protocol::ReceiverSchedule`].
//!
//! A pass runs when the distributor starts, shortly after
//! [`Distributor::schedules_changed`] (notifications within
//! [`DEBOUNCE`] coalesce), every [`REFRESH_INTERVAL`] so the horizon rolls
//! forward, and when a receiver comes online or the broker link is renewed.
//! A pass compares each receiver's events with the hash stored in the
//! `distributions` table and publishes only what changed, except that:
//! - the first pass after start republishes everything (an embedded
//!   broker's retained messages do not survive a restart);
//! - [`Distributor::receiver_online`] and [`Distributor::republish_all`]
//!   force a republication (same version if nothing changed), so a broker
//!   that lost its retained messages recovers;
//! - a schedule is refreshed at least every half horizon so its
//!   `horizon_end` never lapses.
//!
//! Receiver output settings (the volume set from the console) go out the
//! same way: retained, versioned ([`loa_protocol::ReceiverSettings`]), at
//! each pass for the receivers whose settings changed
//! ([`Distributor::settings_changed`]) and for every receiver the pass is
//! forced for (at start, on reconnection, when a receiver comes online).
//! Receivers whose volume was never set get none and keep their `--volume`.
//! One-off commands (a test tone) are published at once
//! ([`Distributor::send_command`]).
//!
//! Versions only grow: `max(previous + 1, now in unix ms)`, stored per
//! receiver. Receivers without events get an empty schedule, so deleting a
//! schedule clears it on the receiver. A schedule row that cannot be read or
//! expanded is logged and skipped; it never stops the others.

mod compute;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use sqlx::SqlitePool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusError};

pub use compute::{PassReport, run_pass};

/// Quiet time after a change notification before a pass starts, so a burst
/// of API calls causes one recomputation.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// How often the horizon rolls forward even when nothing changed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Why a distribution pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum DistributionError {
    #[error("database error during distribution: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot publish a schedule: {0}")]
    Bus(#[from] BusError),
}

/// Handle the API and ingest use to say "recompute and republish". Cloning
/// is cheap (an `Arc`); every call returns at once. `Distributor::default()`
/// is a handle nobody listens to, for tests of other parts.
#[derive(Clone, Default)]
pub struct Distributor {
    /// State shared with the distribution task.
    shared: Arc<Shared>,
}

/// What has been asked of the task since its last pass.
#[derive(Default)]
struct Shared {
    /// Wakes the task; a stored permit survives until it waits.
    wake: Notify,
    /// Every receiver's schedule must be republished, changed or not.
    republish_all: AtomicBool,
    /// Receivers whose schedule must be republished, changed or not.
    online: Mutex<HashSet<String>>,
    /// Receivers whose settings changed since the last pass.
    settings: Mutex<HashSet<String>>,
    /// The bus, for commands (`None` in a handle nobody listens to).
    bus: Option<Bus>,
}

impl Distributor {
    /// Starts the distribution task, which runs a first (full) pass at once
    /// and stops when `shutdown` is cancelled. `horizon` is how far ahead
    /// events are computed (at least 7 days in production).
    pub fn spawn(
        db: SqlitePool,
        bus: Bus,
        horizon: chrono::Duration,
        shutdown: CancellationToken,
    ) -> Distributor {
        let distributor = Distributor {
            shared: Arc::new(Shared {
                bus: Some(bus.clone()),
                ..Shared::default()
            }),
        };
        distributor
            .shared
            .republish_all
            .store(true, Ordering::SeqCst);
        let task = Task {
            db,
            bus,
            horizon,
            shutdown,
            shared: distributor.shared.clone(),
        };
        tokio::spawn(task.run());
        distributor
    }

    /// Asks for a recomputation soon (schedules, receivers or programmes changed).
    pub fn schedules_changed(&self) {
        self.shared.wake.notify_one();
    }

    /// A receiver's settings changed: they are published at the next pass.
    pub fn settings_changed(&self, receiver_id: &str) {
        self.shared
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(receiver_id.to_string());
        self.shared.wake.notify_one();
    }

    /// Publishes a one-off command to a receiver (QoS 1, not retained).
    /// [`BusError::Closed`] when there is no bus (a handle for tests).
    pub async fn send_command(
        &self,
        receiver_id: &str,
        command: &loa_protocol::ReceiverCommand,
    ) -> Result<(), BusError> {
        match &self.shared.bus {
            Some(bus) => bus.publish_command(receiver_id, command).await,
            None => Err(BusError::Closed),
        }
    }

    /// A receiver came online (or reports an old schedule version): its
    /// schedule is republished even if unchanged, in case the broker lost it.
    pub fn receiver_online(&self, receiver_id: &str) {
        self.shared
            .online
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(receiver_id.to_string());
        self.shared.wake.notify_one();
    }

    /// Republishes every schedule, e.g. after reconnecting to a broker that
    /// kept no session (it may have restarted and lost retained messages).
    pub fn republish_all(&self) {
        self.shared.republish_all.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

/// Which receivers a pass must republish even if unchanged.
#[derive(Debug, Clone, Default)]
pub enum Force {
    /// Only changed schedules are published.
    #[default]
    Nothing,
    /// These receivers are republished regardless.
    Receivers(HashSet<String>),
    /// Every receiver is republished regardless.
    All,
}

impl Force {
    /// Whether `receiver_id` must be republished.
    pub fn includes(&self, receiver_id: &str) -> bool {
        match self {
            Force::Nothing => false,
            Force::Receivers(ids) => ids.contains(receiver_id),
            Force::All => true,
        }
    }
}

/// The distribution task.
struct Task {
    /// Schedules, targets, receivers, programmes and the `distributions` record.
    db: SqlitePool,
    /// Where schedules are published.
    bus: Bus,
    /// How far ahead events are computed.
    horizon: chrono::Duration,
    /// Stops the task.
    shutdown: CancellationToken,
    /// Requests from [`Distributor`] handles.
    shared: Arc<Shared>,
}

impl Task {
    async fn run(self) {
        let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await; // the first tick is immediate; the first pass runs anyway
        loop {
            let force = self.take_force();
            self.publish_settings(&force).await;
            let pass = run_pass(&self.db, &self.bus, self.horizon, Utc::now(), &force);
            let result = tokio::select! {
                result = pass => result,
                () = self.shutdown.cancelled() => break,
            };
            match result {
                Ok(report) => report.log(),
                Err(error) => {
                    tracing::error!(%error, "distribution pass failed; retrying at the next trigger");
                    // Retry soon, and do not lose what was forced.
                    if let Force::Receivers(ids) = force {
                        self.shared
                            .online
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend(ids);
                    } else if let Force::All = force {
                        self.shared.republish_all.store(true, Ordering::SeqCst);
                    }
                    let retry = tokio::time::sleep(Duration::from_secs(5));
                    tokio::select! {
                        () = retry => continue,
                        () = self.shutdown.cancelled() => break,
                    }
                }
            }
            tokio::select! {
                () = self.shared.wake.notified() => {}
                _ = refresh.tick() => continue,
                () = self.shutdown.cancelled() => break,
            }
            // Debounce: wait until no notification came for DEBOUNCE.
            loop {
                tokio::select! {
                    () = self.shared.wake.notified() => {}
                    () = tokio::time::sleep(DEBOUNCE) => break,
                    () = self.shutdown.cancelled() => return,
                }
            }
        }
        tracing::debug!("distribution task stopped");
    }

    /// Publishes the settings of receivers whose settings changed, and of
    /// those `force` includes, if their volume was ever set; failures are
    /// kept for the next pass.
    async fn publish_settings(&self, force: &Force) {
        let changed = std::mem::take(
            &mut *self
                .shared
                .settings
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        /// id, volume, emergency volume, settings version.
        type SettingsRow = (String, i64, Option<i64>, i64);
        let rows: Result<Vec<SettingsRow>, sqlx::Error> = sqlx::query_as(
            "SELECT id, volume, emergency_volume, settings_version FROM receivers \
             WHERE volume IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.db)
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                tracing::error!(%error, "cannot read receiver settings");
                self.requeue_settings(changed);
                return;
            }
        };
        let mut failed = HashSet::new();
        for (id, volume, emergency_volume, version) in rows {
            if !changed.contains(&id) && !force.includes(&id) {
                continue;
            }
            let settings = loa_protocol::ReceiverSettings {
                receiver_id: id.clone(),
                version: version.max(0) as u64,
                volume: volume.clamp(0, 100) as u8,
                emergency_volume: emergency_volume.map(|v| v.clamp(0, 100) as u8),
            };
            match self.bus.publish_retained_settings(&settings).await {
                Ok(()) => tracing::debug!(receiver = %id, volume, version, "settings published"),
                Err(error) => {
                    tracing::error!(receiver = %id, %error, "cannot publish receiver settings");
                    failed.insert(id);
                }
            }
        }
        self.requeue_settings(failed);
    }

    fn requeue_settings(&self, ids: HashSet<String>) {
        if !ids.is_empty() {
            self.shared
                .settings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(ids);
        }
    }

    /// Takes (and clears) what was forced since the last pass.
    fn take_force(&self) -> Force {
        let ids =
            std::mem::take(&mut *self.shared.online.lock().unwrap_or_else(|e| e.into_inner()));
        if self.shared.republish_all.swap(false, Ordering::SeqCst) {
            Force::All
        } else if ids.is_empty() {
            Force::Nothing
        } else {
            Force::Receivers(ids)
        }
    }
}
