-- Claims (both dialects): a replica marks the rows it is sending as its own until a deadline,
-- so another replica on the same database does not send them too, and takes them over once a
-- dead replica's claims run out.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claim_until BIGINT;
ALTER TABLE webhook_outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE webhook_outbox ADD COLUMN claim_until BIGINT;
-- What the claim reads: rows due, oldest first.
CREATE INDEX IF NOT EXISTS outbox_by_due ON outbox (next_at_ms, id);
