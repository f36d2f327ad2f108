//! Where replies are handled: the consumer of the participants' `*_events` topics.
//!
//! Each reply is applied by the pure engine inside one database transaction (inbox + saga +
//! outbox); only after that commits does the consume loop store the Kafka offset. A crash at any
//! point therefore redelivers the reply, and the inbox makes the redelivery change nothing.

use std::collections::HashMap;

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use platform::kafka::{dead_letter, Disposition, MessageHandler};
use platform::retry::{self, Retried};
use platform::{Envelope, TraceContext};

use crate::relay::Relay;
use crate::saga::Sagas;
use crate::store::{ReplyOutcome, SagaStore};

pub struct ReplyHandler {
    pub store: SagaStore,
    /// Each saga's definition, and the timing policy.
    pub sagas: Sagas,
    pub relay: Relay,
    /// Times a reply may fail with a non-transient error before it is dead-lettered.
    pub max_attempts: u32,
    pub cancel: CancellationToken,
}

impl MessageHandler for ReplyHandler {
    fn handle_batch<'a>(
        &'a self,
        messages: &'a [BorrowedMessage<'a>],
    ) -> impl std::future::Future<Output = Vec<Disposition>> + Send + 'a {
        self.apply_batch(messages)
    }

    async fn handle(&self, message: &BorrowedMessage<'_>) -> Disposition {
        let reply = match Envelope::from_bytes(message.payload()) {
            Ok(e) => e,
            Err(reason) => return Disposition::unreadable(reason),
        };
        let (span, trace) = self.span(&reply, message);
        self.apply(&reply, &trace).instrument(span).await
    }
}

impl ReplyHandler {
    /// The span a reply is handled in: it continues the trace of the message (the span of the
    /// participant that sent it), and the commands it causes carry its context.
    fn span(
        &self,
        reply: &Envelope,
        message: &BorrowedMessage<'_>,
    ) -> (tracing::Span, TraceContext) {
        let span = tracing::info_span!(
            "reply",
            saga_id = %reply.correlation_id,
            saga_type = tracing::field::Empty,
            message_type = %reply.message_type,
            message_id = %reply.message_id,
            step = tracing::field::Empty,
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            trace_id = tracing::field::Empty,
        );
        let trace =
            platform::trace::continue_trace(&span, &TraceContext::from_kafka(message.headers()));
        (span, trace)
    }

    /// Replies that arrived together share one transaction (one commit instead of one per
    /// reply). If that fails, each is handled on its own, with its own retries.
    async fn apply_batch(&self, messages: &[BorrowedMessage<'_>]) -> Vec<Disposition> {
        let parsed: Vec<Result<Envelope, String>> = messages
            .iter()
            .map(|m| Envelope::from_bytes(m.payload()))
            .collect();
        // One span per reply, open while the batch is applied.
        let spans: Vec<Option<(tracing::Span, TraceContext)>> = parsed
            .iter()
            .zip(messages)
            .map(|(p, m)| p.as_ref().ok().map(|r| self.span(r, m)))
            .collect();
        let traced: HashMap<Uuid, &(tracing::Span, TraceContext)> = parsed
            .iter()
            .zip(&spans)
            .filter_map(|(p, s)| Some((p.as_ref().ok()?.message_id, s.as_ref()?)))
            .collect();
        let replies: Vec<&Envelope> = parsed.iter().filter_map(|r| r.as_ref().ok()).collect();
        let now = platform::time::now_ms();
        let outcomes = if replies.len() > 1 {
            self.store
                .apply_replies(&replies, now, |state, reply| {
                    let decision = self
                        .sagas
                        .on_reply(state, reply.into(), reply.message_id, now);
                    match traced.get(&reply.message_id) {
                        Some((span, trace)) => {
                            span.record("saga_type", state.saga_type.as_str());
                            span.record("step", state.current_step());
                            decision.traced(trace)
                        }
                        None => decision,
                    }
                })
                .await
                .map_err(
                    |e| tracing::debug!(error = %e, "batch failed; handling replies one by one"),
                )
                .ok()
        } else {
            None
        };
        let mut outcomes = outcomes.map(Vec::into_iter);
        let mut out = Vec::with_capacity(messages.len());
        for (parsed, span) in parsed.iter().zip(spans) {
            let (Ok(reply), Some((span, trace))) = (parsed, span) else {
                let reason = parsed.as_ref().err().cloned().unwrap_or_default();
                out.push(Disposition::unreadable(reason));
                continue;
            };
            let disposition = match outcomes.as_mut().and_then(Iterator::next) {
                Some(outcome) => span.in_scope(|| self.disposition(reply, Retried::Ok(outcome))),
                None => self.apply(reply, &trace).instrument(span).await,
            };
            out.push(disposition);
        }
        out
    }

    async fn apply(&self, reply: &Envelope, trace: &TraceContext) -> Disposition {
        // Transient failures (the database away) are retried until they pass; others up to
        // `max_attempts` times, then the reply is dead-lettered.
        let mut failures = 0;
        let outcome = retry::until_cancelled(
            &self.cancel,
            "applying a reply",
            |e: &crate::Error| {
                if e.is_transient() {
                    return true;
                }
                failures += 1;
                failures < self.max_attempts
            },
            || {
                let now = platform::time::now_ms();
                self.store.apply_reply(reply, now, move |state| {
                    let span = tracing::Span::current();
                    span.record("saga_type", state.saga_type.as_str());
                    span.record("step", state.current_step());
                    self.sagas
                        .on_reply(state, reply.into(), reply.message_id, now)
                        .traced(trace)
                })
            },
        )
        .await;
        let outcome = match outcome {
            Retried::Permanent(e) => {
                return Disposition::dead_letter(
                    dead_letter::FAILED,
                    format!("failed after {failures} attempts: {e}"),
                )
            }
            other => other,
        };
        self.disposition(reply, outcome)
    }

    fn disposition(
        &self,
        reply: &Envelope,
        outcome: Retried<ReplyOutcome, crate::Error>,
    ) -> Disposition {
        match outcome {
            Retried::Ok(ReplyOutcome::Applied { status, messages }) => {
                if messages > 0 {
                    self.relay.notify();
                }
                tracing::debug!(status = status.as_str(), "reply applied");
                Disposition::Done
            }
            Retried::Ok(ReplyOutcome::Duplicate) => {
                tracing::debug!("duplicate reply ignored");
                Disposition::Done
            }
            Retried::Ok(ReplyOutcome::Ignored(why)) => {
                tracing::info!(reason = ?why, "reply ignored");
                Disposition::Done
            }
            Retried::Ok(ReplyOutcome::UnknownSaga) => Disposition::dead_letter(
                dead_letter::UNKNOWN_SAGA,
                format!("no saga with id {}", reply.correlation_id),
            ),
            Retried::Permanent(e) => Disposition::dead_letter(dead_letter::FAILED, e.to_string()),
            Retried::Cancelled => Disposition::Abandoned,
        }
    }
}
