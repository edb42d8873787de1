-- no-transaction
-- Live broadcasts (issue 3). Runs outside sqlx's transaction so that foreign
-- keys can be switched off while `schedules` is rebuilt (SQLite cannot drop
-- NOT NULL in place); the rebuild itself is one transaction.

PRAGMA foreign_keys = OFF;

BEGIN;

-- Schedules may now relay a stream instead of playing a programme:
-- exactly one of programme_id and source is set; a relay has a duration.
CREATE TABLE schedules_new (
    id           TEXT PRIMARY KEY,
    programme_id TEXT REFERENCES programmes(id),
    source       TEXT,             -- JSON {"type":"relay","url":...} or NULL
    duration_ms  BIGINT,           -- how long each relay occurrence lasts
    start_local  TEXT NOT NULL,    -- wall time, e.g. 2026-11-24T06:30:00
    timezone     TEXT NOT NULL,    -- IANA name, e.g. Asia/Ho_Chi_Minh
    rrule        TEXT,             -- RFC 5545 RRULE value or NULL for once
    priority     TEXT NOT NULL,    -- normal | priority | emergency
    created_at   BIGINT NOT NULL,
    CHECK ((programme_id IS NULL) <> (source IS NULL)),
    CHECK (source IS NULL OR duration_ms > 0)
);
INSERT INTO schedules_new (id, programme_id, start_local, timezone, rrule, priority, created_at)
    SELECT id, programme_id, start_local, timezone, rrule, priority, created_at FROM schedules;
DROP TABLE schedules;
ALTER TABLE schedules_new RENAME TO schedules;
CREATE INDEX schedules_programme ON schedules(programme_id);

-- Every live broadcast, on air (ended_at NULL) or past. A controller that
-- restarts marks the ones it left on air as ended (end_reason
-- 'controller_restart').
CREATE TABLE broadcasts (
    id               TEXT PRIMARY KEY,   -- UUID, hyphenated
    source           TEXT NOT NULL,      -- JSON {"type":"microphone"|"browser"|"relay"|"programme",...}
    targets          TEXT NOT NULL,      -- JSON {"zones":[...],"receivers":[...]}
    priority         TEXT NOT NULL,      -- normal | priority | emergency
    playout_delay_ms INTEGER NOT NULL,
    duration_ms      BIGINT,             -- planned length, NULL until stopped
    started_at       BIGINT NOT NULL,
    ended_at         BIGINT,
    end_reason       TEXT,
    end_detail       TEXT,
    created_by       TEXT NOT NULL,      -- username, or 'schedule'
    schedule_id      TEXT,               -- the relay schedule that started it
    occurrence_id    TEXT                -- {schedule_id}@{unix ms}
);
CREATE INDEX broadcasts_started ON broadcasts(started_at);
CREATE INDEX broadcasts_occurrence ON broadcasts(occurrence_id);

-- Live broadcasts that interrupted a scheduled play: JSON array of
-- {"broadcast_id","from","to"}, NULL when there were none.
ALTER TABLE plays ADD COLUMN interruptions TEXT;

COMMIT;

PRAGMA foreign_keys = ON;
