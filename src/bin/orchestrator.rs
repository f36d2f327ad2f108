//! The orchestrator as its own process, for a real deployment (Kafka cluster + PostgreSQL).

use std::net::SocketAddr;

use clap::Parser;
use platform::kafka::KafkaArgs;

platform::use_mimalloc!();

#[derive(Debug, Parser)]
#[command(
    name = "orchestrator",
    version,
    after_help = platform::telemetry::ENV_HELP,
    about = "The saga orchestrator: runs the sagas of SAGAS_DIR"
)]
struct Args {
    /// Address of the HTTP API.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    db: platform::db::DbArgs,
    /// The consumer group of all orchestrator instances.
    #[arg(long, env = "ORCHESTRATOR_GROUP", default_value = orchestrator::app::DEFAULT_GROUP)]
    group_id: String,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    sagas: orchestrator::app::SagaArgs,
    #[command(flatten)]
    offline: orchestrator::app::OfflineArgs,
    #[command(flatten)]
    policy: orchestrator::app::PolicyArgs,
    #[command(flatten)]
    api: orchestrator::http::ApiArgs,
}

/// `--check-sagas` and `--print-asyncapi` need to know where the files are, not where Kafka and
/// the database are: tried first on their own, so that they work without `DATABASE_URL` or
/// `KAFKA_BROKERS` (with any other flag, the full parse below handles them).
#[derive(Debug, Parser)]
#[command(name = "orchestrator")]
struct OfflineCli {
    #[command(flatten)]
    offline: orchestrator::app::OfflineArgs,
    #[command(flatten)]
    sagas: orchestrator::app::SagaArgs,
    #[command(flatten)]
    topics: platform::topics::TopicArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if let Ok(cli) = OfflineCli::try_parse() {
        if cli.offline.check_sagas || cli.offline.print_asyncapi {
            return platform::shutdown::exit(offline(&cli));
        }
    }
    let args = Args::parse();
    platform::shutdown::exit(run(args).await)
}

fn offline(cli: &OfflineCli) -> Result<(), Box<dyn std::error::Error>> {
    let topics = cli.topics.load()?;
    let sagas = cli.sagas.load(&topics)?;
    cli.offline.answer(&sagas, &topics)?;
    Ok(())
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let _telemetry = platform::telemetry::init("orchestrator")?;
    let topics = args.kafka.topics.load()?;
    let sagas = args.sagas.load(&topics)?;
    if args.offline.answer(&sagas, &topics)? {
        return Ok(());
    }
    // Settings first: a missing token must stop the start before anything connects; then the
    // port, so that one in use is the error, not one line among those of a Kafka probe.
    let api = args.api.config(args.listen)?;
    let listener = orchestrator::app::bind(args.listen).await?;
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
        tuning: args.policy.tuning(),
        ops: platform::Ops::default(),
        api,
    };
    let orchestrator =
        orchestrator::Orchestrator::start_on(listener, config, cancel.clone()).await?;
    platform::shutdown::run_bounded(&cancel, orchestrator.wait()).await;
    Ok(())
}
