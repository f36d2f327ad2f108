//! The deployment files, checked without a Docker engine: `docker-compose.yml` parsed, merge
//! keys applied, and the invariants a working deployment needs asserted, so a broken compose
//! file fails CI here rather than on someone's laptop.

use std::collections::HashSet;

use serde_json::Value;

fn root(file: &str) -> String {
    std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A YAML file as JSON, with `<<:` merge keys applied (as Compose applies them).
fn yaml(file: &str) -> Value {
    let mut v: serde_norway::Value = serde_norway::from_str(&root(file)).unwrap();
    v.apply_merge().unwrap();
    serde_json::to_value(v).unwrap()
}

/// The app containers: the ones built from this repository.
fn app_services(compose: &Value) -> Vec<(String, Value)> {
    compose["services"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.get("build").is_some())
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect()
}

#[test]
fn every_app_container_is_configured_probed_ordered_and_unprivileged() {
    let compose = yaml("docker-compose.yml");
    let apps = app_services(&compose);
    let names: HashSet<&str> = apps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        HashSet::from([
            "orchestrator",
            "order-service",
            "user-service",
            "payment-service",
            "notification-service"
        ])
    );
    for (name, s) in &apps {
        let env = &s["environment"];
        assert_eq!(env["KAFKA_BROKERS"], "kafka:9092", "{name}");
        assert_ne!(
            env["CREATE_TOPICS"], "false",
            "{name} must create topics.json's topics"
        );
        let test = s["healthcheck"]["test"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no healthcheck"));
        assert_eq!(test[0], "CMD", "{name}");
        assert_eq!(test[1], "healthcheck", "{name}: the image has no curl");
        let url = test[2].as_str().unwrap();
        assert!(url.ends_with("/readyz"), "{name}: {url}");
        let port = url.rsplit(':').next().unwrap().split('/').next().unwrap();
        if *name == "orchestrator" {
            assert_eq!(env["LISTEN_ADDR"], format!("0.0.0.0:{port}"), "{name}");
            // Beyond loopback the API refuses to start without tokens: compose must give some,
            // and they must be ones the orchestrator accepts.
            let tokens = env["API_TOKENS"]
                .as_str()
                .expect("orchestrator: API_TOKENS (its API listens beyond loopback)");
            let auth = orchestrator::http::auth::AuthArgs {
                api_auth: orchestrator::http::auth::AuthMode::Auto,
                api_tokens: compose_defaults(tokens),
                api_tokens_file: None,
            };
            let listen: std::net::SocketAddr =
                env["LISTEN_ADDR"].as_str().unwrap().parse().unwrap();
            assert!(
                matches!(
                    auth.auth(listen),
                    Ok(orchestrator::http::auth::Auth::Tokens(_))
                ),
                "compose's API_TOKENS are refused: {:?}",
                auth.auth(listen).err()
            );
        } else {
            assert_eq!(env["METRICS_ADDR"], format!("0.0.0.0:{port}"), "{name}");
        }
        for dep in ["kafka", "postgres"] {
            assert_eq!(
                s["depends_on"][dep]["condition"], "service_healthy",
                "{name} must wait for {dep}"
            );
        }
        let user = s["user"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no user"));
        let uid = user.split(':').next().unwrap();
        assert!(uid != "0" && uid != "root", "{name} runs as root");
        for volume in s["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(
                !source.starts_with('.') && !source.starts_with('/'),
                "{name}: bind mount {source} (a named volume keeps ./data for cargo run)"
            );
        }
    }
    let db_urls: Vec<&str> = apps
        .iter()
        .filter_map(|(_, s)| s["environment"]["DATABASE_URL"].as_str())
        .collect();
    let init = root("deploy/postgres-init.sql");
    for url in db_urls {
        let db = url.rsplit('/').next().unwrap();
        assert!(
            init.contains(&format!("CREATE DATABASE {db};")),
            "{db} is never created"
        );
    }
}

/// The API with compose's well-known default tokens is published on loopback only unless the
/// deployment says otherwise.
#[test]
fn the_api_is_published_on_loopback_unless_told_otherwise() {
    let compose = yaml("docker-compose.yml");
    let port = compose["services"]["orchestrator"]["ports"][0]
        .as_str()
        .unwrap();
    assert_eq!(port, "${SAGA_BIND:-127.0.0.1}:8080:8080");
}

/// Compose lets every app container drain for longer than a process takes at most to stop
/// (its default 10 s would SIGKILL a drain in progress).
#[test]
fn every_app_container_gets_longer_to_stop_than_a_drain_takes() {
    let compose = yaml("docker-compose.yml");
    for (name, service) in app_services(&compose) {
        let grace = service["stop_grace_period"]
            .as_str()
            .and_then(|g| g.strip_suffix('s'))
            .and_then(|g| g.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name}: stop_grace_period in seconds (`30s`)"));
        let grace = std::time::Duration::from_secs(grace);
        assert!(
            grace > platform::shutdown::LIMIT,
            "{name}: {grace:?} is not above the {:?} a drain may take",
            platform::shutdown::LIMIT
        );
    }
}

#[test]
fn kafka_postgres_ui_and_prometheus_are_reachable_and_checked() {
    let compose = yaml("docker-compose.yml");
    let s = &compose["services"];
    let kafka = &s["kafka"];
    let listeners = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        .as_str()
        .unwrap();
    assert!(listeners.contains("localhost:29092"), "{listeners}");
    assert!(kafka["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "29092:29092"));
    // Only topics.json's topics: the apps create them, the broker creates no others.
    assert_eq!(
        kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"],
        "false"
    );
    // The broker the tests meet (scripts/kafka.sh) is the one compose runs, with its settings.
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh")).unwrap();
    let pinned = script
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION=\"${KAFKA_VERSION:-"))
        .and_then(|l| l.strip_suffix("}\""))
        .expect("scripts/kafka.sh pins KAFKA_VERSION");
    assert_eq!(kafka["image"], format!("apache/kafka:{pinned}"));
    for (setting, property) in [
        (
            "KAFKA_AUTO_CREATE_TOPICS_ENABLE",
            "auto.create.topics.enable",
        ),
        (
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "offsets.topic.replication.factor",
        ),
        (
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
            "transaction.state.log.min.isr",
        ),
        (
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS",
            "group.initial.rebalance.delay.ms",
        ),
    ] {
        let value = kafka["environment"][setting].to_string().replace('"', "");
        assert!(
            script.contains(&format!("{property}={value}")),
            "{setting}={value} in compose, not {property}={value} in scripts/kafka.sh"
        );
    }
    let log_dir = kafka["environment"]["KAFKA_LOG_DIRS"].as_str().unwrap();
    assert!(kafka["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v.as_str().unwrap().ends_with(&format!(":{log_dir}"))));
    let pg = &s["postgres"];
    let check = pg["healthcheck"]["test"][1].as_str().unwrap();
    assert!(check.contains("pg_isready -h 127.0.0.1"), "{check}");
    assert!(pg["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v.as_str().unwrap().starts_with("pgdata:")));
    let ui = &s["kafka-ui"];
    assert_eq!(
        ui["environment"]["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"],
        "kafka:9092"
    );
    assert!(ui["ports"][0].as_str().unwrap().starts_with("8081:"));
    let named: HashSet<&str> = compose["volumes"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for v in ["kafka-data", "pgdata", "notifications", "prometheus-data"] {
        assert!(named.contains(v), "volume {v}");
    }

    // Prometheus scrapes every app container on the port it serves /metrics on.
    let prometheus = yaml("deploy/prometheus.yml");
    let targets: HashSet<String> = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|job| job["static_configs"].as_array().unwrap().iter())
        .flat_map(|c| c["targets"].as_array().unwrap().iter())
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    for (name, app) in app_services(&compose) {
        let addr = app["environment"]["METRICS_ADDR"]
            .as_str()
            .or(app["environment"]["LISTEN_ADDR"].as_str())
            .unwrap();
        let port = addr.rsplit(':').next().unwrap();
        assert!(
            targets.contains(&format!("{name}:{port}")),
            "{name}:{port} not scraped: {targets:?}"
        );
    }
    let mounts = s["prometheus"]["volumes"].as_array().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m.as_str().unwrap().starts_with("./deploy/prometheus.yml:")));
}

#[test]
fn the_image_runs_unprivileged_with_topics_json_and_a_probe() {
    let dockerfile = root("Dockerfile");
    assert!(dockerfile.contains("COPY topics.json /etc/saga/topics.json"));
    assert!(dockerfile.contains("TOPICS_FILE=/etc/saga/topics.json"));
    // The definitions the orchestrator runs are files an operator can replace.
    assert!(dockerfile.contains("COPY sagas /etc/saga/sagas"));
    assert!(dockerfile.contains("SAGAS_DIR=/etc/saga/sagas"));
    assert!(dockerfile.contains("MESSAGES_FILE=/etc/saga/messages.toml"));
    assert!(
        dockerfile.contains("--mount=type=cache"),
        "dependency builds are cached"
    );
    assert!(dockerfile.contains("--bin healthcheck"));
    // An operator in a container has the command line (`docker compose exec orchestrator sagactl
    // list`).
    assert!(dockerfile.contains("--bin sagactl") && dockerfile.contains("target/release/sagactl"));
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(!user.starts_with('0') && user != "root", "{user}");
    // Every binary compose runs is built into the image.
    let compose = yaml("docker-compose.yml");
    for (name, s) in app_services(&compose) {
        let binary = s["command"][0].as_str().unwrap();
        assert!(
            dockerfile.contains(&format!("--bin {binary}")),
            "{name}: {binary} not built"
        );
    }
}

/// `${NAME:-default}` replaced by its default, as compose does when `NAME` is unset.
fn compose_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        let inner = &rest[start + 2..start + end];
        out.push_str(inner.split_once(":-").map_or("", |(_, d)| d));
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}
