//! `spawn_app()`: the real system, started the way `cargo run` starts it, but with its own
//! embedded Kafka (or its own topics and groups on the real broker `TEST_KAFKA_BROKERS` names,
//! see [`crate::broker`]), its own databases (SQLite in a temporary folder, or fresh PostgreSQL
//! databases when `TEST_DATABASE_URL` is set) and its HTTP API on port 0, so tests run in
//! parallel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tokio_util::sync::CancellationToken;

use platform::db::SqliteSync;
use platform::Topics;
use saga_system::SystemConfig;
use services::chaos::Chaos;
use services::ServiceHandle;

/// The components a test can leave out or restart.
pub const ALL_SERVICES: [&str; 4] = ["notification", "orders", "users", "payments"];

/// Other binaries for some components, each with environment of its own (an older release).
pub type Binaries = HashMap<&'static str, (std::path::PathBuf, Vec<(String, String)>)>;

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub client: reqwest::Client,
    /// Dropped by [`TestApp::stop`] only, after every client of it has stopped. A test that fails
    /// before `stop` leaves it alive (leaked): the runtime then drops the components' consumers,
    /// whose close waits for their group coordinator, and with the cluster gone that wait never
    /// ends, turning one failed assertion into a hung test run.
    pub kafka: std::mem::ManuallyDrop<crate::broker::TestKafka>,
    pub config: SystemConfig,
    pub orchestrator: Option<orchestrator::Orchestrator>,
    pub services: HashMap<&'static str, ServiceHandle>,
    /// Components running as their own OS processes (the fault tests).
    pub procs: crate::procs::Procs,
    /// Extra environment for every process.
    pub proc_env: Vec<(String, String)>,
    /// Another binary for a component, with environment of its own (an older release).
    pub binaries: Binaries,
    /// Where the orchestrator instances other than the first listen (multi-instance tests).
    pub instance_addrs: HashMap<&'static str, std::net::SocketAddr>,
    cancel: CancellationToken,
    _databases: DropDatabases,
    _dir: tempfile::TempDir,
}

/// Drops a test's PostgreSQL databases (on the server of `base`) when the test ends, passed or
/// failed.
struct DropDatabases {
    base: Option<String>,
    urls: Vec<String>,
}

impl Drop for DropDatabases {
    fn drop(&mut self) {
        let Some(base) = self.base.clone() else {
            return;
        };
        let names: Vec<String> = self
            .urls
            .iter()
            .map(|u| u.rsplit('/').next().unwrap_or_default().to_string())
            .collect();
        let dropper = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(pool) = AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&base)
                    .await
                else {
                    return;
                };
                for name in names {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&pool)
                            .await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// Starts everything.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&ALL_SERVICES).await
}

