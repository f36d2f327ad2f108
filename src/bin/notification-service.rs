//! The notification service as its own process.

use std::path::PathBuf;

use clap::Parser;
use platform::kafka::KafkaArgs;
use services::notification::{self, NotificationConfig};

platform::use_mimalloc!();

#[derive(Parser)]
#[command(
    name = "notification-service",
    version,
    after_help = platform::telemetry::ENV_HELP,
    about = "Logs every saga message as a JSON line, and emails customers and alerts operators of saga outcomes"
)]
struct Args {
    /// The log file (appended to).
    #[arg(
        long,
        env = "NOTIFICATION_LOG",
        default_value = "./data/notifications.log"
    )]
    log_file: PathBuf,
    /// Also print every line to stdout.
    #[arg(long, env = "NOTIFICATION_STDOUT", default_value_t = true, action = clap::ArgAction::Set)]
    stdout: bool,
    #[command(flatten)]
    rotation: notification::RotationArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    delivery: services::delivery::DeliveryArgs,
    /// The deliveries' database (what was sent): `postgres://...`, or a SQLite file. Default:
    /// `notification.db` beside the log file.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// SQLite only: `normal` survives a process crash, `full` also a power loss.
    #[arg(long, env = "SQLITE_SYNCHRONOUS", value_enum, default_value = "normal")]
    sqlite_synchronous: platform::db::SqliteSync,
    #[command(flatten)]
    sagas: orchestrator::app::SagaArgs,
    /// Where to serve `/livez`, `/readyz` and `/metrics` (e.g. `0.0.0.0:9090`); none if unset.
    #[arg(long, env = "METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    platform::shutdown::exit(run(args).await)
}

async fn run(args: Args) -> Result<(), services::Error> {
    let _telemetry = platform::telemetry::init(notification::NAME)?;
    let (kafka, topics) = args.kafka.prepare().await?;
    let cancel = platform::shutdown::on_signal();
    let ops = platform::Ops::default();
    let data_dir = args
        .log_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let delivery = match args.delivery.dir() {
        None => None,
        Some(_) => {
            let sagas = args
                .sagas
                .load(&topics)
                .map_err(|e| services::Error::Notifications {
                    file: "SAGAS_DIR".into(),
                    reason: e.to_string(),
                })?;
            let database_url = match args.database_url.filter(|u| !u.is_empty()) {
                Some(url) => url,
                None => platform::db::sqlite_url(&data_dir.join("notification.db"))?,
            };
            args.delivery.config(
                saga_system::saga_fields(&sagas),
                database_url,
                args.sqlite_synchronous,
                &data_dir,
            )
        }
    };
    let config = NotificationConfig {
        log_file: args.log_file,
        stdout: args.stdout,
        rotation: args.rotation.rotation(),
        kafka,
        topics,
        ops: ops.clone(),
        delivery,
    };
    let service = notification::start(config, cancel.clone()).await?;
    platform::ops::run_service(args.metrics_addr, &ops, &cancel, service.wait()).await?;
    Ok(())
}
