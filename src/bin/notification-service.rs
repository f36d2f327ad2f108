//! The notification service as its own process.

use std::path::PathBuf;

use clap::Parser;
use platform::kafka::KafkaArgs;
use services::notification::{self, NotificationConfig};

#[derive(Parser)]
#[command(
    name = "notification-service",
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
    kafka: KafkaArgs,
}

#[tokio::main]
async fn main() -> Result<(), services::Error> {
    platform::telemetry::init();
    let args = Args::parse();
    let (kafka, topics) = args.kafka.prepare().await?;
    let cancel = platform::shutdown::on_signal();
    let config = NotificationConfig {
        log_file: args.log_file,
        stdout: args.stdout,
        kafka,
        topics,
    };
    let service = notification::start(config, cancel.clone()).await?;
    platform::shutdown::run_bounded(&cancel, service.wait()).await;
    Ok(())
}
