//! What every command-handling stub service shares: consume its `*_commands` topic in its own
//! consumer group, handle each command exactly once against its own database, reply on its
//! `*_events` topic.
//!
//! Exactly once, over at-least-once delivery: the effect and the reply are committed together
//! with the command id in `processed_commands`. A redelivered command (a crash before the offset
//! was stored, or the orchestrator re-sending) finds its id there and gets the stored reply again,
//! with the same message id, so the orchestrator's inbox drops it.

//!
//! [`outcome`]: what a handler decides; [`runner`]: the exactly-once consume loop; [`rows`]:
//! helpers for handlers.

mod outcome;
mod rows;
mod runner;

pub(crate) use outcome::reject_on_err;
pub use outcome::*;
pub use rows::*;
use runner::Runner;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Any, Transaction};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use platform::db::{Db, Engine, Migrations, SqliteSync};
use platform::kafka::{DeadLetters, KafkaSettings};
use platform::{Envelope, Ops, Topics};

use crate::chaos::Chaos;
use crate::{Error, Result};

/// The runtime's tables in every participant's database (see the migration's comment).
static RUNTIME_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/runtime");

/// One stub service: its name, its topics, its tables and its business rules.
pub trait CommandService: Send + Sync + 'static {
    /// Also the consumer group and the component named in dead letters.
    const NAME: &'static str;
    /// Its own tables (one set for both engines); the runtime adds its `processed_commands`
    /// and `dead_letters`.
    fn migrator() -> &'static sqlx::migrate::Migrator;
    /// The topics.json role of the topic it consumes (`"order_commands"`).
    const COMMANDS: &'static str;
    /// The role of the topic it replies on (`"order_events"`).
    const REPLIES: &'static str;
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
    let migrations = Migrations {
        sqlite: S::migrator(),
        postgres: S::migrator(),
        runtime: Some(&RUNTIME_MIGRATIONS),
    };
    let db = Db::connect(&config.database_url, &migrations, config.sqlite_sync).await?;
    let ops = &config.ops;
    ops.metrics.watch_pool(S::NAME, &db);
    let commands = config.topics.require(S::COMMANDS, S::NAME)?;
    let replies = config.topics.require(S::REPLIES, S::NAME)?;
    let producer = config.kafka.producer()?;
    let consumer = config.kafka.consumer(S::NAME, &[&commands.name], ops)?;
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
        reply_topic: replies.name.clone(),
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
