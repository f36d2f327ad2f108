//! What only a real broker shows: the listeners `scripts/kafka.sh` starts (mTLS, SASL_SSL), the
//! start-up errors of wrong security settings, and static group membership. These tests read the
//! broker from `scripts/kafka.sh env` (`KAFKA_SASL_BROKERS`, `KAFKA_MTLS_BROKERS` and their
//! client settings files, exported by `.ci/run`), and say why they are skipped without it.

use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::procs::*;
use crate::security::{error_line, run_orchestrator};

/// One listener of the script's broker: its address and its client settings (`key=value,...`).
struct Listener {
    brokers: String,
    config: String,
}

/// The script's listener `kind` (`SASL`, `MTLS`), or `None` after printing why the test is
/// skipped.
fn listener(kind: &str) -> Option<Listener> {
    let brokers = std::env::var(format!("KAFKA_{kind}_BROKERS")).ok();
    let file = std::env::var(format!("KAFKA_{kind}_CONFIG_FILE")).ok();
    let (Some(brokers), Some(file)) = (brokers, file) else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: {} needs Apache Kafka's {kind} listener (eval \"$(scripts/kafka.sh env)\")",
            std::thread::current().name().unwrap_or("this test")
        );
        return None;
    };
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let config = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(",");
    Some(Listener { brokers, config })
}

/// Every component authenticates with a client certificate the broker's CA signed (the SSL
/// listener requires one), and a saga runs end to end over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_completes_over_mutual_tls() {
    let Some(mtls) = listener("MTLS") else {
        return;
    };
    let app = spawn_app_over(
        Some((mtls.brokers, mtls.config)),
        test_postgres(),
        &ALL_SERVICES,
        orchestrator::Policy::default(),
        Default::default(),
    )
    .await;
    let id = app.start_saga("c-mtls").await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(app.order_status(&id).await.as_deref(), Some("CREATED"));
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(
        ready["checks"]["kafka:orchestrator"]["status"], "ok",
        "{ready}"
    );
    app.stop().await;
}

/// A wrong password, a CA that did not sign the broker's certificate, a client key that is not
/// there and no client certificate at all each stop the start within seconds, with one `error:`
/// line naming the setting to fix, not an endless quiet retry.
#[test]
fn wrong_security_settings_fail_at_start_naming_the_setting() {
    let (Some(sasl), Some(mtls)) = (listener("SASL"), listener("MTLS")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("orchestrator.db").display()
    );
    let replace = |config: &str, key: &str, value: Option<&str>| -> String {
        let mut kept: Vec<String> = config
            .split(',')
            .filter(|kv| !kv.starts_with(&format!("{key}=")))
            .map(str::to_string)
            .collect();
        if let Some(v) = value {
            kept.push(format!("{key}={v}"));
        }
        kept.join(",")
    };
    // An unknown CA: Debian's snakeoil certificate (installed with PostgreSQL) signed nothing
    // of the broker's.
    let unknown_ca = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let cases = [
        (
            "a wrong password",
            &sasl.brokers,
            replace(&sasl.config, "sasl.password", Some("not-the-password")),
            "sasl.password",
        ),
        (
            "an unknown CA",
            &sasl.brokers,
            replace(&sasl.config, "ssl.ca.location", Some(unknown_ca)),
            "ssl.ca.location",
        ),
        (
            "a missing client key",
            &mtls.brokers,
            replace(
                &mtls.config,
                "ssl.key.location",
                Some("/nonexistent/client.key"),
            ),
            "ssl.key.location",
        ),
        (
            "no client certificate",
            &mtls.brokers,
            replace(
                &replace(&mtls.config, "ssl.key.location", None),
                "ssl.certificate.location",
                None,
            ),
            "ssl.key.location",
        ),
    ];
    for (what, brokers, config, named) in cases {
        let env = [
            ("KAFKA_BROKERS", brokers.as_str()),
            ("KAFKA_CONFIG", config.as_str()),
            ("KAFKA_STARTUP_TIMEOUT", "5s"),
            ("DATABASE_URL", sqlite.as_str()),
        ];
        let (code, took, stderr) = run_orchestrator(&env, Duration::from_secs(40));
        assert_eq!(code, Some(1), "{what}: {stderr}");
        let line = error_line(&stderr);
        assert!(
            line.contains(named),
            "{what}: {line:?} does not name {named}"
        );
        assert!(
            !line.contains("not-the-password") && !stderr.contains("saga-test-password"),
            "{what}: a password in the output: {stderr}"
        );
        assert!(took < Duration::from_secs(20), "{what} took {took:?}");
        eprintln!("{what}: exit 1 after {took:?}: {line}");
    }
}

