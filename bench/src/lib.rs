//! `saga-bench`: drives a running system (or one it starts) over HTTP, exactly as clients do,
//! and measures throughput, latency from a saga's start to its terminal state, final statuses,
//! errors and peak memory.
//!
//! Latency is taken from each saga's own `created_at` → `completed_at` (the orchestrator's
//! clock, millisecond resolution), so how the bench follows sagas (long polls) does not distort it. Throughput
//! is terminal sagas divided by the time from the first POST to the last saga seen terminal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// Which test behaviour each saga uses, by weight.
#[derive(Debug, Clone)]
pub struct Mix(pub Vec<(String, u32)>);

impl std::str::FromStr for Mix {
    type Err = String;

    /// `happy=70,nocard=10,declined=10,noupdate=10`
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        for p in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("{p:?}: expected path=weight"))?;
            let k = k.trim();
            if !["happy", "nocard", "declined", "noupdate", "noorder"].contains(&k) {
                return Err(format!(
                    "unknown path {k:?}; use happy, nocard, declined, noupdate, noorder"
                ));
            }
            let w: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("{p:?}: weight must be a whole number"))?;
            parts.push((k.to_string(), w));
        }
        if parts.iter().map(|(_, w)| w).sum::<u32>() == 0 {
            return Err("the mix needs a positive weight".into());
        }
        Ok(Mix(parts))
    }
}

impl Mix {
    /// The customer id of saga `i`: spread evenly over the paths by weight.
    fn customer(&self, i: usize) -> String {
        let total: u32 = self.0.iter().map(|(_, w)| w).sum();
        let mut slot = (i as u32).wrapping_mul(2_654_435_761) % total;
        for (path, w) in &self.0 {
            if slot < *w {
                let prefix = if path == "happy" { "c" } else { path };
                return format!("{prefix}-bench-{i}");
            }
            slot -= w;
        }
        format!("c-bench-{i}")
    }
}

/// How the load is offered.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// This many sagas in flight at all times.
    Closed { concurrency: usize },
    /// This many new sagas per second, whatever the system does.
    Open { rate: f64 },
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The orchestrator instances; saga `i` is started and followed on `urls[i % len]`.
    pub urls: Vec<String>,
    pub sagas: usize,
    pub load: Load,
    pub mix: Mix,
    /// Give up on a saga not terminal after this long.
    pub saga_timeout: Duration,
    /// Read the peak RSS of these processes (none: the bench's own process).
    pub pids: Vec<u32>,
    pub progress: bool,
}

/// The figures of one run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub sagas: usize,
    pub load: String,
    pub elapsed_s: f64,
    pub terminal_per_s: f64,
    pub completed_per_s: f64,
    pub latency_ms: Percentiles,
    pub completed_latency_ms: Percentiles,
    pub by_status: BTreeMap<String, usize>,
    pub errors: BTreeMap<String, usize>,
    /// The largest peak RSS among the measured processes.
    pub peak_rss_mb: Option<f64>,
    /// Orchestrator instances driven.
    pub instances: usize,
}

#[derive(Debug, Serialize, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub count: usize,
}

impl Percentiles {
    fn of(mut xs: Vec<f64>) -> Self {
        if xs.is_empty() {
            return Percentiles::default();
        }
        xs.sort_by(f64::total_cmp);
        let at = |p: f64| xs[((p / 100.0) * (xs.len() - 1) as f64).round() as usize];
        Percentiles {
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
            max: xs[xs.len() - 1],
            count: xs.len(),
        }
    }
}

#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    completed_latencies: Vec<f64>,
    by_status: BTreeMap<String, usize>,
    errors: BTreeMap<String, usize>,
    last_done: Option<Instant>,
}

struct Shared {
    config: BenchConfig,
    client: reqwest::Client,
    tally: Mutex<Tally>,
    bar: ProgressBar,
}

