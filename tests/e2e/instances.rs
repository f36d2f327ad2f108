//! Several orchestrator instances (OS processes) against one PostgreSQL database and one Kafka
//! cluster: one consumer group over the events topics, any instance serving the API for any saga,
//! relays sharing the outbox. These run on PostgreSQL whatever the engine of the run — a SQLite
//! file belongs to one process.

use std::time::Duration;

use serde_json::Value;
use sqlx::{AnyPool, Row};

use crate::helpers::*;
use crate::procs::{free_addr, spawn_processes_on, INSTANCES};

const SETTLE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_work_and_a_kill_9_of_one_loses_nothing() {
    let mut app = spawn_processes_on(Some(required_postgres()), &[], 3).await;

    // Any instance serves any saga.
    let (status, created) = app.post_order("c-anywhere").await;
    assert_eq!(status, 202, "{created}");
    let id = created["saga_id"].as_str().unwrap().to_string();
    app.wait_terminal(&id).await;
    for instance in INSTANCES {
        let r = app
            .client
            .get(app.url_of(instance, &format!("/sagas/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{instance}");
        let saga: Value = r.json().await.unwrap();
        assert_eq!(saga["status"], "COMPLETED", "{instance}: {saga}");
    }

    // A long poll on any instance ends when the saga does, whichever instance ends it (NOTIFY),
    // not at a waiter's safety re-read 2 s later.
    let db = app.db("orchestrator").await;
    for n in 0..6 {
        let (status, created) = app.post_order(&format!("c-poll-{n}")).await;
        assert_eq!(status, 202, "{created}");
        let id = created["saga_id"].as_str().unwrap().to_string();
        let mut polls = tokio::task::JoinSet::new();
        for instance in INSTANCES {
            let request = app
                .client
                .get(app.url_of(instance, &format!("/sagas/{id}?wait_ms=9000")))
                .timeout(Duration::from_secs(15))
                .send();
            polls.spawn(async move {
                let saga: Value = request.await.unwrap().json().await.unwrap();
                (instance, saga, platform::time::now_ms())
            });
        }
        let answers = polls.join_all().await;
        let ended_at: i64 = sqlx::query("SELECT updated_at FROM sagas WHERE saga_id = $1")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap()
            .get("updated_at");
        for (instance, saga, answered_at) in answers {
            assert_eq!(saga["status"], "COMPLETED", "{instance}: {saga}");
            assert!(
                answered_at - ended_at < 1_000,
                "{instance} answered {} ms after the saga ended",
                answered_at - ended_at
            );
        }
    }

    let mut ids = app.post_many_to(&INSTANCES, 300, "three").await;
    assert_eq!(ids.len(), 300, "every order accepted");
    let unfinished = unfinished_sagas(&db).await;
    app.kill9("orchestrator-2");
    assert!(unfinished > 0, "the kill should catch sagas in flight");

    let more = app
        .post_many_to(&["orchestrator", "orchestrator-3"], 120, "two")
        .await;
    assert_eq!(more.len(), 120, "the other instances keep accepting orders");
    ids.extend(more);

    let by_status = app.all_terminal_and_consistent(&ids, SETTLE).await;
    assert_eq!(by_status.get("COMPLETED"), Some(&105), "{by_status:?}");
    assert_eq!(by_status.get("COMPENSATED"), Some(&315), "{by_status:?}");
    // Nothing is left behind by the dead instance: no saga unfinished (including any it created
    // without answering), and its claimed outbox rows were published by the others.
    assert_eq!(unfinished_sagas(&db).await, 0);
    wait_outbox_drained(&db).await;
    app.stop().await;
}

/// A rolling deploy of create_order version 2: one instance still has only version 1 while an
/// upgraded one starts version 2 sagas, and the old one takes its share of their replies and
/// deadlines. It used to park them for good ("version 2 is not loaded"), their orders left
/// PENDING; now it runs them under the definition the upgraded instance recorded. Then the old
/// instance is upgraded too, and every saga of both versions ends, and ends right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_of_a_new_saga_version_parks_no_saga() {
    // The first instance reads the repository's sagas/: version 1 only.
    let mut app = spawn_processes_on(Some(required_postgres()), &[], 1).await;
    let both = sagas_with_create_order(2, true);
    app.proc_env
        .push(("SAGAS_DIR".into(), both.path().display().to_string()));
    app.instance_addrs.insert("orchestrator-2", free_addr());
    app.spawn_proc("orchestrator-2");
    app.wait_healthy_at("orchestrator-2").await;

    let mut ids = app
        .post_many_to(&["orchestrator", "orchestrator-2"], 160, "rollout")
        .await;
    assert_eq!(ids.len(), 160, "every order accepted");
    let db = app.db("orchestrator").await;
    let parked = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM sagas WHERE state LIKE '%\"parked\":%'")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    // Let the old instance meet version 2's replies before it is upgraded.
    for _ in 0..40 {
        if unfinished_sagas(&db).await == 0 {
            break;
        }
        assert_eq!(parked().await, 0, "no saga parked during the rollout");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (exit, _) = app.sigterm("orchestrator");
    assert!(exit.success(), "{exit:?}");
    app.spawn_proc("orchestrator");
    app.wait_healthy_at("orchestrator").await;
    ids.extend(app.post_many_to(&INSTANCES[..2], 40, "upgraded").await);

    let by_status = app.all_terminal_and_consistent(&ids, SETTLE).await;
    assert_eq!(by_status.get("COMPLETED"), Some(&50), "{by_status:?}");
    assert_eq!(by_status.get("COMPENSATED"), Some(&150), "{by_status:?}");
    assert_eq!(parked().await, 0, "no saga parked");
    let versions: Vec<(i64, i64)> = sqlx::query(
        "SELECT CAST(definition_version AS BIGINT) AS v, COUNT(*) AS n FROM sagas \
         GROUP BY definition_version ORDER BY v",
    )
    .fetch_all(&db)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("v"), r.get("n")))
    .collect();
    assert_eq!(
        versions,
        [(1, 80), (2, 120)],
        "80 started by the old instance"
    );
    let (log, _) = app.proc_output("orchestrator");
    assert!(
        log.contains("saga definition learnt from the database"),
        "the old instance ran version 2 sagas: {}",
        log.lines()
            .filter(|l| l.contains("saga definition"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_moving_between_instances_apply_no_reply_twice_or_out_of_order() {
    let mut app = spawn_processes_on(Some(required_postgres()), &[], 1).await;
    // Each membership change moves partitions while replies are in flight: two joins, one
    // graceful leave, one crash.
    let mut ids = app.post_many_to(&["orchestrator"], 120, "one").await;
    app.instance_addrs.insert("orchestrator-2", free_addr());
    app.spawn_proc("orchestrator-2");
    ids.extend(app.post_many_to(&["orchestrator"], 120, "joining").await);
    app.wait_healthy_at("orchestrator-2").await;
    ids.extend(
        app.post_many_to(&["orchestrator", "orchestrator-2"], 120, "two")
            .await,
    );
    app.instance_addrs.insert("orchestrator-3", free_addr());
    app.spawn_proc("orchestrator-3");
    app.wait_healthy_at("orchestrator-3").await;
    ids.extend(app.post_many_to(&INSTANCES, 120, "three").await);
    let (exit, _) = app.sigterm("orchestrator");
    assert!(exit.success(), "{exit:?}");
    ids.extend(
        app.post_many_to(&["orchestrator-2", "orchestrator-3"], 120, "left")
            .await,
    );
    app.kill9("orchestrator-3");
    ids.extend(app.post_many_to(&["orchestrator-2"], 120, "last").await);
    assert_eq!(ids.len(), 720, "every order accepted");

    // Follow the sagas through the surviving instance.
    app.addr = app.addr_of("orchestrator-2");
    let by_status = app.all_terminal_and_consistent(&ids, SETTLE).await;
    assert_eq!(by_status.get("COMPLETED"), Some(&180), "{by_status:?}");

    let db = app.db("orchestrator").await;
    for id in &ids {
        let (_, saga) = app.get_saga(id).await;
        // In order: exactly the steps of the saga's path, each once, in sequence.
        let customer = saga["customer_id"].as_str().unwrap();
        assert_eq!(steps(&saga), expected_steps(customer), "{saga}");
        // Never twice: every stored version is one transition, and every transition is one
        // attempt's end (a reply or a deadline). A reply applied twice would add a version.
        let version = stored_version(&db, id).await;
        let attempts: u64 = saga["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["attempts"].as_u64().unwrap())
            .sum();
        assert_eq!(version as u64, 1 + attempts, "{saga}");
    }
    wait_outbox_drained(&db).await;
    app.stop().await;
}

/// The steps each test behaviour goes through.
fn expected_steps(customer: &str) -> Vec<(String, String, String)> {
    let forward = |name, status| step(name, "forward", status);
    let undo = |name| step(name, "compensation", "COMPLETED");
    match customer.split('-').next().unwrap() {
        "c" => vec![
            forward("create_order", "COMPLETED"),
            forward("get_payment_info", "COMPLETED"),
            forward("authorize_payment", "COMPLETED"),
            forward("update_order_status", "COMPLETED"),
        ],
        "nocard" => vec![
            forward("create_order", "COMPLETED"),
            forward("get_payment_info", "FAILED"),
            undo("cancel_order"),
        ],
        "declined" => vec![
            forward("create_order", "COMPLETED"),
            forward("get_payment_info", "COMPLETED"),
            forward("authorize_payment", "FAILED"),
            undo("cancel_order"),
        ],
        "noupdate" => vec![
            forward("create_order", "COMPLETED"),
            forward("get_payment_info", "COMPLETED"),
            forward("authorize_payment", "COMPLETED"),
            forward("update_order_status", "FAILED"),
            undo("revert_payment"),
            undo("cancel_order"),
        ],
        other => panic!("unexpected customer prefix {other}"),
    }
}

async fn stored_version(db: &AnyPool, saga_id: &str) -> i64 {
    sqlx::query("SELECT version FROM sagas WHERE saga_id = $1")
        .bind(saga_id)
        .fetch_one(db)
        .await
        .unwrap()
        .try_get("version")
        .unwrap()
}

/// Waits until every outbox row is published (the last lifecycle events follow the terminal
/// status by a relay round).
async fn wait_outbox_drained(db: &AnyPool) {
    let start = std::time::Instant::now();
    loop {
        let unsent = count(
            db,
            "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND msg_key <> $1",
            "",
        )
        .await;
        if unsent == 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{unsent} outbox rows never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
