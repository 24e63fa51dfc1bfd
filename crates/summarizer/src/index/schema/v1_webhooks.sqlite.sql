CREATE TABLE IF NOT EXISTS webhook_outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id   TEXT NOT NULL UNIQUE,
    subscription TEXT NOT NULL,
    patch_id     TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    event        TEXT NOT NULL,
    body         BLOB NOT NULL,
    tries        INTEGER NOT NULL DEFAULT 0,
    next_at_ms   INTEGER NOT NULL,
    created_ms   INTEGER NOT NULL,
    first_try_ms INTEGER,
    last_error   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS webhook_outbox_by_patch ON webhook_outbox (subscription, patch_id, id);
CREATE INDEX IF NOT EXISTS webhook_outbox_by_due ON webhook_outbox (next_at_ms, id);
CREATE INDEX IF NOT EXISTS webhook_outbox_by_lane ON webhook_outbox (subscription, next_at_ms, id);
CREATE TABLE IF NOT EXISTS webhook_dead_letters (
    id           INTEGER PRIMARY KEY,
    webhook_id   TEXT NOT NULL UNIQUE,
    subscription TEXT NOT NULL,
    patch_id     TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    event        TEXT NOT NULL,
    body         BLOB NOT NULL,
    tries        INTEGER NOT NULL,
    created_ms   INTEGER NOT NULL,
    first_try_ms INTEGER,
    dead_ms      INTEGER NOT NULL,
    reason       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_dead_letters_by_age ON webhook_dead_letters (dead_ms, id);
CREATE TABLE IF NOT EXISTS webhook_gone (
    subscription TEXT PRIMARY KEY,
    url_sha256   TEXT NOT NULL,
    at_ms        INTEGER NOT NULL
);
