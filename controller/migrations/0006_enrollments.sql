-- Enrollment of receivers that made their own Ed25519 key pair (see
-- src/api/enrollments.rs and loa_protocol::enroll). A request waits
-- `pending` until a technician accepts or rejects it; a pending request
-- older than 24 h is expired (ignored, and refreshed if the receiver asks
-- again). The token is issued once, to the first claim signed by the key.
CREATE TABLE enrollments (
    public_key   TEXT PRIMARY KEY,          -- base64 of the 32-byte Ed25519 key
    code         TEXT NOT NULL,             -- XXXX-XXXX, from SHA-256 of the key
    hostname     TEXT NOT NULL,
    requested_id TEXT,                      -- the receiver's --id, a suggestion
    remote_addr  TEXT,                      -- who sent the request
    created_at   BIGINT NOT NULL,           -- last request (expiry counts from it)
    state        TEXT NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'accepted', 'rejected')),
    decided_at   BIGINT,
    decided_by   TEXT,                      -- users.id of the technician
    receiver_id  TEXT,                      -- set on acceptance
    token_issued BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX enrollments_code ON enrollments(code);

-- The device key a receiver enrolled with (NULL for receivers created with
-- POST /receivers).
ALTER TABLE receivers ADD COLUMN public_key TEXT;
CREATE UNIQUE INDEX receivers_public_key ON receivers(public_key) WHERE public_key IS NOT NULL;
