//! The consumer side: each batch of commands handled exactly once (effect, reply and command
//! id in one transaction), replies published, chaos knobs applied.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::Message;
use sqlx::{Any, Row, Transaction};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use platform::db::{self, Db};
use platform::kafka::{dead_letter, Batched, Disposition, MessageHandler};
use platform::retry::{self, Retried};
use platform::{Envelope, TraceContext};

use crate::chaos::Chaos;
use crate::{Error, Result};

use super::*;

/// What the batch transaction came to.
enum Batch {
    /// Every command's reply, in order: committed.
    Replies(Vec<Envelope>),
    /// Rolled back: a command was refused or rejected (its effects must not be kept), or a
    /// stored reply could not be read; each command is handled on its own.
    OneByOne,
}

/// What handling one command came to.
enum Handled {
    /// Its reply (new, or the one recorded when it was first handled).
    Reply(Envelope),
    /// Not a command this service takes, or malformed: dead-lettered with this reason.
    Rejected(String),
}

pub(super) struct Runner<S> {
    pub(super) service: Arc<S>,
    pub(super) db: Db,
    pub(super) producer: FutureProducer,
    pub(super) reply_topic: String,
    pub(super) chaos: Chaos,
    pub(super) max_attempts: u32,
    /// Replies held back by the delay knob.
    pub(super) delayed: TaskTracker,
    pub(super) cancel: CancellationToken,
}

impl<S: CommandService> MessageHandler for Runner<S> {
    fn handle_batch<'a>(
        &'a self,
        messages: &'a [BorrowedMessage<'a>],
    ) -> impl Future<Output = Vec<Disposition>> + Send + 'a {
        // Commands that arrived together share one transaction: one lookup of the commands seen
        // before, each command's effect, one insert recording them all, one commit. If that
        // fails, or a command is refused or rejected (whose effects must not be kept), the
        // batch is rolled back and each command is handled on its own, with its own retries.
        platform::kafka::together_or_alone(self, messages)
    }

    async fn handle(&self, message: &BorrowedMessage<'_>) -> Disposition {
        platform::kafka::alone(self, message).await
    }
}

/// The span a command is handled in: it continues the trace of the command (the orchestrator's
/// span that sent it), and the reply carries its context.
fn span(
    service: &str,
    command: &Envelope,
    message: &BorrowedMessage<'_>,
) -> (tracing::Span, TraceContext) {
    let span = tracing::info_span!(
        "command",
        service,
        saga_id = %command.correlation_id,
        step = %command.message_type,
        message_id = %command.message_id,
        trace_id = tracing::field::Empty,
    );
    let trace =
        platform::trace::continue_trace(&span, &TraceContext::from_kafka(message.headers()));
    (span, trace)
}

impl<S: CommandService> Batched for Runner<S> {
    /// The command's span and trace.
    type Context = (tracing::Span, TraceContext);
    type Result = Envelope;

    fn context(&self, command: &Envelope, message: &BorrowedMessage<'_>) -> Self::Context {
        span(S::NAME, command, message)
    }

    async fn together(&self, items: &[(&Envelope, &Self::Context)]) -> Option<Vec<Envelope>> {
        let commands: Vec<&Envelope> = items.iter().map(|(c, _)| *c).collect();
        match self.handle_many(&commands).await {
            Ok(Batch::Replies(replies)) => Some(replies),
            Ok(Batch::OneByOne) => None,
            Err(e) => {
                tracing::debug!(error = %e, "batch failed; handling commands one by one");
                None
            }
        }
    }

    async fn done(
        &self,
        command: &Envelope,
        (span, trace): &Self::Context,
        reply: Envelope,
    ) -> Disposition {
        self.respond(command, reply, trace)
            .instrument(span.clone())
            .await
    }

    async fn alone(&self, command: &Envelope, (span, trace): &Self::Context) -> Disposition {
        self.process(command, trace).instrument(span.clone()).await
    }
}

impl<S: CommandService> Runner<S> {
    async fn process(&self, command: &Envelope, trace: &TraceContext) -> Disposition {
        let mut failures = 0;
        let reply = retry::until_cancelled(
            &self.cancel,
            "handling a command",
            |e: &Error| {
                // Transient failures are retried until they pass; others `max_attempts` times.
                if e.is_transient() {
                    return true;
                }
                failures += 1;
                failures < self.max_attempts
            },
            || self.handle_once(command),
        )
        .await;
        match reply {
            Retried::Ok(Handled::Reply(reply)) => self.respond(command, reply, trace).await,
            Retried::Ok(Handled::Rejected(reason)) => {
                Disposition::dead_letter(dead_letter::REJECTED, reason)
            }
            Retried::Permanent(e) => Disposition::dead_letter(
                dead_letter::FAILED,
                format!("failed after {failures} attempts: {e}"),
            ),
            Retried::Cancelled => Disposition::Abandoned,
        }
    }

