//! The broker a test runs against: a mock cluster of its own (librdkafka's, in this process), or,
//! when `TEST_KAFKA_BROKERS` is set, a real Kafka cluster (`scripts/kafka.sh start`) reached with
//! the client settings of `TEST_KAFKA_CONFIG` (`key=value,...`, e.g. SASL_SSL and its CA), where
//! each test gets topics and consumer groups of its own under a prefix (`TOPIC_PREFIX`,
//! `GROUP_PREFIX`), created at its start and deleted at its end, so tests never share state.

use rdkafka::ClientConfig;

use platform::embedded::EmbeddedKafka;
use platform::kafka::{parse_overrides, KafkaSettings};
use platform::Topics;

/// Consumer settings for tests on a real broker: a `kill -9`'d member's partitions move after
/// 6 s (the broker's smallest session by default), not the production 30 s, so the tests of
/// crashes finish in their time. The static-membership test sets its own.
const REAL_TEST_CONSUMER_CONFIG: &str = "session.timeout.ms=6000,heartbeat.interval.ms=500";

pub enum TestKafka {
    Embedded(EmbeddedKafka),
    Real {
        settings: KafkaSettings,
        /// The test's namespace, in front of its topics and groups.
        prefix: String,
        /// What the test created, deleted at its end.
        topics: Box<Topics>,
    },
}

/// The real broker the tests were pointed at, if any.
pub fn real_brokers() -> Option<String> {
    std::env::var("TEST_KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.trim().is_empty())
}

/// True, after printing why, when the test needs the mock cluster's fault injection (a broker
/// taken down, a topic made to fail) and runs on a real broker: the caller returns.
pub fn needs_the_mock(what: &str) -> bool {
    if real_brokers().is_some() {
        // Past the test harness's capture (which takes print macros only), so the run shows it.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped on a real broker (TEST_KAFKA_BROKERS): {} needs the mock cluster's {what}",
            std::thread::current().name().unwrap_or("this test")
        );
        return true;
    }
    false
}

/// True, after printing why, when the test needs a real broker and the run has none.
pub fn needs_real_broker(what: &str) -> bool {
    if real_brokers().is_none() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped on the mock cluster: {} needs a real broker for {what} (TEST_KAFKA_BROKERS)",
            std::thread::current().name().unwrap_or("this test")
        );
        return true;
    }
    false
}

impl TestKafka {
    /// A broker for one test with `topics` (topics.json's), which are renamed into the test's
    /// namespace on a real broker.
    pub async fn start(topics: Topics) -> (TestKafka, Topics) {
        match real_brokers() {
            None => {
                let kafka = EmbeddedKafka::start(1).expect("embedded kafka");
                kafka.create_topics(&topics).expect("topics");
                (TestKafka::Embedded(kafka), topics)
            }
            Some(brokers) => {
                let config = std::env::var("TEST_KAFKA_CONFIG").unwrap_or_default();
                Self::start_on(topics, brokers, &config).await
            }
        }
    }

    /// The test's namespace on the real broker at `brokers`, reached with `config`
    /// (`key=value,...`).
    pub async fn start_on(topics: Topics, brokers: String, config: &str) -> (TestKafka, Topics) {
        let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut overrides = parse_overrides(REAL_TEST_CONSUMER_CONFIG).unwrap();
        overrides.extend(parse_overrides(config).expect("a Kafka config is key=value,..."));
        let settings = KafkaSettings {
            brokers,
            overrides,
            embedded: false,
            instance_id: None,
            group_prefix: prefix.clone(),
        };
        // topics.json's partitions as they are: tests run a few at a time, and each deletes its
        // topics at its end, so the one broker holds a few hundred partitions at most.
        let topics = topics.prefixed(&prefix).expect("prefixed topics");
        settings
            .ensure_topics(&topics)
            .await
            .expect("the test's topics on the real broker");
        (
            TestKafka::Real {
                settings,
                prefix,
                topics: Box::new(topics.clone()),
            },
            topics,
        )
    }

    /// Client settings for the system's components.
    pub fn settings(&self) -> KafkaSettings {
        match self {
            TestKafka::Embedded(k) => k.settings(),
            TestKafka::Real { settings, .. } => settings.clone(),
        }
    }

    pub fn bootstrap_servers(&self) -> &str {
        match self {
            TestKafka::Embedded(k) => k.bootstrap_servers(),
            TestKafka::Real { settings, .. } => &settings.brokers,
        }
    }

    /// `KAFKA_CONFIG` for a component started as a process.
    pub fn process_config(&self) -> String {
        match self {
            TestKafka::Embedded(_) => platform::kafka::EMBEDDED_CONSUMER_CONFIG.to_string(),
            TestKafka::Real { settings, .. } => settings
                .overrides
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// `TOPIC_PREFIX` and `GROUP_PREFIX` for a component started as a process.
    pub fn prefix(&self) -> &str {
        match self {
            TestKafka::Embedded(_) => "",
            TestKafka::Real { prefix, .. } => prefix,
        }
    }

    /// A client configuration for the test's own producers and readers.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap_servers());
        if let TestKafka::Real { settings, .. } = self {
            for (k, v) in &settings.overrides {
                if !k.starts_with("session.") && !k.starts_with("heartbeat.") {
                    c.set(k, v);
                }
            }
        }
        c
    }

    /// The mock cluster, for the tests that inject faults (they call [`needs_the_mock`] first).
    pub fn mock(&self) -> &EmbeddedKafka {
        match self {
            TestKafka::Embedded(k) => k,
            TestKafka::Real { .. } => panic!("this test needs the mock cluster"),
        }
    }

    pub fn broker_down(&self, id: i32) -> platform::Result<()> {
        self.mock().broker_down(id)
    }

    pub fn broker_up(&self, id: i32) -> platform::Result<()> {
        self.mock().broker_up(id)
    }

    /// Deletes a real broker's topics of this test (the mock goes with its process).
    pub async fn clean_up(&self) {
        if let TestKafka::Real {
            settings, topics, ..
        } = self
        {
            if let Err(e) = settings.delete_topics(topics).await {
                eprintln!(
                    "could not delete the test's topics on {}: {e}",
                    settings.brokers
                );
            }
        }
    }
}
