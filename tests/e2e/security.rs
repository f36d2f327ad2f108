//! Running on secured infrastructure: PostgreSQL over TLS, and settings that cannot work fail
//! at start with one line naming the setting, never a hang.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::procs::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_completes_with_every_component_on_postgres_over_tls() {
    let tls = format!(
        "{}?sslmode=require",
        required_postgres().split('?').next().unwrap()
    );
    let app = spawn_processes_on(Some(tls), &[], 1).await;
    let id = app.start_saga("c-1").await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(app.order_status(&id).await.as_deref(), Some("CREATED"));
    // The server says the connections of the orchestrator and of a service are encrypted.
    let server = app.db("orchestrator").await;
    for component in ["orchestrator", "orders"] {
        let url = app.config.database_url(component).unwrap();
        let name = url
            .split('?')
            .next()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let (tls, plain) = (
            count(
                &server,
                "SELECT COUNT(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE s.ssl AND a.datname = $1 AND a.pid <> pg_backend_pid()",
                &name,
            )
            .await,
            count(
                &server,
                "SELECT COUNT(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE NOT s.ssl AND a.datname = $1 AND a.pid <> pg_backend_pid()",
                &name,
            )
            .await,
        );
        assert!(tls > 0, "{component}: no TLS connection to {name}");
        assert_eq!(
            plain, 0,
            "{component}: {plain} connections to {name} without TLS"
        );
    }
}

/// Runs the orchestrator binary with `env` until it exits (at most `limit`); returns its exit
/// code, how long it ran, and its stderr.
pub fn run_orchestrator(env: &[(&str, &str)], limit: Duration) -> (Option<i32>, Duration, String) {
    run_binary(env!("CARGO_BIN_EXE_orchestrator"), env, limit)
}

/// Runs `binary` with only `env` (and PATH), until it exits or `limit` passes; its exit code,
/// how long it ran and everything it wrote to stderr.
pub fn run_binary(
    binary: &str,
    env: &[(&str, &str)],
    limit: Duration,
) -> (Option<i32>, Duration, String) {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("CREATE_TOPICS", "false")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), started.elapsed(), err);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{binary} hung for {limit:?} with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `error: ...` line a failed start prints.
pub fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_cannot_work_stop_the_start_with_one_line_naming_them() {
    let app = spawn_app_on(None, &[NO_IN_PROCESS], fast_policy(), Default::default()).await;
    // A plaintext listener with no SASL, whatever broker the run uses: the mock's.
    let plaintext = platform::embedded::EmbeddedKafka::start(1).unwrap();
    let brokers = plaintext.bootstrap_servers().to_string();
    let sqlite = app.config.database_url("orchestrator").unwrap();
    let pg = required_postgres();
    let pg = pg.split('?').next().unwrap();
    // The same server as a role that does not exist.
    let server = pg.split_once("://").unwrap().1;
    let server = server.rsplit_once('@').map_or(server, |(_, host)| host);
    let nobody = format!("postgres://no_such_role_x@{server}");
    let missing_ca = format!("{pg}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
    // A saga definition with a mistake: a step sends a field nothing provides.
    let bad_sagas = tempfile::tempdir().unwrap();
    let bad_file = bad_sagas.path().join("ship.toml");
    std::fs::write(
        &bad_file,
        "saga = \"ship\"\nversion = 1\n[[steps]]\ncommand = \"get_payment_info\"\nsend = [\"customer_id\"]\n",
    )
    .unwrap();
    let bad_sagas_dir = bad_sagas.path().display().to_string();
    let bad_file = bad_file.display().to_string();
    let bad_named = [bad_file.as_str(), "step get_payment_info", "`customer_id`"];
    // (the environment, what the error line must name)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        // TLS against a plaintext listener: the cluster never answers a TLS handshake.
        (
            vec![
                ("KAFKA_BROKERS", &brokers),
                ("KAFKA_CONFIG", "security.protocol=SSL"),
                ("KAFKA_STARTUP_TIMEOUT", "3s"),
                ("DATABASE_URL", &sqlite),
            ],
            &["KAFKA_BROKERS", "security.protocol"],
        ),
        (
            vec![
                ("KAFKA_BROKERS", &brokers),
                (
                    "KAFKA_CONFIG",
                    "security.protocol=SASL_SSL,sasl.mechanism=NOPE",
                ),
                ("DATABASE_URL", &sqlite),
            ],
            &["KAFKA_CONFIG", "NOPE"],
        ),
        (
            vec![
                ("KAFKA_BROKERS", &brokers),
                (
                    "KAFKA_CONFIG",
                    "security.protocol=SSL,ssl.ca.location=/nonexistent/ca.pem",
                ),
                ("DATABASE_URL", &sqlite),
            ],
            &["KAFKA_CONFIG", "ssl.ca.location"],
        ),
        // Nothing listens there.
        (
            vec![
                ("KAFKA_BROKERS", "127.0.0.1:1"),
                ("KAFKA_STARTUP_TIMEOUT", "2s"),
                ("DATABASE_URL", &sqlite),
            ],
            &["KAFKA_BROKERS=127.0.0.1:1"],
        ),
        (
            vec![("KAFKA_BROKERS", &brokers), ("DATABASE_URL", &nobody)],
            &["DATABASE_URL", "no_such_role_x"],
        ),
        (
            vec![("KAFKA_BROKERS", &brokers), ("DATABASE_URL", &missing_ca)],
            &["DATABASE_URL", "/nonexistent/ca.pem"],
        ),
        (
            vec![
                ("KAFKA_BROKERS", &brokers),
                ("DATABASE_URL", &sqlite),
                ("LOG_FORMAT", "yaml"),
            ],
            &["LOG_FORMAT"],
        ),
        (
            vec![
                ("KAFKA_BROKERS", &brokers),
                ("DATABASE_URL", &sqlite),
                ("SAGAS_DIR", &bad_sagas_dir),
            ],
            &bad_named,
        ),
        (
            vec![
                ("KAFKA_BROKERS", &brokers),
                ("DATABASE_URL", &sqlite),
                ("SAGAS_DIR", "/nonexistent/sagas"),
            ],
            &["/nonexistent/sagas", "cannot read"],
        ),
    ];
    for (env, named) in cases {
        let (code, took, stderr) = run_orchestrator(&env, Duration::from_secs(40));
        assert_eq!(code, Some(1), "{env:?}: {stderr}");
        let line = error_line(&stderr);
        for name in named {
            assert!(
                line.contains(name),
                "{env:?}: {line:?} does not name {name}"
            );
        }
        assert!(took < Duration::from_secs(20), "{env:?} took {took:?}");
    }
}

