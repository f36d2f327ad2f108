//! Assembly: builds the orchestrator from its configuration and runs its tasks — the HTTP
//! server, the reply consumer, the outbox relay, the timers and the pruner — until the cancellation token fires.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use platform::db::{Db, SqliteSync};
use platform::kafka::{DeadLetters, KafkaSettings};
use platform::{Ops, Topics};

use crate::http::{self, AppParts, AppState};
use crate::intake::Intake;
use crate::pruner::Pruner;
use crate::relay::Relay;
use crate::replies::ReplyHandler;
use crate::saga::engine::Policy;
use crate::saga::{Registry, Sagas, SagasSource};
use crate::store::{SagaStore, MIGRATIONS};
use crate::timers::Timers;
use crate::{Error, Result};

/// Everything the orchestrator needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP API listens; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    pub database_url: String,
    pub sqlite_sync: SqliteSync,
    pub kafka: KafkaSettings,
    pub topics: Topics,
    /// The consumer group shared by all orchestrator instances.
    pub group_id: String,
    /// Every saga type the orchestrator runs (`sagas/*.toml`).
    pub sagas: Arc<Registry>,
    /// Deadlines, retries and retention.
    pub tuning: Tuning,
    /// Where metrics and readiness go (shared with the other components of the process).
    pub ops: Ops,
    /// Bounds and authentication of the HTTP API.
    pub api: crate::http::ApiConfig,
}

/// The consumer group of the orchestrator instances unless `ORCHESTRATOR_GROUP` says otherwise.
pub const DEFAULT_GROUP: &str = "saga-orchestrator";

/// Deadlines, retries and retention, however the orchestrator is started (its flags and
/// environment through [`PolicyArgs::tuning`], or a whole system's configuration).
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub policy: Policy,
    /// Times a reply may fail with a non-transient error before it is dead-lettered.
    pub max_delivery_attempts: u32,
    /// How long processed inbox rows and sent outbox rows are kept before they are pruned.
    pub retention: std::time::Duration,
    /// How long sagas that ended well are kept (`None`: for ever).
    pub saga_retention: Option<std::time::Duration>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            policy: Policy::default(),
            max_delivery_attempts: platform::prune::DEFAULT_MAX_DELIVERY_ATTEMPTS,
            retention: platform::prune::DEFAULT_RETENTION,
            saga_retention: None,
        }
    }
}

/// A running orchestrator.
pub struct Orchestrator {
    addr: SocketAddr,
    store: SagaStore,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

/// Takes the API's address. Done before anything else starts, so that a port in use is the
/// one error a start prints, naming LISTEN_ADDR, not a line among the logs of components that
/// started and stopped again.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

impl Orchestrator {
    /// Binds the listener, connects, migrates and starts the tasks. Returns once the API accepts
    /// connections.
    pub async fn start(config: Config, cancel: CancellationToken) -> Result<Self> {
        let listener = bind(config.listen).await?;
        Self::start_on(listener, config, cancel).await
    }

