//! # Notifications that reach people
//!
//! Saga outcomes become emails to customers and alerts to operators, delivered from Kafka
//! without one failing delivery holding back the others:
//!
//! 1. The **outcome consumer** reads the lifecycle events that end a saga, finds the
//!    [rules](rules) they set off, renders each rule's templates and publishes one *job* per
//!    delivery to its channel's topic (`mail` for customers, `alerts` for operators, apart so a
//!    backlog of emails never delays an alert). It sends nothing itself, so a mail server that is
//!    away never slows it.
//! 2. A **channel consumer** per channel topic tries each job with its
//!    [transport](transport). A job whose transport fails for now is published to the channel's
//!    next retry topic (`mail_retry_10s`, `_1m`, `_10m` in topics.json), due after that topic's
//!    delay; after the last one, and at once for a permanent refusal (a rejected address, an
//!    SMTP 5xx), it goes to the dead-letter topic with the error.
//! 3. A **retry consumer** per channel, on all its retry topics, takes each job at its due time:
//!    only the partition whose next job is not due waits ([`platform::kafka::run_delayed`]).
//!
//! Every job has a delivery id (the saga, the rule). The `deliveries` table records each one
//! sent or given up, so a job read again sends nothing twice; see [`Worker::handle`] for what is
//! left (a crash between the server's acceptance and that record).

pub mod rules;
pub mod transport;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use platform::db::{Db, Migrations, SqliteSync};
use platform::kafka::{dead_letter, DeadLetters, Disposition, KafkaSettings, MessageHandler};
use platform::{Envelope, Ops, Topics, TraceContext};

use crate::notification::LogFile;
use crate::{Error, Result};
pub use rules::{Audience, Contact, Rendered, Rules, SagaFields};
use transport::{Alerter, Email, Mailer, SendError};

/// The consumer groups (with the channel's role appended for channel and retry consumers).
pub const GROUP: &str = "notification-delivery";

static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| sqlx::migrate!("./migrations/notification"));

/// Settings of the deliveries.
#[derive(Clone)]
pub struct DeliveryConfig {
    /// `notifications.toml` and `templates/`.
    pub dir: PathBuf,
    /// The saga types' fields, for checking the templates.
    pub fields: SagaFields,
    pub database_url: String,
    pub sqlite_sync: SqliteSync,
    /// `None`: emails are written as `.eml` files to `mail_dir`.
    pub smtp_url: Option<String>,
    /// A private CA (PEM) the SMTP server's certificate may chain to.
    pub smtp_ca_file: Option<PathBuf>,
    pub mail_dir: PathBuf,
    /// `None`: alerts are written as `.json` files to `alerts_dir`.
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    pub alerts_dir: PathBuf,
    /// The customer's address from the user service's data.
    pub directory: fn(&str) -> Contact,
}

impl std::fmt::Debug for DeliveryConfig {
    // Without the SMTP URL and the webhook secret: they hold credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryConfig")
            .field("dir", &self.dir)
            .field("smtp", &self.smtp_url.is_some())
            .field("mail_dir", &self.mail_dir)
            .field("webhook", &self.webhook_url.is_some())
            .finish_non_exhaustive()
    }
}

/// Settings of the deliveries, as flags and environment variables.
#[derive(Clone, Default, clap::Args)]
pub struct DeliveryArgs {
    /// The folder of notifications.toml and its templates. Default: `./sagas/notifications`
    /// when there is one; without it, or set empty, nothing is delivered.
    #[arg(long, env = "NOTIFICATIONS_DIR")]
    pub notifications_dir: Option<PathBuf>,
    /// Send email through this SMTP server: `smtp://host:25`, `smtp://user:pass@host:587?tls=required`
    /// (STARTTLS), `smtps://user:pass@host:465` (implicit TLS). Unset: each email is written as an
    /// `.eml` file under the data folder's `mail/`.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// A CA certificate (PEM) the SMTP server's certificate is checked against, besides the
    /// public roots: a company's own CA.
    #[arg(long, env = "SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,
    /// POST operator alerts here (JSON, signed with ALERT_WEBHOOK_SECRET). Unset: each alert is
    /// written as a `.json` file under the data folder's `alerts/`.
    #[arg(long, env = "ALERT_WEBHOOK_URL")]
    pub alert_webhook_url: Option<String>,
    /// The key of the alerts' HMAC-SHA256 signature header (`x-saga-signature`).
    #[arg(long, env = "ALERT_WEBHOOK_SECRET", hide_env_values = true)]
    pub alert_webhook_secret: Option<String>,
}

