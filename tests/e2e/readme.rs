//! Every command the README shows (and docs/api.md, its API examples), run as a newcomer would
//! run it: against the system its
//! `cargo run --release` starts (the `saga-system` binary, on a free port and a data folder of
//! its own), with the README's placeholders (the saga id, the refund's order and payment) filled
//! in with real ones. A command this file does not know how to run fails the test, so a command
//! added to the README is run too.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;
use crate::procs::free_addr;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The saga id the README's examples use.
const PLACEHOLDER_ID: &str = "1d31efd3-ef5a-4bfd-a6a9-6074e742fef7";

/// The pages whose commands are run: the README, and the API examples it links to.
const PAGES: [&str; 2] = ["README.md", "docs/api.md"];

/// The commands of the pages' `sh` blocks, each with where it starts (`README.md:31`): comment
/// lines dropped, continuation lines and quotes spanning lines joined.
fn readme_commands() -> Vec<(String, String)> {
    PAGES
        .iter()
        .flat_map(|page| {
            commands_of(page)
                .into_iter()
                .map(move |(n, c)| (format!("{page}:{n}"), c))
        })
        .collect()
}

fn commands_of(page: &str) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(Path::new(REPO).join(page)).unwrap();
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            in_block = line.trim() == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some((start, mut command)) = current.take() {
            command.push('\n');
            command.push_str(line);
            if complete(&command) {
                commands.push((start, command));
            } else {
                current = Some((start, command));
            }
            continue;
        }
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if complete(line) {
            commands.push((n + 1, line.to_string()));
        } else {
            current = Some((n + 1, line.to_string()));
        }
    }
    assert!(current.is_none(), "an unfinished command: {current:?}");
    commands
}

/// A command is complete when no quote is open, no line ends in `\`, and a `for` has its `done`.
fn complete(command: &str) -> bool {
    let code = command
        .lines()
        .map(|l| l.split(" # ").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let (mut single, mut double, mut escaped) = (false, false, false);
    for c in code.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            _ => {}
        }
    }
    let opens_loop = code.trim_start().starts_with("for ");
    !single
        && !double
        && !code.trim_end().ends_with('\\')
        && (!opens_loop || code.trim_end().ends_with("done"))
}

/// `cargo run --release`'s binary with `env`, its working directory the repository (as after a
/// clone), data in `data_dir`; waits until it is ready.
fn start_system(env: &[(&str, String)], data_dir: &Path) -> (Child, String) {
    let addr = free_addr().to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_saga-system"))
        .current_dir(REPO)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", &addr)
        .env("DATA_DIR", data_dir)
        .env("NOTIFICATION_STDOUT", "false")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data_dir.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    (child, addr)
}