/// The consumers' session on the real broker in this test: long enough that waiting it out
/// shows.
const SESSION_MS: u64 = 20_000;

/// After a `kill -9` of the orchestrator, an immediate restart under the same `INSTANCE_ID` is
/// the same static member: the broker hands its partitions straight back and the next saga
/// completes well inside the session timeout. Without `INSTANCE_ID` the new member waits for
/// the dead one's session to run out first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_the_same_instance_id_gets_its_partitions_back_at_once() {
    if crate::broker::needs_real_broker("static membership (the mock ignores group.instance.id)") {
        return;
    }
    let static_restart = restart(
        Stop::Kill9,
        Some("orchestrator-static"),
        Some("orchestrator-static"),
    )
    .await;
    let dynamic_restart = restart(Stop::Kill9, None, None).await;
    eprintln!(
        "next saga after kill -9 and restart, session {SESSION_MS} ms: with INSTANCE_ID \
         {static_restart:?}, without {dynamic_restart:?}"
    );
    assert!(
        static_restart < Duration::from_millis(SESSION_MS / 2),
        "a static member's restart took {static_restart:?}"
    );
    assert!(
        dynamic_restart > Duration::from_millis(SESSION_MS / 2),
        "without INSTANCE_ID the restart took only {dynamic_restart:?}: was the session waited out?"
    );
}

/// A rolling restart (SIGTERM, then the new process) stalls nobody by default: without
/// `INSTANCE_ID` the stopping orchestrator leaves its group and the new one gets the
/// partitions at once. Under the old default, a name that changes with each rollout
/// (`HOSTNAME`), the stopped static member held its partitions for the whole session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_the_default_settings_waits_for_no_session() {
    if crate::broker::needs_real_broker("consumer group sessions (the mock ignores static members)")
    {
        return;
    }
    let default = restart(Stop::Sigterm, None, None).await;
    let renamed = restart(Stop::Sigterm, Some("pod-7d9f-a"), Some("pod-7d9f-b")).await;
    eprintln!(
        "next saga after a rolling restart, session {SESSION_MS} ms: default (no INSTANCE_ID) \
         {default:?}, a name that changes with the rollout {renamed:?}"
    );
    assert!(
        default < Duration::from_millis(SESSION_MS / 2),
        "a rolling restart with the defaults took {default:?}"
    );
    assert!(
        renamed > Duration::from_millis(SESSION_MS / 2),
        "a renamed static member took only {renamed:?}"
    );
}

enum Stop {
    Kill9,
    Sigterm,
}

/// How long the first saga takes after the orchestrator, running as `before`, is stopped that
/// way and at once started again as `after` (`INSTANCE_ID`s; `None`: unset).
async fn restart(stop: Stop, before: Option<&str>, after: Option<&str>) -> Duration {
    let mut app = spawn_processes(&[]).await;
    let session = format!(
        "{},session.timeout.ms={SESSION_MS},heartbeat.interval.ms=1000",
        app.kafka.process_config()
    );
    let env = |id: Option<&str>| {
        let mut env = vec![("KAFKA_CONFIG".to_string(), session.clone())];
        if let Some(id) = id {
            env.push(("INSTANCE_ID".into(), id.into()));
        }
        env
    };
    app.proc_env = env(before);
    app.spawn_proc("orchestrator");
    app.wait_healthy().await;
    let warm = app.start_saga("c-warm").await;
    assert_eq!(app.wait_terminal(&warm).await["status"], "COMPLETED");

    match stop {
        Stop::Kill9 => app.kill9("orchestrator"),
        Stop::Sigterm => {
            let (status, _) = app.sigterm("orchestrator");
            assert!(status.success(), "{status:?}");
        }
    }
    app.proc_env = env(after);
    app.spawn_proc("orchestrator");
    app.wait_healthy().await;
    let started = Instant::now();
    let id = app.start_saga("c-after-restart").await;
    let saga = app
        .wait_for(&id, Duration::from_secs(60), |s| s["status"] == "COMPLETED")
        .await;
    let took = started.elapsed();
    assert_eq!(steps(&saga).len(), 4, "{saga}");
    app.stop().await;
    took
}

