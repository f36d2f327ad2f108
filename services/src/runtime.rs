//! What every command-handling stub service shares: consume its `*_commands` topic in its own
//! consumer group, handle each command exactly once against its own database, reply on its
//! `*_events` topic.
//!
//! Exactly once, over at-least-once delivery: the effect and the reply are committed together
//! with the command id in `processed_commands`. A redelivered command (a crash before the offset
//! was stored, or the orchestrator re-sending) finds its id there and gets the stored reply again,
//! with the same message id, so the orchestrator's inbox drops it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::Message;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use platform::db::{self, Db, Engine, Migrations, SqliteSync};
use platform::kafka::{dead_letter, DeadLetters, Disposition, KafkaSettings, MessageHandler};
use platform::retry::{self, Retried};
use platform::{Envelope, Ops, TopicSpec, Topics, TraceContext};

use crate::chaos::Chaos;
use crate::{Error, Result};

/// What a service decided about a command. The reply's name is the command's success or
/// failure reply in the message contract (`messages.toml`), never spelled by the service.
#[derive(Debug)]
pub enum Outcome {
    /// Done: the command's success reply, with this payload. Final: recorded, and a re-sent
    /// command gets the same reply.
    Succeeded(Value),
    /// Not done, for good: the command's failure reply, with this payload (`reason` in it).
    /// Final, like a success.
    Failed(Value),
    /// Not now: the command's failure reply with this reason. Not recorded, so a re-sent
    /// command is handled afresh: how a compensation says "not yet, try again".
    Refused(String),
    /// The command is not one this service handles, or is malformed: dead-letter it.
    Reject(String),
}

impl Outcome {
    /// The reply to `command`, named by the contract; `Err` for a rejection (or a command the
    /// contract does not know, which a service never answers).
    pub fn reply(self, command: &Envelope) -> std::result::Result<Envelope, String> {
        let (succeeded, payload) = match self {
            Outcome::Succeeded(p) => (true, p),
            Outcome::Failed(p) => (false, p),
            Outcome::Refused(reason) => (false, serde_json::json!({ "reason": reason })),
            Outcome::Reject(reason) => return Err(reason),
        };
        let contract = platform::Contract::built_in()
            .command(&command.message_type)
            .ok_or_else(|| format!("{:?} is not in messages.toml", command.message_type))?;
        let name = if succeeded {
            &contract.success
        } else {
            &contract.failure
        };
        Ok(Envelope::reply_to(command, name.as_str(), payload))
    }
}

/// One stub service: its name, its topics, its tables and its business rules.
pub trait CommandService: Send + Sync + 'static {
    /// Also the consumer group and the component named in dead letters.
    const NAME: &'static str;
    fn migrations() -> Migrations;
    fn commands(topics: &Topics) -> &TopicSpec;
    fn replies(topics: &Topics) -> &TopicSpec;
    /// Applies `commands` inside `tx` and says what to reply to each, in order. Runs at most once
    /// per command id. The commands are of distinct sagas, and commands of different sagas touch
    /// different rows, so a service may apply them in any order: with set-based statements, a
    /// few per batch (at most [`platform::kafka::MAX_BATCH`] commands) rather than one or two per
    /// command, since every statement is a round trip to the database.
    fn handle(
        &self,
        tx: &mut Transaction<'_, Any>,
        engine: Engine,
        commands: &[&Envelope],
    ) -> impl Future<Output = Result<Vec<Outcome>>> + Send;
    /// What an injected failure ([`Chaos`]) of `command` looks like: a failure reply for a
    /// forward step, a refusal for a compensation. `None` if the command cannot fail.
    fn failure(&self, command: &Envelope) -> Option<Outcome>;
}

/// Where a service keeps its state and how it reaches Kafka.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub database_url: String,
    pub sqlite_sync: SqliteSync,
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub chaos: Chaos,
    /// Times a command may fail with a non-transient error before it is dead-lettered.
    pub max_attempts: u32,
    /// How long processed commands (and their stored replies) are kept for de-duplication.
    pub retention: Duration,
    /// Where metrics and readiness go (shared with the other components of the process).
    pub ops: Ops,
}

/// A running service task.
pub struct ServiceHandle {
    pub name: &'static str,
    cancel: CancellationToken,
    join: JoinHandle<()>,
}

impl ServiceHandle {
    pub fn new(name: &'static str, cancel: CancellationToken, join: JoinHandle<()>) -> Self {
        ServiceHandle { name, cancel, join }
    }

