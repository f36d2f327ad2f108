-- W3C trace context (traceparent / tracestate), so that one saga is one trace across every
-- component. A saga keeps the context of the request that started it (work that no message
-- caused, such as a deadline, continues it); each outbox row keeps the context of the span that
-- wrote it, which the relay sends as the message's headers.
ALTER TABLE sagas ADD COLUMN traceparent TEXT;
ALTER TABLE sagas ADD COLUMN tracestate TEXT;
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
ALTER TABLE outbox ADD COLUMN tracestate TEXT;
