//! `saga-bench`: throughput and latency of the real system, over HTTP.
//!
//! ```sh
//! cargo run --release --bin saga-bench -- --sagas 20000 --concurrency 500   # starts the system itself
//! cargo run --release --bin saga-bench -- --rate 200 --sagas 6000            # open loop
//! cargo run --release --bin saga-bench -- --url http://127.0.0.1:8080 --pid $(pgrep saga-system)
//! # 3 orchestrator processes sharing one PostgreSQL database and one consumer group:
//! cargo build --release --bins && target/release/saga-bench --instances 3 \
//!     --database-url postgres://postgres@127.0.0.1:5432/test --sagas 10000 --concurrency 300
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use platform::db::SqliteSync;
use saga_bench::{self as bench, BenchConfig, Load, Mix};

platform::use_mimalloc!();

#[derive(Debug, Parser)]
#[command(
    name = "saga-bench",
    version,
    after_help = platform::telemetry::ENV_HELP,
    about = "Drives the saga system over HTTP and measures it"
)]
struct Args {
    /// A running system to drive (repeat for several orchestrator instances: sagas are spread
    /// round-robin); without it, the bench starts the whole system in-process on embedded
    /// defaults (fresh data in a temporary folder).
    #[arg(long)]
    url: Vec<String>,
    /// Embedded: run the orchestrator as this many OS processes (the `orchestrator` binary
    /// beside this one) sharing one database and one consumer group; above 1 needs
    /// --database-url (PostgreSQL). 0: the orchestrator runs in-process. The peak RSS reported
    /// is then the orchestrator's own.
    #[arg(long, default_value_t = 0)]
    instances: usize,
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
    /// With --url: a process whose peak RSS to report (repeatable; the largest is reported).
    #[arg(long)]
    pid: Vec<u32>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Embedded only: use PostgreSQL (each component gets its own database on this server).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Run the in-process system against this Kafka cluster instead of the embedded mock, with
    /// topics and consumer groups of the bench's own (`bench-<pid>.` in front, deleted at the
    /// end). In-process orchestrator only.
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// With --kafka-brokers: librdkafka settings for every client, `key=value,...` (TLS, SASL,
    /// or tuning to compare: `fetch.wait.max.ms=500`).
    #[arg(long, default_value = "")]
    kafka_config: String,
    /// Embedded only, SQLite: `normal` survives a process crash, `full` also a power loss.
    #[arg(long, value_enum, default_value = "normal")]
    sqlite_synchronous: SqliteSync,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // The system under test logs warnings only (RUST_LOG to see more): a log line per request
    // would scroll the progress bar away.
    let _telemetry = platform::telemetry::init_with("saga-bench", "warn")?;
    let load = match args.rate {
        Some(rate) => Load::Open { rate },
        None => Load::Closed {
            concurrency: args.concurrency,
        },
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let data_dir = std::env::temp_dir().join(format!("saga-bench-{}", std::process::id()));
    let mut embedded = None;
    let mut instances = None;
    let mut real_kafka = None;
    let postgres_server = args.database_url.clone().filter(|u| !u.is_empty());
    let (urls, pids) = if !args.url.is_empty() {
        let urls = args.url.iter().map(|u| u.trim_end_matches('/').to_string());
        (urls.collect(), args.pid.clone())
    } else {
        let postgres_url = args.database_url.clone().filter(|u| !u.is_empty());
        if args.instances > 1 && postgres_url.is_none() {
            return Err("--instances above 1 needs --database-url postgres://... (one database shared by every instance; a SQLite file belongs to one process)".into());
        }
        let config = saga_system::SystemConfig {
            embedded_kafka_addr: None,
            listen: "127.0.0.1:0".parse()?,
            data_dir: data_dir.clone(),
            postgres_url: postgres_url.map(|u| {
                let name = format!("saga_bench_{}", std::process::id());
                platform::db::with_database_name(&u, &name)
            }),
            sqlite_sync: args.sqlite_synchronous,
            notification_stdout: false,
            notification_rotation: Default::default(),
            topics: platform::Topics::load(None)?,
            sagas: orchestrator::app::SagaArgs::default().load(&platform::Topics::load(None)?)?,
            tuning: Default::default(),
            chaos: Default::default(),
            ops: platform::Ops::default(),
            api: Default::default(),
            // Sagas alone, as every earlier measurement (an email per saga is another workload).
            delivery: saga_system::DeliveryArgs::off(),
        };
        if let Some(brokers) = &args.kafka_brokers {
            if args.instances > 0 {
                return Err(
                    "--kafka-brokers runs the orchestrator in-process (--instances 0)".into(),
                );
            }
            let prefix = format!("bench-{}.", std::process::id());
            let settings = platform::kafka::KafkaSettings {
                brokers: brokers.clone(),
                overrides: platform::kafka::parse_overrides(&args.kafka_config)?,
                embedded: false,
                instance_id: None,
                group_prefix: prefix.clone(),
            };
            let mut config = config;
            config.topics = config.topics.prefixed(&prefix)?;
            config.sagas = orchestrator::app::SagaArgs::default().load(&config.topics)?;
            settings.probe(Duration::from_secs(10)).await?;
            settings.ensure_topics(&config.topics).await?;
            let system = saga_system::System::start_on(&config, &settings, &cancel).await?;
            let url = format!("http://{}", system.addr());
            real_kafka = Some((settings, config.topics.clone()));
            embedded = Some(system);
            (vec![url], Vec::new())
        } else if args.instances == 0 {
            let system = saga_system::System::start(&config, &cancel).await?;
            let url = format!("http://{}", system.addr());
            embedded = Some(system);
            (vec![url], Vec::new())
        } else {
            let kafka = platform::embedded::EmbeddedKafka::start(1)?;
            kafka.create_topics(&config.topics)?;
            let services = saga_system::start_services(&config, &kafka.settings(), &cancel).await?;
            std::fs::create_dir_all(&data_dir)?;
            let started = bench::Instances::start(
                args.instances,
                kafka.bootstrap_servers(),
                &config.database_url("orchestrator")?,
                &data_dir,
            )
            .await?;
            let (urls, pids) = (started.urls.clone(), started.pids());
            instances = Some((started, services, kafka));
            (urls, pids)
        }
    };
    eprintln!("driving {}: {} sagas, {load:?}", urls.join(" "), args.sagas);
    let report = bench::run(BenchConfig {
        urls,
        sagas: args.sagas,
        load,
        mix: args.mix,
        saga_timeout: Duration::from_secs(args.saga_timeout_s),
        pids,
        progress: !args.no_progress,
    })
    .await;
    println!("{report}");
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    eprintln!("figures written to {}", args.json.display());
    if let Some(system) = embedded {
        cancel.cancel();
        system.wait().await;
    }
    if let Some((started, services, kafka)) = instances {
        // The orchestrators first, so they send nothing to services that are gone.
        drop(started);
        cancel.cancel();
        for s in services {
            s.wait().await;
        }
        drop(kafka);
    }
    if let Some((settings, topics)) = real_kafka {
        if let Err(e) = settings.delete_topics(&topics).await {
            eprintln!("could not delete the bench's topics: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    // The bench's own PostgreSQL databases go too: a benchmark leaves nothing behind.
    if let (Some(server), true) = (postgres_server, args.url.is_empty()) {
        for component in ["orchestrator", "orders", "users", "payments"] {
            let name = format!("saga_bench_{}_{component}", std::process::id());
            let url = platform::db::with_database_name(&server, &name);
            if let Err(e) = platform::db::drop_database(&server, &url).await {
                eprintln!("could not drop {name}: {e}");
            }
        }
    }
    Ok(())
}
