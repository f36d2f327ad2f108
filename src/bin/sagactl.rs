//! `sagactl`: the saga orchestrator from a terminal (see the `sagactl` crate).

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = sagactl::cli::Cli::parse();
    match sagactl::cli::run(cli).await {
        Ok(()) | Err(sagactl::Error::Quiet) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