/// A retention past what a timestamp can hold used to wrap around and prune
/// everything; now it is refused at start, like any duration that makes no sense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retention_is_refused_at_start() {
    let app = spawn_app_on(None, &[NO_IN_PROCESS], fast_policy(), Default::default()).await;
    let brokers = app.kafka.bootstrap_servers().to_string();
    let sqlite = app.config.database_url("orchestrator").unwrap();
    for retention in [
        "9223372036854775808",
        "18446744073709551615",
        "200years",
        "0",
        "2 fortnights",
    ] {
        let env = [
            ("KAFKA_BROKERS", brokers.as_str()),
            ("DATABASE_URL", sqlite.as_str()),
            ("RETENTION_MS", retention),
        ];
        let (code, _, stderr) = run_orchestrator(&env, Duration::from_secs(15));
        assert!(
            matches!(code, Some(c) if c != 0),
            "{retention}: {code:?} {stderr}"
        );
        let line = error_line(&stderr);
        assert!(line.contains("RETENTION_MS"), "{retention}: {line}");
    }
    // With units, or plain milliseconds as before.
    for retention in ["2h", "90m", "7200000"] {
        let env = [
            ("KAFKA_BROKERS", brokers.as_str()),
            ("DATABASE_URL", sqlite.as_str()),
            ("RETENTION_MS", retention),
            ("LISTEN_ADDR", "127.0.0.1:0"),
        ];
        let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .env_clear()
            .envs(env)
            .env("CREATE_TOPICS", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            child.try_wait().unwrap().is_none(),
            "{retention} was refused"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

const READ: &str = "read-token-0123456789abcdef";
const START: &str = "start-token-0123456789abcdef";
const OPERATOR: &str = "operator-token-0123456789abcdef";

/// Anyone who reached the port could list every customer's sagas and cancel
/// any order. With tokens, each scope can do what it names and no more; 401/403 come as JSON;
/// probes and metrics stay open; no token ever reaches the logs (debug level, JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_scope_can_do_what_it_names_and_no_more() {
    let tokens = format!("read:{READ},start:{START},operator:{OPERATOR}");
    let app = spawn_processes_on(
        None,
        &[
            ("API_AUTH", "on"),
            ("API_TOKENS", &tokens),
            ("RUST_LOG", "debug"),
            ("LOG_FORMAT", "json"),
        ],
        1,
    )
    .await;
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut r = client.request(method, app.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if path == "/orders" {
            r = r.json(&order_body("c-auth"));
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status();
            let challenge = r.headers().get("www-authenticate").cloned();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, body, challenge)
        }
    };
    use reqwest::Method;
    use reqwest::StatusCode;

    // No token, or a wrong one: 401 with a JSON reason and a Bearer challenge.
    for token in [None, Some("not-a-token-at-all-nope"), Some(&READ[1..])] {
        let (status, body, challenge) = call(Method::GET, "/sagas", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
        assert_eq!(challenge.unwrap(), "Bearer");
    }
    // Probes and metrics need none (readiness once the consumer groups have joined, which
    // on a real broker can take a moment after the processes answer).
    for path in ["/livez", "/readyz", "/metrics"] {
        let mut status = StatusCode::SERVICE_UNAVAILABLE;
        for _ in 0..150 {
            status = client.get(app.url(path)).send().await.unwrap().status();
            if status != StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(status, StatusCode::OK, "{path}");
    }

    // The scheme's case does not matter (RFC 7235).
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let r = client
            .get(app.url("/sagas"))
            .header("authorization", format!("{scheme} {READ}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{scheme}");
    }

    // start: starts sagas and reads them; cannot cancel.
    let (status, body, _) = call(Method::POST, "/orders", Some(START)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["saga_id"].as_str().unwrap().to_string();
    let (status, _, _) = call(Method::GET, &format!("/sagas/{id}"), Some(START)).await;
    assert_eq!(status, StatusCode::OK);
    let cancel = format!("/sagas/{id}/cancel");
    let (status, body, _) = call(Method::POST, &cancel, Some(START)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("operator"),
        "{body}"
    );

    // read: lists and reads; cannot start, cancel or retry.
    let (status, body, _) = call(Method::GET, "/sagas?limit=5", Some(READ)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = call(Method::GET, &format!("/sagas/{id}"), Some(READ)).await;
    assert_eq!(status, StatusCode::OK);
    for (method, path) in [
        (Method::POST, "/orders".to_string()),
        (Method::POST, cancel.clone()),
        (Method::POST, format!("/sagas/{id}/retry")),
    ] {
        let (status, body, _) = call(method, &path, Some(READ)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    assert_eq!(
        count_sagas(&app).await,
        1,
        "refused requests started nothing"
    );

    // operator: everything.
    let mut completed = false;
    for _ in 0..100 {
        let (_, saga, _) = call(Method::GET, &format!("/sagas/{id}"), Some(OPERATOR)).await;
        if saga["status"] == "COMPLETED" {
            completed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(completed, "the saga did not complete");
    let (status, body, _) = call(Method::POST, &cancel, Some(OPERATOR)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let (log, stdout) = app.proc_output("orchestrator");
    assert!(log.contains("http_access"), "the access log is there");
    for token in [READ, START, OPERATOR] {
        for text in [&log, &stdout] {
            assert!(!text.contains(token), "a token reached the output");
            assert!(
                !text.contains(&token[..12]),
                "part of a token reached the output"
            );
        }
    }
}

async fn count_sagas(app: &TestApp) -> i64 {
    let db = app.db("orchestrator").await;
    count(&db, "SELECT COUNT(*) FROM sagas WHERE saga_id <> $1", "").await
}

/// Beyond loopback without tokens the API would be open to anyone: the start is refused with
/// one line naming the setting (and `API_AUTH=off` is the explicit way to run it open).
#[test]
fn listening_beyond_loopback_without_tokens_is_refused_at_start() {
    let (code, took, stderr) = run_orchestrator(
        &[
            ("LISTEN_ADDR", "0.0.0.0:0"),
            ("KAFKA_BROKERS", "127.0.0.1:1"),
            ("DATABASE_URL", "sqlite://unused.db?mode=rwc"),
        ],
        Duration::from_secs(15),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let line = error_line(&stderr);
    assert!(
        line.contains("API_TOKENS") && line.contains("API_AUTH=off"),
        "{line}"
    );
}

/// With the API's port taken, the start fails at once with one error line that names
/// LISTEN_ADDR, before Kafka, the database or the services are touched (the useful line used to
/// be line 38 of 48, after every component had started and stopped).
#[test]
fn a_taken_port_is_the_one_error_and_names_listen_addr() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("o.db").display());
    // The orchestrator, with a Kafka that is not there: the port error comes first.
    let (code, took, stderr) = run_orchestrator(
        &[
            ("LISTEN_ADDR", addr.as_str()),
            ("KAFKA_BROKERS", "127.0.0.1:1"),
            ("DATABASE_URL", sqlite.as_str()),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(error_line(&stderr).contains("LISTEN_ADDR"), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // `cargo run`'s binary: before the embedded Kafka and the services start.
    let out = Command::new(env!("CARGO_BIN_EXE_saga-system"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", &addr)
        .env("DATA_DIR", dir.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(error_line(&stderr).contains("LISTEN_ADDR"), "{stderr}");
    assert!(
        stderr.lines().count() <= 3,
        "the error is not buried: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes in a redirected log: {stderr:?}"
    );
    drop(taken);
}

/// Every binary, started with each secret-bearing setting made to fail, writes the secret
/// nowhere: a password in `DATABASE_URL` in both forms sqlx accepts (`user:secret@` and
/// `?password=secret`, which used to be printed in clear), `sasl.password` in `KAFKA_CONFIG`, an
/// API token written the wrong way round. An unreachable PostgreSQL is named within seconds
/// (it used to take 31 s of "pool timed out").
#[test]
fn no_secret_reaches_the_output_of_a_start_that_fails() {
    const SECRET: &str = "hunter2-do-not-print";
    let broker = platform::embedded::EmbeddedKafka::start(1).unwrap();
    let brokers = broker.bootstrap_servers().to_string();
    let userinfo = format!("postgres://saga:{SECRET}@127.0.0.1:1/saga");
    let query = format!("postgres://saga@127.0.0.1:1/saga?password={SECRET}&sslmode=disable");
    let sasl = format!(
        "security.protocol=SASL_PLAINTEXT,sasl.mechanism=PLAIN,sasl.username=u,sasl.password={SECRET}"
    );
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let tokens = format!("{SECRET}-0123456789:operator");
    let binaries = [
        env!("CARGO_BIN_EXE_orchestrator"),
        env!("CARGO_BIN_EXE_order-service"),
        env!("CARGO_BIN_EXE_user-service"),
        env!("CARGO_BIN_EXE_payment-service"),
    ];
    for binary in binaries {
        for database in [&userinfo, &query] {
            let (code, took, stderr) = run_binary(
                binary,
                &[
                    ("KAFKA_BROKERS", brokers.as_str()),
                    ("DATABASE_URL", database.as_str()),
                    ("LISTEN_ADDR", "127.0.0.1:0"),
                ],
                Duration::from_secs(40),
            );
            assert_eq!(code, Some(1), "{binary}: {stderr}");
            assert!(
                !stderr.contains(SECRET),
                "{binary} printed the password: {stderr}"
            );
            let line = error_line(&stderr);
            assert!(line.contains("DATABASE_URL"), "{binary}: {line}");
            assert!(
                took < Duration::from_secs(15),
                "{binary}: {took:?} for {line}"
            );
        }
        let (code, _, stderr) = run_binary(
            binary,
            &[
                ("KAFKA_BROKERS", "127.0.0.1:1"),
                ("KAFKA_CONFIG", sasl.as_str()),
                ("KAFKA_STARTUP_TIMEOUT", "2s"),
                ("DATABASE_URL", sqlite.as_str()),
                ("LISTEN_ADDR", "127.0.0.1:0"),
            ],
            Duration::from_secs(40),
        );
        assert_eq!(code, Some(1), "{binary}: {stderr}");
        assert!(
            !stderr.contains(SECRET),
            "{binary} printed sasl.password: {stderr}"
        );
    }
    let (code, _, stderr) = run_orchestrator(
        &[
            ("KAFKA_BROKERS", brokers.as_str()),
            ("DATABASE_URL", sqlite.as_str()),
            ("LISTEN_ADDR", "0.0.0.0:0"),
            ("API_TOKENS", tokens.as_str()),
        ],
        Duration::from_secs(40),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains(SECRET), "a token was printed: {stderr}");
}

/// OTLP headers (an API key for the tracing backend) are a secret too: an orchestrator whose
/// collector takes its export and answers 500, logging at debug, and one given a header it cannot
/// use, write them nowhere. The failed export itself is logged (it was silent: traces stopped
/// going out with nothing said).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_headers_reach_no_log_when_the_export_fails() {
    const SECRET: &str = "otlp-key-do-not-print";
    for (n, headers) in [
        format!("authorization=Bearer {SECRET},x-tenant=t1"),
        format!("x-api-key={SECRET}%0Abroken,={SECRET}"),
    ]
    .iter()
    .enumerate()
    {
        // The topics and a database; the orchestrator runs as its own process.
        let app = spawn_app_custom(&[NO_IN_PROCESS], fast_policy(), Default::default()).await;
        let addr = crate::procs::free_addr();
        let (collector, received) = failing_collector();
        let child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KAFKA_BROKERS", app.kafka.bootstrap_servers())
            .env("KAFKA_CONFIG", app.kafka.process_config())
            .env("TOPIC_PREFIX", app.kafka.prefix())
            .env("GROUP_PREFIX", app.kafka.prefix())
            .env("CREATE_TOPICS", "false")
            .env(
                "DATABASE_URL",
                app.config.database_url("orchestrator").unwrap(),
            )
            .env("LISTEN_ADDR", addr.to_string())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
            .env("OTEL_EXPORTER_OTLP_HEADERS", headers)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let client = reqwest::Client::new();
        let mut served = false;
        for _ in 0..100 {
            if let Ok(r) = client.get(format!("http://{addr}/sagas")).send().await {
                served = r.status().is_success();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Spans to export, then the batch's delay (5 s) and a shutdown's flush, both failing.
        for _ in 0..5 {
            let _ = client.get(format!("http://{addr}/livez")).send().await;
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let everything = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            served || n == 1,
            "the orchestrator served with OTLP headers {headers:?}: {everything}"
        );
        let received = received.lock().unwrap().clone();
        if n == 0 {
            assert!(
                received.contains(SECRET) && received.contains("/v1/traces"),
                "the collector got the export with its key: {received:?}"
            );
            assert!(
                everything
                    .lines()
                    .any(|l| l.contains("opentelemetry") && l.contains("500")),
                "the failed export is logged: {everything}"
            );
        }
        assert!(
            !everything.contains(SECRET),
            "an OTLP header was printed: {}",
            everything
                .lines()
                .filter(|l| l.contains(SECRET))
                .collect::<Vec<_>>()
                .join("\n")
        );
        app.stop().await;
    }
}

/// A collector on loopback that reads each request, keeps what it received, and answers 500.
fn failing_collector() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = vec![0u8; 64 * 1024];
            let n = stream.read(&mut buf).unwrap_or(0);
            log.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = stream.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    (addr, received)
}

/// Every route of the real router, walked from its own declaration: each guarded one refuses a
/// request without a token (401) and one whose scope is too small (403); only the declared open
/// ones answer without. Authorisation used to be a table of paths beside the router, so a new
/// route nobody added to it needed no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_request_without_the_scope_it_declares() {
    use orchestrator::http::auth::{Access, Auth, Scope};
    let mut app = spawn_app().await;
    app.stop_orchestrator().await;
    const READ: &str = "read-token-0123456789";
    const START: &str = "start-token-0123456789";
    app.config.api.auth =
        Auth::tokens(&[("read".into(), READ.into()), ("start".into(), START.into())]).unwrap();
    app.config.ops = platform::Ops::default();
    app.start_orchestrator().await;
    let routes = orchestrator::http::routes(&app.config.sagas);
    assert!(routes.declared().len() >= 15, "{:?}", routes.declared());
    for route in routes.declared() {
        let path = route
            .path
            .replace("{saga_id}", &uuid::Uuid::new_v4().to_string())
            .replace("{saga_type}", "create_order");
        assert!(!path.contains('{'), "a path parameter to fill in: {path}");
        let send = |token: Option<&str>| {
            let mut request = app
                .client
                .request(route.method.clone(), app.url(&path))
                .json(&serde_json::json!({}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send()
        };
        let anonymous = send(None).await.unwrap().status().as_u16();
        match route.access {
            Access::Open => assert_ne!(anonymous, 401, "{} {path} is open", route.method),
            Access::Needs(scope) => {
                assert_eq!(anonymous, 401, "{} {path} without a token", route.method);
                let below = match scope {
                    Scope::Read => None,
                    Scope::Start => Some(READ),
                    Scope::Operator => Some(START),
                };
                if let Some(token) = below {
                    let status = send(Some(token)).await.unwrap().status().as_u16();
                    assert_eq!(status, 403, "{} {path} with a smaller scope", route.method);
                }
            }
        }
    }
    app.stop().await;
}
