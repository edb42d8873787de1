//! Rejections receivers report: messages or live frames they refused
//! because the signature, topic, sequence or age was wrong (see
//! [`loa_protocol::signed`]). A receiver reports its recent ones in every
//! status; the controller keeps the newest [`KEPT`] per receiver in
//! `receivers.rejected_messages` (served as `rejected_messages` by
//! `GET /api/v1/receivers`), logs each new one at `warn` and writes it to
//! the audit log (action `receiver.message_rejected`, method `MQTT`, path
//! the topic, object the receiver, unit the receiver's zone's): a forged or
//! replayed message is a sign someone is trying to take over loudspeakers.

use loa_protocol::signed::Rejection;
use sqlx::SqlitePool;

/// Rejections kept per receiver.
pub const KEPT: usize = 50;

/// Merges `incoming` (a status's list) into `stored` (the column's JSON):
/// entries newer than the newest stored one are added, the oldest dropped
/// beyond [`KEPT`]. Returns the new JSON and the entries that were new.
pub fn merge(stored: &str, incoming: &[Rejection]) -> (String, Vec<Rejection>) {
    let mut kept: Vec<Rejection> = serde_json::from_str(stored).unwrap_or_default();
    let newest = kept.iter().map(|r| r.at).max();
    let fresh: Vec<Rejection> = incoming
        .iter()
        .filter(|r| newest.is_none_or(|n| r.at > n))
        .cloned()
        .collect();
    kept.extend(fresh.iter().cloned());
    kept.sort_by_key(|r| r.at);
    let excess = kept.len().saturating_sub(KEPT);
    kept.drain(..excess);
    (
        serde_json::to_string(&kept).expect("rejections serialise"),
        fresh,
    )
}

/// Stores the rejections a status of `receiver_id` lists (see the module docs).
pub async fn store(
    db: &SqlitePool,
    receiver_id: &str,
    incoming: &[Rejection],
) -> Result<(), sqlx::Error> {
    let (stored, unit): (String, Option<String>) = sqlx::query_as(
        "SELECT r.rejected_messages, z.unit_id FROM receivers r
         LEFT JOIN zones z ON z.id = r.zone_id WHERE r.id = $1",
    )
    .bind(receiver_id)
    .fetch_one(db)
    .await?;
    let (merged, fresh) = merge(&stored, incoming);
    if fresh.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for r in &fresh {
        tracing::warn!(receiver = receiver_id, topic = %r.topic, reason = %r.reason, at = %r.at,
            "receiver refused a message that claimed to come from this controller");
        sqlx::query(
            "INSERT INTO audit_log (id, at, user_id, username, unit_id, action, method, path, \
                 object_id, status, detail) \
             VALUES ($1, $2, NULL, NULL, $3, 'receiver.message_rejected', 'MQTT', $4, $5, 403, $6)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(r.at.timestamp_millis())
        .bind(&unit)
        .bind(&r.topic)
        .bind(receiver_id)
        .bind(serde_json::json!({"reason": r.reason}).to_string())
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE receivers SET rejected_messages = $2 WHERE id = $1")
        .bind(receiver_id)
        .bind(merged)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Duration, Utc};

    fn rejection(at: DateTime<Utc>, reason: &str) -> Rejection {
        Rejection {
            topic: "loa/v1/receivers/r1/schedule".into(),
            reason: reason.into(),
            at,
        }
    }

    #[test]
    fn only_newer_rejections_are_added_and_the_list_is_bounded() {
        let t0: DateTime<Utc> = "2026-12-03T10:00:00Z".parse().unwrap();
        let (json, fresh) = merge("[]", &[rejection(t0, "bad_signature")]);
        assert_eq!(fresh.len(), 1);
        // The same list again (next heartbeat): nothing new.
        let (json, fresh) = merge(&json, &[rejection(t0, "bad_signature")]);
        assert!(fresh.is_empty());
        let many: Vec<Rejection> = (1..=KEPT as i64 + 5)
            .map(|i| rejection(t0 + Duration::seconds(i), "replayed"))
            .collect();
        let (json, fresh) = merge(&json, &many);
        assert_eq!(fresh.len(), KEPT + 5);
        let kept: Vec<Rejection> = serde_json::from_str(&json).unwrap();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept.last(), many.last());
        // A garbled column starts over rather than failing the status.
        assert_eq!(merge("nonsense", &[]).0, "[]");
    }
}
