//! # The whole saga system in one process, on embedded defaults
//!
//! `cargo run --release` starts, in this order: an embedded Kafka (librdkafka's in-memory mock
//! cluster, for development only) with the topics of `topics.json`; the order, user, payment and
//! notification services, each with its own Kafka clients, consumer group and database; and the
//! orchestrator with its HTTP API. They share nothing but the broker: the same components run as
//! separate processes against a real Kafka and PostgreSQL in production (see `docker-compose.yml`).
//!
//! The end-to-end tests start the system through [`System::start`] too, or component by
//! component through the configs of [`SystemConfig`], so they exercise exactly what runs here.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use platform::db::{self, SqliteSync};
use platform::embedded::EmbeddedKafka;
use platform::kafka::KafkaSettings;
use platform::Topics;
pub use services::delivery::DeliveryArgs;
use services::notification::NotificationConfig;
use services::{ServiceConfig, ServiceHandle};

/// Errors of starting the system; each names the component that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Platform(#[from] platform::Error),
    #[error("orchestrator: {0}")]
    Orchestrator(#[from] orchestrator::Error),
    #[error("services: {0}")]
    Services(#[from] services::Error),
    /// A setting that cannot work, with the setting's name in the message.
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the system keeps its state and listens.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    pub listen: SocketAddr,
    /// Where other programs reach the embedded Kafka (`EMBEDDED_KAFKA_ADDR`); `None`:
    /// [`EMBEDDED_KAFKA_DEFAULT`] when free, else a free port.
    pub embedded_kafka_addr: Option<SocketAddr>,
    /// SQLite files and the notification log go here.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL to use instead of SQLite. Each component gets a database of its own on
    /// that server, named after the URL's database plus a suffix (`saga` → `saga_orchestrator`,
    /// `saga_orders`, ...), created if missing.
    pub postgres_url: Option<String>,
    pub sqlite_sync: SqliteSync,
    pub notification_stdout: bool,
    /// When the notification log is rotated.
    pub notification_rotation: services::notification::Rotation,
    pub topics: Topics,
    /// Every saga type the orchestrator runs (`sagas/*.toml`).
    pub sagas: std::sync::Arc<orchestrator::saga::Registry>,
    /// Deadlines, retries and retention: the orchestrator's, and the services' delivery
    /// attempts and retention of processed commands.
    pub tuning: orchestrator::Tuning,
    /// Faults the stub services inject (off by default).
    pub chaos: services::chaos::Chaos,
    /// Metrics and readiness of every component (one registry per process; the orchestrator's
    /// port serves them).
    pub ops: platform::Ops,
    /// Bounds and authentication of the orchestrator's HTTP API.
    pub api: orchestrator::http::ApiConfig,
    /// Emails and alerts from saga outcomes (the notification service).
    pub delivery: services::delivery::DeliveryArgs,
}

impl SystemConfig {
    /// The database URL of one component (`orchestrator`, `orders`, `users`, `payments`).
    pub fn database_url(&self, component: &str) -> Result<String> {
        match &self.postgres_url {
            Some(url) => {
                let base = url
                    .split('?')
                    .next()
                    .and_then(|u| u.rsplit_once('/'))
                    .map(|(_, name)| name)
                    .filter(|n| !n.is_empty() && !n.contains(':') && !n.contains('@'))
                    .unwrap_or("saga");
                Ok(db::with_database_name(url, &format!("{base}_{component}")))
            }
            None => Ok(db::sqlite_url(
                &self.data_dir.join(format!("{component}.db")),
            )?),
        }
    }

    pub fn orchestrator(&self, kafka: KafkaSettings) -> Result<orchestrator::Config> {
        Ok(orchestrator::Config {
            listen: self.listen,
            database_url: self.database_url("orchestrator")?,
            sqlite_sync: self.sqlite_sync,
            kafka,
            topics: self.topics.clone(),
            group_id: orchestrator::app::DEFAULT_GROUP.into(),
            sagas: self.sagas.clone(),
            tuning: self.tuning,
            ops: self.ops.clone(),
            api: self.api.clone(),
        })
    }

    pub fn service(&self, component: &str, kafka: KafkaSettings) -> Result<ServiceConfig> {
        Ok(ServiceConfig {
            database_url: self.database_url(component)?,
            sqlite_sync: self.sqlite_sync,
            kafka,
            topics: self.topics.clone(),
            chaos: self.chaos.clone(),
            max_attempts: self.tuning.max_delivery_attempts,
            retention: self.tuning.retention,
            ops: self.ops.clone(),
        })
    }

    pub fn notification(&self, kafka: KafkaSettings) -> Result<NotificationConfig> {
        Ok(NotificationConfig {
            log_file: self.data_dir.join("notifications.log"),
            stdout: self.notification_stdout,
            rotation: self.notification_rotation,
            kafka,
            topics: self.topics.clone(),
            ops: self.ops.clone(),
            delivery: self.delivery.config(
                saga_fields(&self.sagas),
                self.database_url("notification")?,
                self.sqlite_sync,
                &self.data_dir,
            ),
        })
    }
}

/// The fields each saga type's data can hold (its input, computed fields, what its steps
/// receive): what notification templates may name.
pub fn saga_fields(sagas: &orchestrator::saga::Registry) -> services::delivery::SagaFields {
    let mut fields = services::delivery::SagaFields::new();
    for def in sagas.all() {
        let set = fields.entry(def.saga_type.clone()).or_default();
        if let Some(props) = def.input_schema["properties"].as_object() {
            set.extend(props.keys().cloned());
        }
        set.extend(def.computed.keys().cloned());
        for step in &def.steps {
            set.extend(step.receive.iter().cloned());
        }
    }
    fields
}

/// Starts the four stub services against `kafka`.
pub async fn start_services(
    config: &SystemConfig,
    kafka: &KafkaSettings,
    cancel: &CancellationToken,
) -> Result<Vec<ServiceHandle>> {
    use services::runtime::start;
    Ok(vec![
        services::notification::start(config.notification(kafka.clone())?, cancel.child_token())
            .await?,
        start(
            services::order::OrderService,
            &config.service("orders", kafka.clone())?,
            cancel.child_token(),
        )
        .await?,
        start(
            services::user::UserService,
            &config.service("users", kafka.clone())?,
            cancel.child_token(),
        )
        .await?,
        start(
            services::payment::PaymentService,
            &config.service("payments", kafka.clone())?,
            cancel.child_token(),
        )
        .await?,
    ])
}

/// Where the embedded Kafka listens unless told otherwise: Kafka's own port, on loopback, so
/// kcat and Kafka UIs find it as they would a local broker.
pub const EMBEDDED_KAFKA_DEFAULT: &str = "127.0.0.1:9092";

/// The embedded Kafka's address: the one asked for, or the default when free, else a free port.
fn embedded_kafka_listener(asked: Option<SocketAddr>) -> Result<std::net::TcpListener> {
    match asked {
        Some(addr) => std::net::TcpListener::bind(addr).map_err(|e| {
            Error::Config(format!(
                "cannot listen on {addr} (EMBEDDED_KAFKA_ADDR): {e}"
            ))
        }),
        None => std::net::TcpListener::bind(EMBEDDED_KAFKA_DEFAULT)
            .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| Error::Config(format!("cannot listen for the embedded Kafka: {e}"))),
    }
}

