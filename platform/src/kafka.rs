//! Kafka clients configured the one way this system uses them.
//!
//! - Consumers are at-least-once: offsets are *stored* by [`run_consumer`] only after the handler
//!   has committed its effect, and auto-commit only ever commits stored offsets.
//! - Producers are idempotent with `acks=all`, so a retried send never duplicates or reorders.
//! - A message that cannot be handled goes to the dead-letter topic with headers saying where it
//!   came from and why, and the partition moves on.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{BaseProducer, DeliveryFuture, FutureProducer, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::{GroupLabels, HandledLabels, LagLabels, Metrics};
use crate::{Error, Ops, Result, Topics};

/// Consumer settings the embedded mock cluster needs (`KAFKA_CONFIG` for processes that use it):
/// the mock waits `session.timeout.ms` - 1 s on every membership change, and does not wake a
/// waiting fetch when data arrives, so a fetch waits at most 2 ms. A real broker needs neither.
pub const EMBEDDED_CONSUMER_CONFIG: &str =
    "session.timeout.ms=3000,heartbeat.interval.ms=300,fetch.wait.max.ms=2";

/// Kafka connection settings shared by every binary (`KAFKA_BROKERS`, `KAFKA_CONFIG`, `TOPICS_FILE`).
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers of the Kafka cluster, e.g. `kafka:9092`.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: String,
    /// Extra librdkafka properties for every client, `key=value` pairs separated by commas
    /// (e.g. `security.protocol=SASL_SSL,sasl.mechanism=PLAIN`).
    #[arg(long, env = "KAFKA_CONFIG", default_value = "")]
    pub kafka_config: String,
    /// A topics.json to use instead of the built-in one.
    #[arg(long, env = "TOPICS_FILE")]
    pub topics_file: Option<String>,
    /// Create missing topics from topics.json at start-up with the Admin API.
    #[arg(long, env = "CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_topics: bool,
    /// How long to wait at start-up for the cluster to answer before giving up with an error
    /// (a wrong address, TLS setting or password would otherwise retry silently forever).
    #[arg(long, env = "KAFKA_STARTUP_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub kafka_startup_timeout: Duration,
    /// This process's stable name in its consumer groups (static membership): a restarted
    /// process with the same name takes its partitions back at once. Defaults to `HOSTNAME`
    /// (the container or pod name); must differ between processes of one group.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
}

impl KafkaArgs {
    /// What a standalone process does first: load topics.json, build the client settings, and
    /// create missing topics unless told not to.
    pub async fn prepare(&self) -> Result<(KafkaSettings, Topics)> {
        let topics = Topics::load(self.topics_file.as_deref())?;
        let kafka = self.settings()?;
        kafka.probe(self.kafka_startup_timeout).await?;
        if self.create_topics {
            kafka.ensure_topics(&topics).await?;
        }
        Ok((kafka, topics))
    }

    pub fn settings(&self) -> Result<KafkaSettings> {
        let instance_id = self
            .instance_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty());
        Ok(KafkaSettings {
            brokers: self.kafka_brokers.clone(),
            overrides: parse_overrides(&self.kafka_config)?,
            embedded: false,
            instance_id,
        })
    }
}

/// How often librdkafka reports statistics (consumer lag) to the metrics.
const STATISTICS_INTERVAL_MS: &str = "5000";

/// Parses `key=value,key=value`.
pub fn parse_overrides(s: &str) -> Result<Vec<(String, String)>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(Error::KafkaConfig(pair.to_string())),
        })
        .collect()
}

/// Where the brokers are and how to talk to them.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    /// librdkafka properties applied last to every client, so an operator can override anything.
    pub overrides: Vec<(String, String)>,
    /// Tune clients for librdkafka's mock cluster: it waits `session.timeout.ms` - 1 s on every
    /// group membership change and never wakes a waiting fetch when data arrives, so its group joins
    /// and fetches are slow with the defaults a real broker wants.
    pub embedded: bool,
    /// `group.instance.id` of every consumer (static membership), if any.
    pub instance_id: Option<String>,
}

