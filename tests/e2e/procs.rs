//! The components as separate OS processes — the binaries a deployment runs — against a broker
//! that outlives them: the embedded Kafka hosted by the test process. For `kill -9`, SIGTERM and
//! broker faults.

use std::collections::HashMap;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Child processes, killed when the test ends however it ends.
#[derive(Default)]
pub struct Procs(pub HashMap<&'static str, Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, mut c) in self.0.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub const COMPONENTS: [&str; 5] = [
    "notification",
    "orders",
    "users",
    "payments",
    "orchestrator",
];

/// The names of `n` orchestrator instances: `orchestrator`, `orchestrator-2`, ...
pub const INSTANCES: [&str; 3] = ["orchestrator", "orchestrator-2", "orchestrator-3"];

fn binary(name: &str) -> &'static str {
    match name {
        n if n.starts_with("orchestrator") => env!("CARGO_BIN_EXE_orchestrator"),
        "orders" => env!("CARGO_BIN_EXE_order-service"),
        "users" => env!("CARGO_BIN_EXE_user-service"),
        "payments" => env!("CARGO_BIN_EXE_payment-service"),
        "notification" => env!("CARGO_BIN_EXE_notification-service"),
        other => panic!("no binary for {other}"),
    }
}

/// Starts every component as a process; `env` adds settings (policy, chaos) to all of them.
pub async fn spawn_processes(env: &[(&str, &str)]) -> TestApp {
    spawn_processes_on(test_postgres(), env, 1).await
}

/// [`spawn_processes`] with `instances` orchestrator processes (one consumer group, one
/// database) on the PostgreSQL server `postgres`, or on SQLite when `None`.
pub async fn spawn_processes_on(
    postgres: Option<String>,
    env: &[(&str, &str)],
    instances: usize,
) -> TestApp {
    spawn_processes_using(postgres, env, instances, Default::default()).await
}

/// [`spawn_processes_on`], with other binaries for some components (and their own settings).
pub async fn spawn_processes_using(
    postgres: Option<String>,
    env: &[(&str, &str)],
    instances: usize,
    binaries: Binaries,
) -> TestApp {
    // Deadlines that ride out a restart or a 10 s broker outage (2 + 4 + 8 + 8 + 8 s), yet
    // still re-send within the test's patience.
    let policy = orchestrator::Policy {
        step_timeout_ms: 2_000,
        max_step_timeout_ms: 8_000,
        max_attempts: 6,
        retry_delay_ms: 200,
        compensation_limit_ms: 60_000,
        saga_timeout_ms: 300_000,
    };
    let mut app = spawn_app_on(postgres, &[NO_IN_PROCESS], policy, Default::default()).await;
    app.addr = free_addr();
    app.proc_env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    app.binaries = binaries;
    for c in COMPONENTS {
        app.spawn_proc(c);
    }
    for name in &INSTANCES[1..instances.clamp(1, INSTANCES.len())] {
        app.instance_addrs.insert(name, free_addr());
        app.spawn_proc(name);
    }
    app.wait_healthy().await;
    app
}

pub fn free_addr() -> std::net::SocketAddr {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}").parse().unwrap()
}

