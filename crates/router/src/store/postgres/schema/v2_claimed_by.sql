-- Who holds the claim on an outbox row (the replica's store `origin`), so a replica whose
-- claim ran out, and was taken over, can no longer release or reschedule the row under the
-- replica holding it now. '' on rows no replica claimed.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
ALTER TABLE alert_outbox ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