impl std::fmt::Debug for DeliveryArgs {
    // Without the SMTP URL and the webhook secret: they hold credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryArgs")
            .field("notifications_dir", &self.notifications_dir)
            .field("smtp", &self.smtp_url.is_some())
            .field("alert_webhook", &self.alert_webhook_url.is_some())
            .finish_non_exhaustive()
    }
}

impl DeliveryArgs {
    /// The deliveries' configuration: none when there is no rules folder. Mail and alerts that
    /// have no server go to `data_dir`'s `mail/` and `alerts/`.
    pub fn config(
        &self,
        fields: SagaFields,
        database_url: String,
        sqlite_sync: SqliteSync,
        data_dir: &std::path::Path,
    ) -> Option<DeliveryConfig> {
        Some(DeliveryConfig {
            dir: self.dir()?,
            fields,
            database_url,
            sqlite_sync,
            smtp_url: self.smtp_url.clone().filter(|u| !u.is_empty()),
            smtp_ca_file: self.smtp_ca_file.clone(),
            mail_dir: data_dir.join("mail"),
            webhook_url: self.alert_webhook_url.clone().filter(|u| !u.is_empty()),
            webhook_secret: self.alert_webhook_secret.clone(),
            alerts_dir: data_dir.join("alerts"),
            directory: crate::user::contact,
        })
    }

    /// The folder of the rules, if deliveries are on (an empty NOTIFICATIONS_DIR turns them off).
    pub fn dir(&self) -> Option<PathBuf> {
        match &self.notifications_dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir.clone()),
            None => {
                let default = PathBuf::from("sagas/notifications");
                default.is_dir().then_some(default)
            }
        }
    }

    /// No deliveries, whatever folder there is.
    pub fn off() -> Self {
        DeliveryArgs {
            notifications_dir: Some(PathBuf::new()),
            ..Default::default()
        }
    }
}