    /// [`Self::start`] with the API's listener already bound (by [`bind`]).
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        config: Config,
        cancel: CancellationToken,
    ) -> Result<Self> {
        let tuning = config.tuning;
        let resend_window = tuning.policy.saga_timeout_ms + tuning.policy.compensation_limit_ms;
        if i64::try_from(tuning.retention.as_millis()).unwrap_or(i64::MAX) < resend_window {
            tracing::warn!(
                retention_ms = tuning.retention.as_millis() as u64,
                resend_window_ms = resend_window,
                "RETENTION_MS is shorter than SAGA_TIMEOUT_MS + COMPENSATION_LIMIT_MS: a command \
                 re-sent after its services pruned it would be handled again"
            );
        }
        let db = Db::connect(&config.database_url, &MIGRATIONS, config.sqlite_sync).await?;
        let ops = config.ops.clone();
        ops.metrics.watch_pool("orchestrator", &db);
        let store =
            SagaStore::new(db.clone(), ops.metrics.clone()).with_definitions(config.sagas.clone());
        // Recorded before any saga of them can exist, so every other instance can run them.
        store.deploy(&config.sagas).await?;
        let sagas = Sagas {
            registry: config.sagas.clone(),
            policy: tuning.policy,
        };
        for d in sagas.registry.all() {
            tracing::info!(saga_type = %d.saga_type, version = d.version, steps = d.steps.len(), "saga definition loaded");
        }
        crate::observe::declare(
            store.saga_metrics(),
            sagas.registry.types().map(|d| d.saga_type.clone()),
        );
        let producer = config.kafka.producer()?;
        let relay = Relay::new(store.clone(), producer.clone());
        let reply_topics = sagas.registry.reply_topics();
        let topic_refs: Vec<&str> = reply_topics.iter().map(String::as_str).collect();
        let consumer = config.kafka.consumer(&config.group_id, &topic_refs, &ops)?;
        let dead_letters = DeadLetters::new(
            producer.clone(),
            &config.topics.dead_letter.name,
            "orchestrator",
            &ops.metrics,
        )
        .with_store(db.clone());

        let addr = listener.local_addr().map_err(Error::Serve)?;

        let mut tasks = JoinSet::new();
        tasks.spawn(platform::health::watch_database(
            ops.health.clone(),
            "database:orchestrator".into(),
            db.clone(),
            cancel.clone(),
        ));
        tasks.spawn(platform::health::watch_broker(
            ops.health.clone(),
            "kafka:orchestrator".into(),
            producer.clone(),
            cancel.clone(),
        ));
        tasks.spawn(relay.run(cancel.clone()));
        tasks.spawn(watch_definitions(
            store.clone(),
            config.sagas.clone(),
            ops.health.clone(),
            cancel.clone(),
        ));
        let timers = Timers {
            store: store.clone(),
            sagas: sagas.clone(),
            failures: Default::default(),
        };
        tasks.spawn(timers.run(cancel.clone()));
        let pruner = Pruner {
            store: store.clone(),
            retention: tuning.retention,
            saga_retention: tuning.saga_retention,
        };
        tasks.spawn(pruner.run(cancel.clone()));
        let (listening, url) = (store.clone(), config.database_url.clone());
        let stop = cancel.clone();
        tasks.spawn(async move { listening.listen_for_ends(url, stop).await });
        let handler = ReplyHandler {
            store: store.clone(),
            sagas: sagas.clone(),
            max_attempts: tuning.max_delivery_attempts.max(1),
            cancel: cancel.clone(),
        };
        tasks.spawn(dead_letters.clone().drain(cancel.clone()));
        tasks.spawn(platform::kafka::run_consumer(
            consumer,
            handler,
            dead_letters.clone(),
            cancel.clone(),
        ));
        let feed = crate::live::Feed::new(&store, config.api.streams, cancel.clone());
        tasks.spawn(feed.clone().run(store.clone()));
        let (intake, intake_task) = Intake::start(store.clone());
        tasks.spawn(intake_task);
        let app = http::router(AppState::new(AppParts {
            store: store.clone(),
            intake,
            sagas,
            topics: config.topics.clone(),
            producer,
            ops: ops.clone(),
            long_polls: crate::http::LongPolls::new(config.api.max_long_polls),
            dead_letters,
            db: db.clone(),
            auth: config.api.auth.clone(),
            feed,
            openapi: Default::default(),
        }));
        let stop = cancel.clone();
        let health = ops.health.clone();
        let limits = config.api.limits;
        tasks.spawn(async move {
            platform::server::serve(listener, app, limits, async move {
                stop.cancelled().await;
                health.stopping();
            })
            .await;
        });
        tracing::info!(%addr, "orchestrator listening");
        Ok(Orchestrator {
            addr,
            store,
            tasks,
            cancel,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store(&self) -> &SagaStore {
        &self.store
    }

    /// Waits for every task to finish (they stop when the token fires), then closes the database.
    pub async fn wait(mut self) {
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "orchestrator task panicked");
                self.cancel.cancel();
            }
        }
        self.store.db().close().await;
    }

    /// Stops the orchestrator and waits until it has stopped.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.wait().await;
    }
}

/// How often the stored sagas are compared with the loaded definitions.
const DEFINITIONS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Looks for sagas whose definition version is neither loaded nor recorded in the database
/// (learning the recorded ones): they are parked, never run under another version; this says so
/// in `/readyz` (check `sagas:definitions`, a warning: the other sagas are served) and in the
/// log, until the version is back or those sagas have ended.
async fn watch_definitions(
    store: SagaStore,
    registry: Arc<Registry>,
    health: platform::health::Health,
    cancel: CancellationToken,
) {
    let mut last = None;
    loop {
        if let Ok(in_use) = store.versions_in_use().await {
            let mut missing = Vec::new();
            for (t, v, n) in in_use {
                if !registry.knows(&t, v) {
                    let _ = store.learn_definition(&t, v).await;
                }
                if let Err(why) = registry.of_saga_type(&t, v) {
                    missing.push(format!("{n} sagas run under {t} version {v}: {why}"));
                }
            }
            let warning = (!missing.is_empty()).then(|| {
                format!(
                    "{}; they are parked until it is deployed again (SAGAS_DIR), then retried",
                    missing.join("; ")
                )
            });
            if warning != last {
                if let Some(w) = &warning {
                    tracing::error!(warning = %w, "saga definitions missing");
                }
                last = warning.clone();
            }
            health.warn("sagas:definitions", warning);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(DEFINITIONS_EVERY) => {}
        }
    }
}

/// Where saga definitions and the message contract come from.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SagaArgs {
    /// A folder of saga definitions (`*.toml`). Default: `./sagas` if there is one, else the
    /// definitions compiled into the binary.
    #[arg(long, env = "SAGAS_DIR")]
    pub sagas_dir: Option<std::path::PathBuf>,
    /// A messages.toml (the message contract) to use instead of the built-in one.
    #[arg(long, env = "MESSAGES_FILE")]
    pub messages_file: Option<String>,
}

