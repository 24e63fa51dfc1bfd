CREATE TABLE IF NOT EXISTS notifications (
    patch_id TEXT NOT NULL, attempt INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (patch_id, attempt));
CREATE TABLE IF NOT EXISTS alert_events (
    key TEXT NOT NULL, resolved INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (key, resolved, at_ms));
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    thread TEXT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    tries INTEGER NOT NULL DEFAULT 0,
    next_at_ms INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    ts TEXT NOT NULL DEFAULT '',
    traceparent TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, thread, id);
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox (state, id);
CREATE TABLE IF NOT EXISTS digests (
    thread TEXT PRIMARY KEY, channel TEXT NOT NULL, period_ms INTEGER NOT NULL,
    seq INTEGER NOT NULL, entries INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS digests_current ON digests (channel, period_ms, seq);
CREATE TABLE IF NOT EXISTS digest_entries (
    patch_id TEXT NOT NULL, attempt INTEGER NOT NULL, channel TEXT NOT NULL,
    thread TEXT NOT NULL, entry TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (patch_id, attempt, channel));
CREATE INDEX IF NOT EXISTS digest_entries_thread ON digest_entries (thread, at_ms);
CREATE TABLE IF NOT EXISTS backlog_switched (channel TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS threads (
    thread TEXT PRIMARY KEY, channel TEXT NOT NULL, ts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (key TEXT PRIMARY KEY, state TEXT NOT NULL, active INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT, matcher TEXT NOT NULL, until_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL, created_ms INTEGER NOT NULL, removed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS storage_probe (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, user_id TEXT NOT NULL,
    user_name TEXT NOT NULL, channel_id TEXT NOT NULL, source TEXT NOT NULL, verb TEXT NOT NULL,
    args TEXT NOT NULL, allowed INTEGER NOT NULL, outcome TEXT NOT NULL);
