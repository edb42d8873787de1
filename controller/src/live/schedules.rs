//! The relay schedule timer: schedules whose source is a relay (instead of
//! a programme) start a relay broadcast at each occurrence, for the
//! schedule's duration. Occurrences come from the schedules crate's
//! expansion, like programme schedules; nothing is kept in memory that the
//! database does not also say, so after a restart an occurrence in progress
//! is started again for what remains of it, unless its broadcast was
//! stopped, ended or failed for a reason other than the controller stopping.
//!
//! The timer sleeps until the next occurrence starts (at most
//! [`MAX_SLEEP`]), or until schedules change. A start that fails (stream
//! unreachable) is retried every [`RETRY`] while the occurrence lasts.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use loa_schedules::{PlayEvent, Priority, Schedule, Targets, parse_local_start, parse_timezone};
use sqlx::SqlitePool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{LiveHub, SourceSpec, StartRequest, records};

/// Longest sleep between two looks at the relay schedules.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Wait before retrying an occurrence whose broadcast could not start.
const RETRY: Duration = Duration::from_secs(30);
/// Occurrences with less than this left are not started.
const MIN_REMAINING: Duration = Duration::from_secs(1);

/// A relay schedule read from the database.
struct RelaySchedule {
    /// When it plays.
    schedule: Schedule,
    /// The stream.
    url: String,
    /// How long each occurrence lasts.
    duration: chrono::Duration,
    /// Where.
    targets: Targets,
}

/// The `created_by` of broadcasts started by the timer.
pub const CREATED_BY: &str = "schedule";

/// Programme id given to relay schedules inside [`Schedule`], which wants
/// one (stored as NULL, never shown).
pub const RELAY_PROGRAMME_ID: &str = "relay";

