-- Messages and live frames each receiver refused (forged, altered, replayed,
-- stale, malformed), as reported in its status: JSON array of
-- {"topic","reason","at"}, newest last, bounded (see src/rejections.rs).
ALTER TABLE receivers ADD COLUMN rejected_messages TEXT NOT NULL DEFAULT '[]';
