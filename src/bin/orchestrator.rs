//! The orchestrator as its own process, for a real deployment (Kafka cluster + PostgreSQL).

use std::net::SocketAddr;

use clap::Parser;
use platform::kafka::KafkaArgs;

platform::use_mimalloc!();

#[derive(Debug, Parser)]
#[command(
    name = "orchestrator",
    about = "The saga orchestrator: runs the sagas of SAGAS_DIR"
)]
struct Args {
    /// Address of the HTTP API.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    db: platform::db::DbArgs,
    /// The consumer group of all orchestrator instances.
    #[arg(long, env = "ORCHESTRATOR_GROUP", default_value = "saga-orchestrator")]
    group_id: String,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    sagas: orchestrator::app::SagaArgs,
    #[command(flatten)]
    policy: orchestrator::app::PolicyArgs,
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
    let sagas = args
        .sagas
        .load(&platform::Topics::load(args.kafka.topics_file.as_deref())?)?;
    let (kafka, topics) = args.kafka.prepare().await?;
    let cancel = platform::shutdown::on_signal();
    let config = orchestrator::Config {
        listen: args.listen,
        database_url: args.db.database_url,
        sqlite_sync: args.db.sqlite_synchronous,
        kafka,
        topics,
        group_id: args.group_id,
        sagas,
        policy: args.policy.policy(),
        max_delivery_attempts: args.policy.max_delivery_attempts(),
        retention: args.policy.retention(),
        saga_retention: args.policy.saga_retention(),
        ops: platform::Ops::default(),
        api,
    };
    let orchestrator = orchestrator::Orchestrator::start(config, cancel.clone()).await?;
    platform::shutdown::run_bounded(&cancel, orchestrator.wait()).await;
    Ok(())
}
