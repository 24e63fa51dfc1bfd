CREATE TABLE IF NOT EXISTS notifications (
    patch_id TEXT NOT NULL, attempt BIGINT NOT NULL, at_ms BIGINT NOT NULL,
    PRIMARY KEY (patch_id, attempt));
CREATE TABLE IF NOT EXISTS alert_events (
    key TEXT NOT NULL, resolved BOOLEAN NOT NULL, at_ms BIGINT NOT NULL,
    PRIMARY KEY (key, resolved, at_ms));
CREATE TABLE IF NOT EXISTS outbox (
    id BIGSERIAL PRIMARY KEY,
    thread TEXT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    tries BIGINT NOT NULL DEFAULT 0,
    next_at_ms BIGINT NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_ms BIGINT NOT NULL,
    ts TEXT NOT NULL DEFAULT '',
    traceparent TEXT NOT NULL DEFAULT '',
    priority BIGINT NOT NULL DEFAULT 2);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, thread, id);
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox (state, id);
CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (state, priority, id);
CREATE TABLE IF NOT EXISTS digests (
    thread TEXT PRIMARY KEY, channel TEXT NOT NULL, period_ms BIGINT NOT NULL,
    seq BIGINT NOT NULL, entries BIGINT NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS digests_current ON digests (channel, period_ms, seq);
CREATE TABLE IF NOT EXISTS digest_entries (
    id BIGSERIAL UNIQUE,
    patch_id TEXT NOT NULL, attempt BIGINT NOT NULL, channel TEXT NOT NULL,
    thread TEXT NOT NULL, entry TEXT NOT NULL, at_ms BIGINT NOT NULL,
    PRIMARY KEY (patch_id, attempt, channel));
CREATE INDEX IF NOT EXISTS digest_entries_thread ON digest_entries (thread, at_ms);
CREATE TABLE IF NOT EXISTS backlog_switched (channel TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS threads (
    thread TEXT PRIMARY KEY, channel TEXT NOT NULL, ts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (key TEXT PRIMARY KEY, state TEXT NOT NULL, active BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS silences (
    id BIGSERIAL PRIMARY KEY, matcher TEXT NOT NULL, until_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL, created_ms BIGINT NOT NULL, removed BOOLEAN NOT NULL DEFAULT FALSE);
CREATE TABLE IF NOT EXISTS storage_probe (id BIGINT PRIMARY KEY, at_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id BIGSERIAL PRIMARY KEY, at_ms BIGINT NOT NULL, user_id TEXT NOT NULL,
    user_name TEXT NOT NULL, channel_id TEXT NOT NULL, source TEXT NOT NULL, verb TEXT NOT NULL,
    args TEXT NOT NULL, allowed BOOLEAN NOT NULL, outcome TEXT NOT NULL);
-- Replicas: who sends to a channel (`channel/<name>`) and who runs the health monitor
-- (`monitor`), until when (the server's clock, unix ms).
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, until_ms BIGINT NOT NULL);