    /// Waits until the service has stopped (after its token fired).
    pub async fn wait(self) {
        if let Err(e) = self.join.await {
            tracing::error!(service = self.name, error = %e, "service task panicked");
        }
    }

    /// Stops the service and waits for it.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.wait().await;
    }
}

/// Connects `service` to its database and topics and runs it until `cancel` fires.
pub async fn start<S: CommandService>(
    service: S,
    config: &ServiceConfig,
    cancel: CancellationToken,
) -> Result<ServiceHandle> {
    let db = Db::connect(&config.database_url, &S::migrations(), config.sqlite_sync).await?;
    let ops = &config.ops;
    ops.metrics.watch_pool(S::NAME, &db);
    let producer = config.kafka.producer()?;
    let consumer = config
        .kafka
        .consumer(S::NAME, &[&S::commands(&config.topics).name], ops)?;
    let dead_letters = DeadLetters::new(
        producer.clone(),
        &config.topics.dead_letter.name,
        S::NAME,
        &ops.metrics,
    )
    .with_store(db.clone());
    let drain = dead_letters.clone().drain(cancel.clone());
    if !config.chaos.is_off() {
        tracing::warn!(service = S::NAME, chaos = ?config.chaos, "chaos knobs are on");
    }
    let delayed = TaskTracker::new();
    let runner = Runner {
        service: Arc::new(service),
        db: db.clone(),
        producer: producer.clone(),
        reply_topic: S::replies(&config.topics).name.clone(),
        chaos: config.chaos.clone(),
        max_attempts: config.max_attempts.max(1),
        delayed: delayed.clone(),
        cancel: cancel.clone(),
    };
    let token = cancel.clone();
    let pruner = prune(db.clone(), config.retention, cancel.clone());
    let db_check = platform::health::watch_database(
        ops.health.clone(),
        format!("database:{}", S::NAME),
        db.clone(),
        cancel.clone(),
    );
    let broker_check = platform::health::watch_broker(
        ops.health.clone(),
        format!("kafka:{}", S::NAME),
        producer.clone(),
        cancel.clone(),
    );
    let join = tokio::spawn(async move {
        tokio::join!(
            platform::kafka::run_consumer(consumer, runner, dead_letters, token),
            pruner,
            db_check,
            broker_check,
            drain,
        );
        delayed.close();
        delayed.wait().await;
        platform::kafka::flush(&producer);
        db.close().await;
        tracing::info!(service = S::NAME, "stopped");
    });
    tracing::info!(service = S::NAME, "started");
    Ok(ServiceHandle {
        name: S::NAME,
        cancel,
        join,
    })
}

/// Deletes processed commands older than `retention`, so the table stays bounded. A command
/// re-sent later than that would be handled again: keep the retention longer than a saga can
/// re-send a command (its compensation limit).
async fn prune(db: Db, retention: Duration, cancel: CancellationToken) {
    platform::prune::run(
        "pruning processed commands",
        retention,
        cancel,
        Error::is_transient,
        |before, limit| {
            let db = db.clone();
            async move {
                let deleted = sqlx::query(
                    "DELETE FROM processed_commands WHERE command_id IN \
                     (SELECT command_id FROM processed_commands WHERE processed_at < $1 ORDER BY processed_at LIMIT $2)",
                )
                .bind(before)
                .bind(limit)
                .execute(&db.writer)
                .await?
                .rows_affected();
                Ok::<_, Error>(deleted as i64 == limit)
            }
        },
    )
    .await;
}

struct Runner<S> {
    service: Arc<S>,
    db: Db,
    producer: FutureProducer,
    reply_topic: String,
    chaos: Chaos,
    max_attempts: u32,
    /// Replies held back by the delay knob.
    delayed: TaskTracker,
    cancel: CancellationToken,
}