/// `topics.json` applied by the Admin API on a broker that creates no topic by itself: each
/// topic reads back with its partitions, retention and cleanup policy (`DescribeConfigs`), and a
/// topic that already exists with fewer partitions than declared stops the start, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_json_is_applied_and_a_topic_with_fewer_partitions_is_refused() {
    use rdkafka::admin::{
        AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication,
    };
    use rdkafka::client::DefaultClientContext;

    if crate::broker::needs_real_broker("the Admin API (the mock's times out)") {
        return;
    }
    // The dead-letter topic compacted as well as deleted, to see a setting of topics.json's
    // `config` arrive.
    let json = platform::topics::DEFAULT_TOPICS_JSON.replace(
        r#""retention_ms": 2592000000 }"#,
        r#""retention_ms": 2592000000, "config": { "cleanup.policy": "compact,delete" } }"#,
    );
    let topics = platform::Topics::from_json(&json, "test").unwrap();
    let (kafka, topics) = crate::broker::TestKafka::start(topics).await;
    let admin: AdminClient<DefaultClientContext> = kafka.client().create().unwrap();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let specs: Vec<_> = topics.all().into_iter().cloned().collect();
    let resources: Vec<ResourceSpecifier> = specs
        .iter()
        .map(|t| ResourceSpecifier::Topic(&t.name))
        .collect();
    let described = admin.describe_configs(&resources, &opts).await.unwrap();
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    for (spec, config) in specs.iter().zip(described) {
        let config = config.unwrap();
        let value = |key: &str| config.get(key).and_then(|e| e.value.clone());
        assert_eq!(
            value("retention.ms"),
            Some(spec.retention_ms.to_string()),
            "{}",
            spec.name
        );
        let policy = if spec.name == topics.dead_letter.name {
            "compact,delete"
        } else {
            "delete"
        };
        assert_eq!(
            value("cleanup.policy").as_deref(),
            Some(policy),
            "{}",
            spec.name
        );
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == spec.name)
            .map(|t| t.partitions().len() as i32);
        assert_eq!(partitions, Some(spec.partitions), "{}", spec.name);
    }

    // A topic made beforehand with 2 partitions, declared with 4.
    let short = format!("{}short_commands", kafka.prefix());
    let made = admin
        .create_topics(
            &[NewTopic::new(&short, 2, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .unwrap();
    assert!(made[0].is_ok(), "{made:?}");
    let declared = json.replacen(
        '{',
        r#"{ "short_commands": { "name": "short_commands", "partitions": 4, "replication_factor": 1, "retention_ms": 60000 },"#,
        1,
    );
    let with_short = platform::Topics::from_json(&declared, "test")
        .unwrap()
        .prefixed(kafka.prefix())
        .unwrap();
    let err = kafka
        .settings()
        .ensure_topics(&with_short)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&short) && err.contains("2 partitions") && err.contains("4"),
        "{err}"
    );
    // The binary says so at start, in one line.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topics.json");
    std::fs::write(&file, &declared).unwrap();
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("o.db").display());
    let config = kafka.process_config();
    let env = [
        ("KAFKA_BROKERS", kafka.bootstrap_servers()),
        ("KAFKA_CONFIG", config.as_str()),
        ("CREATE_TOPICS", "true"),
        ("TOPICS_FILE", file.to_str().unwrap()),
        ("TOPIC_PREFIX", kafka.prefix()),
        ("DATABASE_URL", sqlite.as_str()),
    ];
    let (code, _, stderr) = run_orchestrator(&env, Duration::from_secs(40));
    assert_eq!(code, Some(1), "{stderr}");
    let line = error_line(&stderr);
    assert!(
        line.contains(&short) && line.contains("TOPICS_FILE"),
        "{line}"
    );
    let _ = admin.delete_topics(&[short.as_str()], &opts).await;
    kafka.clean_up().await;
}

