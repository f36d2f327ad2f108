//! `saga-bench`: throughput and latency of the real system, over HTTP.
//!
//! ```sh
//! cargo run --release --bin saga-bench -- --sagas 20000 --concurrency 500   # starts the system itself
//! cargo run --release --bin saga-bench -- --rate 200 --sagas 6000            # open loop
//! cargo run --release --bin saga-bench -- --url http://127.0.0.1:8080 --pid $(pgrep saga-system)
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use platform::db::SqliteSync;
use saga_system::bench::{self, BenchConfig, Load, Mix};

#[derive(Debug, Parser)]
#[command(
    name = "saga-bench",
    about = "Drives the saga system over HTTP and measures it"
)]
struct Args {
    /// A running system to drive; without it, the bench starts the whole system in-process on
    /// embedded defaults (fresh data in a temporary folder).
    #[arg(long)]
    url: Option<String>,
    /// How many sagas to run.
    #[arg(long, default_value_t = 20_000)]
    sagas: usize,
    /// Closed loop: this many sagas in flight at all times.
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
    /// Open loop: offer this many new sagas per second instead.
    #[arg(long)]
    rate: Option<f64>,
    /// Paths by weight: happy, nocard, declined, noupdate, noorder.
    #[arg(long, default_value = "happy=70,nocard=10,declined=10,noupdate=10")]
    mix: Mix,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "saga-bench.json")]
    json: PathBuf,
    /// A saga not terminal after this many seconds counts as an error.
    #[arg(long, default_value_t = 120)]
    saga_timeout_s: u64,
    /// With --url: the process whose peak RSS to report.
    #[arg(long)]
    pid: Option<u32>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Embedded only: use PostgreSQL (each component gets its own database on this server).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Embedded only, SQLite: `normal` survives a process crash, `full` also a power loss.
    #[arg(long, value_enum, default_value = "normal")]
    sqlite_synchronous: SqliteSync,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    platform::telemetry::init();
    let args = Args::parse();
    let load = match args.rate {
        Some(rate) => Load::Open { rate },
        None => Load::Closed {
            concurrency: args.concurrency,
        },
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut embedded = None;
    let data_dir = std::env::temp_dir().join(format!("saga-bench-{}", std::process::id()));
    let url = match &args.url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let config = saga_system::SystemConfig {
                listen: "127.0.0.1:0".parse()?,
                data_dir: data_dir.clone(),
                postgres_url: args
                    .database_url
                    .clone()
                    .filter(|u| !u.is_empty())
                    .map(|u| {
                        let name = format!("saga_bench_{}", std::process::id());
                        platform::db::with_database_name(&u, &name)
                    }),
                sqlite_sync: args.sqlite_synchronous,
                notification_stdout: false,
                topics: platform::Topics::load(None)?,
                policy: orchestrator::Policy::default(),
                chaos: Default::default(),
                max_delivery_attempts: 3,
                retention: std::time::Duration::from_millis(
                    orchestrator::app::DEFAULT_RETENTION_MS,
                ),
            };
            let system = saga_system::System::start(&config, &cancel).await?;
            let url = format!("http://{}", system.addr());
            embedded = Some(system);
            url
        }
    };
    eprintln!("driving {url}: {} sagas, {load:?}", args.sagas);
    let report = bench::run(BenchConfig {
        url,
        sagas: args.sagas,
        load,
        mix: args.mix,
        saga_timeout: Duration::from_secs(args.saga_timeout_s),
        pid: if embedded.is_some() { None } else { args.pid },
        progress: !args.no_progress,
    })
    .await;
    println!("{report}");
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    eprintln!("figures written to {}", args.json.display());
    if let Some(system) = embedded {
        cancel.cancel();
        system.wait().await;
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}