/// Runs the benchmark.
pub async fn run(config: BenchConfig) -> Report {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        // Below the API's 10 s idle timeout: never reuse a connection the server is closing.
        .pool_idle_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let bar = if config.progress {
        ProgressBar::new(config.sagas as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} terminal, {per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let shared = Arc::new(Shared {
        config: config.clone(),
        client,
        tally: Mutex::new(Tally::default()),
        bar,
    });
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    match config.load {
        Load::Closed { concurrency } => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..concurrency.max(1) {
                let (shared, next) = (shared.clone(), next.clone());
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= shared.config.sagas {
                            break;
                        }
                        one_saga(&shared, i).await;
                    }
                });
            }
        }
        Load::Open { rate } => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..config.sagas {
                tick.tick().await;
                let shared = shared.clone();
                tasks.spawn(async move { one_saga(&shared, i).await });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let tally = std::mem::take(&mut *shared.tally.lock().await);
    shared.bar.finish_and_clear();
    let elapsed = tally
        .last_done
        .unwrap_or_else(Instant::now)
        .duration_since(started)
        .as_secs_f64()
        .max(1e-9);
    let terminal: usize = tally.by_status.values().sum();
    let completed = tally.by_status.get("COMPLETED").copied().unwrap_or(0);
    Report {
        sagas: config.sagas,
        load: match config.load {
            Load::Closed { concurrency } => format!("closed loop, concurrency {concurrency}"),
            Load::Open { rate } => format!("open loop, {rate} sagas/s offered"),
        },
        elapsed_s: elapsed,
        terminal_per_s: terminal as f64 / elapsed,
        completed_per_s: completed as f64 / elapsed,
        latency_ms: Percentiles::of(tally.latencies),
        completed_latency_ms: Percentiles::of(tally.completed_latencies),
        by_status: tally.by_status,
        errors: tally.errors,
        peak_rss_mb: if config.pids.is_empty() {
            peak_rss_mb(None)
        } else {
            config
                .pids
                .iter()
                .filter_map(|p| peak_rss_mb(Some(*p)))
                .reduce(f64::max)
        },
        instances: config.urls.len(),
    }
}

/// How long one `GET /sagas/{id}?wait_ms=` may be held by the server.
const LONG_POLL_MS: u64 = 5_000;

/// POSTs saga `i`, then follows it with long polls until it is terminal.
async fn one_saga(shared: &Shared, i: usize) {
    let urls = &shared.config.urls;
    let url = &urls[i % urls.len()];
    let body = json!({
        "customer_id": shared.config.mix.customer(i),
        "order_details": {
            "foodItems": [{"name": "Burger", "price": 12.5, "quantity": 2}],
            "storeLocation": "Campus Store", "deliveryLocation": "Library", "deliveryFee": 3.0
        }
    });
    let id = match shared
        .client
        .post(format!("{url}/orders"))
        .json(&body)
        .send()
        .await
    {
        Ok(r) if r.status() == 202 => match r.json::<Value>().await {
            Ok(v) => v["saga_id"].as_str().unwrap_or_default().to_string(),
            Err(_) => return error(shared, "POST: unreadable body").await,
        },
        Ok(r) => return error(shared, &format!("POST: HTTP {}", r.status().as_u16())).await,
        Err(e) => return error(shared, &format!("POST: {}", kind(&e))).await,
    };
    let started = Instant::now();
    loop {
        // Long polling: the server answers when the saga has ended (or after `wait_ms`), so
        // following a saga costs one or two requests rather than a poll every few milliseconds.
        let asked = Instant::now();
        let saga: Value = match shared
            .client
            .get(format!("{url}/sagas/{id}?wait_ms={LONG_POLL_MS}"))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => r.json().await.unwrap_or(Value::Null),
            Ok(_) | Err(_) => Value::Null,
        };
        if asked.elapsed() < Duration::from_millis(20) && saga["completed_at"].is_null() {
            // An error, or a server that does not hold the answer: do not spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = saga["status"].as_str().unwrap_or_default();
        if matches!(status, "COMPLETED" | "COMPENSATED" | "CANCELLED" | "FAILED") {
            let ms = |k: &str| {
                saga[k]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs_f64() * 1000.0)
            };
            let latency = match (ms("created_at"), ms("completed_at")) {
                (Some(a), Some(b)) => b - a,
                _ => started.elapsed().as_secs_f64() * 1000.0,
            };
            let mut t = shared.tally.lock().await;
            t.latencies.push(latency);
            if status == "COMPLETED" {
                t.completed_latencies.push(latency);
            }
            *t.by_status.entry(status.to_string()).or_insert(0) += 1;
            t.last_done = Some(Instant::now());
            drop(t);
            shared.bar.inc(1);
            return;
        }
        if started.elapsed() > shared.config.saga_timeout {
            return error(shared, "saga not terminal in time").await;
        }
    }
}

