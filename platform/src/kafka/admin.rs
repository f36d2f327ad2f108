//! Talking to the cluster itself: the start-up probe that turns librdkafka's silent retries
//! into one error naming the setting to check, topic creation, and the reachability check.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::{Error, Result, Topics};

use super::*;

impl KafkaSettings {
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
        let mut existing = Vec::new();
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(name),
                Err((name, code)) => {
                    return Err(Error::Kafka {
                        context: format!("creating topic {name}"),
                        source: rdkafka::error::KafkaError::AdminOp(code),
                    })
                }
            }
        }
        if !existing.is_empty() {
            self.check_existing(topics, &existing).await?;
        }
        Ok(())
    }

    /// A topic that was already there is used only if it has the partitions topics.json asks
    /// for: with fewer, the work spreads over fewer consumers than planned, and adding them
    /// later moves keys (a saga's messages) to other partitions, so it is an error at start
    /// that names the topic, not a silent difference. More partitions than declared are fine.
    async fn check_existing(&self, topics: &Topics, existing: &[String]) -> Result<()> {
        let client: BaseProducer = self
            .finish(self.config())
            .create()
            .map_err(|e| invalid_settings("a client", e))?;
        let names = existing.to_vec();
        let counts = tokio::task::spawn_blocking(move || {
            // A topic created a moment ago (by another process starting at the same time) may
            // not be in a broker's metadata yet: ask again for a few seconds.
            let mut counts = Vec::new();
            for _ in 0..20 {
                let metadata = client
                    .client()
                    .fetch_metadata(None, Duration::from_secs(10))
                    .map_err(Error::kafka("reading the topics' metadata"))?;
                counts = metadata
                    .topics()
                    .iter()
                    .filter(|t| names.iter().any(|n| n == t.name()))
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                    .collect::<Vec<_>>();
                if counts.len() == names.len() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Ok::<_, Error>(counts)
        })
        .await
        .map_err(|e| Error::Config(format!("reading the topics' metadata: {e}")))??;
        for (name, partitions) in counts {
            let Some(spec) = topics.all().into_iter().find(|t| t.name == name) else {
                continue;
            };
            if partitions < spec.partitions {
                return Err(Error::Config(format!(
                    "topic {name} exists with {partitions} partitions, fewer than the {} \
                     topics.json asks for: add partitions to it on the broker, or say {partitions} \
                     in a topics.json of your own (TOPICS_FILE)",
                    spec.partitions
                )));
            }
        }
        Ok(())
    }
}

impl KafkaSettings {
    /// Deletes every topic of `topics` (a benchmark's or a test's namespace, when it ends).
    pub async fn delete_topics(&self, topics: &Topics) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .finish(self.config())
            .create()
            .map_err(Error::kafka("creating admin client"))?;
        let names: Vec<&str> = topics.all().iter().map(|t| t.name.as_str()).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        admin
            .delete_topics(&names, &opts)
            .await
            .map_err(Error::kafka("deleting topics"))?;
        Ok(())
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
