//! The order service as its own process.

use clap::Parser;

platform::use_mimalloc!();

#[derive(Parser)]
#[command(
    name = "order-service",
    version,
    after_help = platform::telemetry::ENV_HELP,
    about = "Stub order service of the create-order saga"
)]
struct Args {
    #[command(flatten)]
    service: services::ServiceArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    platform::shutdown::exit(
        services::run_standalone(services::order::OrderService, args.service).await,
    )
}
