-- Every saga definition version any instance was deployed with, as its file's text: an instance
-- that meets a saga of a version it was not given (a rolling deploy, a version dropped from its
-- files) runs it under this copy instead of parking it. Only ever added to: a release that does
-- not know the table ignores it (expand, then contract).
CREATE TABLE saga_definitions (
    saga_type   TEXT NOT NULL,
    version     INTEGER NOT NULL,
    file        TEXT NOT NULL,
    source      TEXT NOT NULL,
    deployed_at BIGINT NOT NULL,
    PRIMARY KEY (saga_type, version)
);
