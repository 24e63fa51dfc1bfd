CREATE TABLE IF NOT EXISTS summaries (
    patch_id    TEXT PRIMARY KEY,
    target      TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    attempts    BIGINT NOT NULL,
    trace_id    TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    finished_ms BIGINT NOT NULL,
    recorded_ms BIGINT NOT NULL,
    dir         TEXT NOT NULL,
    archived    BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS summaries_by_time ON summaries (finished_ms DESC, patch_id);
CREATE INDEX IF NOT EXISTS summaries_by_target ON summaries (target, finished_ms DESC);
CREATE TABLE IF NOT EXISTS attempts (
    patch_id    TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    status      TEXT NOT NULL,
    recorded_ms BIGINT NOT NULL,
    PRIMARY KEY (patch_id, attempt)
);
CREATE TABLE IF NOT EXISTS outbox (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patch_id    TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    request     BYTEA NOT NULL,
    traceparent TEXT NOT NULL,
    tries       BIGINT NOT NULL DEFAULT 0,
    next_at_ms  BIGINT NOT NULL,
    created_ms  BIGINT NOT NULL,
    last_error  TEXT NOT NULL DEFAULT '',
    UNIQUE (patch_id, attempt)
);
CREATE TABLE IF NOT EXISTS changelog (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target      TEXT NOT NULL,
    patch_id    TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    event       TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status   TEXT NOT NULL,
    at_ms       BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS changelog_by_target ON changelog (target, id);
CREATE TABLE IF NOT EXISTS storage_probe (
    id          BIGINT PRIMARY KEY,
    at_ms       BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id   TEXT NOT NULL UNIQUE,
    subscription TEXT NOT NULL,
    patch_id     TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    event        TEXT NOT NULL,
    body         BYTEA NOT NULL,
    tries        BIGINT NOT NULL DEFAULT 0,
    next_at_ms   BIGINT NOT NULL,
    created_ms   BIGINT NOT NULL,
    first_try_ms BIGINT,
    last_error   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS webhook_outbox_by_patch ON webhook_outbox (subscription, patch_id, id);
CREATE INDEX IF NOT EXISTS webhook_outbox_by_due ON webhook_outbox (next_at_ms, id);
CREATE INDEX IF NOT EXISTS webhook_outbox_by_lane ON webhook_outbox (subscription, next_at_ms, id);
CREATE TABLE IF NOT EXISTS webhook_dead_letters (
    id           BIGINT PRIMARY KEY,
    webhook_id   TEXT NOT NULL UNIQUE,
    subscription TEXT NOT NULL,
    patch_id     TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    event        TEXT NOT NULL,
    body         BYTEA NOT NULL,
    tries        BIGINT NOT NULL,
    created_ms   BIGINT NOT NULL,
    first_try_ms BIGINT,
    dead_ms      BIGINT NOT NULL,
    reason       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_dead_letters_by_age ON webhook_dead_letters (dead_ms, id);
CREATE TABLE IF NOT EXISTS webhook_gone (
    subscription TEXT PRIMARY KEY,
    url_sha256   TEXT NOT NULL,
    at_ms        BIGINT NOT NULL
);
-- The summary bodies (on SQLite they are files in data_dir): by patch and name relative to the
-- summary's folder (`summary-<id>.md`, `summary-<id>.json`, `artifacts/<id>/<attempt>-<n>.log`),
-- so any replica serves any summary. Archiving changes the row's `dir` only.
CREATE TABLE IF NOT EXISTS summary_bodies (
    patch_id    TEXT NOT NULL,
    name        TEXT NOT NULL,
    body        BYTEA NOT NULL,
    PRIMARY KEY (patch_id, name)
);
CREATE TABLE IF NOT EXISTS manifests (
    target      TEXT PRIMARY KEY,
    body        BYTEA NOT NULL
);