/// What became of a delivery attempt: the `outcome` label.
const OUTCOMES: [&str; 4] = ["sent", "retried", "dead_lettered", "duplicate"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    channel: String,
    /// `sent`, `retried`, `dead_lettered`, `duplicate`.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

struct DeliveryMetrics {
    deliveries: Family<DeliveryLabels, Counter>,
    lateness: Family<ChannelLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

fn metrics(ops: &Ops) -> Arc<DeliveryMetrics> {
    ops.metrics.component(|registry| {
        let m = DeliveryMetrics {
            deliveries: Family::default(),
            lateness: Family::default(),
        };
        registry.register(
            "notification_deliveries",
            "Notification delivery attempts, by channel and outcome",
            m.deliveries.clone(),
        );
        registry.register_with_unit(
            "notification_retry_oldest_due_age",
            "How long past its due time the retry taken up last waited (0 when the retry consumer keeps up)",
            prometheus_client::registry::Unit::Seconds,
            m.lateness.clone(),
        );
        m
    })
}

/// A delivery to make, as it travels on the channel and retry topics.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    delivery_id: String,
    rule: String,
    channel: String,
    /// The email address, or `operators`.
    to: String,
    content: Rendered,
    /// For alerts: the JSON the webhook receives.
    #[serde(default)]
    alert: Option<Value>,
    /// Which try comes next (1 = the first).
    attempt: u32,
    #[serde(default)]
    last_error: Option<String>,
}

/// Starts the outcome consumer and the channel and retry consumers; they run until `cancel`.
pub(crate) async fn start(
    config: DeliveryConfig,
    kafka: &KafkaSettings,
    topics: &Topics,
    ops: &Ops,
    log: LogFile,
    cancel: CancellationToken,
) -> Result<impl std::future::Future<Output = ()>> {
    let rules = Arc::new(Rules::load(&config.dir, &config.fields)?);
    let ca = match &config.smtp_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| Error::Notifications {
            file: format!("SMTP_CA_FILE {}", path.display()),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let mailer = Mailer::new(
        config.smtp_url.as_deref(),
        ca.as_deref(),
        config.mail_dir.clone(),
    )?;
    let alerter = Alerter::new(
        config.webhook_url.as_deref(),
        config.webhook_secret.as_deref(),
        config.alerts_dir.clone(),
    )?;
    let db = Db::connect(
        &config.database_url,
        &Migrations {
            sqlite: &MIGRATOR,
            postgres: &MIGRATOR,
            runtime: None,
        },
        config.sqlite_sync,
    )
    .await?;
    ops.metrics.watch_pool("notification", &db);
    let metrics = metrics(ops);
    // Every series at zero from the start, so increase() sees the first retry of a channel.
    for audience in Audience::ALL {
        for outcome in OUTCOMES {
            let _ = metrics.deliveries.get_or_create_owned(&DeliveryLabels {
                channel: audience.channel().to_string(),
                outcome: outcome.to_string(),
            });
        }
        let _ = metrics.lateness.get_or_create_owned(&ChannelLabels {
            channel: audience.channel().to_string(),
        });
    }
    let producer = kafka.producer()?;
    let dead_letters = DeadLetters::new(
        producer.clone(),
        &topics.dead_letter.name,
        crate::notification::NAME,
        &ops.metrics,
    );
    let events = topics.require(&rules.events, "the notification deliveries")?;
    let mut channels = Vec::new();
    for audience in Audience::ALL {
        let role = audience.channel();
        let topic = topics
            .require(role, "the notification deliveries")?
            .name
            .clone();
        let tiers: Vec<Tier> = topics
            .retry_tiers(role)
            .into_iter()
            .filter_map(|(_, t)| {
                t.delay_ms.map(|delay_ms| Tier {
                    topic: t.name.clone(),
                    delay_ms,
                })
            })
            .collect();
        channels.push((audience, topic, tiers));
    }
    tracing::info!(
        rules = rules.rules.len(),
        mail = %mailer.describe(),
        alerts = %alerter.describe(),
        "notification deliveries on"
    );

    let mut tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
        Vec::new();
    let outcomes = Outcomes {
        rules: rules.clone(),
        producer: producer.clone(),
        channel_topics: channels.iter().map(|(a, t, _)| (*a, t.clone())).collect(),
        directory: config.directory,
        cancel: cancel.clone(),
    };
    let consumer = kafka.unhurried_consumer(GROUP, &[&events.name], ops)?;
    tasks.push(Box::pin(platform::kafka::run_consumer(
        consumer,
        outcomes,
        dead_letters.clone(),
        cancel.clone(),
    )));
    for (audience, topic, tiers) in channels {
        let worker = Arc::new(Worker {
            audience,
            tiers: tiers.clone(),
            mailer: mailer.clone(),
            alerter: alerter.clone(),
            from: rules.from.clone(),
            db: db.clone(),
            producer: producer.clone(),
            log: log.clone(),
            metrics: metrics.clone(),
            cancel: cancel.clone(),
        });
        let group = format!("{GROUP}-{}", audience.channel());
        let consumer = kafka.unhurried_consumer(&group, &[&topic], ops)?;
        tasks.push(Box::pin(platform::kafka::run_consumer(
            consumer,
            Shared(worker.clone()),
            dead_letters.clone(),
            cancel.clone(),
        )));
        // One consumer for every retry topic of the channel: it holds back only the partition
        // whose next job is not due.
        if !tiers.is_empty() {
            let group = format!("{GROUP}-{}-retries", audience.channel());
            let names: Vec<&str> = tiers.iter().map(|t| t.topic.as_str()).collect();
            let consumer = kafka.unhurried_consumer(&group, &names, ops)?;
            let lateness = metrics
                .lateness
                .get_or_create(&ChannelLabels {
                    channel: audience.channel().to_string(),
                })
                .clone();
            tasks.push(Box::pin(platform::kafka::run_delayed(
                consumer,
                Shared(worker),
                dead_letters.clone(),
                lateness,
                cancel.clone(),
            )));
        }
    }
    let drain = dead_letters.drain(cancel.clone());
    Ok(async move {
        futures_join(tasks).await;
        drain.await;
        db.close().await;
    })
}

/// Every topic delivery jobs travel on: each channel's topic and its retry topics.
pub(crate) fn job_topics(topics: &Topics) -> Vec<&str> {
    Audience::ALL
        .iter()
        .flat_map(|a| {
            let role = a.channel();
            topics
                .role(role)
                .into_iter()
                .chain(topics.retry_tiers(role).into_iter().map(|(_, spec)| spec))
        })
        .map(|spec| spec.name.as_str())
        .collect()
}

/// A retry topic of a channel.
#[derive(Debug, Clone)]
struct Tier {
    topic: String,
    delay_ms: u64,
}

async fn futures_join(tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>) {
    let mut set = tokio::task::JoinSet::new();
    for t in tasks {
        set.spawn(t);
    }
    while set.join_next().await.is_some() {}
}

/// Turns saga outcomes into jobs.
struct Outcomes {
    rules: Arc<Rules>,
    producer: FutureProducer,
    channel_topics: Vec<(Audience, String)>,
    directory: fn(&str) -> Contact,
    cancel: CancellationToken,
}

impl MessageHandler for Outcomes {
    async fn handle(&self, message: &BorrowedMessage<'_>) -> Disposition {
        let envelope = match Envelope::from_bytes(message.payload()) {
            Ok(e) => e,
            Err(e) => return Disposition::unreadable(e),
        };
        let event = envelope.message_type.as_str();
        if !rules::OUTCOMES.contains(&event) {
            return Disposition::Done;
        }
        let p = &envelope.payload;
        let saga_type = p["saga_type"].as_str().unwrap_or_default();
        let context = p["context"].as_object().cloned().unwrap_or_default();
        let customer_id = context
            .get("customer_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        for rule in self.rules.matching(saga_type, event) {
            let customer = customer_id.as_deref().map(self.directory);
            let to = match (rule.to, &customer) {
                (Audience::Customer, Some(c)) => c.email.clone(),
                (Audience::Customer, None) => {
                    tracing::warn!(saga_id = %envelope.correlation_id, rule = %rule.name, "no customer_id in the saga: no email");
                    continue;
                }
                (Audience::Operators, _) => "operators".to_string(),
            };
            let facts = rules::Facts {
                saga: rules::SagaFacts::new(
                    envelope.correlation_id.to_string(),
                    saga_type.to_string(),
                    p["status"].as_str().unwrap_or_default().to_string(),
                    event.to_string(),
                    p["error"].as_str().unwrap_or_default().to_string(),
                ),
                customer,
                context: context.clone(),
            };
            let content = match self.rules.render(rule, &facts) {
                Ok(c) => c,
                Err(e) => return Disposition::dead_letter(dead_letter::REJECTED, e.to_string()),
            };
            let delivery_id = Uuid::new_v5(
                &envelope.correlation_id,
                format!("delivery:{}:{event}", rule.name).as_bytes(),
            );
            let alert = (rule.to == Audience::Operators).then(|| {
                json!({
                    "delivery_id": delivery_id,
                    "event": event,
                    "saga_id": envelope.correlation_id,
                    "saga_type": saga_type,
                    "status": facts.saga.status,
                    "reason": facts.saga.error,
                    "subject": content.subject,
                    "text": content.text,
                    "time": envelope.timestamp,
                })
            });
            let job = Job {
                delivery_id: delivery_id.to_string(),
                rule: rule.name.clone(),
                channel: rule.to.channel().to_string(),
                to,
                content,
                alert,
                attempt: 1,
                last_error: None,
            };
            let Some((_, topic)) = self.channel_topics.iter().find(|(a, _)| *a == rule.to) else {
                continue;
            };
            let job_envelope = Envelope {
                message_id: delivery_id,
                message_type: format!("delivery.{}", job.channel),
                correlation_id: envelope.correlation_id,
                causation_id: Some(envelope.message_id),
                timestamp: platform::time::rfc3339(platform::time::now_ms()),
                payload: serde_json::to_value(&job).unwrap_or_default(),
            };
            let trace = TraceContext::from_kafka(message.headers());
            if !publish(
                &self.producer,
                topic,
                &job_envelope,
                None,
                &trace,
                &self.cancel,
            )
            .await
            {
                return Disposition::Abandoned;
            }
        }
        Disposition::Done
    }
}

/// Publishes `envelope` to `topic` (with a due time for a retry topic, and the saga's trace),
/// retrying until the
/// broker has it or shutdown begins; `false` when it did not go.
async fn publish(
    producer: &FutureProducer,
    topic: &str,
    envelope: &Envelope,
    due_ms: Option<i64>,
    trace: &TraceContext,
    cancel: &CancellationToken,
) -> bool {
    let key = envelope.key();
    let payload = envelope.to_json();
    let due = due_ms.map(|d| d.to_string());
    let sent = platform::retry::until_cancelled(
        cancel,
        "publishing a notification job",
        |_| true,
        || async {
            // The saga's trace goes on with its notifications.
            let mut headers = trace.add_to(OwnedHeaders::new());
            if let Some(due) = &due {
                headers = headers.insert(Header {
                    key: platform::kafka::DUE_HEADER,
                    value: Some(due.as_str()),
                });
            }
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&payload)
                .headers(headers);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        },
    )
    .await;
    matches!(sent, platform::retry::Retried::Ok(()))
}

/// Tries jobs of one channel, from its topic and its retry topics.
struct Worker {
    audience: Audience,
    /// The retry topics, shortest delay first.
    tiers: Vec<Tier>,
    mailer: Mailer,
    alerter: Alerter,
    from: String,
    db: Db,
    producer: FutureProducer,
    log: LogFile,
    metrics: Arc<DeliveryMetrics>,
    cancel: CancellationToken,
}

/// A worker shared by the consumers of one channel.
struct Shared(Arc<Worker>);

/// Jobs of a batch tried at once, at most. Each SMTP send waits on the server (and, with
/// lettre 0.11, on a 40 ms Nagle stall per message: it writes the body and its terminator
/// apart without TCP_NODELAY), so one at a time a channel would send about 20 emails a second.
/// Jobs are independent, and the pool keeps as many connections open.
const CONCURRENT_SENDS: usize = 8;

impl MessageHandler for Shared {
    async fn handle(&self, message: &BorrowedMessage<'_>) -> Disposition {
        self.0.handle(message).await
    }

    /// The jobs of a batch, [`CONCURRENT_SENDS`] at a time; the dispositions in order, so
    /// offsets are still stored in order. A job cut off by shutdown comes again, and those after
    /// it that were sent meanwhile are found recorded then.
    async fn handle_batch<'a>(&'a self, messages: &'a [BorrowedMessage<'a>]) -> Vec<Disposition> {
        let mut out = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(CONCURRENT_SENDS) {
            out.extend(
                futures_util::future::join_all(chunk.iter().map(|m| self.0.handle(m))).await,
            );
        }
        out
    }
}

