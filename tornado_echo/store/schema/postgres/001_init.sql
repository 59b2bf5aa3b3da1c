-- Sessions: one row per WebSocket connection.
CREATE TABLE IF NOT EXISTS ws_sessions (
    id            UUID PRIMARY KEY,
    server_id     TEXT        NOT NULL,
    opened_at     TIMESTAMPTZ NOT NULL,
    closed_at     TIMESTAMPTZ,
    peer          TEXT        NOT NULL,
    path          TEXT        NOT NULL,
    origin        TEXT,
    user_agent    TEXT,
    subprotocol   TEXT,
    compression   BOOLEAN     NOT NULL DEFAULT FALSE,
    close_code    INTEGER,
    close_reason  TEXT,
    messages_in   BIGINT      NOT NULL DEFAULT 0,
    messages_out  BIGINT      NOT NULL DEFAULT 0,
    bytes_in      BIGINT      NOT NULL DEFAULT 0,
    bytes_out     BIGINT      NOT NULL DEFAULT 0,
    end_state     TEXT        NOT NULL DEFAULT 'open'
);
CREATE INDEX IF NOT EXISTS ws_sessions_opened_at ON ws_sessions (opened_at);
CREATE INDEX IF NOT EXISTS ws_sessions_still_open ON ws_sessions (server_id) WHERE end_state = 'open';

-- Message journal (journal = "meta" or "full"), payload only in "full".
CREATE TABLE IF NOT EXISTS ws_messages (
    session_id   UUID        NOT NULL,
    seq          BIGINT      NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    opcode       SMALLINT    NOT NULL,
    size         INTEGER     NOT NULL,
    payload      BYTEA,
    PRIMARY KEY (session_id, seq)
);
