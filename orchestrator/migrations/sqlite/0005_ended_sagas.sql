-- Sagas that ended well (completed, compensated, cancelled), by when they ended: what the opt-in
-- SAGA_RETENTION prunes. FAILED sagas wait for an operator and are never pruned.
CREATE INDEX sagas_ended ON sagas (updated_at) WHERE status IN ('COMPLETED', 'COMPENSATED', 'CANCELLED');
