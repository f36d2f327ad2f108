//! `cargo run --release`: the whole system in one process, on embedded defaults (or against the
//! Kafka cluster `KAFKA_BROKERS` names).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use platform::db::SqliteSync;

platform::use_mimalloc!();

#[derive(Debug, Parser)]
#[command(
    name = "saga-system",
    version,
    after_help = platform::telemetry::ENV_HELP,
    about = "The saga system (create-order and refund sagas), all in one process, with an embedded Kafka (or KAFKA_BROKERS)"
)]
struct Args {
    /// Address of the orchestrator's HTTP API.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where other programs (kcat, a Kafka UI) reach the embedded Kafka. Default: 127.0.0.1:9092
    /// when free, else a free port (the log says which).
    #[arg(long, env = "EMBEDDED_KAFKA_ADDR")]
    embedded_kafka_addr: Option<SocketAddr>,
    /// SQLite databases and the notification log go here.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Use PostgreSQL instead of SQLite: each component gets its own database on this server.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// SQLite only: `normal` survives a process crash, `full` also a power loss.
    #[arg(long, env = "SQLITE_SYNCHRONOUS", value_enum, default_value = "normal")]
    sqlite_synchronous: SqliteSync,
    /// Print every notification line to stdout as well as to the log file.
    #[arg(long, env = "NOTIFICATION_STDOUT", default_value_t = true, action = clap::ArgAction::Set)]
    notification_stdout: bool,
    #[command(flatten)]
    notification_rotation: services::notification::RotationArgs,
    #[command(flatten)]
    topics: platform::topics::TopicArgs,
    /// Run against this Kafka cluster (e.g. `scripts/kafka.sh start`'s `127.0.0.1:19092`)
    /// instead of the embedded one; the topics of topics.json are created there.
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// With KAFKA_BROKERS: librdkafka properties for every client, `key=value,...` (TLS, SASL).
    #[arg(long, env = "KAFKA_CONFIG", default_value = "")]
    kafka_config: String,
    /// With KAFKA_BROKERS: put in front of every consumer group id.
    #[arg(long, env = "GROUP_PREFIX", default_value = "")]
    group_prefix: String,
    #[command(flatten)]
    sagas: orchestrator::app::SagaArgs,
    #[command(flatten)]
    offline: orchestrator::app::OfflineArgs,
    #[command(flatten)]
    policy: orchestrator::app::PolicyArgs,
    #[command(flatten)]
    chaos: services::chaos::Chaos,
    #[command(flatten)]
    api: orchestrator::http::ApiArgs,
    #[command(flatten)]
    delivery: services::delivery::DeliveryArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    platform::shutdown::exit(run(args).await)
}

async fn run(args: Args) -> Result<(), saga_system::Error> {
    let _telemetry = platform::telemetry::init("saga-system")?;
    let topics = args.topics.load()?;
    let sagas = args
        .sagas
        .load(&topics)
        .map_err(saga_system::Error::Orchestrator)?;
    if args
        .offline
        .answer(&sagas, &topics)
        .map_err(saga_system::Error::Orchestrator)?
    {
        return Ok(());
    }
    let config = saga_system::SystemConfig {
        listen: args.listen,
        embedded_kafka_addr: args.embedded_kafka_addr,
        data_dir: args.data_dir,
        postgres_url: args.database_url.filter(|u| !u.is_empty()),
        sqlite_sync: args.sqlite_synchronous,
        notification_stdout: args.notification_stdout,
        notification_rotation: args.notification_rotation.rotation(),
        topics,
        sagas,
        tuning: args.policy.tuning(),
        chaos: args.chaos,
        ops: platform::Ops::default(),
        api: args
            .api
            .config(args.listen)
            .map_err(saga_system::Error::Config)?,
        delivery: args.delivery,
    };
    let cancel = platform::shutdown::on_signal();
    let system = match args.kafka_brokers.filter(|b| !b.trim().is_empty()) {
        None => saga_system::System::start(&config, &cancel).await?,
        Some(brokers) => {
            let kafka = platform::kafka::KafkaArgs {
                kafka_brokers: brokers,
                kafka_config: args.kafka_config,
                kafka_config_file: None,
                topics: args.topics.clone(),
                group_prefix: args.group_prefix,
                create_topics: true,
                kafka_startup_timeout: std::time::Duration::from_secs(30),
                instance_id: None,
            };
            let (settings, _) = kafka.prepare().await?;
            saga_system::System::start_on(&config, &settings, &cancel).await?
        }
    };
    tracing::info!(
        api = %format!("http://{}", system.addr()),
        notifications = %config.data_dir.join("notifications.log").display(),
        mail = %config.data_dir.join("mail").display(),
        "saga system ready; Ctrl-C to stop"
    );
    platform::shutdown::run_bounded(&cancel, system.wait()).await;
    Ok(())
}