/// Runs the timer until `shutdown`.
pub(crate) async fn run(hub: LiveHub, shutdown: CancellationToken) {
    let Some(db) = hub.db().cloned() else { return };
    let (done_tx, mut done_rx) = mpsc::channel::<(String, bool)>(64);
    let mut starting: HashSet<String> = HashSet::new();
    let mut retry_after: HashMap<String, DateTime<Utc>> = HashMap::new();
    loop {
        let now = Utc::now();
        retry_after.retain(|_, at| *at > now - chrono::Duration::days(1));
        let mut wake = now + chrono::Duration::from_std(MAX_SLEEP).expect("small");
        match load(&db).await {
            Ok(schedules) => {
                for s in schedules {
                    let from = now - s.duration;
                    let to = now + chrono::Duration::milliseconds(1);
                    match s.schedule.occurrences(from, to) {
                        Ok(active) => {
                            for start in active {
                                let occurrence = PlayEvent::occurrence_id(&s.schedule.id, start);
                                let remaining = start + s.duration - now;
                                if remaining.to_std().is_ok_and(|r| r >= MIN_REMAINING)
                                    && !starting.contains(&occurrence)
                                    && retry_after.get(&occurrence).is_none_or(|at| *at <= now)
                                    && !hub.occurrence_on_air(&occurrence)
                                {
                                    match records::occurrence_done(&db, &occurrence).await {
                                        Ok(true) => continue,
                                        Ok(false) => {}
                                        Err(e) => {
                                            tracing::error!(error = %e, "cannot read broadcasts");
                                            continue;
                                        }
                                    }
                                    starting.insert(occurrence.clone());
                                    spawn_start(&hub, &s, occurrence, remaining, done_tx.clone());
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(schedule = %s.schedule.id, error = %e, "cannot expand relay schedule");
                        }
                    }
                    if let Ok(next) = s.schedule.next_occurrences(now, 1)
                        && let Some(&next) = next.first()
                    {
                        wake = wake.min(next);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read relay schedules");
                wake = wake.min(now + chrono::Duration::from_std(RETRY).expect("small"));
            }
        }
        if let Some(&retry) = retry_after.values().filter(|at| **at > now).min() {
            wake = wake.min(retry);
        }
        let sleep = (wake - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(20));
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = hub.schedules_notified() => {}
            done = done_rx.recv() => {
                if let Some((occurrence, ok)) = done {
                    starting.remove(&occurrence);
                    if !ok {
                        retry_after.insert(occurrence, Utc::now() + chrono::Duration::from_std(RETRY).expect("small"));
                    }
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
    tracing::debug!("relay schedule timer stopped");
}

/// Starts the broadcast of one occurrence in a task of its own (connecting
/// may take a while); reports `(occurrence, started)` on `done`.
fn spawn_start(
    hub: &LiveHub,
    s: &RelaySchedule,
    occurrence: String,
    remaining: chrono::Duration,
    done: mpsc::Sender<(String, bool)>,
) {
    let hub = hub.clone();
    let request = StartRequest {
        source: SourceSpec::Relay { url: s.url.clone() },
        targets: s.targets.clone(),
        priority: s.schedule.priority,
        duration: remaining.to_std().ok(),
        created_by: CREATED_BY.to_string(),
        occurrence: Some((s.schedule.id.clone(), occurrence.clone())),
    };
    tokio::spawn(async move {
        let ok = match hub.start_broadcast(request).await {
            Ok(b) => {
                tracing::info!(broadcast = %b.id, occurrence = %occurrence, "scheduled relay on air");
                true
            }
            Err(e) => {
                tracing::warn!(occurrence = %occurrence, error = %e,
                    "scheduled relay could not start; retrying in {} s", RETRY.as_secs());
                false
            }
        };
        let _ = done.send((occurrence, ok)).await;
    });
}

/// Reads every relay schedule with its targets; rows that do not parse are
/// logged and left out.
async fn load(db: &SqlitePool) -> Result<Vec<RelaySchedule>, sqlx::Error> {
    type Row = (
        String,
        String,
        Option<i64>,
        String,
        String,
        Option<String>,
        String,
    );
    // Where schedules have an approval state (the officers' console), only
    // approved ones are started.
    let approval: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pragma_table_info('schedules') WHERE name = 'status'",
    )
    .fetch_one(db)
    .await?;
    let sql = if approval > 0 {
        "SELECT id, source, duration_ms, start_local, timezone, rrule, priority \
         FROM schedules WHERE source IS NOT NULL AND status = 'approved' ORDER BY id"
    } else {
        "SELECT id, source, duration_ms, start_local, timezone, rrule, priority \
         FROM schedules WHERE source IS NOT NULL ORDER BY id"
    };
    let rows: Vec<Row> = sqlx::query_as(sql).fetch_all(db).await?;
    let targets: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT t.schedule_id, t.kind, t.target_id FROM schedule_targets t \
         JOIN schedules s ON s.id = t.schedule_id WHERE s.source IS NOT NULL \
         ORDER BY t.schedule_id, t.kind, t.target_id",
    )
    .fetch_all(db)
    .await?;
    let mut by_schedule: HashMap<String, Targets> = HashMap::new();
    for (id, kind, target) in targets {
        let t = by_schedule.entry(id).or_default();
        if kind == "zone" {
            t.zones.push(target);
        } else {
            t.receivers.push(target);
        }
    }
    let mut out = Vec::new();
    for (id, source, duration_ms, start, timezone, rrule, priority) in rows {
        let parsed = (|| -> Result<RelaySchedule, String> {
            let url = match serde_json::from_str::<SourceSpec>(&source) {
                Ok(SourceSpec::Relay { url }) => url,
                Ok(other) => return Err(format!("unexpected source type {}", other.kind())),
                Err(e) => return Err(e.to_string()),
            };
            let duration_ms = duration_ms.filter(|d| *d > 0).ok_or("missing duration")?;
            Ok(RelaySchedule {
                schedule: Schedule {
                    id: id.clone(),
                    programme_id: RELAY_PROGRAMME_ID.to_string(),
                    start: parse_local_start(&start).map_err(|e| e.to_string())?,
                    timezone: parse_timezone(&timezone).map_err(|e| e.to_string())?,
                    rrule: rrule.filter(|r| !r.trim().is_empty()),
                    priority: priority.parse::<Priority>().map_err(|e| e.to_string())?,
                },
                url,
                duration: chrono::Duration::milliseconds(duration_ms),
                targets: by_schedule.remove(&id).unwrap_or_default(),
            })
        })();
        match parsed {
            Ok(s) if s.targets.zones.is_empty() && s.targets.receivers.is_empty() => {
                tracing::debug!(schedule = %id, "relay schedule without targets skipped");
            }
            Ok(s) => out.push(s),
            Err(reason) => {
                tracing::warn!(schedule = %id, %reason, "skipping unreadable relay schedule")
            }
        }
    }
    Ok(out)
}