impl TestApp {
    /// Starts (or restarts) one component as a process, configured by environment only.
    pub fn spawn_proc(&mut self, name: &'static str) {
        // Logs go to stderr, what a program produces (notification lines) to stdout.
        let open = |file: String| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.config.data_dir.join(file))
                .unwrap()
        };
        let (log, out) = (open(format!("{name}.log")), open(format!("{name}.stdout")));
        let mut cmd = match self.binaries.get(name) {
            Some((path, _)) => Command::new(path),
            None => Command::new(binary(name)),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KAFKA_BROKERS", self.kafka.bootstrap_servers())
            .env("CREATE_TOPICS", "false")
            // On the mock: it waits session.timeout.ms - 1 s on each group change and never wakes
            // a waiting fetch, so short session and fetch waits keep joins and hops fast. On a
            // real broker: its security settings, and the test's namespace.
            .env("KAFKA_CONFIG", self.kafka.process_config())
            .env("TOPIC_PREFIX", self.kafka.prefix())
            .env("GROUP_PREFIX", self.kafka.prefix())
            .env("RUST_LOG", "warn,orchestrator=info,services=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log);
        let p = self.config.tuning.policy;
        match name {
            instance if instance.starts_with("orchestrator") => {
                cmd.env(
                    "DATABASE_URL",
                    self.config.database_url("orchestrator").unwrap(),
                )
                .env("LISTEN_ADDR", self.addr_of(instance).to_string())
                .env("STEP_TIMEOUT_MS", p.step_timeout_ms.to_string())
                .env("MAX_STEP_TIMEOUT_MS", p.max_step_timeout_ms.to_string())
                .env("MAX_STEP_ATTEMPTS", p.max_attempts.to_string())
                .env("RETRY_DELAY_MS", p.retry_delay_ms.to_string())
                .env("COMPENSATION_LIMIT_MS", p.compensation_limit_ms.to_string())
                .env("SAGA_TIMEOUT_MS", p.saga_timeout_ms.to_string());
            }
            "notification" => {
                cmd.env(
                    "NOTIFICATION_LOG",
                    self.config.data_dir.join("notifications.log"),
                )
                .env("NOTIFICATION_STDOUT", "false");
            }
            service => {
                cmd.env("DATABASE_URL", self.config.database_url(service).unwrap());
            }
        }
        for (k, v) in &self.proc_env {
            cmd.env(k, v);
        }
        for (k, v) in self
            .binaries
            .get(name)
            .map(|(_, env)| env.as_slice())
            .unwrap_or_default()
        {
            cmd.env(k, v);
        }
        // A restart: the running process goes first, so the new one finds its address free (the
        // other way round, a new orchestrator raced the old one for LISTEN_ADDR and, losing, exited).
        if let Some(mut old) = self.procs.0.remove(name) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.0.insert(name, child);
    }

    /// Prints the end of every process log (to see why a test failed).
    pub fn dump_logs(&self) {
        for c in COMPONENTS.iter().chain(&INSTANCES[1..]) {
            eprintln!(
                "--- {c}.log (last lines, newest first)\n{}",
                self.log_tail(c, 15)
            );
        }
    }

    /// Everything process `name` logged (stderr) and printed (stdout) so far.
    pub fn proc_output(&self, name: &str) -> (String, String) {
        let read = |ext: &str| {
            std::fs::read_to_string(self.config.data_dir.join(format!("{name}.{ext}")))
                .unwrap_or_default()
        };
        (read("log"), read("stdout"))
    }

    /// The last `lines` lines of process `name`'s log, newest first.
    fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.config.data_dir.join(format!("{name}.log")))
            .unwrap_or_default();
        text.lines()
            .rev()
            .take(lines)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The OS process id of component `name`, while it runs.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.procs.0.get(name).map(|c| c.id())
    }

    /// `kill -9`: no shutdown path runs.
    pub fn kill9(&mut self, name: &'static str) {
        let mut child = self.procs.0.remove(name).expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit; returns its status and how long it took.
    pub fn sigterm(&mut self, name: &'static str) -> (ExitStatus, Duration) {
        let mut child = self.procs.0.remove(name).expect("running");
        let started = Instant::now();
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!(
                    "{name} ignored SIGTERM; its log, newest first:\n{}",
                    self.log_tail(name, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where an orchestrator instance listens.
    pub fn addr_of(&self, instance: &str) -> std::net::SocketAddr {
        self.instance_addrs
            .get(instance)
            .copied()
            .unwrap_or(self.addr)
    }

    /// `path` on one orchestrator instance.
    pub fn url_of(&self, instance: &str, path: &str) -> String {
        format!("http://{}{}", self.addr_of(instance), path)
    }

    /// Waits until `/health` answers 200 on every instance.
    pub async fn wait_healthy(&self) {
        let mut names = vec!["orchestrator"];
        names.extend(self.instance_addrs.keys().copied());
        for name in names {
            self.wait_healthy_at(name).await;
        }
    }

    /// Waits until `/health` answers 200 on one instance.
    pub async fn wait_healthy_at(&self, instance: &str) {
        let start = Instant::now();
        loop {
            if let Ok(r) = self
                .client
                .get(self.url_of(instance, "/health"))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{instance} never became healthy; its log, newest first:\n{}",
                self.log_tail(instance, 40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Posts `n` orders concurrently (a quarter of each test behaviour); returns the ids of the
    /// ones accepted.
    pub async fn post_many(&self, n: usize, tag: &str) -> Vec<String> {
        self.post_many_to(&["orchestrator"], n, tag).await
    }

    /// [`Self::post_many`], spread round-robin over the named orchestrator instances.
    pub async fn post_many_to(&self, instances: &[&str], n: usize, tag: &str) -> Vec<String> {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let client = self.client.clone();
            let url = self.url_of(instances[i % instances.len()], "/orders");
            let customer = format!(
                "{}-{tag}-{i}",
                ["c", "nocard", "declined", "noupdate"][i % 4]
            );
            tasks.spawn(async move {
                let r = client
                    .post(url)
                    .json(&order_body(&customer))
                    .send()
                    .await
                    .ok()?;
                if r.status() != 202 {
                    return None;
                }
                let body: serde_json::Value = r.json().await.ok()?;
                body["saga_id"].as_str().map(str::to_string)
            });
        }
        let mut ids = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(id)) = r {
                ids.push(id);
            }
        }
        ids
    }

    /// Waits for every saga to end and checks it against the services' databases; returns the
    /// count per final status.
    pub async fn all_terminal_and_consistent(
        &self,
        ids: &[String],
        within: Duration,
    ) -> std::collections::BTreeMap<String, usize> {
        let mut by_status = std::collections::BTreeMap::new();
        for id in ids {
            let saga = self
                .wait_for(id, within, |s| {
                    matches!(
                        s["status"].as_str(),
                        Some("COMPLETED" | "COMPENSATED" | "CANCELLED" | "FAILED")
                    )
                })
                .await;
            crate::chaos::assert_consistent(self, &saga).await;
            if saga["customer_id"]
                .as_str()
                .is_some_and(|c| c.starts_with("c-"))
                && saga["status"] != "COMPLETED"
                && !saga.to_string().contains("injected")
            {
                eprintln!("a good order did not complete: {saga}");
                self.dump_logs();
            }
            *by_status
                .entry(saga["status"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        by_status
    }
}