/// The consumers' session timeout on a real broker. A member that stops heartbeating keeps its
/// partitions this long: with static membership a restart within it takes them straight back
/// (no rebalance), and an instance that never returns stalls its partitions this long before
/// the others take them. 30 s covers a container restart, and is below librdkafka's 45 s.
pub const SESSION_TIMEOUT_MS: &str = "30000";

impl KafkaSettings {
    /// Settings for the embedded mock cluster (consumers get [`EMBEDDED_CONSUMER_CONFIG`]).
    pub fn embedded(brokers: impl Into<String>) -> Self {
        KafkaSettings {
            brokers: brokers.into(),
            overrides: Vec::new(),
            embedded: true,
            instance_id: None,
        }
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    fn finish(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.overrides {
            c.set(k, v);
        }
        c
    }

    /// An idempotent, `acks=all` producer.
    pub fn producer(&self) -> Result<FutureProducer> {
        let mut c = self.config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            // Replies and commands are latency-bound: send at once (messages still batch up
            // while a request is in flight). linger 1 ms cost ~1 ms per hop, 8 hops per saga.
            .set("linger.ms", "0")
            // A delivery that cannot succeed in this time fails and is retried by the caller
            // (the outbox keeps it), instead of hiding in librdkafka's queue for 5 minutes.
            .set("message.timeout.ms", "30000");
        self.finish(c)
            .create()
            .map_err(|e| invalid_settings("the producer", e))
    }

    /// An at-least-once consumer in `group`, subscribed to `topics`, reporting its lag and
    /// assignment to `ops` (see [`Observer`]).
    pub fn consumer(&self, group: &str, topics: &[&str], ops: &Ops) -> Result<KafkaConsumer> {
        let context = Observer::new(group, ops);
        let consumer: KafkaConsumer = self
            .consumer_config(group)
            .create_with_context(context)
            .map_err(|e| invalid_settings(&format!("the consumer of group {group}"), e))?;
        consumer
            .subscribe(topics)
            .map_err(Error::kafka(format!("subscribing to {topics:?}")))?;
        Ok(consumer)
    }

    /// The settings of a consumer in `group`, overrides applied.
    fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = self.config();
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "500")
            .set("auto.offset.reset", "earliest")
            // Prefetch at most 16 MB per consumer instead of librdkafka's 64 MB: a handler takes
            // at most MAX_BATCH messages at a time anyway, and a process that falls behind
            // should not grow by the size of its backlog (the orchestrator's RSS budget).
            .set("queued.max.messages.kbytes", "16384")
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
            .set("session.timeout.ms", SESSION_TIMEOUT_MS);
        if let Some(id) = &self.instance_id {
            c.set("group.instance.id", id);
        }
        if self.embedded {
            for (k, v) in EMBEDDED_CONSUMER_CONFIG
                .split(',')
                .filter_map(|kv| kv.split_once('='))
            {
                c.set(k, v);
            }
        }
        self.finish(c)
    }

    /// Fails unless the cluster answers a metadata request within `timeout`. librdkafka retries
    /// a wrong address, a TLS mismatch or a bad password forever, quietly; this turns them into
    /// one error at start-up that says what went wrong and which setting to look at.
    pub async fn probe(&self, timeout: Duration) -> Result<()> {
        let client: BaseProducer<ProbeContext> = self
            .finish(self.config())
            .create_with_context(ProbeContext::default())
            .map_err(|e| invalid_settings("a client", e))?;
        let answer = tokio::task::spawn_blocking(move || {
            let r = client.client().fetch_metadata(None, timeout);
            // Errors reach the context through the client's queue: serve it once.
            client.poll(Duration::from_millis(100));
            let last = client.context().last_error();
            (r.map(|m| m.brokers().len()), last)
        })
        .await
        .map_err(|e| Error::Config(format!("probing Kafka: {e}")))?;
        match answer {
            (Ok(n), _) if n > 0 => Ok(()),
            (result, last) => {
                let why = last
                    .or_else(|| result.err().map(|e| e.to_string()))
                    .unwrap_or_else(|| "the cluster reported no brokers".into());
                Err(Error::Config(format!(
                    "cannot use Kafka at KAFKA_BROKERS={} within {} s{}: {why}; check {}",
                    self.brokers,
                    timeout.as_secs(),
                    self.security_summary(),
                    setting_to_check(&why),
                )))
            }
        }
    }

    /// ` (security.protocol=..., sasl.mechanism=...)` when set, for error messages.
    fn security_summary(&self) -> String {
        let shown: Vec<String> = self
            .overrides
            .iter()
            .filter(|(k, _)| {
                k == "security.protocol" || k == "sasl.mechanism" || k == "sasl.mechanisms"
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if shown.is_empty() {
            String::new()
        } else {
            format!(" ({})", shown.join(", "))
        }
    }

    /// Creates every topic of `topics.json` that does not exist yet. Existing topics are left as
    /// they are, so every process can call this at start-up.
    pub async fn ensure_topics(&self, topics: &Topics) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .finish(self.config())
            .create()
            .map_err(Error::kafka("creating admin client"))?;
        let retention: Vec<String> = topics
            .all()
            .iter()
            .map(|t| t.retention_ms.to_string())
            .collect();
        let new_topics: Vec<NewTopic> = topics
            .all()
            .iter()
            .zip(&retention)
            .map(|(t, retention)| {
                let mut nt = NewTopic::new(
                    &t.name,
                    t.partitions,
                    TopicReplication::Fixed(t.replication_factor),
                )
                .set("retention.ms", retention);
                for (k, v) in &t.config {
                    nt = nt.set(k, v);
                }
                nt
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics(&new_topics, &opts)
            .await
            .map_err(Error::kafka("creating topics"))?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::Kafka {
                        context: format!("creating topic {name}"),
                        source: rdkafka::error::KafkaError::AdminOp(code),
                    })
                }
            }
        }
        Ok(())
    }
}

