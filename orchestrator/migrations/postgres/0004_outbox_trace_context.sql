-- The trace context each message is published with (W3C traceparent / tracestate headers):
-- the span that wrote the message, so one saga is one trace across every component.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
ALTER TABLE outbox ADD COLUMN tracestate TEXT;
