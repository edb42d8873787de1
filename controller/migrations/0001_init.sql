-- Loa controller schema. Portable SQL (SQLite now, PostgreSQL later):
-- text ids, BIGINT unix milliseconds for instants, no AUTOINCREMENT.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'admin',
    created_at    BIGINT NOT NULL
);

-- API sessions; only the SHA-256 of a token is stored.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_expiry ON sessions(expires_at);

CREATE TABLE zones (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE receivers (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    zone_id          TEXT NOT NULL REFERENCES zones(id),
    token_hash       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    -- Presence, written from the receiver's MQTT status messages.
    online           BOOLEAN NOT NULL DEFAULT FALSE,
    last_seen        BIGINT,
    now_playing      TEXT,              -- JSON NowPlaying or NULL
    cached           TEXT NOT NULL DEFAULT '[]', -- JSON array of programme ids
    schedule_version BIGINT             -- version the receiver reports following
);
CREATE INDEX receivers_zone ON receivers(zone_id);
-- Receivers authenticate audio downloads by token; look them up by its hash.
CREATE UNIQUE INDEX receivers_token ON receivers(token_hash);

CREATE TABLE programmes (
    id            TEXT PRIMARY KEY,
    title         TEXT NOT NULL,
    category      TEXT NOT NULL,
    duration_ms   BIGINT NOT NULL,
    sha256        TEXT NOT NULL,   -- of the Ogg Opus file; also its name in the store
    bytes         BIGINT NOT NULL,
    bitrate       INTEGER NOT NULL, -- bits per second of the Opus encoding
    original_name TEXT,
    created_at    BIGINT NOT NULL
);

CREATE TABLE schedules (
    id           TEXT PRIMARY KEY,
    programme_id TEXT NOT NULL REFERENCES programmes(id),
    start_local  TEXT NOT NULL,    -- wall time, e.g. 2026-11-24T06:30:00
    timezone     TEXT NOT NULL,    -- IANA name, e.g. Asia/Ho_Chi_Minh
    rrule        TEXT,             -- RFC 5545 RRULE value or NULL for once
    priority     TEXT NOT NULL,    -- normal | priority | emergency
    created_at   BIGINT NOT NULL
);
CREATE INDEX schedules_programme ON schedules(programme_id);

CREATE TABLE schedule_targets (
    schedule_id TEXT NOT NULL REFERENCES schedules(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('zone', 'receiver')),
    target_id   TEXT NOT NULL,
    PRIMARY KEY (schedule_id, kind, target_id)
);
CREATE INDEX schedule_targets_target ON schedule_targets(kind, target_id);

-- Proof of play. report_id is chosen by the receiver, so a re-sent report is stored once.
CREATE TABLE plays (
    report_id    TEXT PRIMARY KEY,
    receiver_id  TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    programme_id TEXT NOT NULL,
    schedule_id  TEXT NOT NULL,
    scheduled_at BIGINT NOT NULL,
    started_at   BIGINT,
    ended_at     BIGINT,
    outcome      TEXT NOT NULL,
    detail       TEXT,
    received_at  BIGINT NOT NULL
);
CREATE INDEX plays_scheduled ON plays(scheduled_at);
CREATE INDEX plays_receiver ON plays(receiver_id, scheduled_at);

-- Last schedule version published to each receiver (versions only grow).
CREATE TABLE distributions (
    receiver_id  TEXT PRIMARY KEY,
    version      BIGINT NOT NULL,
    published_at BIGINT NOT NULL,
    payload_hash TEXT NOT NULL      -- SHA-256 of the events, to skip unchanged republishes
);