/// Every consumer of the system: its context reports to the process's [`Ops`].
pub type KafkaConsumer = StreamConsumer<Observer>;

/// The context of every consumer: turns librdkafka's statistics into the consumer-lag gauges,
/// and its rebalances into the partition count and the `/readyz` check of the group.
pub struct Observer {
    group: String,
    metrics: Metrics,
    health: Health,
    /// The lag series reported last time, so partitions that moved away are dropped.
    reported: Mutex<HashSet<LagLabels>>,
}

impl Observer {
    fn new(group: &str, ops: &Ops) -> Self {
        ops.health.set(
            &Self::check_name(group),
            false,
            "not assigned partitions yet (joining the group)",
            None,
        );
        Observer {
            group: group.to_string(),
            metrics: ops.metrics.clone(),
            health: ops.health.clone(),
            reported: Mutex::new(HashSet::new()),
        }
    }

    fn check_name(group: &str) -> String {
        format!("consumer_group:{group}")
    }
}

impl ClientContext for Observer {
    /// Runs on librdkafka's thread, every `statistics.interval.ms`: cheap, no waiting.
    fn stats(&self, statistics: Statistics) {
        let mut now = HashSet::new();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal partition; a negative lag is "unknown".
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                let labels = LagLabels {
                    group: self.group.clone(),
                    topic: topic.clone(),
                    partition: partition.to_string(),
                };
                self.metrics
                    .consumer_lag
                    .get_or_create(&labels)
                    .set(p.consumer_lag);
                now.insert(labels);
            }
        }
        if let Ok(mut reported) = self.reported.lock() {
            for gone in reported.difference(&now) {
                self.metrics.consumer_lag.remove(gone);
            }
            *reported = now;
        }
    }
}

