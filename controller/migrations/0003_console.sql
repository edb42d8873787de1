-- The officers' console (issue 4): administrative units, users' unit and
-- role, approval states of programmes and schedules, positions and quiet
-- hours, and the audit log. Columns added to existing tables allow NULL
-- where SQLite requires it of an added REFERENCES column; NULL unit means
-- the root unit.

-- Units form a tree: root → province → district → commune. Zones (villages)
-- belong to a unit (normally a commune), receivers to a zone. A user sees
-- and targets only what is under their unit.
CREATE TABLE units (
    id         TEXT PRIMARY KEY,
    parent_id  TEXT REFERENCES units(id),
    kind       TEXT NOT NULL CHECK (kind IN ('root', 'province', 'district', 'commune')),
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX units_parent ON units(parent_id);
INSERT INTO units (id, parent_id, kind, name, created_at)
    VALUES ('root', NULL, 'root', 'Toàn hệ thống', 0);

-- Roles: admin (everything under the unit, users included), technician
-- (zones, receivers), editor (uploads, draft schedules), approver (approves
-- content and schedules, starts live and emergency broadcasts), viewer.
ALTER TABLE users ADD COLUMN unit_id TEXT REFERENCES units(id);
ALTER TABLE users ADD COLUMN display_name TEXT;
ALTER TABLE users ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE users SET unit_id = 'root';

ALTER TABLE zones ADD COLUMN unit_id TEXT REFERENCES units(id);
-- Local wall-clock interval in which only emergency schedules may play,
-- "HH:MM-HH:MM" (may wrap past midnight), or NULL.
ALTER TABLE zones ADD COLUMN quiet_hours TEXT;
UPDATE zones SET unit_id = 'root';

-- Where a receiver stands (WGS 84 degrees), for the console's map.
ALTER TABLE receivers ADD COLUMN lat DOUBLE PRECISION;
ALTER TABLE receivers ADD COLUMN lon DOUBLE PRECISION;

-- Approval: draft → pending → approved | rejected. Only approved schedules
-- of approved programmes are distributed. Rows written before this
-- migration (and by tools that insert directly) count as approved.
ALTER TABLE programmes ADD COLUMN status TEXT NOT NULL DEFAULT 'approved'
    CHECK (status IN ('draft', 'pending', 'approved', 'rejected'));
ALTER TABLE programmes ADD COLUMN unit_id TEXT REFERENCES units(id);
ALTER TABLE programmes ADD COLUMN created_by TEXT;
ALTER TABLE programmes ADD COLUMN reviewed_by TEXT;
ALTER TABLE programmes ADD COLUMN reviewed_at BIGINT;
ALTER TABLE programmes ADD COLUMN review_note TEXT;
UPDATE programmes SET unit_id = 'root';

ALTER TABLE schedules ADD COLUMN status TEXT NOT NULL DEFAULT 'approved'
    CHECK (status IN ('draft', 'pending', 'approved', 'rejected'));
ALTER TABLE schedules ADD COLUMN unit_id TEXT REFERENCES units(id);
ALTER TABLE schedules ADD COLUMN created_by TEXT;
ALTER TABLE schedules ADD COLUMN reviewed_by TEXT;
ALTER TABLE schedules ADD COLUMN reviewed_at BIGINT;
ALTER TABLE schedules ADD COLUMN review_note TEXT;
UPDATE schedules SET unit_id = 'root';
CREATE INDEX schedules_status ON schedules(status);

-- Who did what, when: one row per request that changes something (and
-- every login attempt), successful or refused.
CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,   -- UUID
    at          BIGINT NOT NULL,    -- unix ms
    user_id     TEXT,               -- NULL when not logged in
    username    TEXT,
    unit_id     TEXT,
    action      TEXT NOT NULL,      -- e.g. programme.approve
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    object_id   TEXT,
    status      INTEGER NOT NULL,   -- HTTP status of the answer
    detail      TEXT                -- JSON or NULL
);
CREATE INDEX audit_at ON audit_log(at);
