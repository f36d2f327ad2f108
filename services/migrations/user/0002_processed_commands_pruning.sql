-- The pruner deletes processed commands older than the retention time (RETENTION_MS).
CREATE INDEX processed_commands_by_time ON processed_commands (processed_at);
