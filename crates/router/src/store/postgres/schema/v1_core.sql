-- The router's core tables on PostgreSQL: the same rows as SQLite's schema after all its
-- migrations, times in Unix ms (BIGINT), JSON kept as the same text. Lease deadlines and outbox
-- due times are in the database server's clock, so every replica compares them with one clock.
CREATE TABLE patches (
    id                TEXT PRIMARY KEY,
    target            TEXT NOT NULL,
    priority          BIGINT NOT NULL,
    content_hash      TEXT NOT NULL,
    patch_json        TEXT NOT NULL,
    is_revert         BOOLEAN NOT NULL DEFAULT FALSE,
    status            TEXT NOT NULL,
    attempt           BIGINT NOT NULL DEFAULT 0,
    attempt_base      BIGINT NOT NULL DEFAULT 0,
    traceparent       TEXT NOT NULL DEFAULT '',
    error             TEXT NOT NULL DEFAULT '',
    report_json       TEXT,
    fencing_token     BIGINT NOT NULL DEFAULT 0,
    leased_to         TEXT NOT NULL DEFAULT '',
    lease_deadline_ms BIGINT NOT NULL DEFAULT 0,
    created_ms        BIGINT NOT NULL,
    updated_ms        BIGINT NOT NULL,
    seq               BIGINT NOT NULL,
    warnings_json     TEXT NOT NULL DEFAULT '[]',
    key_name          TEXT NOT NULL DEFAULT ''
);
CREATE INDEX patches_queue ON patches (target, status, priority DESC, seq);
CREATE INDEX patches_status ON patches (status, target);
CREATE INDEX patches_seq ON patches (seq);
-- Queue order and fencing tokens: one sequence each, shared by every replica.
CREATE SEQUENCE patch_seq;
CREATE SEQUENCE fencing_token_seq;
CREATE TABLE events (
    id       BIGSERIAL PRIMARY KEY,
    patch_id TEXT NOT NULL,
    at_ms    BIGINT NOT NULL,
    at_us    BIGINT NOT NULL DEFAULT 0,
    status   TEXT NOT NULL,
    actor    TEXT NOT NULL,
    attempt  BIGINT NOT NULL,
    detail   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_patch ON events (patch_id, id);
CREATE TABLE deps (
    patch_id   TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    PRIMARY KEY (patch_id, depends_on)
);
CREATE INDEX deps_reverse ON deps (depends_on);
CREATE TABLE attempts (
    patch_id    TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    status      TEXT NOT NULL,
    executor    TEXT NOT NULL,
    started_ms  BIGINT NOT NULL,
    finished_ms BIGINT,
    report_json TEXT,
    PRIMARY KEY (patch_id, attempt)
);
-- A row is claimed by the replica delivering it until `claimed_until_ms` (server clock): no
-- other replica sends it meanwhile, and a dead replica's claims run out.
CREATE TABLE outbox (
    id               BIGSERIAL PRIMARY KEY,
    patch_id         TEXT NOT NULL,
    attempt          BIGINT NOT NULL,
    tries            BIGINT NOT NULL DEFAULT 0,
    next_at_ms       BIGINT NOT NULL,
    delivered_ms     BIGINT,
    report_json      TEXT,
    created_ms       BIGINT NOT NULL DEFAULT 0,
    claimed_until_ms BIGINT NOT NULL DEFAULT 0,
    UNIQUE (patch_id, attempt)
);
CREATE INDEX outbox_undelivered ON outbox (id) WHERE delivered_ms IS NULL;
CREATE TABLE alert_state (
    key      TEXT PRIMARY KEY,
    since_ms BIGINT NOT NULL
);
CREATE TABLE alert_outbox (
    id               BIGSERIAL PRIMARY KEY,
    key              TEXT NOT NULL,
    resolved         BOOLEAN NOT NULL,
    severity         TEXT NOT NULL,
    summary          TEXT NOT NULL,
    labels_json      TEXT NOT NULL,
    at_ms            BIGINT NOT NULL,
    tries            BIGINT NOT NULL DEFAULT 0,
    next_at_ms       BIGINT NOT NULL,
    delivered_ms     BIGINT,
    claimed_until_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX alert_outbox_undelivered ON alert_outbox (id) WHERE delivered_ms IS NULL;
-- Pause flags (`paused:<target>`) and the storage probe.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
