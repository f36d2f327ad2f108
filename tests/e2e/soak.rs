//! The soak: `saga-bench`'s load for 10 minutes against the components running as
//! OS processes, with every chaos knob on (failures, dropped, duplicated and delayed replies)
//! and a `kill -9` of a random component every 30 s (restarted a second later). At the end
//! every saga the orchestrator accepted must be terminal and consistent with the services'
//! databases, and the processes' memory must not grow.
//!
//! Not part of `cargo test` (it takes 10 minutes):
//! `cargo test --release --test e2e -- --ignored soak --nocapture` (`SOAK_SECONDS`, `SOAK_RATE`
//! change the length and the sagas per second; `TEST_DATABASE_URL` runs it on PostgreSQL).

use std::time::{Duration, Instant};

use saga_bench::{self as bench, BenchConfig, Load};

use crate::helpers::*;
use crate::procs::{spawn_processes, COMPONENTS};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of a process, in MB (Linux).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 10-minute soak: cargo test --release --test e2e -- --ignored soak --nocapture"]
async fn soak_with_chaos_and_a_kill_9_every_30_seconds() {
    let seconds = setting("SOAK_SECONDS", 600);
    let rate = setting("SOAK_RATE", 40);
    let mut app = spawn_processes(&[
        ("CHAOS_FAILURE_RATE", "0.05"),
        ("CHAOS_DROP_RATE", "0.05"),
        ("CHAOS_DUPLICATE_RATE", "0.05"),
        ("CHAOS_REPLY_DELAY_MS", "50"),
    ])
    .await;
    let load = tokio::spawn(bench::run(BenchConfig {
        urls: vec![app.url("")],
        sagas: (seconds * rate) as usize,
        load: Load::Open { rate: rate as f64 },
        mix: "happy=70,nocard=10,declined=10,noupdate=10"
            .parse()
            .unwrap(),
        saga_timeout: Duration::from_secs(900),
        pids: Vec::new(),
        progress: false,
    }));

    let started = Instant::now();
    let mut kills = Vec::new();
    // (seconds since start, component, RSS MB) every 30 s, before each kill.
    let mut samples: Vec<(u64, &str, f64)> = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let at = started.elapsed().as_secs();
        for c in COMPONENTS {
            if let Some(mb) = app.pid_of(c).and_then(rss_mb) {
                samples.push((at, c, mb));
            }
        }
        if started.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
        let victim = COMPONENTS[fastrand::usize(..COMPONENTS.len())];
        app.kill9(victim);
        kills.push((at, victim));
        tokio::time::sleep(Duration::from_secs(1)).await;
        app.spawn_proc(victim);
    }
    let report = load.await.unwrap();
    eprintln!(
        "load: {} sagas in {:.0} s, {:.1}/s terminal, by status {:?}, errors {:?}, latency p50 {:.0} ms p99 {:.0} ms",
        report.sagas,
        report.elapsed_s,
        report.terminal_per_s,
        report.by_status,
        report.errors,
        report.latency_ms.p50,
        report.latency_ms.p99,
    );
    eprintln!("kills: {kills:?}");

    // Every saga the orchestrator accepted, whatever the bench saw of it.
    let db = app.db("orchestrator").await;
    let ids = strings(&db, "SELECT saga_id FROM sagas WHERE saga_id <> $1", "").await;
    let by_status = app
        .all_terminal_and_consistent(&ids, Duration::from_secs(600))
        .await;
    eprintln!("{} sagas accepted, final {by_status:?}", ids.len());
    assert!(
        ids.len() as u64 >= seconds * rate / 2,
        "too little load ran"
    );

    // Memory: each component's RSS over time (a process restarted by a kill starts again low).
    for c in COMPONENTS {
        let series: Vec<String> = samples
            .iter()
            .filter(|(_, name, _)| *name == c)
            .map(|(at, _, mb)| format!("{at}s:{mb:.0}"))
            .collect();
        eprintln!("rss MB {c}: {}", series.join(" "));
    }
    let peak = samples.iter().map(|s| s.2).fold(0.0, f64::max);
    assert!(peak < 400.0, "a component reached {peak:.0} MB");
    app.stop().await;
}
