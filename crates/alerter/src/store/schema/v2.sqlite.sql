-- A thread is looked up by name for every outcome accepted (its channel, whether it started):
-- without an index that read the whole outbox, delivered messages included, so each
-- outcome cost more than the last (at 500 patches/s the alerter fell behind for good).
CREATE INDEX IF NOT EXISTS outbox_thread ON outbox (thread, id);
-- A channel's pending messages (its backlog switch, per outcome) and a user's recent DMs.
CREATE INDEX IF NOT EXISTS outbox_channel ON outbox (channel, state);