async fn error(shared: &Shared, what: &str) {
    *shared
        .tally
        .lock()
        .await
        .errors
        .entry(what.to_string())
        .or_insert(0) += 1;
    shared.bar.inc(1);
}

fn kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection refused"
    } else {
        "request failed"
    }
}

/// Peak resident memory (VmHWM) of a process, in MB; Linux only.
pub fn peak_rss_mb(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.latency_ms;
        let c = &self.completed_latency_ms;
        writeln!(
            f,
            "sagas            {} ({}, {} orchestrator instance{})",
            self.sagas,
            self.load,
            self.instances,
            if self.instances == 1 { "" } else { "s" }
        )?;
        writeln!(f, "elapsed          {:.2} s", self.elapsed_s)?;
        writeln!(
            f,
            "throughput       {:.0} terminal sagas/s, {:.0} completed sagas/s",
            self.terminal_per_s, self.completed_per_s
        )?;
        writeln!(
            f,
            "latency (all)    p50 {:.0} ms  p95 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
            p.p50, p.p95, p.p99, p.max
        )?;
        writeln!(
            f,
            "latency (COMPLETED) p50 {:.0} ms  p95 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
            c.p50, c.p95, c.p99, c.max
        )?;
        writeln!(f, "final status     {:?}", self.by_status)?;
        writeln!(f, "errors           {:?}", self.errors)?;
        match self.peak_rss_mb {
            Some(mb) => writeln!(f, "peak RSS         {mb:.1} MB (largest process)"),
            None => writeln!(f, "peak RSS         unknown"),
        }
    }
}

/// Orchestrator instances run as OS processes (the `orchestrator` binary beside `saga-bench`),
/// all in one consumer group on one database: what `--instances N` measures. Stopped with
/// SIGTERM when dropped.
pub struct Instances {
    children: Vec<std::process::Child>,
    pub urls: Vec<String>,
}

impl Instances {
    /// Starts `n` instances against the Kafka at `brokers` and the database `database_url`, and
    /// waits until each answers `/health`.
    pub async fn start(
        n: usize,
        brokers: &str,
        database_url: &str,
        log_dir: &std::path::Path,
    ) -> std::io::Result<Self> {
        let exe = std::env::current_exe()?.with_file_name("orchestrator");
        let mut instances = Instances {
            children: Vec::new(),
            urls: Vec::new(),
        };
        for i in 0..n {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let log = std::fs::File::create(log_dir.join(format!("orchestrator-{i}.log")))?;
            let child = std::process::Command::new(&exe)
                .env("KAFKA_BROKERS", brokers)
                .env("CREATE_TOPICS", "false")
                .env("KAFKA_CONFIG", platform::kafka::EMBEDDED_CONSUMER_CONFIG)
                .env("DATABASE_URL", database_url)
                .env("LISTEN_ADDR", addr.to_string())
                .env("RUST_LOG", "warn")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "starting {}: {e} (build it with `cargo build --release --bins`)",
                            exe.display()
                        ),
                    )
                })?;
            instances.children.push(child);
            instances.urls.push(format!("http://{addr}"));
        }
        let client = reqwest::Client::new();
        for url in &instances.urls {
            let started = Instant::now();
            loop {
                let ok = client.get(format!("{url}/health")).send().await;
                if ok.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    return Err(std::io::Error::other(format!("{url} never became healthy")));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(instances)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for c in &self.children {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_spreads_sagas_by_weight() {
        let mix: Mix = "happy=50,nocard=50".parse().unwrap();
        let nocard = (0..10_000)
            .filter(|&i| mix.customer(i).starts_with("nocard-"))
            .count();
        assert!((4_500..5_500).contains(&nocard), "{nocard}");
        assert!("happy=0".parse::<Mix>().is_err());
        assert!("sad=1".parse::<Mix>().is_err());
        assert!("happy".parse::<Mix>().is_err());
    }

    #[test]
    fn percentiles_come_from_the_sorted_sample() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p99, p.max, p.count), (51.0, 99.0, 100.0, 100));
        assert_eq!(Percentiles::of(vec![]).count, 0);
    }
}
