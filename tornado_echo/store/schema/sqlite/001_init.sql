-- Sessions: one row per WebSocket connection. Times are Unix seconds (REAL).
CREATE TABLE IF NOT EXISTS ws_sessions (
    id            TEXT PRIMARY KEY,
    server_id     TEXT    NOT NULL,
    opened_at     REAL    NOT NULL,
    closed_at     REAL,
    peer          TEXT    NOT NULL,
    path          TEXT    NOT NULL,
    origin        TEXT,
    user_agent    TEXT,
    subprotocol   TEXT,
    compression   INTEGER NOT NULL DEFAULT 0,
    close_code    INTEGER,
    close_reason  TEXT,
    messages_in   INTEGER NOT NULL DEFAULT 0,
    messages_out  INTEGER NOT NULL DEFAULT 0,
    bytes_in      INTEGER NOT NULL DEFAULT 0,
    bytes_out     INTEGER NOT NULL DEFAULT 0,
    end_state     TEXT    NOT NULL DEFAULT 'open'
);
CREATE INDEX IF NOT EXISTS ws_sessions_opened_at ON ws_sessions (opened_at);
CREATE INDEX IF NOT EXISTS ws_sessions_still_open ON ws_sessions (server_id) WHERE end_state = 'open';

-- Message journal (journal = "meta" or "full"), payload only in "full".
CREATE TABLE IF NOT EXISTS ws_messages (
    session_id   TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    received_at  REAL    NOT NULL,
    opcode       INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    payload      BLOB,
    PRIMARY KEY (session_id, seq)
);