async fn wait_ready(client: &reqwest::Client, addr: &str, log: &Path) {
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the system at {addr} never got ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts an order of `customer` and waits until it ends; the saga as the API shows it.
async fn order(client: &reqwest::Client, addr: &str, customer: &str) -> Value {
    let r = client
        .post(format!("http://{addr}/orders"))
        .json(&order_body(customer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["saga_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = client
        .get(format!("http://{addr}/sagas/{id}?wait_ms=9000"))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// Runs `command` with bash, the HTTP status of every curl it makes written to stderr; returns
/// whether it succeeded, its stdout and those statuses.
fn run_shell(command: &str, cwd: &Path) -> (bool, String, Vec<u16>, String) {
    let prelude = "set -o pipefail\n\
        curl() { command curl --max-time 20 -w '%{stderr}HTTP %{http_code}\\n' \"$@\"; }\n\
        tail() { timeout 3 tail \"$@\"; local rc=$?; [ $rc = 124 ] && return 0; return $rc; }\n";
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{prelude}{command}"))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let statuses = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("HTTP "))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        statuses,
        stderr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_readme_runs_as_shown() {
    let commands = readme_commands();
    assert!(commands.len() >= 20, "{commands:#?}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (system, addr) = start_system(&[], &data);
    wait_ready(&client, &addr, &data.with_extension("log")).await;
    let kafka = kafka_address(&data.with_extension("log"));
    // The README's saga, and the completed order its refund example refunds.
    let followed = order(&client, &addr, "c-readme").await;
    let refunded = order(&client, &addr, "c-1").await;
    assert_eq!(followed["status"], "COMPLETED", "{followed}");
    assert_eq!(refunded["status"], "COMPLETED", "{refunded}");
    let fill = |command: &str| -> String {
        command
            .replace("localhost:8080", &addr)
            .replace("127.0.0.1:9092", &kafka)
            .replace(PLACEHOLDER_ID, followed["saga_id"].as_str().unwrap())
            .replace(
                r#""order_id":"…""#,
                &format!(r#""order_id":"{}""#, refunded["order_id"].as_str().unwrap()),
            )
            .replace(
                r#""payment_id":"…""#,
                &format!(
                    r#""payment_id":"{}""#,
                    refunded["payment_id"].as_str().unwrap()
                ),
            )
            .replace(
                "data/notifications.log",
                &data.join("notifications.log").display().to_string(),
            )
            .replace("data/mail/", &format!("{}/", data.join("mail").display()))
    };

    let mut ran = 0;
    for (line, command) in &commands {
        let code = command.split(" # ").next().unwrap_or(command).trim();
        let env: Vec<(&str, String)> = code
            .split_whitespace()
            .take_while(|w| w.contains('=') && !w.starts_with('-'))
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('\'').to_string()))
            .collect();
        let program = code.split_whitespace().nth(env.len()).unwrap_or_default();
        match program {
            "cargo" if code.ends_with("cargo test") => {
                skip(line, code, ".ci/run runs it (this test is part of it)");
            }
            "scripts/kafka.sh" => skip(line, code, ".ci/run runs it before its Apache Kafka run"),
            "cargo" if code.contains("cargo run --release") => {
                if env.is_empty() {
                    // The system this test drives.
                    ran += 1;
                    continue;
                }
                run_variant(&client, line, code, env).await;
                ran += 1;
            }
            "kcat" => {
                if kcat().is_none() {
                    continue;
                }
                let (ok, stdout, _, stderr) = run_shell(&fill(command), Path::new(REPO));
                assert!(ok, "{line}: {command}\n{stderr}");
                assert!(!stdout.trim().is_empty(), "{line} printed nothing");
                if code.contains("-C -t order_commands") {
                    assert!(
                        stdout.contains(followed["saga_id"].as_str().unwrap()),
                        "{line}: the followed saga's commands: {stdout}"
                    );
                }
                ran += 1;
            }
            "curl" | "for" | "tail" | "ls" => {
                let (ok, stdout, statuses, stderr) = run_shell(&fill(command), Path::new(REPO));
                assert!(ok, "{line}: {command}\n{stderr}");
                assert!(
                    !statuses.is_empty() || program == "tail" || program == "ls",
                    "{line}: no request made"
                );
                for status in &statuses {
                    // The README says a retry of a saga that is not FAILED or parked is a 409.
                    let documented = code.ends_with("/retry") && *status == 409;
                    assert!(
                        *status < 400 || documented,
                        "{line} answered {status}: {command}\n{stdout}"
                    );
                }
                if code.contains("refund_order") {
                    assert_eq!(statuses, [202], "{line}: {stdout}");
                }
                if code.contains("| grep") || code.contains("| jq") {
                    assert!(
                        !stdout.trim().is_empty(),
                        "{line} printed nothing: {command}"
                    );
                }
                ran += 1;
            }
            other => panic!("{line}: this test does not know how to run `{other}`: {command}"),
        }
    }
    assert!(ran >= 20, "{ran} commands run");
    stop(system);
}

/// The embedded Kafka's address, as the system's start-up log names it.
fn kafka_address(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .find_map(|l| l.split("embedded Kafka started at ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no embedded Kafka address in the log: {text}"))
        .to_string()
}

fn skip(line: &str, command: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line} `{command}`: {why}");
}

/// A `cargo run --release` with settings: started with them, it serves an order to its end.
async fn run_variant(
    client: &reqwest::Client,
    line: &str,
    command: &str,
    env: Vec<(&str, String)>,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut env = env;
    let mut drop_databases = None;
    for (key, value) in env.iter_mut() {
        match *key {
            "DATABASE_URL" => {
                // The README's server and options, a database name of this run's own.
                let name = format!("readme_{}", uuid::Uuid::new_v4().simple());
                *value = value.replacen("/saga?", &format!("/{name}?"), 1);
                assert!(value.contains(&name), "{line}: {value}");
                drop_databases = Some((value.clone(), name));
            }
            "KAFKA_BROKERS" => match std::env::var("KAFKA_PLAINTEXT_BROKERS") {
                Ok(brokers) => *value = brokers,
                Err(_) => {
                    skip(line, command, "needs scripts/kafka.sh's broker (KAFKA_PLAINTEXT_BROKERS, set in .ci/run's Apache Kafka run)");
                    return;
                }
            },
            "LOG_FORMAT" => {}
            other => panic!("{line}: a setting this test does not know: {other}"),
        }
    }
    if env.iter().any(|(k, _)| *k == "KAFKA_BROKERS") {
        // Its topics and groups apart from other runs on the same broker.
        let prefix = format!("readme-{}.", uuid::Uuid::new_v4().simple());
        env.push(("TOPIC_PREFIX", prefix.clone()));
        env.push(("GROUP_PREFIX", prefix));
    }
    let (system, addr) = start_system(&env, &data);
    let log = data.with_extension("log");
    wait_ready(client, &addr, &log).await;
    let saga = order(client, &addr, "c-variant").await;
    assert_eq!(saga["status"], "COMPLETED", "{line}: {saga}");
    stop(system);
    let log = std::fs::read_to_string(log).unwrap();
    if env.iter().any(|(k, v)| *k == "LOG_FORMAT" && v == "json") {
        for l in log.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                serde_json::from_str::<Value>(l).is_ok(),
                "{line}: not a JSON log line: {l}"
            );
        }
    }
    if let Some((url, name)) = drop_databases {
        let base = url.replacen(&format!("/{name}?"), "/postgres?", 1);
        let admin = sqlx::postgres::PgPool::connect(&base).await.unwrap();
        for component in ["orchestrator", "orders", "users", "payments"] {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{name}_{component}\" WITH (FORCE)"
            ))
            .execute(&admin)
            .await;
        }
        admin.close().await;
    }
}

/// kcat, if installed (`.ci/run` installs it); without it the caller says why it does not run.
fn kcat() -> Option<&'static str> {
    let found = Command::new("kcat")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        skip("-", "kcat", "not installed (apt-get install kcat)");
    }
    found.then_some("kcat")
}

