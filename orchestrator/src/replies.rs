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

use platform::kafka::{dead_letter, Batched, Disposition, MessageHandler};
use platform::retry::{self, Retried};
use platform::{Envelope, TraceContext};

use crate::saga::Sagas;
use crate::store::{ReplyOutcome, SagaStore};

pub struct ReplyHandler {
    pub store: SagaStore,
    /// Each saga's definition, and the timing policy.
    pub sagas: Sagas,
    /// Times a reply may fail with a non-transient error before it is dead-lettered.
    pub max_attempts: u32,
    pub cancel: CancellationToken,
}

impl MessageHandler for ReplyHandler {
    fn handle_batch<'a>(
        &'a self,
        messages: &'a [BorrowedMessage<'a>],
    ) -> impl std::future::Future<Output = Vec<Disposition>> + Send + 'a {
        // Replies that arrived together share one transaction (one commit instead of one per
        // reply); if that fails, each is handled on its own, with its own retries.
        platform::kafka::together_or_alone(self, messages)
    }

    async fn handle(&self, message: &BorrowedMessage<'_>) -> Disposition {
        platform::kafka::alone(self, message).await
    }
}

impl Batched for ReplyHandler {
    /// The reply's span (open while the batch decides about it) and trace.
    type Context = (tracing::Span, TraceContext);
    type Result = ReplyOutcome;

    fn context(&self, reply: &Envelope, message: &BorrowedMessage<'_>) -> Self::Context {
        self.span(reply, message)
    }

    /// A reply whose payload breaks its schema in the message contract never reaches its saga:
    /// a participant answering `payment.authorized` without `payment_id` would otherwise move
    /// the saga on without what later steps need. The step's deadline re-sends the command.
    fn refuse(&self, reply: &Envelope) -> Option<Disposition> {
        // Without it no saga can tell which command the reply answers: it used to be ignored
        // in silence while the step waited for its deadline.
        if reply.causation_id.is_none() {
            return Some(Disposition::dead_letter(
                dead_letter::REJECTED,
                format!(
                    "{} has no causation_id: a reply carries the message_id of the command it \
                     answers as its causation_id",
                    reply.message_type
                ),
            ));
        }
        let problems = self
            .sagas
            .registry
            .check_reply(&reply.message_type, &reply.payload)
            .err()?;
        Some(Disposition::dead_letter(
            dead_letter::REJECTED,
            format!(
                "{} breaks its schema in the message contract: {}",
                reply.message_type,
                problems.join("; ")
            ),
        ))
    }

    async fn together(&self, items: &[(&Envelope, &Self::Context)]) -> Option<Vec<ReplyOutcome>> {
        let now = platform::time::now_ms();
        let traced: HashMap<Uuid, &Self::Context> =
            items.iter().map(|(r, c)| (r.message_id, *c)).collect();
        let replies: Vec<&Envelope> = items.iter().map(|(r, _)| *r).collect();
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
            .map_err(|e| tracing::debug!(error = %e, "batch failed; handling replies one by one"))
            .ok()
    }

    async fn done(
        &self,
        reply: &Envelope,
        (span, _): &Self::Context,
        outcome: ReplyOutcome,
    ) -> Disposition {
        span.in_scope(|| self.disposition(reply, Retried::Ok(outcome)))
    }

    async fn alone(&self, reply: &Envelope, (span, trace): &Self::Context) -> Disposition {
        self.apply(reply, trace).instrument(span.clone()).await
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
            Retried::Ok(ReplyOutcome::Applied { status, .. }) => {
                tracing::debug!(status = status.as_str(), "reply applied");
                Disposition::Done
            }
            Retried::Ok(ReplyOutcome::Duplicate) => {
                tracing::debug!("duplicate reply ignored");
                Disposition::Done
            }
            Retried::Ok(ReplyOutcome::Ignored(crate::saga::Ignored::UnknownCommand(cause))) => {
                Disposition::dead_letter(
                    dead_letter::REJECTED,
                    format!(
                        "{}'s causation_id {} is no command saga {} sent",
                        reply.message_type,
                        cause.map(|c| c.to_string()).unwrap_or_default(),
                        reply.correlation_id
                    ),
                )
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
