-- Relays publish the oldest unsent row of each (topic, key) first; with several relays a row waits
-- while an older one of its saga on the same topic is unsent (per-saga order on every topic).
CREATE INDEX outbox_unsent_by_key ON outbox (topic, msg_key, id) WHERE sent_at IS NULL;
-- The pruner deletes sent outbox rows and processed inbox rows older than the retention time.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX inbox_by_received ON inbox (received_at);