impl ConsumerContext for Observer {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let gauge = self
            .metrics
            .assigned_partitions
            .get_or_create(&GroupLabels {
                group: self.group.clone(),
            });
        let name = Self::check_name(&self.group);
        match rebalance {
            // With more members than partitions an empty assignment is normal: the process has
            // joined and is ready; it gets partitions when another member leaves.
            Rebalance::Assign(tpl) => {
                gauge.set(tpl.count() as i64);
                self.health.set(&name, true, "", None);
            }
            Rebalance::Revoke(_) => {
                gauge.set(0);
            }
            Rebalance::Error(e) => {
                self.health
                    .set(&name, false, format!("rebalance failed: {e}"), None);
            }
        }
    }
}

/// Remembers the last error librdkafka reported, so [`KafkaSettings::probe`] can say why the
/// cluster did not answer.
#[derive(Default)]
struct ProbeContext {
    last: Mutex<Option<String>>,
}

impl ProbeContext {
    fn last_error(&self) -> Option<String> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

impl ClientContext for ProbeContext {
    /// Keeps the most telling error: "all brokers are down" only sums up the others (a refused
    /// connection, a failed handshake, an authentication error), so it never replaces one.
    fn error(&self, error: KafkaError, reason: &str) {
        let summary = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        if let Ok(mut last) = self.last.lock() {
            if last.is_none() || !summary {
                *last = Some(reason.to_string());
            }
        }
    }
}

impl rdkafka::producer::ProducerContext for ProbeContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// librdkafka refused the settings (an unknown property or SASL mechanism, a CA file that is
/// not there): its message names the property; say where the settings come from.
fn invalid_settings(what: &str, e: KafkaError) -> Error {
    Error::Config(format!(
        "cannot create {what} with these Kafka settings (KAFKA_BROKERS, KAFKA_CONFIG): {e}"
    ))
}

/// Which setting an error from the cluster points at.
fn setting_to_check(error: &str) -> &'static str {
    // librdkafka prefixes the broker, `sasl_ssl://host:9093/bootstrap: `; judge the rest.
    let message = match error.split_once("://") {
        Some(_) => error.split_once(": ").map_or(error, |(_, m)| m),
        None => error,
    };
    let e = message.to_ascii_lowercase();
    if e.contains("connection refused") || e.contains("resolve") || e.contains("unreachable") {
        "KAFKA_BROKERS (and security.protocol in KAFKA_CONFIG)"
    } else if e.contains("sasl") || e.contains("authenticat") || e.contains("credential") {
        "sasl.mechanism, sasl.username and sasl.password in KAFKA_CONFIG"
    } else if e.contains("ssl")
        || e.contains("tls")
        || e.contains("certificate")
        || e.contains("handshake")
    {
        "security.protocol and the ssl.* settings in KAFKA_CONFIG"
    } else {
        "KAFKA_BROKERS and security.protocol in KAFKA_CONFIG"
    }
}

/// What a handler decided about one message.
pub enum Disposition {
    /// Handled (its effect is committed, or it was a duplicate): store the offset.
    Done,
    /// Handled, and its reply handed to the producer: store the offset once the broker has
    /// confirmed the reply. The consume loop moves on meanwhile, so a handler does not wait a
    /// broker round trip per message; offsets are still stored strictly in order.
    DoneWhenDelivered(DeliveryFuture),
    /// Cannot be handled: publish it to the dead-letter topic, then store the offset.
    DeadLetter {
        /// One of a few fixed words (see [`dead_letter`]): the metric label.
        reason: &'static str,
        /// What went wrong, for the `dlq.error` header and the logs.
        error: String,
    },
    /// Not handled because the process is stopping: do not store the offset, so the message is
    /// delivered again after the restart.
    Abandoned,
}