    /// Commands that arrived together share one transaction: one lookup of the commands seen
    /// before, each command's effect, one insert recording them all, one commit. If that fails,
    /// or a command is refused or rejected (whose effects must not be kept), the batch is rolled
    /// back and each command is handled on its own, with its own retries.
    /// The batch transaction of [`Batched::together`]: the reply to each command, in order, or
    /// [`Batch::OneByOne`] when the batch must be handled one by one.
    async fn handle_many(&self, commands: &[&Envelope]) -> Result<Batch> {
        let mut tx = self.db.writer.begin().await?;
        let ids: Vec<String> = commands.iter().map(|c| c.message_id.to_string()).collect();
        let select = "SELECT command_id, reply FROM processed_commands WHERE command_id";
        let mut known = HashMap::new();
        for row in db::fetch_in(&mut *tx, self.db.engine, select, &ids).await? {
            let stored: String = row.try_get("reply")?;
            let Ok(reply) = serde_json::from_str::<Envelope>(&stored) else {
                return Ok(Batch::OneByOne);
            };
            known.insert(row.try_get::<String, _>("command_id")?, reply);
        }
        // Each new command's outcome: injected by chaos, or the service's. The service gets
        // them in waves of distinct sagas, in arrival order.
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(commands.len());
        let mut wave: Vec<(usize, &Envelope)> = Vec::new();
        let mut sagas = HashSet::new();
        let mut new_ids = HashSet::new();
        for (i, command) in commands.iter().enumerate() {
            let id = command.message_id.to_string();
            // Seen before, or earlier in this batch: the reply of its first handling.
            if known.contains_key(&id) || !new_ids.insert(id) {
                outcomes.push(None);
                continue;
            }
            if self.chaos.fail(&command.message_type) {
                if let Some(injected) = self.service.failure(command) {
                    outcomes.push(Some(injected));
                    continue;
                }
            }
            outcomes.push(None);
            if !sagas.insert(command.correlation_id) {
                self.handle_wave(&mut tx, &mut wave, &mut outcomes).await?;
                sagas = HashSet::from([command.correlation_id]);
            }
            wave.push((i, *command));
        }
        self.handle_wave(&mut tx, &mut wave, &mut outcomes).await?;

        let mut fresh = Vec::new();
        let mut out = Vec::with_capacity(commands.len());
        for (command, outcome) in commands.iter().zip(outcomes) {
            let id = command.message_id.to_string();
            let reply = match outcome {
                Some(outcome @ (Outcome::Succeeded(_) | Outcome::Failed(_))) => {
                    let Ok(reply) = outcome.reply(command) else {
                        tx.rollback().await?;
                        return Ok(Batch::OneByOne);
                    };
                    known.insert(id, reply.clone());
                    fresh.push((*command, reply.clone()));
                    reply
                }
                Some(_) => {
                    tx.rollback().await?;
                    return Ok(Batch::OneByOne);
                }
                None => match known.get(&id) {
                    Some(reply) => reply.clone(),
                    None => {
                        tx.rollback().await?;
                        return Ok(Batch::OneByOne);
                    }
                },
            };
            out.push(reply);
        }
        if !fresh.is_empty() {
            let sql = format!(
                "INSERT INTO processed_commands (command_id, command_type, saga_id, reply, processed_at) VALUES {}",
                self.db.engine.values(fresh.len(), 5)
            );
            let now = platform::time::now_ms();
            let mut q = db::dynamic(&sql);
            for (command, reply) in &fresh {
                q = q
                    .bind(command.message_id.to_string())
                    .bind(&command.message_type)
                    .bind(command.correlation_id.to_string())
                    .bind(reply.to_json())
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Batch::Replies(out))
    }

    /// Sends the reply to `command`, through the chaos knobs (drop, duplicate, delay), with the
    /// trace context of the span that handled the command.
    async fn respond(
        &self,
        command: &Envelope,
        reply: Envelope,
        trace: &TraceContext,
    ) -> Disposition {
        let kind = command.message_type.as_str();
        if self.chaos.drop_reply(kind) {
            tracing::info!(reply = %reply.message_type, "chaos: reply dropped");
            return Disposition::Done;
        }
        let copies = if self.chaos.duplicate_reply(kind) {
            2
        } else {
            1
        };
        let delay = self.chaos.delay(kind);
        if !delay.is_zero() {
            // Held back in the background, like a slow network: the partition moves on.
            let (producer, topic, cancel, trace) = (
                self.producer.clone(),
                self.reply_topic.clone(),
                self.cancel.clone(),
                trace.clone(),
            );
            self.delayed.spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                for _ in 0..copies {
                    publish(&producer, &topic, &reply, &trace, &cancel).await;
                }
            });
            return Disposition::Done;
        }
        let mut delivery = None;
        for _ in 0..copies {
            match enqueue(
                &self.producer,
                &self.reply_topic,
                &reply,
                trace,
                &self.cancel,
            )
            .await
            {
                Some(d) => delivery = Some(d),
                None => return Disposition::Abandoned,
            }
        }
        tracing::debug!(reply = %reply.message_type, "replied");
        match delivery {
            Some(d) => Disposition::DoneWhenDelivered(d),
            None => Disposition::Done,
        }
    }

    /// Hands `wave` (commands of distinct sagas, with their places in the batch) to the service
    /// and files the outcomes in their places.
    async fn handle_wave(
        &self,
        tx: &mut Transaction<'_, Any>,
        wave: &mut Vec<(usize, &Envelope)>,
        outcomes: &mut [Option<Outcome>],
    ) -> Result<()> {
        if wave.is_empty() {
            return Ok(());
        }
        let commands: Vec<&Envelope> = wave.iter().map(|(_, c)| *c).collect();
        let results = self.service.handle(tx, self.db.engine, &commands).await?;
        for ((i, _), outcome) in wave.drain(..).zip(results) {
            outcomes[i] = Some(outcome);
        }
        Ok(())
    }

    /// One transaction: the stored reply if the command was seen before, else the effect, the
    /// record of the command and its reply, or the reason it is rejected.
    async fn handle_once(&self, command: &Envelope) -> Result<Handled> {
        let mut tx = self.db.writer.begin().await?;
        let seen = sqlx::query("SELECT reply FROM processed_commands WHERE command_id = $1")
            .bind(command.message_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = seen {
            tx.commit().await?;
            let stored: String = row.try_get("reply")?;
            tracing::info!("command seen before; sending the same reply again");
            return Ok(serde_json::from_str(&stored).map_or_else(
                |e| Handled::Rejected(format!("stored reply unreadable: {e}")),
                Handled::Reply,
            ));
        }
        let injected = if self.chaos.fail(&command.message_type) {
            self.service.failure(command)
        } else {
            None
        };
        let outcome = match injected {
            Some(outcome) => {
                tracing::info!("chaos: failure injected");
                outcome
            }
            None => self
                .service
                .handle(&mut tx, self.db.engine, &[command])
                .await?
                .pop()
                .unwrap_or_else(|| Outcome::Reject("the service gave no outcome".into())),
        };
        let refused = matches!(outcome, Outcome::Refused(_));
        let reply = match outcome.reply(command) {
            Ok(reply) if refused => {
                tx.rollback().await?;
                return Ok(Handled::Reply(reply));
            }
            Ok(reply) => reply,
            Err(reason) => {
                tx.rollback().await?;
                return Ok(Handled::Rejected(reason));
            }
        };
        sqlx::query(
            "INSERT INTO processed_commands (command_id, command_type, saga_id, reply, processed_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(command.message_id.to_string())
        .bind(&command.message_type)
        .bind(command.correlation_id.to_string())
        .bind(reply.to_json())
        .bind(platform::time::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Handled::Reply(reply))
    }
}

/// Hands a reply to the producer (waiting while its queue is full); the returned future says
/// when the broker has it. `None` if the service is stopping.
async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    reply: &Envelope,
    trace: &TraceContext,
    cancel: &CancellationToken,
) -> Option<DeliveryFuture> {
    let payload = reply.to_json();
    let key = reply.key();
    let mut record = with_headers(
        FutureRecord::to(topic).key(&key).payload(&payload),
        trace.kafka_headers(),
    );
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Some(delivery),
            Err((e, r)) => {
                tracing::warn!(error = %e, "cannot enqueue a reply; retrying");
                record = r;
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        }
    }
}

/// Publishes a reply, retrying until it is delivered or the service stops.
async fn publish(
    producer: &FutureProducer,
    topic: &str,
    reply: &Envelope,
    trace: &TraceContext,
    cancel: &CancellationToken,
) -> bool {
    let payload = reply.to_json();
    let key = reply.key();
    let sent = retry::until_cancelled(
        cancel,
        "publishing a reply",
        |_| true,
        || async {
            let record = with_headers(
                FutureRecord::to(topic).key(&key).payload(&payload),
                trace.kafka_headers(),
            );
            producer
                .send(record, Duration::from_secs(5))
                .await
                .map_err(|(e, _)| e)
        },
    )
    .await;
    matches!(sent, Retried::Ok(_))
}

fn with_headers<'a>(
    record: FutureRecord<'a, String, String>,
    headers: Option<OwnedHeaders>,
) -> FutureRecord<'a, String, String> {
    match headers {
        Some(h) => record.headers(h),
        None => record,
    }
}
