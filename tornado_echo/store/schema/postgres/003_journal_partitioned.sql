-- The journal becomes partitioned by day of received_at (UTC), so retention drops whole days
-- instead of deleting rows (docs/journal.md). A primary key on a partitioned table must hold
-- the partition key: (session_id, seq, received_at). A replayed row carries the time it was
-- first written with (copyrows.pg_microseconds), so it still conflicts instead of doubling.
--
-- Runs inside migrate()'s one transaction, under the migration lock: interrupted at any point
-- (killed, a failed statement), the old table is left exactly as it was, and the next start
-- does it again. The copy rewrites every row: see docs/operations.md for its time.
DO $$
DECLARE
    day date;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'ws_messages'::regclass) = 'p' THEN
        RETURN;
    END IF;
    ALTER TABLE ws_messages RENAME TO ws_messages_unpartitioned;
    ALTER TABLE ws_messages_unpartitioned
        RENAME CONSTRAINT ws_messages_pkey TO ws_messages_unpartitioned_pkey;
    CREATE TABLE ws_messages (
        session_id   UUID        NOT NULL,
        seq          BIGINT      NOT NULL,
        received_at  TIMESTAMPTZ NOT NULL,
        opcode       SMALLINT    NOT NULL,
        size         INTEGER     NOT NULL,
        payload      BYTEA,
        truncated    BOOLEAN     NOT NULL DEFAULT FALSE,
        PRIMARY KEY (session_id, seq, received_at)
    ) PARTITION BY RANGE (received_at);
    -- Rows outside the days made (clock skew, an old spool replayed) land here: no insert
    -- ever fails for want of a partition.
    CREATE TABLE ws_messages_default PARTITION OF ws_messages DEFAULT;
    -- A partition per day that has rows, over the last 400 days (older rows: the default).
    FOR day IN
        SELECT DISTINCT (received_at AT TIME ZONE 'UTC')::date FROM ws_messages_unpartitioned
        WHERE received_at >= current_date - 400
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF ws_messages FOR VALUES FROM (%L) TO (%L)',
            'ws_messages_p' || to_char(day, 'YYYYMMDD'),
            to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00',
            to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00'
        );
    END LOOP;
    INSERT INTO ws_messages (session_id, seq, received_at, opcode, size, payload, truncated)
        SELECT session_id, seq, received_at, opcode, size, payload, truncated
        FROM ws_messages_unpartitioned;
    DROP TABLE ws_messages_unpartitioned;
END
$$;