/// Why a message is dead-lettered: a fixed vocabulary, so the metric has few series.
pub mod dead_letter {
    /// Not an envelope: no payload, not JSON, missing fields.
    pub const UNREADABLE: &str = "unreadable";
    /// A reply naming a saga nobody has.
    pub const UNKNOWN_SAGA: &str = "unknown_saga";
    /// A command the service does not handle, or whose fields are wrong.
    pub const REJECTED: &str = "rejected";
    /// Handling failed with a non-transient error, `MAX_DELIVERY_ATTEMPTS` times.
    pub const FAILED: &str = "failed";
}

impl Disposition {
    pub fn dead_letter(reason: &'static str, error: impl Into<String>) -> Self {
        Disposition::DeadLetter {
            reason,
            error: error.into(),
        }
    }

    /// A message that is not a readable envelope.
    pub fn unreadable(error: impl Into<String>) -> Self {
        Self::dead_letter(dead_letter::UNREADABLE, error)
    }
}

/// Handles one message. Implementations retry their own transient failures (a database that is
/// briefly away) and return [`Disposition::Abandoned`] only when shutdown interrupts them.
pub trait MessageHandler: Send + Sync {
    fn handle(&self, message: &BorrowedMessage<'_>) -> impl Future<Output = Disposition> + Send;

    /// Handles messages that arrived together, in order, returning one disposition per message.
    /// Handlers override this to share one database transaction among them; the default handles
    /// them one by one.
    fn handle_batch<'a>(
        &'a self,
        messages: &'a [BorrowedMessage<'a>],
    ) -> impl Future<Output = Vec<Disposition>> + Send + 'a {
        async move {
            let mut out = Vec::with_capacity(messages.len());
            for m in messages {
                out.push(self.handle(m).await);
            }
            out
        }
    }
}

/// Messages handed to a handler at once, at most: the ones already fetched when the first
/// arrives, so batching adds no waiting.
pub const MAX_BATCH: usize = 256;

pub use crate::dead_letters::DeadLetters;

/// Replies handed to the producer but not confirmed yet, beyond which the loop waits.
const MAX_UNCONFIRMED: usize = 1_000;

/// A handled message whose offset is stored once everything before it is stored and its own
/// reply (if any) is confirmed.
struct Unconfirmed {
    topic: String,
    partition: i32,
    offset: i64,
    delivery: Option<DeliveryFuture>,
}

/// The consume loop every component uses: receive, handle, dead-letter if needed, store the
/// offset only after the handler is done (and its reply confirmed). Stops when `cancel` fires,
/// then commits stored offsets.
pub async fn run_consumer<H: MessageHandler>(
    consumer: KafkaConsumer,
    handler: H,
    dead_letters: DeadLetters,
    cancel: CancellationToken,
) {
    let handled = |outcome: &str| {
        dead_letters
            .metrics()
            .messages_handled
            .get_or_create_owned(&HandledLabels {
                component: dead_letters.source().to_string(),
                outcome: outcome.to_string(),
            })
    };
    let (done, dead_lettered) = (handled("done"), handled("dead_lettered"));
    let mut unconfirmed: VecDeque<Unconfirmed> = VecDeque::new();
    'receive: loop {
        let waiting = unconfirmed.front().is_some_and(|f| f.delivery.is_some());
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            m = consumer.recv() => m,
            // Nothing new to read: store the offsets of replies confirmed meanwhile, so an idle
            // consumer commits its last message instead of keeping it until the next one.
            _ = confirm_next(&consumer, &mut unconfirmed), if waiting => continue,
        };
        let first = match first {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "kafka consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(m),
                _ => break,
            }
        }
        let dispositions = handler.handle_batch(&batch).await;
        for (message, disposition) in batch.iter().zip(dispositions) {
            let delivery = match disposition {
                Disposition::Done => {
                    done.inc();
                    None
                }
                Disposition::DoneWhenDelivered(d) => {
                    done.inc();
                    Some(d)
                }
                Disposition::DeadLetter { reason, error } => {
                    if !dead_letters.publish(message, reason, &error, &cancel).await {
                        break 'receive;
                    }
                    dead_lettered.inc();
                    None
                }
                // Nothing after it is stored either: it is all delivered again after a restart.
                Disposition::Abandoned => break 'receive,
            };
            unconfirmed.push_back(Unconfirmed {
                topic: message.topic().to_string(),
                partition: message.partition(),
                offset: message.offset(),
                delivery,
            });
        }
        let full = unconfirmed.len() > MAX_UNCONFIRMED;
        store_confirmed(&consumer, &mut unconfirmed, full).await;
    }
    // Wait (briefly) for replies still on their way, so their offsets can be stored.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        store_confirmed(&consumer, &mut unconfirmed, true),
    )
    .await;
    close(consumer).await;
}