fn kcat_output(args: &[&str]) -> String {
    let out = Command::new("kcat").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kcat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `cargo run`'s embedded Kafka on a known address: kcat (another program, librdkafka of its
/// own) lists its topics and reads a saga's commands, keyed by the saga id, through it. With the
/// default address taken, it takes a free port and the log says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_kafka_answers_kcat_at_its_address() {
    if kcat().is_none() {
        return;
    }
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kafka = free_addr().to_string();
    let (system, addr) = start_system(&[("EMBEDDED_KAFKA_ADDR", kafka.clone())], &data);
    wait_ready(&client, &addr, &data.with_extension("log")).await;
    let saga = order(&client, &addr, "c-kcat").await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let listing = kcat_output(&["-b", &kafka, "-L"]);
    for topic in ["order_commands", "payment_events", "saga_dead_letter"] {
        assert!(
            listing.contains(&format!("topic \"{topic}\"")),
            "{topic} in {listing}"
        );
    }
    assert!(
        listing.contains(&kafka),
        "the broker is advertised at {kafka}: {listing}"
    );
    let keys = kcat_output(&[
        "-b",
        &kafka,
        "-C",
        "-t",
        "order_commands",
        "-o",
        "beginning",
        "-e",
        "-q",
        "-f",
        "%k %s\n",
    ]);
    let id = saga["saga_id"].as_str().unwrap();
    let mine: Vec<&str> = keys.lines().filter(|l| l.starts_with(id)).collect();
    assert!(
        mine.iter().any(|l| l.contains("\"create_order\""))
            && mine.iter().any(|l| l.contains("\"update_order_status\"")),
        "the saga's commands, keyed by its id: {keys}"
    );
    stop(system);

    // The default address taken (by this test, or by anyone): a free port, named in the log.
    let _held = std::net::TcpListener::bind(saga_system::EMBEDDED_KAFKA_DEFAULT);
    let data = dir.path().join("data2");
    let (system, addr) = start_system(&[], &data);
    let log = data.with_extension("log");
    wait_ready(&client, &addr, &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let started = kafka_address(&log);
    assert_ne!(started, saga_system::EMBEDDED_KAFKA_DEFAULT, "{text}");
    assert!(kcat_output(&["-b", &started, "-L"]).contains("order_commands"));
    stop(system);
}
