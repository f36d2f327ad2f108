//! Fault tests: the orchestrator and the services run as separate OS processes against a broker
//! that outlives them. Whatever fails, every saga ends terminal, nothing is lost, and no effect
//! happens twice — checked from the API and the databases, never from logs.

use std::time::Duration;

use crate::helpers::*;
use crate::procs::spawn_processes;

const SETTLE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_orchestrator_with_200_sagas_in_flight_loses_nothing() {
    let mut app = spawn_processes(&[]).await;
    let ids = app.post_many(240, "k9").await;
    assert_eq!(ids.len(), 240, "every order accepted");
    app.kill9("orchestrator");
    let db = app.db("orchestrator").await;
    let unfinished = unfinished_sagas(&db).await;
    assert!(unfinished > 0, "the kill should catch sagas in flight");
    app.spawn_proc("orchestrator");
    app.wait_healthy().await;
    let by_status = app.all_terminal_and_consistent(&ids, SETTLE).await;
    assert_eq!(by_status.get("COMPLETED"), Some(&60), "{by_status:?}");
    assert_eq!(by_status.get("COMPENSATED"), Some(&180), "{by_status:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_each_service_mid_load_loses_nothing() {
    let mut app = spawn_processes(&[]).await;
    let mut ids = Vec::new();
    for service in ["orders", "users", "payments", "notification"] {
        ids.extend(app.post_many(40, service).await);
        app.kill9(service);
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.spawn_proc(service);
    }
    assert_eq!(ids.len(), 160);
    let by_status = app.all_terminal_and_consistent(&ids, SETTLE).await;
    assert_eq!(by_status.get("COMPLETED"), Some(&40), "{by_status:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_away_for_10_seconds_delays_sagas_but_loses_none() {
    if crate::broker::needs_the_mock("taking a broker down") {
        return;
    }
    let app = spawn_processes(&[]).await;
    let mut ids = app.post_many(40, "before").await;
    app.kafka.broker_down(1).unwrap();
    // Orders are still accepted: they wait in the outbox.
    ids.extend(app.post_many(40, "during").await);
    tokio::time::sleep(Duration::from_secs(10)).await;
    app.kafka.broker_up(1).unwrap();
    assert_eq!(ids.len(), 80);
    let by_status = app.all_terminal_and_consistent(&ids, SETTLE).await;
    assert_eq!(by_status.get("COMPLETED"), Some(&20), "{by_status:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_stops_cleanly_and_every_accepted_saga_completes_after_a_restart() {
    let mut app = spawn_processes(&[]).await;
    let poster = {
        let (client, url) = (app.client.clone(), app.url("/orders"));
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            for i in 0..400 {
                let r = client
                    .post(&url)
                    .json(&order_body(&format!("c-term-{i}")))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        accepted.push(body["saga_id"].as_str().unwrap().to_string());
                    }
                    _ => break,
                }
            }
            accepted
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, took) = app.sigterm("orchestrator");
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(30), "stopped in {took:?}");
    let accepted = poster.await.unwrap();
    assert!(!accepted.is_empty());
    app.spawn_proc("orchestrator");
    app.wait_healthy().await;
    let by_status = app.all_terminal_and_consistent(&accepted, SETTLE).await;
    assert_eq!(
        by_status.get("COMPLETED"),
        Some(&accepted.len()),
        "{by_status:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_messages_on_every_topic_are_dead_lettered_and_sagas_go_on() {
    let app = spawn_processes(&[]).await;
    let topics = app.config.topics.clone();
    let unknown_type = serde_json::json!({
        "message_id": uuid::Uuid::new_v4(), "type": "launch_rocket", "correlation_id": uuid::Uuid::new_v4(),
        "causation_id": null, "timestamp": "2026-01-01T00:00:00Z", "payload": {}
    })
    .to_string();
    let mut junk = Vec::new();
    for t in [
        topics.role("order_commands").unwrap(),
        topics.role("order_events").unwrap(),
        topics.role("user_commands").unwrap(),
        topics.role("user_events").unwrap(),
        topics.role("payment_commands").unwrap(),
        topics.role("payment_events").unwrap(),
        topics.role("notification_events").unwrap(),
    ] {
        let garbage = format!("\u{0}not json on {}", t.name);
        app.produce(&t.name, "k", garbage.as_bytes()).await;
        app.produce(&t.name, "k", unknown_type.as_bytes()).await;
        junk.push(garbage);
    }
    let ids = app.post_many(40, "junk").await;
    let by_status = app.all_terminal_and_consistent(&ids, SETTLE).await;
    assert_eq!(by_status.get("COMPLETED"), Some(&10), "{by_status:?}");
    // The consumer of each topic dead-lettered what it could not read.
    for garbage in junk.iter().take(6) {
        let headers = app.wait_dead_letter(garbage.as_bytes()).await;
        assert!(headers.contains_key("dlq.error"), "{headers:?}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_away_for_a_while_delays_sagas_but_loses_none() {
    let app = spawn_processes(&[]).await;
    let mut ids = app.post_many(40, "db-before").await;
    let outage = DatabaseOutage::begin(&app).await;
    // While the database is away, requests fail with 503 instead of hanging or crashing — at
    // the latest when the server's 10 s request timeout fires, so the client waits a bit longer.
    let r = app
        .client
        .post(app.url("/orders"))
        .timeout(Duration::from_secs(15))
        .json(&order_body("c-db-during"))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 503 || r.status() == 202, "{}", r.status());
    if r.status() == 202 {
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["saga_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Longer than SQLite's 5 s busy timeout, so writers fail and retry rather than just wait.
    tokio::time::sleep(Duration::from_secs(7)).await;
    outage.end().await;
    ids.extend(app.post_many(40, "db-after").await);
    let by_status = app.all_terminal_and_consistent(&ids, SETTLE).await;
    assert!(
        by_status.get("COMPLETED").copied().unwrap_or(0) >= 20,
        "{by_status:?}"
    );
    app.wait_healthy().await;
    app.stop().await;
}

/// Makes the orchestrator's database unusable: an exclusive lock on the SQLite file, or, on
/// PostgreSQL, every connection to its database killed as soon as it appears (what clients see
/// while a server restarts: dropped connections and "terminating connection" errors).
enum DatabaseOutage {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Any>, sqlx::AnyPool),
    Postgres(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    ),
}

impl DatabaseOutage {
    async fn begin(app: &TestApp) -> Self {
        let url = app.config.database_url("orchestrator").unwrap();
        if url.starts_with("sqlite:") {
            let pool = sqlx::any::AnyPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .unwrap();
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut *conn)
                .await
                .unwrap();
            DatabaseOutage::Sqlite(conn, pool)
        } else {
            let base = std::env::var("TEST_DATABASE_URL").unwrap();
            let admin = sqlx::any::AnyPoolOptions::new()
                .max_connections(1)
                .connect(&base)
                .await
                .unwrap();
            let name = url.rsplit('/').next().unwrap().to_string();
            let stop = tokio_util::sync::CancellationToken::new();
            let token = stop.clone();
            let killer = tokio::spawn(async move {
                while !token.is_cancelled() {
                    let _ = sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    )
                    .bind(&name)
                    .execute(&admin)
                    .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            DatabaseOutage::Postgres(stop, killer)
        }
    }

    async fn end(self) {
        match self {
            DatabaseOutage::Sqlite(mut conn, _pool) => {
                sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
            }
            DatabaseOutage::Postgres(stop, killer) => {
                stop.cancel();
                killer.await.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_sagas_under_chaos_and_a_kill_9_all_end_terminal_and_consistent() {
    let mut app = spawn_processes(&[
        ("CHAOS_FAILURE_RATE", "0.2"),
        ("CHAOS_DROP_RATE", "0.1"),
        ("CHAOS_DUPLICATE_RATE", "0.1"),
    ])
    .await;
    let mut ids = app.post_many(250, "chaos-a").await;
    app.kill9("orchestrator");
    app.spawn_proc("orchestrator");
    app.wait_healthy().await;
    ids.extend(app.post_many(250, "chaos-b").await);
    assert_eq!(ids.len(), 500);
    let by_status = app
        .all_terminal_and_consistent(&ids, Duration::from_secs(240))
        .await;
    eprintln!("500 sagas, 20% failures, 10% drops, 10% duplicates, kill -9 midway: {by_status:?}");
    assert_eq!(by_status.values().sum::<usize>(), 500);
    assert!(!by_status.contains_key("FAILED"), "{by_status:?}");
    app.stop().await;
}
