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
    about = "Logs every saga message as a JSON line"
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
    let config = NotificationConfig {
        log_file: args.log_file,
        stdout: args.stdout,
        rotation: args.rotation.rotation(),
        kafka,
        topics,
        ops: ops.clone(),
    };
    let service = notification::start(config, cancel.clone()).await?;
    platform::ops::run_service(args.metrics_addr, &ops, &cancel, service.wait()).await?;
    Ok(())
}