impl<S: CommandService> MessageHandler for Runner<S> {
    fn handle_batch<'a>(
        &'a self,
        messages: &'a [BorrowedMessage<'a>],
    ) -> impl Future<Output = Vec<Disposition>> + Send + 'a {
        self.process_batch(messages)
    }

    async fn handle(&self, message: &BorrowedMessage<'_>) -> Disposition {
        let command = match Envelope::from_bytes(message.payload()) {
            Ok(c) => c,
            Err(reason) => return Disposition::unreadable(reason),
        };
        let (span, trace) = span(S::NAME, &command, message);
        self.process(&command, &trace).instrument(span).await
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
            Retried::Ok(Ok(reply)) => self.respond(command, reply, trace).await,
            Retried::Ok(Err(reason)) => Disposition::dead_letter(dead_letter::REJECTED, reason),
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
    async fn process_batch(&self, messages: &[BorrowedMessage<'_>]) -> Vec<Disposition> {
        let parsed: Vec<Result<Envelope, String>> = messages
            .iter()
            .map(|m| Envelope::from_bytes(m.payload()))
            .collect();
        let commands: Vec<&Envelope> = parsed.iter().filter_map(|r| r.as_ref().ok()).collect();
        let replies = if commands.len() > 1 {
            self.handle_many(&commands)
                .await
                .map_err(
                    |e| tracing::debug!(error = %e, "batch failed; handling commands one by one"),
                )
                .ok()
                .flatten()
        } else {
            None
        };
        let mut replies = replies.map(Vec::into_iter);
        let mut out = Vec::with_capacity(messages.len());
        for (parsed, message) in parsed.into_iter().zip(messages) {
            let command = match parsed {
                Ok(c) => c,
                Err(reason) => {
                    out.push(Disposition::unreadable(reason));
                    continue;
                }
            };
            let (span, trace) = span(S::NAME, &command, message);
            let disposition = match replies.as_mut().and_then(Iterator::next) {
                Some(reply) => self.respond(&command, reply, &trace).instrument(span).await,
                None => self.process(&command, &trace).instrument(span).await,
            };
            out.push(disposition);
        }
        out
    }

    /// The batch transaction of [`Self::process_batch`]: the reply to each command, in order, or
    /// `None` when the batch must be handled one by one.
    async fn handle_many(&self, commands: &[&Envelope]) -> Result<Option<Vec<Envelope>>> {
        let mut tx = self.db.writer.begin().await?;
        let ids: Vec<String> = commands.iter().map(|c| c.message_id.to_string()).collect();
        let select = "SELECT command_id, reply FROM processed_commands WHERE command_id";
        let mut known = HashMap::new();
        for row in db::fetch_in(&mut *tx, self.db.engine, select, &ids).await? {
            let stored: String = row.try_get("reply")?;
            let Ok(reply) = serde_json::from_str::<Envelope>(&stored) else {
                return Ok(None);
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
                        return Ok(None);
                    };
                    known.insert(id, reply.clone());
                    fresh.push((*command, reply.clone()));
                    reply
                }
                Some(_) => {
                    tx.rollback().await?;
                    return Ok(None);
                }
                None => match known.get(&id) {
                    Some(reply) => reply.clone(),
                    None => {
                        tx.rollback().await?;
                        return Ok(None);
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
        Ok(Some(out))
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
    /// record of the command and its reply. `Ok(Err(_))` rejects the command.
    async fn handle_once(&self, command: &Envelope) -> Result<Result<Envelope, String>> {
        let mut tx = self.db.writer.begin().await?;
        let seen = sqlx::query("SELECT reply FROM processed_commands WHERE command_id = $1")
            .bind(command.message_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = seen {
            tx.commit().await?;
            let stored: String = row.try_get("reply")?;
            tracing::info!("command seen before; sending the same reply again");
            return Ok(
                serde_json::from_str(&stored).map_err(|e| format!("stored reply unreadable: {e}"))
            );
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
                return Ok(Ok(reply));
            }
            Ok(reply) => reply,
            Err(reason) => {
                tx.rollback().await?;
                return Ok(Err(reason));
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
        Ok(Ok(reply))
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

/// A string field of a command payload, or a rejection naming it.
pub fn field<'a>(command: &'a Envelope, name: &str) -> Result<&'a str, String> {
    command
        .payload
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            format!(
                "{} command has no string field {name:?}",
                command.message_type
            )
        })
}

/// The outcome of each command of a batch, filled in by the statements that decide them.
pub struct Outcomes(Vec<Option<Outcome>>);

impl Outcomes {
    pub fn new(n: usize) -> Self {
        Outcomes((0..n).map(|_| None).collect())
    }

    pub fn set(&mut self, i: usize, outcome: Outcome) {
        self.0[i] = Some(outcome);
    }

    /// In command order. A command nothing decided is rejected rather than answered wrongly.
    pub fn into_vec(self) -> Vec<Outcome> {
        self.0
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Reject("no outcome was decided".into())))
            .collect()
    }
}

/// `let x = reject_on_err!(out, i, result);`: the value, or command `i` is rejected with the
/// error's text and the loop over the commands moves on.
macro_rules! reject_on_err {
    ($out:expr, $i:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reason) => {
                $out.set($i, Outcome::Reject(reason));
                continue;
            }
        }
    };
}
pub(crate) use reject_on_err;

