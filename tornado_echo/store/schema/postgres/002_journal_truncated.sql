-- The journal keeps at most journal_max_payload bytes of a payload; size stays the real size.
-- Applied under the migration lock, once (schema_version); IF NOT EXISTS makes a rerun harmless.
ALTER TABLE ws_messages ADD COLUMN IF NOT EXISTS truncated BOOLEAN NOT NULL DEFAULT FALSE;