/// The running system.
pub struct System {
    /// The embedded broker, unless the system runs against a Kafka cluster of its own.
    pub kafka: Option<EmbeddedKafka>,
    pub orchestrator: orchestrator::Orchestrator,
    pub services: Vec<ServiceHandle>,
}

impl System {
    /// Starts everything; returns when the API accepts connections.
    pub async fn start(config: &SystemConfig, cancel: &CancellationToken) -> Result<Self> {
        let listener = orchestrator::app::bind(config.listen).await?;
        let kafka = EmbeddedKafka::start_at(embedded_kafka_listener(config.embedded_kafka_addr)?)?;
        kafka.create_topics(&config.topics)?;
        tracing::warn!(
            bootstrap = kafka.bootstrap_servers(),
            "embedded Kafka started at {0} (kcat -b {0} -L): librdkafka's in-memory mock cluster, \
             for development only; messages are lost when this process stops",
            kafka.bootstrap_servers()
        );
        let mut system = Self::start_with(listener, config, &kafka.settings(), cancel).await?;
        system.kafka = Some(kafka);
        Ok(system)
    }

    /// Starts the services and the orchestrator against the Kafka cluster of `kafka`, whose
    /// topics exist (a benchmark against a real broker).
    pub async fn start_on(
        config: &SystemConfig,
        kafka: &KafkaSettings,
        cancel: &CancellationToken,
    ) -> Result<Self> {
        let listener = orchestrator::app::bind(config.listen).await?;
        Self::start_with(listener, config, kafka, cancel).await
    }

    async fn start_with(
        listener: tokio::net::TcpListener,
        config: &SystemConfig,
        kafka: &KafkaSettings,
        cancel: &CancellationToken,
    ) -> Result<Self> {
        let services = start_services(config, kafka, cancel).await?;
        let orchestrator = orchestrator::Orchestrator::start_on(
            listener,
            config.orchestrator(kafka.clone())?,
            cancel.child_token(),
        )
        .await?;
        Ok(System {
            kafka: None,
            orchestrator,
            services,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.orchestrator.local_addr()
    }

    /// Waits until every component has stopped (after `cancel` fired): the orchestrator first,
    /// so that it sends nothing to services that are gone, then the services, then the broker.
    pub async fn wait(self) {
        self.orchestrator.wait().await;
        for s in self.services {
            s.stop().await;
        }
        drop(self.kafka);
    }
}
