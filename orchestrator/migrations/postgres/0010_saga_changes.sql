-- Every committed change of a saga, for the live streams (`GET /events`, `GET /sagas/{id}/events`):
-- a reconnecting client resumes after the last one it saw. Several instances write at once, and
-- a sequence number is taken before its transaction commits, so `seq` alone is not commit order:
-- readers order by (`tx`, `seq`) and read only rows whose transaction is older than every
-- transaction still running, so no row can later appear before one already read. Pruned after
-- the retention.
CREATE TABLE saga_changes (
    seq BIGSERIAL PRIMARY KEY,
    tx xid8 NOT NULL DEFAULT pg_current_xact_id(),
    saga_id TEXT NOT NULL,
    saga_type TEXT NOT NULL,
    status TEXT NOT NULL,
    version BIGINT NOT NULL,
    at BIGINT NOT NULL,
    what TEXT NOT NULL
);
CREATE INDEX saga_changes_in_order ON saga_changes (tx, seq);
CREATE INDEX saga_changes_of_saga ON saga_changes (saga_id, tx, seq);
CREATE INDEX saga_changes_by_time ON saga_changes (at);
