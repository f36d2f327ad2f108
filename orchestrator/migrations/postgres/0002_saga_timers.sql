-- When each running saga next needs attention without a reply: a step deadline (re-send or give
-- up) or the saga deadline. NULL once the saga is terminal. The timer reads the due ones.
ALTER TABLE sagas ADD COLUMN wake_at BIGINT;
CREATE INDEX sagas_by_wake ON sagas (wake_at) WHERE wake_at IS NOT NULL;