/// Starts the orchestrator and only the named services.
pub async fn spawn_app_with(services: &[&'static str]) -> TestApp {
    spawn_app_custom(services, orchestrator::Policy::default(), Chaos::default()).await
}

/// Deadlines short enough for a test to watch them pass.
pub fn fast_policy() -> orchestrator::Policy {
    orchestrator::Policy {
        step_timeout_ms: 300,
        max_step_timeout_ms: 600,
        max_attempts: 3,
        retry_delay_ms: 100,
        compensation_limit_ms: 3_000,
        saga_timeout_ms: 60_000,
    }
}

/// The PostgreSQL server the tests use when `TEST_DATABASE_URL` is set.
pub fn test_postgres() -> Option<String> {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// The PostgreSQL server of the tests that need one whatever the engine of the run (several
/// orchestrator instances share one database): `TEST_DATABASE_URL`, else the local server the
/// development and CI machines run.
pub fn required_postgres() -> String {
    test_postgres().unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A create-order saga of `customer` waiting on get_payment_info: no user service runs yet.
/// Short deadlines, and attempts enough to outlast the user service's group join later.
pub async fn waiting_on_the_user_service(customer: &str) -> (TestApp, String) {
    let policy = orchestrator::Policy {
        max_attempts: 40,
        ..fast_policy()
    };
    let app = spawn_app_custom(
        &["notification", "orders", "payments"],
        policy,
        Default::default(),
    )
    .await;
    let id = app.start_saga(customer).await;
    app.wait_for(&id, std::time::Duration::from_secs(10), |s| {
        s["current_step"] == "get_payment_info"
    })
    .await;
    (app, id)
}

/// Starts the orchestrator with `policy` and the named services with `chaos`.
pub async fn spawn_app_custom(
    services: &[&'static str],
    policy: orchestrator::Policy,
    chaos: Chaos,
) -> TestApp {
    spawn_app_on(test_postgres(), services, policy, chaos).await
}

/// [`spawn_app_custom`] on the PostgreSQL server `postgres` (fresh databases named after the
/// test), or on SQLite files when `None`.
pub async fn spawn_app_on(
    postgres: Option<String>,
    services: &[&'static str],
    policy: orchestrator::Policy,
    chaos: Chaos,
) -> TestApp {
    spawn_app_over(None, postgres, services, policy, chaos).await
}

/// [`spawn_app_on`] on the real broker `broker` (its addresses and client settings) instead of
/// the run's broker.
pub async fn spawn_app_over(
    broker: Option<(String, String)>,
    postgres: Option<String>,
    services: &[&'static str],
    policy: orchestrator::Policy,
    chaos: Chaos,
) -> TestApp {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pg_databases = Vec::new();
    let postgres_url = postgres.clone().map(|base| {
        let name = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        pg_databases = [
            "orchestrator",
            "orders",
            "users",
            "payments",
            "notification",
        ]
        .iter()
        .map(|c| platform::db::with_database_name(&base, &format!("{name}_{c}")))
        .collect();
        platform::db::with_database_name(&base, &name)
    });
    let config = SystemConfig {
        embedded_kafka_addr: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        postgres_url,
        sqlite_sync: SqliteSync::Normal,
        notification_stdout: false,
        notification_rotation: Default::default(),
        topics: Topics::load(None).unwrap(),
        sagas: orchestrator::app::SagaArgs::default()
            .load(&Topics::load(None).unwrap())
            .unwrap(),
        tuning: orchestrator::Tuning {
            policy,
            ..Default::default()
        },
        chaos,
        ops: platform::Ops::default(),
        api: Default::default(),
        delivery: Default::default(),
    };
    let (kafka, topics) = match broker {
        None => crate::broker::TestKafka::start(config.topics.clone()).await,
        Some((brokers, settings)) => {
            crate::broker::TestKafka::start_on(config.topics.clone(), brokers, &settings).await
        }
    };
    let mut config = config;
    if topics != config.topics {
        // A real broker: the test's namespace, and definitions resolved against it.
        config.sagas = orchestrator::app::SagaArgs::default()
            .load(&topics)
            .unwrap();
        config.topics = topics;
    }
    let cancel = CancellationToken::new();
    let mut app = TestApp {
        addr: "127.0.0.1:0".parse().unwrap(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            // Below the server's 10 s idle timeout (HTTP_HEADER_TIMEOUT), as any client that
            // pools connections should be: a connection the server is closing is not reused.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
        kafka: std::mem::ManuallyDrop::new(kafka),
        config,
        orchestrator: None,
        services: HashMap::new(),
        procs: Default::default(),
        proc_env: Vec::new(),
        binaries: HashMap::new(),
        instance_addrs: HashMap::new(),
        cancel,
        _databases: DropDatabases {
            base: postgres,
            urls: pg_databases,
        },
        _dir: dir,
    };
    if services.contains(&NO_IN_PROCESS) {
        return app;
    }
    for s in services {
        app.start_service(s).await;
    }
    app.start_orchestrator().await;
    app
}

/// Passed as the only service to [`spawn_app_custom`]: start nothing in-process (the fault
/// tests start components as OS processes instead).
pub const NO_IN_PROCESS: &str = "-";

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn start_orchestrator(&mut self) {
        self.start_orchestrator_on(self.kafka.settings()).await;
    }

    /// [`Self::start_orchestrator`] with its own Kafka client settings.
    pub async fn start_orchestrator_on(&mut self, kafka: platform::kafka::KafkaSettings) {
        let config = self.config.orchestrator(kafka).unwrap();
        let o = orchestrator::Orchestrator::start(config, self.cancel.child_token())
            .await
            .expect("orchestrator starts");
        self.addr = o.local_addr();
        self.orchestrator = Some(o);
    }

    /// Starts the four services and the orchestrator in-process (after a test prepared their
    /// databases).
    pub async fn start_all(&mut self) {
        for s in ALL_SERVICES {
            self.start_service(s).await;
        }
        self.start_orchestrator().await;
    }

    pub async fn stop_orchestrator(&mut self) {
        if let Some(o) = self.orchestrator.take() {
            o.stop().await;
        }
    }

    /// Restarts a service with other chaos knobs.
    pub async fn restart_service(&mut self, name: &'static str, chaos: Chaos) {
        if let Some(s) = self.services.remove(name) {
            s.stop().await;
        }
        self.config.chaos = chaos;
        self.start_service(name).await;
    }

    pub async fn post(&self, path: &str) -> (StatusCode, Value) {
        let r = self.client.post(self.url(path)).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn start_service(&mut self, name: &'static str) {
        let kafka = self.kafka.settings();
        let token = self.cancel.child_token();
        let handle = match name {
            "notification" => {
                services::notification::start(self.config.notification(kafka).unwrap(), token).await
            }
            "orders" => {
                let c = self.config.service("orders", kafka).unwrap();
                services::runtime::start(services::order::OrderService, &c, token).await
            }
            "users" => {
                let c = self.config.service("users", kafka).unwrap();
                services::runtime::start(services::user::UserService, &c, token).await
            }
            "payments" => {
                let c = self.config.service("payments", kafka).unwrap();
                services::runtime::start(services::payment::PaymentService, &c, token).await
            }
            other => panic!("unknown service {other}"),
        };
        self.services.insert(name, handle.expect("service starts"));
    }

    /// Stops everything; the test's databases go when `self` is dropped.
    pub async fn stop(mut self) {
        self.stop_orchestrator().await;
        for (_, s) in self.services.drain() {
            s.stop().await;
        }
        self.kafka.clean_up().await;
        // SAFETY: dropped once, here, and `self` (whose drop leaves this field alone) is not
        // used afterwards.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.kafka) };
    }

    /// A connection to one component's database, to check its effects directly.
    pub async fn db(&self, component: &str) -> AnyPool {
        let url = self.config.database_url(component).unwrap();
        AnyPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("test db connection")
    }

    /// The orchestrator's store on its database, to drive its claims directly (stop the
    /// orchestrator first, or its own relay and timers compete).
    pub async fn orchestrator_store(&self) -> orchestrator::store::SagaStore {
        let url = self.config.database_url("orchestrator").unwrap();
        let db = platform::db::Db::connect(
            &url,
            &orchestrator::store::MIGRATIONS,
            platform::db::SqliteSync::Normal,
        )
        .await
        .unwrap();
        orchestrator::store::SagaStore::new(db, platform::metrics::Metrics::default())
    }

    /// The orchestrator's `/metrics` text, as a scraper reads it.
    pub async fn metrics_text(&self) -> String {
        let r = self.client.get(self.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    }

    /// `GET path`: the status and the JSON body (`Null` if there is none).
    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Restarts service `name` without chaos and waits until a saga of its own completes through
    /// it (its consumer has joined again).
    pub async fn restart_until_serving(&mut self, name: &'static str) {
        self.restart_service(name, Chaos::default()).await;
        for i in 0..10 {
            let probe = self.start_saga(&format!("c-probe-{i}")).await;
            if self.wait_terminal(&probe).await["status"] == "COMPLETED" {
                return;
            }
        }
        panic!("the restarted {name} service never served");
    }

    /// The status of the saga's order in the order service's database (`None`: no order).
    pub async fn order_status(&self, saga_id: &str) -> Option<String> {
        let db = self.db("orders").await;
        scalar(&db, "SELECT status FROM orders WHERE saga_id = $1", saga_id).await
    }

    /// The status of the saga's payment in the payment service's database (`None`: no payment).
    pub async fn payment_status(&self, saga_id: &str) -> Option<String> {
        let db = self.db("payments").await;
        scalar(
            &db,
            "SELECT status FROM payments WHERE saga_id = $1",
            saga_id,
        )
        .await
    }

    pub async fn post_order(&self, customer_id: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url("/orders"))
            .json(&order_body(customer_id))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Starts a saga and returns its id.
    pub async fn start_saga(&self, customer_id: &str) -> String {
        let (status, body) = self.post_order(customer_id).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["saga_id"].as_str().unwrap().to_string()
    }

    pub async fn get_saga(&self, id: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(self.url(&format!("/sagas/{id}")))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls the API until `done` holds for the saga, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let (status, body) = self.get_saga(id).await;
            if status == StatusCode::OK && done(&body) {
                return body;
            }
            assert!(
                start.elapsed() < timeout,
                "saga {id} did not get there in {timeout:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the saga is terminal: COMPLETED, COMPENSATED, CANCELLED or FAILED.
    pub async fn wait_terminal(&self, id: &str) -> Value {
        self.wait_for(id, Duration::from_secs(30), |s| {
            matches!(
                s["status"].as_str(),
                Some("COMPLETED" | "COMPENSATED" | "CANCELLED" | "FAILED")
            )
        })
        .await
    }

    pub fn producer(&self) -> FutureProducer {
        self.kafka.client().create().unwrap()
    }

    /// Writes raw bytes onto a topic, as a misbehaving producer would.
    pub async fn produce(&self, topic: &str, key: &str, payload: &[u8]) {
        self.producer()
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(5),
            )
            .await
            .expect("test produce");
    }

    /// Waits until the dead-letter topic holds a message whose payload is `payload`; returns its
    /// `dlq.*` headers.
    pub async fn wait_dead_letter(&self, payload: &[u8]) -> HashMap<String, String> {
        let consumer: BaseConsumer = self
            .kafka
            .client()
            .set("group.id", "test-dlq-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "5")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        let topic = &self.config.topics.dead_letter;
        for p in 0..topic.partitions {
            tpl.add_partition_offset(&topic.name, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            if m.payload() == Some(payload) {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for h in h.iter() {
                        headers.insert(
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                return headers;
            }
        }
        panic!(
            "{:?} never reached the dead-letter topic",
            String::from_utf8_lossy(payload)
        );
    }

    /// Returns once the orchestrator has handled everything written before now to the partition
    /// of `key` on `topic`: writes an unreadable sentinel there and waits for it to be
    /// dead-lettered (one partition is handled in order).
    pub async fn sync_orchestrator(&self, topic: &str, key: &str) {
        let sentinel = format!("sentinel-{}", uuid::Uuid::new_v4());
        self.produce(topic, key, sentinel.as_bytes()).await;
        let headers = self.wait_dead_letter(sentinel.as_bytes()).await;
        assert_eq!(
            headers.get("dlq.component").map(String::as_str),
            Some("orchestrator")
        );
    }

    /// The notification log's lines of `saga_id`'s messages (not its delivery attempts, which
    /// have no topic), once at least `min` are there.
    pub async fn notifications(&self, saga_id: &str, min: usize) -> Vec<Value> {
        let path = self.config.data_dir.join("notifications.log");
        let start = Instant::now();
        loop {
            let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
            let lines: Vec<Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["saga_id"] == saga_id && v["topic"].is_string())
                .collect();
            if lines.len() >= min || start.elapsed() > Duration::from_secs(20) {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn order_body(customer_id: &str) -> Value {
    json!({
        "customer_id": customer_id,
        "order_details": {
            "foodItems": [{"name": "Burger", "price": 12.5, "quantity": 2}],
            "storeLocation": "Campus Store",
            "deliveryLocation": "Library",
            "deliveryFee": 3.0
        }
    })
}

/// `(name, kind, status)` of every step, in order.
pub fn steps(saga: &Value) -> Vec<(String, String, String)> {
    saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["kind"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn step(name: &str, kind: &str, status: &str) -> (String, String, String) {
    (name.into(), kind.into(), status.into())
}

/// One column of one row, as text.
pub async fn scalar(pool: &AnyPool, sql: &str, arg: &str) -> Option<String> {
    sqlx::query(sql)
        .bind(arg)
        .fetch_optional(pool)
        .await
        .unwrap()
        .map(|r| r.try_get::<String, _>(0).unwrap())
}

/// One column of every row, as text.
pub async fn strings(pool: &AnyPool, sql: &str, arg: &str) -> Vec<String> {
    sqlx::query(sql)
        .bind(arg)
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String, _>(0).unwrap())
        .collect()
}

/// Sagas not ended yet (a pending deadline), from the orchestrator's database.
pub async fn unfinished_sagas(orchestrator_db: &AnyPool) -> i64 {
    count(
        orchestrator_db,
        "SELECT COUNT(*) FROM sagas WHERE wake_at IS NOT NULL AND saga_id <> $1",
        "",
    )
    .await
}

pub async fn count(pool: &AnyPool, sql: &str, arg: &str) -> i64 {
    sqlx::query(sql)
        .bind(arg)
        .fetch_one(pool)
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
}

/// A folder of saga definitions holding create_order's file given `version` (and, with
/// `keep_v1`, the shipped version 1 beside it): a deploy of a new version.
pub fn sagas_with_create_order(version: u32, keep_v1: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sagas/create_order.toml"
    ))
    .unwrap();
    let v = shipped.replace("version = 1", &format!("version = {version}"));
    assert_ne!(v, shipped, "create_order.toml declares version = 1");
    std::fs::write(dir.path().join(format!("create_order_v{version}.toml")), v).unwrap();
    if keep_v1 {
        std::fs::write(dir.path().join("create_order_v1.toml"), shipped).unwrap();
    }
    dir
}