/// How long shutdown waits for a consumer to commit and leave its group.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// Commits the stored offsets and closes the consumer (it leaves its group) on a thread of its
/// own, waiting at most [`CLOSE_LIMIT`]. Both calls block, and closing during a rebalance can
/// block for good inside librdkafka (seen: `rd_kafka_assign` from the close's rebalance handling
/// waiting on a queue nobody serves): on a runtime worker that froze the whole process, timers
/// included. A close that does not finish is left behind; the group moves the partitions after
/// the session timeout, and offsets not committed mean redelivery, which the inbox absorbs.
async fn close(consumer: KafkaConsumer) {
    let (done, closed) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored since the last auto-commit is also a (harmless) error here.
                tracing::debug!(error = %e, "final offset commit");
            }
            consumer.unsubscribe();
            drop(consumer);
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to close the consumer");
        return;
    }
    if tokio::time::timeout(CLOSE_LIMIT, closed).await.is_err() {
        tracing::warn!(
            limit_s = CLOSE_LIMIT.as_secs(),
            "the Kafka consumer did not close in time; going on without it"
        );
    }
}

/// Waits for the reply of the oldest handled message to be confirmed (or to fail), then stores
/// its offset and those of every confirmed message after it. Cancel-safe: dropped while waiting,
/// it leaves the queue as it was.
async fn confirm_next(consumer: &KafkaConsumer, queue: &mut VecDeque<Unconfirmed>) {
    if let Some(front) = queue.front_mut() {
        if let Some(delivery) = front.delivery.as_mut() {
            if !matches!(delivery.await, Ok(Ok(_))) {
                tracing::warn!(topic = %front.topic, offset = front.offset, "reply not delivered");
            }
            front.delivery = None;
        }
    }
    store_confirmed(consumer, queue, false).await;
}

/// Stores the offsets of the handled messages at the front of the queue whose replies are
/// confirmed; with `wait`, waits for every reply in the queue.
async fn store_confirmed(consumer: &KafkaConsumer, queue: &mut VecDeque<Unconfirmed>, wait: bool) {
    while let Some(front) = queue.front_mut() {
        if let Some(delivery) = front.delivery.as_mut() {
            let result = if wait {
                Some(delivery.await)
            } else {
                delivery.now_or_never()
            };
            match result {
                None => return,
                Some(Ok(Ok(_))) => {}
                // Not delivered: the saga's step deadline makes the orchestrator re-send the
                // command, and the stored reply goes out again.
                Some(_) => {
                    tracing::warn!(topic = %front.topic, offset = front.offset, "reply not delivered")
                }
            }
        }
        if let Err(e) = consumer.store_offset(&front.topic, front.partition, front.offset) {
            tracing::warn!(error = %e, "cannot store offset");
        }
        queue.pop_front();
    }
}

/// Flushes a producer on shutdown so nothing it accepted is lost.
pub fn flush(producer: &FutureProducer) {
    if let Err(e) = producer.flush(Duration::from_secs(10)) {
        tracing::warn!(error = %e, "producer flush on shutdown");
    }
}

