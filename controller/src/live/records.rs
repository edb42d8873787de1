//! The `broadcasts` table: one row per live broadcast, written when it goes
//! on air and when it ends, so `GET /broadcasts/{id}` answers after it ended
//! and after a restart.

use chrono::{DateTime, Utc};
use loa_protocol::Priority;
use loa_schedules::Targets;
use sqlx::SqlitePool;

use super::{Broadcast, EndReason, SourceSpec};
use crate::db::from_ms;

/// One `broadcasts` row.
#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    source: String,
    targets: String,
    priority: String,
    playout_delay_ms: i64,
    duration_ms: Option<i64>,
    started_at: i64,
    ended_at: Option<i64>,
    end_reason: Option<String>,
    end_detail: Option<String>,
    created_by: String,
    schedule_id: Option<String>,
    occurrence_id: Option<String>,
}

macro_rules! select_broadcasts {
    () => {
        "SELECT id, source, targets, priority, playout_delay_ms, duration_ms, started_at, \
         ended_at, end_reason, end_detail, created_by, schedule_id, occurrence_id FROM broadcasts"
    };
}

impl Row {
    fn into_broadcast(self) -> Result<Broadcast, sqlx::Error> {
        let broken = |what: String| {
            sqlx::Error::Decode(format!("stored broadcast {}: {what}", self.id).into())
        };
        let source: SourceSpec =
            serde_json::from_str(&self.source).map_err(|e| broken(e.to_string()))?;
        let targets: Targets =
            serde_json::from_str(&self.targets).map_err(|e| broken(e.to_string()))?;
        let priority = self
            .priority
            .parse::<Priority>()
            .map_err(|e| broken(e.to_string()))?;
        Ok(Broadcast {
            id: self.id,
            source,
            targets,
            priority,
            on_air: self.ended_at.is_none(),
            playout_delay_ms: u16::try_from(self.playout_delay_ms).unwrap_or(u16::MAX),
            duration_ms: self.duration_ms.and_then(|d| u64::try_from(d).ok()),
            started_at: from_ms(self.started_at),
            ended_at: self.ended_at.map(from_ms),
            end_reason: self.end_reason,
            end_detail: self.end_detail,
            created_by: self.created_by,
            schedule_id: self.schedule_id,
            occurrence_id: self.occurrence_id,
            stats: None,
        })
    }
}

/// Records a broadcast that went on air.
pub async fn insert(db: &SqlitePool, b: &Broadcast) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO broadcasts (id, source, targets, priority, playout_delay_ms, duration_ms, \
             started_at, created_by, schedule_id, occurrence_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&b.id)
    .bind(serde_json::to_string(&b.source).expect("sources serialise"))
    .bind(serde_json::to_string(&b.targets).expect("targets serialise"))
    .bind(b.priority.as_str())
    .bind(i64::from(b.playout_delay_ms))
    .bind(b.duration_ms.map(|d| d as i64))
    .bind(b.started_at.timestamp_millis())
    .bind(&b.created_by)
    .bind(&b.schedule_id)
    .bind(&b.occurrence_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Records the end of a broadcast (once: a second call changes nothing).
pub async fn end(
    db: &SqlitePool,
    id: &str,
    at: DateTime<Utc>,
    reason: EndReason,
    detail: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE broadcasts SET ended_at = $2, end_reason = $3, end_detail = $4 \
         WHERE id = $1 AND ended_at IS NULL",
    )
    .bind(id)
    .bind(at.timestamp_millis())
    .bind(reason.as_str())
    .bind(detail)
    .execute(db)
    .await?;
    Ok(())
}

/// Marks as ended every broadcast a previous run left on air; returns how many.
pub async fn end_orphans(db: &SqlitePool, at: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("UPDATE broadcasts SET ended_at = $1, end_reason = $2 WHERE ended_at IS NULL")
            .bind(at.timestamp_millis())
            .bind(EndReason::ControllerRestart.as_str())
            .execute(db)
            .await?;
    Ok(done.rows_affected())
}

/// One broadcast by id.
pub async fn get(db: &SqlitePool, id: &str) -> Result<Option<Broadcast>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(concat!(select_broadcasts!(), " WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(Row::into_broadcast).transpose()
}

/// The most recent broadcasts, newest first (at most `limit`).
pub async fn recent(db: &SqlitePool, limit: i64) -> Result<Vec<Broadcast>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(concat!(
        select_broadcasts!(),
        " ORDER BY started_at DESC, id LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter().map(Row::into_broadcast).collect()
}

/// Whether an occurrence of a relay schedule already had its broadcast and
/// should not be started (again): it is on air, or it ended for any reason
/// other than the controller stopping.
pub async fn occurrence_done(db: &SqlitePool, occurrence_id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM broadcasts WHERE occurrence_id = $1 \
           AND (ended_at IS NULL OR end_reason NOT IN ($2, $3))",
    )
    .bind(occurrence_id)
    .bind(EndReason::ControllerRestart.as_str())
    .bind(EndReason::ControllerShutdown.as_str())
    .fetch_one(db)
    .await?;
    Ok(n > 0)
}