/// A broker of this test's own (the script's, on free ports and a data folder of its own), so
/// that stopping it disturbs no other test.
struct OwnBroker {
    state: tempfile::TempDir,
    ports: [u16; 4],
}

impl OwnBroker {
    fn start() -> OwnBroker {
        let ports = [0; 4].map(|_| crate::procs::free_addr().port());
        let broker = OwnBroker {
            state: tempfile::tempdir().unwrap(),
            ports,
        };
        broker.script("start");
        broker
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.ports[0])
    }

    fn script(&self, command: &str) {
        let status =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
                .arg(command)
                .env("KAFKA_STATE", self.state.path())
                .env("KAFKA_PLAIN_PORT", self.ports[0].to_string())
                .env("KAFKA_SASL_PORT", self.ports[1].to_string())
                .env("KAFKA_MTLS_PORT", self.ports[2].to_string())
                .env("KAFKA_CONTROLLER_PORT", self.ports[3].to_string())
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
        assert!(status.success(), "scripts/kafka.sh {command}");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.script("stop");
    }
}

/// The broker stopped with sagas in flight and started again on the same data: every saga ends,
/// and none did anything twice — the services' databases agree with the sagas (one order per
/// saga, one payment at most, each in the state its saga's end implies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_in_flight_survive_a_broker_restart_and_none_is_doubled() {
    if crate::broker::needs_real_broker("a broker process to stop and start") {
        return;
    }
    let broker = OwnBroker::start();
    // Deadlines that ride out the restart (as the process tests' do).
    let policy = orchestrator::Policy {
        step_timeout_ms: 2_000,
        max_step_timeout_ms: 8_000,
        max_attempts: 8,
        retry_delay_ms: 200,
        compensation_limit_ms: 120_000,
        saga_timeout_ms: 300_000,
    };
    let app = spawn_app_over(
        Some((broker.brokers(), String::new())),
        test_postgres(),
        &ALL_SERVICES,
        policy,
        Default::default(),
    )
    .await;
    let customers: Vec<String> = (0..30)
        .map(|i| match i % 3 {
            0 => format!("noupdate-restart-{i}"),
            _ => format!("c-restart-{i}"),
        })
        .collect();
    let mut ids = Vec::new();
    for c in &customers {
        ids.push(app.start_saga(c).await);
    }
    broker.script("stop");
    let in_flight = unfinished_sagas(&app.db("orchestrator").await).await;
    assert!(in_flight > 0, "every saga ended before the broker stopped");
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.script("start");
    let mut outcomes = std::collections::BTreeMap::new();
    for (id, customer) in ids.iter().zip(&customers) {
        let saga = app
            .wait_for(id, Duration::from_secs(120), |s| {
                matches!(
                    s["status"].as_str(),
                    Some("COMPLETED" | "COMPENSATED" | "CANCELLED" | "FAILED")
                )
            })
            .await;
        let status = saga["status"].as_str().unwrap().to_string();
        let expected = if customer.starts_with("noupdate-") {
            "COMPENSATED"
        } else {
            "COMPLETED"
        };
        assert_eq!(status, expected, "{saga}");
        let (order, payment) = (app.order_status(id).await, app.payment_status(id).await);
        match expected {
            "COMPLETED" => {
                assert_eq!(order.as_deref(), Some("CREATED"), "{id}");
                assert_eq!(payment.as_deref(), Some("AUTHORIZED"), "{id}");
            }
            _ => {
                assert_eq!(order.as_deref(), Some("CANCELLED"), "{id}");
                assert_ne!(payment.as_deref(), Some("AUTHORIZED"), "{id}");
            }
        }
        *outcomes.entry(status).or_insert(0) += 1;
    }
    let orders = app.db("orders").await;
    let payments = app.db("payments").await;
    for id in &ids {
        assert_eq!(
            count(
                &orders,
                "SELECT COUNT(*) FROM orders WHERE saga_id = $1",
                id
            )
            .await,
            1
        );
        assert!(
            count(
                &payments,
                "SELECT COUNT(*) FROM payments WHERE saga_id = $1",
                id
            )
            .await
                <= 1
        );
    }
    eprintln!("{in_flight} of {} sagas in flight when the broker stopped; after its restart: {outcomes:?}", ids.len());
    app.stop().await;
}