impl SagaArgs {
    /// Reads and checks every definition against `topics` and the contract: a mistake stops the
    /// start here, before anything connects.
    pub fn load(&self, topics: &platform::Topics) -> Result<Arc<Registry>> {
        let contract = platform::Contract::load(self.messages_file.as_deref(), topics)?;
        let source = SagasSource::resolve(self.sagas_dir.clone());
        Ok(Arc::new(source.load(topics, &contract)?))
    }
}

/// Answers about the saga files that need no Kafka and no database: a deployment's CI checks
/// its definitions, or publishes their AsyncAPI document, with the binary it will run.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OfflineArgs {
    /// Check the saga definitions against the message contract and topics.json, print each
    /// saga in one line, and exit: 0 when every file is right, else 1 with the problem.
    #[arg(long)]
    pub check_sagas: bool,
    /// Print the AsyncAPI document of the loaded definitions (what `/asyncapi.json` serves) and
    /// exit.
    #[arg(long, conflicts_with = "check_sagas")]
    pub print_asyncapi: bool,
}

impl OfflineArgs {
    /// Prints what a flag asks for: `true` when it did, and the process exits instead of
    /// starting. A reader that stops early (`| head`) ends the output quietly.
    pub fn answer(&self, registry: &Registry, topics: &platform::Topics) -> Result<bool> {
        use std::io::Write;
        let Some(output) = self.output(registry, topics) else {
            return Ok(false);
        };
        let mut stdout = std::io::stdout().lock();
        match writeln!(stdout, "{output}").and_then(|()| stdout.flush()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Output(e)),
            _ => Ok(true),
        }
    }

    /// What to print instead of starting, when one of the flags is given.
    fn output(&self, registry: &Registry, topics: &platform::Topics) -> Option<String> {
        if self.print_asyncapi {
            let document = crate::asyncapi::document(registry, &registry.contract, topics);
            return Some(serde_json::to_string_pretty(&document).expect("JSON values serialize"));
        }
        self.check_sagas.then(|| {
            registry
                .all()
                .map(|d| d.outline())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }
}

/// Deadlines and retries, from flags or the environment (defaults: [`Policy::default`]).
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// How long to wait for a reply before re-sending a command (doubles per attempt).
    #[arg(long, env = "STEP_TIMEOUT_MS", default_value_t = Policy::default().step_timeout_ms)]
    pub step_timeout_ms: i64,
    /// The longest wait between two sendings of a command.
    #[arg(long, env = "MAX_STEP_TIMEOUT_MS", default_value_t = Policy::default().max_step_timeout_ms)]
    pub max_step_timeout_ms: i64,
    /// Sendings of a forward command before its step counts as failed.
    #[arg(long, env = "MAX_STEP_ATTEMPTS", default_value_t = Policy::default().max_attempts)]
    pub max_step_attempts: u32,
    /// First delay before re-sending a compensation, or a step past the pivot, that failed
    /// (doubles per attempt).
    #[arg(long, env = "RETRY_DELAY_MS", default_value_t = Policy::default().retry_delay_ms)]
    pub retry_delay_ms: i64,
    /// How long a compensation, or a step past the saga's pivot, is retried before the saga is
    /// FAILED.
    #[arg(long, env = "COMPENSATION_LIMIT_MS", default_value_t = Policy::default().compensation_limit_ms)]
    pub compensation_limit_ms: i64,
    /// A saga not COMPLETED after this long is compensated (unless it has sent its pivot).
    #[arg(long, env = "SAGA_TIMEOUT_MS", default_value_t = Policy::default().saga_timeout_ms)]
    pub saga_timeout_ms: i64,
    #[command(flatten)]
    pub retention: platform::prune::RetentionArgs,
    /// Opt-in: sagas that ended well (COMPLETED, COMPENSATED, CANCELLED) this long ago are
    /// deleted with their inbox and outbox rows (`30d`, `90d`). Off by default: sagas are kept.
    /// FAILED sagas are never deleted.
    #[arg(long, env = "SAGA_RETENTION", value_parser = platform::time::parse_duration_setting)]
    pub saga_retention: Option<std::time::Duration>,
}

impl PolicyArgs {
    /// The settings as the orchestrator takes them.
    pub fn tuning(&self) -> Tuning {
        Tuning {
            policy: self.policy(),
            max_delivery_attempts: self.retention.max_delivery_attempts,
            retention: self.retention.retention,
            saga_retention: self.saga_retention,
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            step_timeout_ms: self.step_timeout_ms.max(1),
            max_step_timeout_ms: self.max_step_timeout_ms.max(1),
            max_attempts: self.max_step_attempts.max(1),
            retry_delay_ms: self.retry_delay_ms.max(1),
            compensation_limit_ms: self.compensation_limit_ms.max(0),
            saga_timeout_ms: self.saga_timeout_ms.max(1),
        }
    }
}