impl Worker {
    /// Tries one job. Already sent: nothing. Sent now: recorded, then the offset
    /// stored. So against SMTP delivery is at-least-once, and exactly once but for one window: a
    /// crash after the server accepted the email and before the record commits sends it again
    /// on redelivery, with the same Message-ID, which mail clients use to show it once.
    async fn handle(&self, message: &BorrowedMessage<'_>) -> Disposition {
        let envelope = match Envelope::from_bytes(message.payload()) {
            Ok(e) => e,
            Err(e) => return Disposition::unreadable(e),
        };
        let job: Job = match serde_json::from_value(envelope.payload.clone()) {
            Ok(j) => j,
            Err(e) => return Disposition::unreadable(format!("not a delivery job: {e}")),
        };
        let saga_id = envelope.correlation_id.to_string();
        match self.recorded(&job.delivery_id).await {
            // Sent already. A job given up on is tried again: only an operator sends one back.
            Ok(Some(status)) if status == "sent" => {
                self.count("duplicate");
                self.log_line(&saga_id, &job, "delivery.duplicate", None, None)
                    .await;
                return Disposition::Done;
            }
            Ok(_) => {}
            Err(_) if self.cancel.is_cancelled() => return Disposition::Abandoned,
            Err(e) => {
                tracing::warn!(error = %e, "deliveries not readable; the job is tried anyway");
            }
        }
        let sent = match self.audience {
            Audience::Customer => {
                self.mailer
                    .send(&Email {
                        id: &job.delivery_id,
                        from: &self.from,
                        to: &job.to,
                        content: &job.content,
                        attempt: job.attempt,
                    })
                    .await
            }
            Audience::Operators => {
                let body = job.alert.clone().unwrap_or(Value::Null);
                self.alerter.send(&job.delivery_id, &body).await
            }
        };
        match sent {
            Ok(()) => {
                if !self.record(&saga_id, &job, "sent", None).await {
                    return Disposition::Abandoned;
                }
                self.count("sent");
                self.log_line(&saga_id, &job, "delivery.sent", None, None)
                    .await;
                Disposition::Done
            }
            Err(SendError::Permanent(error)) => {
                self.give_up(&saga_id, &job, &error, "refused for good")
                    .await
            }
            Err(SendError::Transient(error)) => {
                let Some(tier) = self.tiers.get((job.attempt as usize).saturating_sub(1)) else {
                    return self.give_up(&saga_id, &job, &error, "no retry left").await;
                };
                let (topic, due) = (&tier.topic, platform::time::now_ms() + tier.delay_ms as i64);
                let next = Job {
                    attempt: job.attempt + 1,
                    last_error: Some(error.clone()),
                    ..job.clone()
                };
                let retry = Envelope {
                    message_id: Uuid::new_v5(
                        &envelope.correlation_id,
                        format!("{}:{}", job.delivery_id, next.attempt).as_bytes(),
                    ),
                    payload: serde_json::to_value(&next).unwrap_or_default(),
                    timestamp: platform::time::rfc3339(platform::time::now_ms()),
                    ..envelope.clone()
                };
                if !self.record(&saga_id, &job, "retrying", Some(&error)).await
                    || !publish(
                        &self.producer,
                        topic,
                        &retry,
                        Some(due),
                        &TraceContext::from_kafka(message.headers()),
                        &self.cancel,
                    )
                    .await
                {
                    return Disposition::Abandoned;
                }
                self.count("retried");
                self.log_line(
                    &saga_id,
                    &job,
                    "delivery.retrying",
                    Some(&error),
                    Some(json!({"topic": topic, "due": platform::time::rfc3339(due)})),
                )
                .await;
                Disposition::Done
            }
        }
    }

