//! Client settings: flags and environment, the producer's and consumers' configuration (the
//! one place librdkafka options are chosen), and what a refused setting is reported as.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};

use crate::{Error, Ops, Result, Topics};

use super::*;

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
    /// A properties file of librdkafka settings (`key=value` lines, `#` comments), for values
    /// that hold a comma or secrets mounted as files; KAFKA_CONFIG is applied after it.
    #[arg(long, env = "KAFKA_CONFIG_FILE")]
    pub kafka_config_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub topics: crate::topics::TopicArgs,
    /// Put in front of every consumer group id (`staging.` gives `staging.saga-orchestrator`):
    /// with TOPIC_PREFIX, several deployments share one cluster without sharing a group.
    #[arg(long, env = "GROUP_PREFIX", default_value = "")]
    pub group_prefix: String,
    /// Create missing topics from topics.json at start-up with the Admin API.
    #[arg(long, env = "CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_topics: bool,
    /// How long to wait at start-up for the cluster to answer before giving up with an error
    /// (a wrong address, TLS setting or password would otherwise retry silently forever).
    #[arg(long, env = "KAFKA_STARTUP_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub kafka_startup_timeout: Duration,
    /// This process's stable name in its consumer groups (static membership): a restarted
    /// process with the same name takes its partitions back at once. Unset by default: a name
    /// that changes with every rollout (a Deployment's pod name, a compose container's id)
    /// would leave each old member holding its partitions for the session timeout. Set it where
    /// names survive a restart (a StatefulSet's pod name); it must differ between processes of
    /// one group.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
}

impl KafkaArgs {
    /// What a standalone process does first: load topics.json, build the client settings, and
    /// create missing topics unless told not to.
    pub async fn prepare(&self) -> Result<(KafkaSettings, Topics)> {
        let topics = self.topics.load()?;
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
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty());
        if !crate::topics::legal_topic_chars(&self.group_prefix) {
            return Err(Error::Config(format!(
                "GROUP_PREFIX {:?} may hold only a-z, A-Z, 0-9, '.', '_' and '-'",
                self.group_prefix
            )));
        }
        let mut overrides = match &self.kafka_config_file {
            Some(path) => parse_properties_file(path)?,
            None => Vec::new(),
        };
        overrides.extend(parse_overrides(&self.kafka_config)?);
        Ok(KafkaSettings {
            brokers: self.kafka_brokers.clone(),
            overrides,
            embedded: false,
            instance_id,
            group_prefix: self.group_prefix.clone(),
        })
    }
}

/// Every producer's partitioner: murmur2 of the key, as the Java client places keys
/// (`murmur2_random`: a message without a key goes to a random partition).
pub const PARTITIONER: &str = "murmur2_random";

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

/// Reads a properties file of client settings: `key=value` per line, blank lines and lines
/// starting with `#` or `!` ignored. A bad line is named by its number only: the file may hold
/// passwords.
pub fn parse_properties_file(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "KAFKA_CONFIG_FILE {}: cannot read: {e}",
            path.display()
        ))
    })?;
    let mut settings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                settings.push((k.trim().to_string(), v.trim().to_string()))
            }
            _ => {
                return Err(Error::Config(format!(
                    "KAFKA_CONFIG_FILE {} line {}: expected key=value",
                    path.display(),
                    n + 1
                )))
            }
        }
    }
    Ok(settings)
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
    /// Put in front of every consumer group id (`GROUP_PREFIX`).
    pub group_prefix: String,
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
            group_prefix: String::new(),
        }
    }

    /// The group id a consumer of `group` joins: the prefix, then the name.
    pub fn group_id(&self, group: &str) -> String {
        format!("{}{group}", self.group_prefix)
    }

    pub(super) fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    pub(super) fn finish(&self, mut c: ClientConfig) -> ClientConfig {
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
            .set("message.timeout.ms", "30000")
            // The Java client's placement (murmur2 of the key): a participant written in Java
            // (or any client that follows it) keying its replies by the saga id puts them on
            // the partition this project uses for that saga. librdkafka's default is CRC32.
            .set("partitioner", PARTITIONER);
        self.finish(c)
            .create()
            .map_err(|e| invalid_settings("the producer", e))
    }

    /// An at-least-once consumer in `group`, subscribed to `topics`, reporting its lag and
    /// assignment to `ops` (see [`Observer`]).
    pub fn consumer(&self, group: &str, topics: &[&str], ops: &Ops) -> Result<KafkaConsumer> {
        self.subscribed(
            group,
            topics,
            ops,
            self.consumer_config(&self.group_id(group)),
        )
    }

    /// [`Self::consumer`] for work where a tenth of a second does not matter (notifications): on
    /// the embedded mock, whose fetches never wake on new data, it polls every 100 ms instead of
    /// every 2, so an idle one costs next to no CPU. A real broker answers a fetch when data
    /// arrives either way.
    pub fn unhurried_consumer(
        &self,
        group: &str,
        topics: &[&str],
        ops: &Ops,
    ) -> Result<KafkaConsumer> {
        let mut config = self.consumer_config(&self.group_id(group));
        if self.embedded {
            config.set("fetch.wait.max.ms", "100");
        }
        self.subscribed(group, topics, ops, config)
    }

    /// A consumer of `config`, reporting as `group`, subscribed to `topics`.
    fn subscribed(
        &self,
        group: &str,
        topics: &[&str],
        ops: &Ops,
        config: ClientConfig,
    ) -> Result<KafkaConsumer> {
        // Readiness checks and metrics name the group as the code does, whatever the prefix.
        let context = Observer::new(group, ops);
        let consumer: KafkaConsumer = config
            .create_with_context(context)
            .map_err(|e| invalid_settings(&format!("the consumer of group {group}"), e))?;
        consumer
            .subscribe(topics)
            .map_err(Error::kafka(format!("subscribing to {topics:?}")))?;
        Ok(consumer)
    }

    /// The settings of a consumer in `group` (already prefixed), overrides applied.
    pub(super) fn consumer_config(&self, group: &str) -> ClientConfig {
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
}

/// librdkafka refused the settings (an unknown property or SASL mechanism, a CA file that is
/// not there): its message names the property; say where the settings come from.
pub(super) fn invalid_settings(what: &str, e: KafkaError) -> Error {
    Error::Config(format!(
        "cannot create {what} with these Kafka settings (KAFKA_BROKERS, KAFKA_CONFIG): {e}"
    ))
}

/// Which setting an error from the cluster points at.
pub(super) fn setting_to_check(error: &str) -> &'static str {
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
    } else if e.contains("certificate verify failed") {
        "ssl.ca.location in KAFKA_CONFIG (the CA that signed the broker's certificate)"
    } else if e.contains("bad certificate") || e.contains("certificate required") {
        "ssl.certificate.location and ssl.key.location in KAFKA_CONFIG (the broker wants a client \
         certificate it trusts)"
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

/// Flushes a producer on shutdown so nothing it accepted is lost.
pub fn flush(producer: &FutureProducer) {
    if let Err(e) = producer.flush(Duration::from_secs(10)) {
        tracing::warn!(error = %e, "producer flush on shutdown");
    }
}
