-- Every committed change of a saga, in commit order, for the live streams (`GET /events`,
-- `GET /sagas/{id}/events`): a reconnecting client resumes after the last one it saw. SQLite
-- has one writer at a time, so `seq` is taken in commit order. Pruned after the retention.
CREATE TABLE saga_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id TEXT NOT NULL,
    saga_type TEXT NOT NULL,
    status TEXT NOT NULL,
    version BIGINT NOT NULL,
    at BIGINT NOT NULL,
    what TEXT NOT NULL
);
CREATE INDEX saga_changes_of_saga ON saga_changes (saga_id, seq);
CREATE INDEX saga_changes_by_time ON saga_changes (at);
