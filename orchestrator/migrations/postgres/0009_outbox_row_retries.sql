-- A row the broker refuses (too large, a topic denied) is retried on its own schedule: it waits
-- until `not_before`, and holds back only the later rows of its saga on its topic, never the
-- relay. Added columns only, with defaults: a release that does not know them keeps working.
ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN not_before BIGINT;
ALTER TABLE outbox ADD COLUMN last_error TEXT;