/// Whether the cluster answers a metadata request in time.
pub async fn reachable(producer: &FutureProducer) -> bool {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_reject_garbage() {
        let o = parse_overrides(" a=1, b.c = x=y ,").unwrap();
        assert_eq!(
            o,
            vec![("a".into(), "1".into()), ("b.c".into(), "x=y".into())]
        );
        assert!(parse_overrides("novalue").is_err());
        assert!(parse_overrides("=v").is_err());
        assert!(parse_overrides("").unwrap().is_empty());
    }

    /// Issue 10, item 16: consumers are static members named by `INSTANCE_ID` (else the
    /// container's `HOSTNAME`), with a session timeout chosen for a restart, not librdkafka's
    /// 45 s; `KAFKA_CONFIG` still overrides both; the mock keeps its own short settings.
    #[test]
    fn consumers_are_static_members_with_a_chosen_session_timeout() {
        let args = |id: Option<&str>| KafkaArgs {
            kafka_brokers: "b:9092".into(),
            kafka_config: String::new(),
            topics_file: None,
            create_topics: false,
            kafka_startup_timeout: Duration::from_secs(1),
            instance_id: id.map(String::from),
        };
        let s = args(Some("orchestrator-0")).settings().unwrap();
        let c = s.consumer_config("saga-orchestrator");
        assert_eq!(c.get("group.instance.id"), Some("orchestrator-0"));
        assert_eq!(c.get("session.timeout.ms"), Some(SESSION_TIMEOUT_MS));
        assert_eq!(args(Some("  ")).settings().unwrap().instance_id, None);

        let mut overridden = s.clone();
        overridden.overrides = parse_overrides("session.timeout.ms=60000").unwrap();
        assert_eq!(
            overridden.consumer_config("g").get("session.timeout.ms"),
            Some("60000")
        );
        let embedded = KafkaSettings::embedded("127.0.0.1:1").consumer_config("g");
        assert_eq!(embedded.get("group.instance.id"), None);
        assert_eq!(embedded.get("session.timeout.ms"), Some("3000"));
    }

    fn settings(config: &str) -> KafkaSettings {
        KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            overrides: parse_overrides(config).unwrap(),
            embedded: false,
            instance_id: None,
        }
    }

    #[tokio::test]
    async fn tls_and_sasl_clients_can_be_created() {
        for config in [
            "security.protocol=SSL",
            "security.protocol=SASL_SSL,sasl.mechanism=PLAIN,sasl.username=u,sasl.password=p",
            "security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-256,sasl.username=u,sasl.password=p",
            "security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=u,sasl.password=p",
            "security.protocol=SASL_SSL,sasl.mechanism=OAUTHBEARER,sasl.oauthbearer.config=principal=u",
            "security.protocol=SASL_PLAINTEXT,sasl.mechanism=PLAIN,sasl.username=u,sasl.password=p",
        ] {
            let k = settings(config);
            if let Err(e) = k.producer() {
                panic!("{config}: {e}");
            }
            if let Err(e) = k.consumer("g", &["t"], &Ops::default()) {
                panic!("{config}: {e}");
            }
        }
    }

    #[test]
    fn security_mistakes_fail_at_creation_naming_the_setting() {
        let cases = [
            ("security.protocol=SASL_SSL,sasl.mechanism=FOO", "FOO"),
            (
                "security.protocol=SSL,ssl.ca.location=/nonexistent/ca.pem",
                "ssl.ca.location",
            ),
            ("security.protocol=TLS", "security.protocol"),
            ("sasl.mechanismz=PLAIN", "sasl.mechanismz"),
        ];
        for (config, named) in cases {
            let e = match settings(config).producer() {
                Ok(_) => panic!("{config} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(named), "{config}: {e}");
            assert!(e.contains("KAFKA_CONFIG"), "{config}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn errors_from_the_cluster_point_at_the_setting_to_check() {
        assert!(
            setting_to_check("SASL authentication error: Authentication failed")
                .contains("sasl.password")
        );
        assert!(
            setting_to_check("SSL handshake failed: certificate verify failed").contains("ssl.*")
        );
        assert!(
            setting_to_check("Connect to ipv4#127.0.0.1:1 failed: Connection refused")
                .contains("KAFKA_BROKERS")
        );
    }
}