/// The values of text column `name` of `rows`.
pub fn column(rows: Vec<AnyRow>, name: &str) -> Result<HashSet<String>> {
    Ok(rows
        .iter()
        .map(|r| r.try_get::<String, _>(name))
        .collect::<std::result::Result<_, _>>()?)
}

/// `key -> value` from two text columns of `rows`.
pub fn pairs(rows: Vec<AnyRow>, key: &str, value: &str) -> Result<HashMap<String, String>> {
    Ok(rows
        .iter()
        .map(|r| Ok((r.try_get::<String, _>(key)?, r.try_get::<String, _>(value)?)))
        .collect::<std::result::Result<_, sqlx::Error>>()?)
}

/// Where a row stood when asked to move from one status to another.
#[derive(Debug, PartialEq)]
pub enum StatusMove {
    /// It was in the expected status and now is in the new one.
    Moved,
    /// It is in the new status already (a command handled under another id, say).
    Already,
    /// It is in another status; nothing changed.
    Was(String),
    /// No such row (for this customer).
    Missing,
}

/// Moves one row of `table` (found by `key_column = key`, and `customer_id` when given) from
/// status `from` to `to`: the refund commands' one state change each. `table` and `key_column`
/// are the service's own names, never input.
#[allow(clippy::too_many_arguments)]
pub async fn move_status(
    tx: &mut Transaction<'_, Any>,
    table: &str,
    key_column: &str,
    key: &str,
    customer_id: Option<&str>,
    from: &str,
    to: &str,
    now: i64,
) -> Result<StatusMove> {
    let customer = if customer_id.is_some() {
        " AND customer_id = $5"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE {table} SET status = $1, updated_at = $2 WHERE {key_column} = $3 AND status = $4{customer}"
    );
    let mut q = db::dynamic(&sql).bind(to).bind(now).bind(key).bind(from);
    if let Some(c) = customer_id {
        q = q.bind(c);
    }
    if q.execute(&mut **tx).await?.rows_affected() > 0 {
        return Ok(StatusMove::Moved);
    }
    let customer = if customer_id.is_some() {
        " AND customer_id = $2"
    } else {
        ""
    };
    let sql = format!("SELECT status FROM {table} WHERE {key_column} = $1{customer}");
    let mut q = db::dynamic(&sql).bind(key);
    if let Some(c) = customer_id {
        q = q.bind(c);
    }
    Ok(match q.fetch_optional(&mut **tx).await? {
        None => StatusMove::Missing,
        Some(row) => {
            let status: String = row.try_get("status")?;
            if status == to {
                StatusMove::Already
            } else {
                StatusMove::Was(status)
            }
        }
    })
}

#[cfg(test)]
mod outcome_tests {
    use super::*;

    fn command(message_type: &str) -> Envelope {
        Envelope {
            message_id: uuid::Uuid::new_v4(),
            message_type: message_type.into(),
            correlation_id: uuid::Uuid::new_v4(),
            causation_id: None,
            timestamp: String::new(),
            payload: Value::Null,
        }
    }

    #[test]
    fn replies_are_named_by_the_contract() {
        let revert = command("revert_payment");
        let ok = Outcome::Succeeded(serde_json::json!({}))
            .reply(&revert)
            .unwrap();
        assert_eq!(ok.message_type, "payment.released");
        assert_eq!(ok.causation_id, Some(revert.message_id));
        let refused = Outcome::Refused("not now".into()).reply(&revert).unwrap();
        assert_eq!(refused.message_type, "payment.release_failed");
        assert_eq!(refused.payload["reason"], "not now");
        let failed = Outcome::Failed(serde_json::json!({"reason": "no"}))
            .reply(&command("create_order"))
            .unwrap();
        assert_eq!(failed.message_type, "order.creation_failed");
        assert!(Outcome::Succeeded(Value::Null)
            .reply(&command("make_tea"))
            .is_err());
        assert_eq!(
            Outcome::Reject("bad".into()).reply(&revert).unwrap_err(),
            "bad"
        );
    }
}
