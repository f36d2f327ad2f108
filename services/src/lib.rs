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
//! - [`delivery`]: emails and alerts from saga outcomes, with non-blocking retries.

pub mod chaos;
pub mod delivery;
mod error;
pub mod notification;
pub mod order;
pub mod payment;
pub mod runtime;
pub mod user;

pub use error::{Error, Result};
pub use runtime::{ServiceConfig, ServiceHandle};

use platform::db::DbArgs;
use platform::kafka::KafkaArgs;
use platform::prune::RetentionArgs;

/// Settings of a standalone command service binary.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub chaos: chaos::Chaos,
    #[command(flatten)]
    pub retention: RetentionArgs,
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
        database_url: args.db.database_url,
        sqlite_sync: args.db.sqlite_synchronous,
        kafka,
        topics,
        chaos: args.chaos,
        max_attempts: args.retention.max_delivery_attempts,
        retention: args.retention.retention,
        ops: ops.clone(),
    };
    let service = runtime::start(service, &config, cancel.clone()).await?;
    platform::ops::run_service(args.metrics_addr, &ops, &cancel, service.wait()).await?;
    Ok(())
}