    async fn give_up(&self, saga_id: &str, job: &Job, error: &str, why: &str) -> Disposition {
        if !self
            .record(saga_id, job, "dead_lettered", Some(error))
            .await
        {
            return Disposition::Abandoned;
        }
        self.count("dead_lettered");
        self.log_line(saga_id, job, "delivery.dead_lettered", Some(error), None)
            .await;
        Disposition::dead_letter(
            dead_letter::UNDELIVERABLE,
            format!("{why} after {} attempt(s): {error}", job.attempt),
        )
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .deliveries
            .get_or_create(&DeliveryLabels {
                channel: self.audience.channel().to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    async fn recorded(&self, delivery_id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT status FROM deliveries WHERE delivery_id = $1")
                .bind(delivery_id)
                .fetch_optional(&self.db.writer)
                .await?;
        Ok(row.map(|(s,)| s))
    }

    /// Records the job's state, retrying until it is written or shutdown begins.
    async fn record(&self, saga_id: &str, job: &Job, status: &str, error: Option<&str>) -> bool {
        let written = platform::retry::until_cancelled(
            &self.cancel,
            "recording a delivery",
            |e: &Error| e.is_transient(),
            || async {
                sqlx::query(
                    "INSERT INTO deliveries (delivery_id, saga_id, channel, recipient, status, attempts, last_error, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (delivery_id) DO UPDATE SET status = excluded.status, \
                     attempts = excluded.attempts, last_error = excluded.last_error, updated_at = excluded.updated_at",
                )
                .bind(&job.delivery_id)
                .bind(saga_id)
                .bind(&job.channel)
                .bind(&job.to)
                .bind(status)
                .bind(i64::from(job.attempt))
                .bind(error)
                .bind(platform::time::now_ms())
                .execute(&self.db.writer)
                .await
                .map(|_| ())
                .map_err(Error::from)
            },
        )
        .await;
        match written {
            platform::retry::Retried::Ok(()) => true,
            platform::retry::Retried::Permanent(e) => {
                tracing::error!(error = %e, "delivery not recorded");
                false
            }
            platform::retry::Retried::Cancelled => false,
        }
    }

    /// One line of the notification log per attempt.
    async fn log_line(
        &self,
        saga_id: &str,
        job: &Job,
        what: &str,
        error: Option<&str>,
        next: Option<Value>,
    ) {
        let mut line = json!({
            "time": platform::time::rfc3339(platform::time::now_ms()),
            "type": what,
            "saga_id": saga_id,
            "delivery_id": job.delivery_id,
            "channel": job.channel,
            "rule": job.rule,
            "to": job.to,
            "subject": job.content.subject,
            "attempt": job.attempt,
        });
        if let Some(e) = error {
            line["error"] = json!(e);
        }
        if let Some(n) = next {
            line["next"] = n;
        }
        tracing::info!(saga_id, delivery_id = %job.delivery_id, channel = job.channel, attempt = job.attempt, outcome = what, "notification delivery");
        if let Err(e) = self.log.append(Arc::new(format!("{line}\n"))).await {
            tracing::warn!(error = %e, "notification log not written");
        }
    }
}
