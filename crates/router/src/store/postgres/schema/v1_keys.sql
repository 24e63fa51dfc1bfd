-- Executor tokens, their audit trail, runtime API keys and the gateways' shared state: the
-- tables of SQLite's migrations 5 to 11 (store/schema.rs), as they stand after all of them.
-- Part of migration 1, after the core tables.

-- The key set's version lives in `meta` (`api_keys_version`), as on SQLite; created here only
-- when the core tables did not create it (same columns as SQLite's).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('api_keys_version', 0) ON CONFLICT (key) DO NOTHING;

-- Per-executor tokens (only their SHA-256 is kept) scoped to targets. A name is unique among
-- live tokens; a revoked name may be issued again.
CREATE TABLE executor_tokens (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    targets_json TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    revoked_ms   BIGINT NOT NULL DEFAULT 0,
    last_used_ms BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX executor_tokens_live_name ON executor_tokens (name) WHERE revoked_ms = 0;

-- What was done with tokens and runtime API keys (actions `api_key.*`), about the token or
-- key `token_id` (0: none known).
CREATE TABLE token_audit (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
    action   TEXT NOT NULL,
    name     TEXT NOT NULL,
    actor    TEXT NOT NULL,
    detail   TEXT NOT NULL DEFAULT '',
    token_id BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX token_audit_age ON token_audit (at_ms);

-- API keys made at run time (only their SHA-256 is kept), shared by every gateway.
CREATE TABLE api_keys (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    sha256       TEXT NOT NULL UNIQUE,
    scopes_json  TEXT NOT NULL,
    targets_json TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    imported     BOOLEAN NOT NULL DEFAULT FALSE
);

-- The hashes of revoked runtime keys (the last 10,000), so an import never brings one back.
CREATE TABLE api_keys_revoked (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sha256     TEXT NOT NULL UNIQUE,
    revoked_ms BIGINT NOT NULL
);

-- Dashboard sessions, by the SHA-256 of their id, with the SHA-256 of the key that logged in.
CREATE TABLE gateway_sessions (
    id_sha256         BYTEA PRIMARY KEY,
    credential_sha256 BYTEA NOT NULL,
    csrf              TEXT NOT NULL,
    created_ms        BIGINT NOT NULL,
    expires_ms        BIGINT NOT NULL
);
CREATE INDEX gateway_sessions_expiry ON gateway_sessions (expires_ms);

-- Standard Webhooks deliveries per sender: in progress under a lease until `until_ms`, or
-- committed with their answer until then.
CREATE TABLE gateway_deliveries (
    sender       TEXT NOT NULL,
    id           TEXT NOT NULL,
    body_sha256  BYTEA NOT NULL,
    committed    BOOLEAN NOT NULL,
    lease        TEXT NOT NULL,
    until_ms     BIGINT NOT NULL,
    at_ms        BIGINT NOT NULL,
    status       INTEGER NOT NULL CHECK (status BETWEEN 0 AND 65535),
    content_type TEXT NOT NULL,
    location     TEXT NOT NULL,
    answer       BYTEA NOT NULL,
    PRIMARY KEY (sender, id)
);
CREATE INDEX gateway_deliveries_until ON gateway_deliveries (until_ms);
CREATE INDEX gateway_deliveries_age ON gateway_deliveries (committed, at_ms);
