//! The orchestrator as its own process, for a real deployment (Kafka cluster + PostgreSQL).

use std::net::SocketAddr;

use clap::Parser;
use platform::db::SqliteSync;
use platform::kafka::KafkaArgs;

#[derive(Debug, Parser)]
#[command(name = "orchestrator", about = "The create-order saga orchestrator")]
struct Args {
    /// Address of the HTTP API.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// `postgres://...` in production, or `sqlite://path?mode=rwc`.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// SQLite only: `normal` survives a process crash, `full` also a power loss.
    #[arg(long, env = "SQLITE_SYNCHRONOUS", value_enum, default_value = "normal")]
    sqlite_synchronous: SqliteSync,
    /// The consumer group of all orchestrator instances.
    #[arg(long, env = "ORCHESTRATOR_GROUP", default_value = "saga-orchestrator")]
    group_id: String,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    policy: orchestrator::app::PolicyArgs,
    /// Times a reply may fail with a non-transient error before it is dead-lettered.
    #[arg(long, env = "MAX_DELIVERY_ATTEMPTS", default_value_t = 3)]
    max_delivery_attempts: u32,
    #[command(flatten)]
    api: orchestrator::http::ApiArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    platform::shutdown::exit(run(args).await)
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let _telemetry = platform::telemetry::init("orchestrator")?;
    // Settings first: a missing token must stop the start before anything connects.
    let api = args.api.config(args.listen)?;
    let (kafka, topics) = args.kafka.prepare().await?;
    let cancel = platform::shutdown::on_signal();
    let config = orchestrator::Config {
        listen: args.listen,
        database_url: args.database_url,
        sqlite_sync: args.sqlite_synchronous,
        kafka,
        topics,
        group_id: args.group_id,
        policy: args.policy.policy(),
        max_delivery_attempts: args.max_delivery_attempts,
        retention: args.policy.retention(),
        saga_retention: args.policy.saga_retention(),
        ops: platform::Ops::default(),
        api,
    };
    let orchestrator = orchestrator::Orchestrator::start(config, cancel.clone()).await?;
    platform::shutdown::run_bounded(&cancel, orchestrator.wait()).await;
    Ok(())
}
