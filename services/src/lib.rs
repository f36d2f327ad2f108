//! # Stub services driven by the create-order saga
//!
//! Stand-ins for the real order, user, payment and notification services: each consumes its
//! `*_commands` topic in its own consumer group, keeps its own state in its own database, and
//! replies on its `*_events` topic. Their deterministic test behaviours (like a payment
//! provider's test cards) let every saga path be driven from `POST /orders`:
//!
//! | `customer_id` prefix | effect                                                      |
//! |----------------------|-------------------------------------------------------------|
//! | `noorder-`           | the order service cannot create the order                   |
//! | `nocard-`            | the user service has no payment method                      |
//! | `declined-`          | the payment service declines (so does any amount > 1,000,000 cents) |
//! | `noupdate-`          | the order service cannot confirm the order                  |
//!
//! ## Layout
//! - [`runtime`]: what every command service shares: consume, handle once, reply.
//! - [`order`], [`user`], [`payment`]: the business rules of each.
//! - [`chaos`]: faults injected on purpose (failures, delays, drops, duplicates).
//! - [`notification`]: logs every message of every topic as a JSON line.

pub mod chaos;
mod error;
pub mod notification;
pub mod order;
pub mod payment;
pub mod runtime;
pub mod user;

pub use error::{Error, Result};
pub use runtime::{ServiceConfig, ServiceHandle};

use platform::db::SqliteSync;
use platform::kafka::KafkaArgs;

/// Settings of a standalone command service binary.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// `postgres://...` in production, or `sqlite://path?mode=rwc`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// SQLite only: `normal` survives a process crash, `full` also a power loss.
    #[arg(long, env = "SQLITE_SYNCHRONOUS", value_enum, default_value = "normal")]
    pub sqlite_synchronous: SqliteSync,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub chaos: chaos::Chaos,
    /// Times a command may fail with a non-transient error before it is dead-lettered.
    #[arg(long, env = "MAX_DELIVERY_ATTEMPTS", default_value_t = 3)]
    pub max_delivery_attempts: u32,
    /// How long processed commands are kept for de-duplication before they are pruned:
    /// milliseconds, or with units (`2h`). Keep it longer than the orchestrator may re-send a
    /// command (its COMPENSATION_LIMIT_MS).
    #[arg(long = "retention-ms", env = "RETENTION_MS", value_name = "RETENTION_MS",
          default_value = platform::prune::DEFAULT_RETENTION_TEXT,
          value_parser = platform::time::parse_duration_setting)]
    pub retention: std::time::Duration,
    /// Where to serve `/livez`, `/readyz` and `/metrics` (e.g. `0.0.0.0:9090`); none if unset.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Runs one command service as its own process until Ctrl-C or SIGTERM.
pub async fn run_standalone<S: runtime::CommandService>(
    service: S,
    args: ServiceArgs,
) -> Result<()> {
    let _telemetry = platform::telemetry::init(S::NAME)?;
    let (kafka, topics) = args.kafka.prepare().await?;
    let cancel = platform::shutdown::on_signal();
    let ops = platform::Ops::default();
    let config = ServiceConfig {
        database_url: args.database_url,
        sqlite_sync: args.sqlite_synchronous,
        kafka,
        topics,
        chaos: args.chaos,
        max_attempts: args.max_delivery_attempts,
        retention: args.retention,
        ops: ops.clone(),
    };
    let service = runtime::start(service, &config, cancel.clone()).await?;
    platform::ops::run_service(args.metrics_addr, &ops, &cancel, service.wait()).await?;
    Ok(())
}
