//! Bounded storage: processed inbox rows, sent outbox rows and the services' processed commands
//! go after the retention time; sagas stay queryable.

use std::time::{Duration, Instant};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_inbox_outbox_and_processed_command_rows_are_pruned_and_sagas_stay_queryable() {
    let mut app = spawn_app().await;
    app.stop_orchestrator().await;
    app.config.tuning.retention = Duration::from_secs(2);
    for service in ["orders", "users", "payments"] {
        app.restart_service(service, Default::default()).await;
    }
    app.start_orchestrator().await;

    let mut ids = Vec::new();
    for i in 0..20 {
        let customer = ["c", "nocard", "declined", "noupdate"][i % 4];
        ids.push(app.start_saga(&format!("{customer}-prune-{i}")).await);
    }
    for id in &ids {
        app.wait_terminal(id).await;
    }
    let db = app.db("orchestrator").await;
    let inbox = count(&db, "SELECT COUNT(*) FROM inbox WHERE message_id <> $1", "").await;
    let outbox = count(&db, "SELECT COUNT(*) FROM outbox WHERE msg_key <> $1", "").await;
    assert!(inbox >= 60, "every reply is recorded first ({inbox})");
    assert!(
        outbox >= 80,
        "every command and event is recorded first ({outbox})"
    );
    let services = [
        app.db("orders").await,
        app.db("users").await,
        app.db("payments").await,
    ];
    let processed = |i: usize| {
        let pool = services[i].clone();
        async move {
            count(
                &pool,
                "SELECT COUNT(*) FROM processed_commands WHERE command_id <> $1",
                "",
            )
            .await
        }
    };
    assert!(
        processed(0).await >= 20,
        "the order service recorded its commands"
    );

    let start = Instant::now();
    loop {
        let inbox = count(&db, "SELECT COUNT(*) FROM inbox WHERE message_id <> $1", "").await;
        let outbox = count(&db, "SELECT COUNT(*) FROM outbox WHERE msg_key <> $1", "").await;
        let commands = processed(0).await + processed(1).await + processed(2).await;
        if inbox == 0 && outbox == 0 && commands == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still {inbox} inbox, {outbox} outbox and {commands} processed command rows"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for (i, id) in ids.iter().enumerate() {
        let (status, saga) = app.get_saga(id).await;
        assert_eq!(status, 200);
        let expected = if i % 4 == 0 {
            "COMPLETED"
        } else {
            "COMPENSATED"
        };
        assert_eq!(saga["status"], expected, "{saga}");
    }
    // A new saga after pruning still runs normally.
    let id = app.start_saga("c-after-prune").await;
    assert_eq!(app.wait_terminal(&id).await["status"], "COMPLETED");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_outbox_rows_are_never_pruned() {
    if crate::broker::needs_the_mock("taking a broker down") {
        return;
    }
    // No services: the saga waits; with the broker down its command cannot be published.
    let mut app = spawn_app_with(&[]).await;
    app.stop_orchestrator().await;
    app.config.tuning.retention = Duration::from_millis(100);
    app.kafka.broker_down(1).unwrap();
    app.start_orchestrator().await;
    let id = app.start_saga("c-waiting").await;
    let db = app.db("orchestrator").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unsent = count(
        &db,
        "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND msg_key = $1",
        &id,
    )
    .await;
    assert_eq!(unsent, 2, "the first command and the started event wait");
    app.kafka.broker_up(1).unwrap();
    app.stop().await;
}

/// Terminal sagas were kept for ever. With `SAGA_RETENTION` (opt-in) a saga
/// that ended well goes after it, with its inbox and outbox rows; a `FAILED` one stays for its
/// operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_saga_retention_sagas_that_ended_well_go_with_their_rows_and_failed_ones_stay() {
    let refuse_cancel = services::chaos::Chaos {
        failure_rate: 1.0,
        commands: vec!["cancel_order".into()],
        ..Default::default()
    };
    // Steps wait 3 s for a reply: the restarted orchestrator's group join on the embedded Kafka
    // can outlast `fast_policy`'s three 300 ms attempts, which would fail the first saga.
    let policy = orchestrator::Policy {
        step_timeout_ms: 3_000,
        max_step_timeout_ms: 3_000,
        ..fast_policy()
    };
    let mut app = spawn_app_custom(&ALL_SERVICES, policy, refuse_cancel).await;
    app.stop_orchestrator().await;
    app.config.tuning.saga_retention = Some(Duration::from_secs(2));
    app.start_orchestrator().await;

    let done = app.start_saga("c-prunable").await;
    let failed = app.start_saga("nocard-kept").await;
    assert_eq!(app.wait_terminal(&done).await["status"], "COMPLETED");
    assert_eq!(app.wait_terminal(&failed).await["status"], "FAILED");
    let db = app.db("orchestrator").await;
    let rows = |id: String| {
        let db = db.clone();
        async move {
            count(&db, "SELECT COUNT(*) FROM inbox WHERE saga_id = $1", &id).await
                + count(&db, "SELECT COUNT(*) FROM outbox WHERE msg_key = $1", &id).await
        }
    };
    assert!(rows(failed.clone()).await > 0);

    let start = Instant::now();
    loop {
        let (status, _) = app.get_saga(&done).await;
        if status == reqwest::StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the completed saga was never pruned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        rows(done.clone()).await,
        0,
        "its inbox and outbox rows went with it"
    );
    let (status, saga) = app.get_saga(&failed).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(saga["status"], "FAILED");
    assert!(rows(failed).await > 0, "a FAILED saga keeps its rows");
    app.stop().await;
}

/// The saga prune looked for sagas that ended well, then deleted those ids: on PostgreSQL a
/// completed saga cancelled in between (running again, undoing its steps) was deleted while it
/// ran. The delete now re-checks that each saga ended well, on the row as the cancel left it.
/// Here the cancel holds its row lock while the prune looks, and commits once the prune waits
/// on it. PostgreSQL only: on SQLite one writer at a time leaves no room between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_cancelled_while_the_prune_looks_is_not_deleted() {
    let app = spawn_app_on(
        Some(required_postgres()),
        &["notification", "orders", "users", "payments"],
        fast_policy(),
        Default::default(),
    )
    .await;
    let id = app.start_saga("c-prune-race").await;
    assert_eq!(app.wait_terminal(&id).await["status"], "COMPLETED");
    let store = app.orchestrator_store().await;
    let pool = app.db("orchestrator").await;
    let mut cancel = pool.begin().await.unwrap();
    sqlx::query("UPDATE sagas SET status = 'CANCELLING', version = version + 1 WHERE saga_id = $1")
        .bind(&id)
        .execute(&mut *cancel)
        .await
        .unwrap();
    let before = platform::time::now_ms() + 60_000;
    let prune = tokio::spawn(async move { store.prune_sagas(before, 100).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.commit().await.unwrap();
    let pruned = prune.await.unwrap().unwrap();
    assert_eq!(pruned, 0, "the cancelled saga is not one that ended well");
    let status = scalar(&pool, "SELECT status FROM sagas WHERE saga_id = $1", &id).await;
    assert_eq!(status.as_deref(), Some("CANCELLING"));
    app.stop().await;
}
