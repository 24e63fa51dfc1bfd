CREATE TABLE IF NOT EXISTS summaries (
    patch_id    TEXT PRIMARY KEY,
    target      TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    trace_id    TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    finished_ms INTEGER NOT NULL,
    recorded_ms INTEGER NOT NULL,
    dir         TEXT NOT NULL,
    archived    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS summaries_by_time ON summaries (finished_ms DESC, patch_id);
CREATE INDEX IF NOT EXISTS summaries_by_target ON summaries (target, finished_ms DESC);
CREATE TABLE IF NOT EXISTS attempts (
    patch_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL,
    PRIMARY KEY (patch_id, attempt)
);
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    patch_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    request     BLOB NOT NULL,
    traceparent TEXT NOT NULL,
    tries       INTEGER NOT NULL DEFAULT 0,
    next_at_ms  INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    last_error  TEXT NOT NULL DEFAULT '',
    UNIQUE (patch_id, attempt)
);
CREATE TABLE IF NOT EXISTS changelog (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    target      TEXT NOT NULL,
    patch_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    event       TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status   TEXT NOT NULL,
    at_ms       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changelog_by_target ON changelog (target, id);
CREATE TABLE IF NOT EXISTS storage_probe (
    id          INTEGER PRIMARY KEY,
    at_ms       INTEGER NOT NULL
);
