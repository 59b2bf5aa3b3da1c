-- The journal keeps at most journal_max_payload bytes of a payload; size stays the real size.
-- Applied in the same BEGIN IMMEDIATE transaction that checks schema_version, so once.
ALTER TABLE ws_messages ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
