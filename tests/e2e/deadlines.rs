//! Deadlines: commands re-sent with the same id, steps given up on, compensations retried until
//! a limit and re-driven by hand, sagas compensated when they run out of time.

use std::time::Duration;

use reqwest::StatusCode;
use sqlx::Row;

use crate::helpers::*;
use services::chaos::Chaos;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_command_is_resent_with_the_same_id_and_the_saga_completes() {
    let mut app = spawn_app_custom(
        &["notification", "orders", "payments"],
        fast_policy(),
        Chaos::default(),
    )
    .await;
    let id = app.start_saga("c-resend").await;
    app.wait_for(&id, Duration::from_secs(30), |s| {
        s["current_step"] == "get_payment_info" && s["steps"][1]["attempts"].as_u64() >= Some(2)
    })
    .await;
    app.start_service("users").await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let history = saga["steps"][1]["history"].as_array().unwrap();
    assert!(history.len() >= 2, "{saga}");
    assert_eq!(history[0]["outcome"], "timed out");
    assert_eq!(history.last().unwrap()["outcome"], "succeeded");
    // Every sending carried the same command id, and the user service handled it once.
    let users = app.db("users").await;
    assert_eq!(
        count(
            &users,
            "SELECT COUNT(*) FROM processed_commands WHERE saga_id = $1",
            &id
        )
        .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_never_answers_fails_after_its_attempts_and_is_compensated() {
    let app = spawn_app_custom(&["notification", "orders"], fast_policy(), Chaos::default()).await;
    let id = app.start_saga("c-silent").await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(
        steps(&saga),
        vec![
            step("create_order", "forward", "COMPLETED"),
            step("get_payment_info", "forward", "FAILED"),
            step("cancel_order", "compensation", "COMPLETED"),
        ]
    );
    assert_eq!(saga["steps"][1]["attempts"], 3);
    assert!(
        saga["error"]
            .as_str()
            .unwrap()
            .contains("no reply after 3 attempts"),
        "{saga}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_compensation_fails_the_saga_at_its_limit_and_retry_finishes_it() {
    let refuse_cancel = Chaos {
        failure_rate: 1.0,
        commands: vec!["cancel_order".into()],
        ..Chaos::default()
    };
    let mut app = spawn_app_custom(&ALL_SERVICES, fast_policy(), refuse_cancel).await;
    let id = app.start_saga("nocard-refused").await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "FAILED", "{saga}");
    let why = saga["compensation_error"].as_str().unwrap();
    assert!(why.starts_with("cancel_order failed after"), "{why}");
    let cancel = &saga["steps"][2];
    assert_eq!(cancel["name"], "cancel_order");
    assert_eq!(cancel["status"], "FAILED");
    assert!(cancel["attempts"].as_u64().unwrap() >= 2, "{saga}");
    assert!(cancel["history"][0]["outcome"]
        .as_str()
        .unwrap()
        .starts_with("failed: injected refusal"));
    assert_eq!(
        app.order_status(&id).await.as_deref(),
        Some("PENDING"),
        "the order is still there: that is why the saga is FAILED"
    );

    // The order service recovers (a saga of its own proves it is serving again); an operator
    // re-drives the saga.
    app.restart_until_serving("orders").await;
    let (status, body) = app.post(&format!("/sagas/{id}/retry")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert!(saga["compensation_error"].is_null());
    assert_eq!(app.order_status(&id).await.as_deref(), Some("CANCELLED"));
    app.stop().await;
}

/// A compensation answered only after its limit (the saga already `FAILED`).
/// The late reply was ignored, as it must be, but its message id stayed in the inbox; a retry
/// re-sends the same command id, the service answers with the same stored reply, the inbox
/// dropped it as a duplicate, and the saga failed again although the order was cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_late_compensation_reply_finishes_the_saga() {
    let policy = orchestrator::Policy {
        compensation_limit_ms: 1_000,
        ..fast_policy()
    };
    let slow_cancel = Chaos {
        reply_delay_ms: 3_000,
        commands: vec!["cancel_order".into()],
        ..Chaos::default()
    };
    let mut app = spawn_app_custom(&ALL_SERVICES, policy, slow_cancel).await;
    let id = app.start_saga("nocard-late").await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "FAILED", "{saga}");
    // The order service did cancel; its answers (one stored reply, re-sent for every re-sent
    // command) arrive after the limit and are ignored.
    assert_eq!(app.order_status(&id).await.as_deref(), Some("CANCELLED"));
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let orchestrator = app.db("orchestrator").await;
    let stale = count(
        &orchestrator,
        "SELECT COUNT(*) FROM inbox WHERE saga_id = $1 AND message_type = 'order.cancelled'",
        &id,
    )
    .await;
    assert_eq!(stale, 0, "an ignored reply stays out of the inbox");
    let (_, saga) = app.get_saga(&id).await;
    assert_eq!(
        saga["status"], "FAILED",
        "the late reply changed nothing: {saga}"
    );

    // The order service answers promptly again (a saga of its own proves it); the operator
    // retries.
    app.restart_until_serving("orders").await;
    let (status, body) = app.post(&format!("/sagas/{id}/retry")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert!(saga["compensation_error"].is_null(), "{saga}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_out_of_time_is_compensated_including_the_step_in_doubt() {
    // The saga deadline (2 s) comes long before the step would give up (20 attempts).
    let policy = orchestrator::Policy {
        saga_timeout_ms: 2_000,
        max_attempts: 20,
        ..fast_policy()
    };
    let mut app = spawn_app_custom(
        &["notification", "orders", "users"],
        policy,
        Chaos::default(),
    )
    .await;
    let id = app.start_saga("c-slow").await;
    // No payment service: the saga waits at authorize_payment until its deadline passes.
    app.wait_for(&id, Duration::from_secs(30), |s| {
        s["current_step"] == "authorize_payment"
    })
    .await;
    app.wait_for(&id, Duration::from_secs(30), |s| {
        s["status"] == "COMPENSATING"
    })
    .await;
    // The payment service comes back: it may see authorize_payment, so it must also see the
    // revert — the step in doubt is compensated.
    app.start_service("payments").await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert!(
        saga["error"]
            .as_str()
            .unwrap()
            .contains("did not complete within"),
        "{saga}"
    );
    let names: Vec<String> = steps(&saga).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(
        names[names.len() - 2..],
        ["revert_payment".to_string(), "cancel_order".to_string()]
    );
    let payments = app.db("payments").await;
    let live = count(
        &payments,
        "SELECT COUNT(*) FROM payments WHERE saga_id = $1 AND status = 'AUTHORIZED'",
        &id,
    )
    .await;
    assert_eq!(live, 0, "no payment left authorized");
    app.stop().await;
}

/// A stored saga whose pending step is past its definition (a definition that
/// shrank under it, a bad manual edit) made the timer index out of bounds and panic, which
/// stopped every deadline of every saga. Now such a saga is parked — left alone, shown with the
/// reason — and the timer goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_pointing_past_its_definition_is_parked_and_the_timer_goes_on() {
    // No user service: both sagas wait on get_payment_info, re-sent by the timer.
    let app = spawn_app_custom(
        &["notification", "orders"],
        fast_policy(),
        Default::default(),
    )
    .await;
    let broken = app.start_saga("c-broken").await;
    let other = app.start_saga("c-other").await;
    app.wait_for(&broken, Duration::from_secs(10), |s| {
        s["current_step"] == "get_payment_info"
    })
    .await;
    let db = app.db("orchestrator").await;
    let row = sqlx::query("SELECT state FROM sagas WHERE saga_id = $1")
        .bind(&broken)
        .fetch_one(&db)
        .await
        .unwrap();
    let mut state: serde_json::Value =
        serde_json::from_str(&row.try_get::<String, _>("state").unwrap()).unwrap();
    state["pending"][0]["step_index"] = serde_json::json!(9);
    sqlx::query(
        "UPDATE sagas SET state = $1, version = version + 1, wake_at = 0 WHERE saga_id = $2",
    )
    .bind(state.to_string())
    .bind(&broken)
    .execute(&db)
    .await
    .unwrap();

    // The timer still runs: the other saga gives up on its step and is compensated.
    let done = app
        .wait_for(&other, Duration::from_secs(20), |s| {
            s["status"] == "COMPENSATED"
        })
        .await;
    assert_eq!(done["status"], "COMPENSATED");
    let parked = app
        .wait_for(&broken, Duration::from_secs(10), |s| !s["parked"].is_null())
        .await;
    assert!(
        parked["parked"].as_str().unwrap().contains("step 9"),
        "{parked}"
    );
    assert_eq!(parked["status"], "STARTED", "parked, not moved");
    // Parked means left alone: no deadline brings it back to the timer.
    let wake: Option<i64> = sqlx::query("SELECT wake_at FROM sagas WHERE saga_id = $1")
        .bind(&broken)
        .fetch_one(&db)
        .await
        .unwrap()
        .try_get("wake_at")
        .unwrap();
    assert_eq!(wake, None);
    app.stop().await;
}

/// Every instance read the same oldest due sagas. A look now claims
/// what it takes, so a second look (another instance) finds none of them due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_sagas_are_claimed_by_one_look_not_handed_to_every_instance() {
    let policy = orchestrator::Policy {
        max_attempts: 1_000,
        ..fast_policy()
    };
    let mut app = spawn_app_custom(&["notification"], policy, Chaos::default()).await;
    let ids = [
        app.start_saga("c-claim-1").await,
        app.start_saga("c-claim-2").await,
    ];
    // No order service: both wait on create_order. Stop the orchestrator and let the deadlines
    // pass, then look twice, as two instances would.
    app.stop_orchestrator().await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let store = app.orchestrator_store().await;
    let now = platform::time::now_ms();
    let mut first: Vec<String> = store
        .due(now, 500, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|id| id.to_string())
        .collect();
    first.sort();
    let mut expected = ids.to_vec();
    expected.sort();
    assert_eq!(first, expected);
    assert!(
        store.due(now, 500, 10_000).await.unwrap().is_empty(),
        "a second look takes none of the claimed sagas"
    );
    assert_eq!(
        store.due(now + 10_001, 500, 10_000).await.unwrap().len(),
        2,
        "a claim nobody acted on ends with its lease"
    );
    app.stop().await;
}

/// A saga whose timer fails for good (here the database refuses its
/// outbox rows) stayed due at the front for ever. Now it is parked after 3 failures — `parked`
/// in the API, no deadline — while another saga's deadlines go on; `retry` resumes it once the
/// cause is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_whose_timer_keeps_failing_is_parked_and_others_go_on() {
    let policy = orchestrator::Policy {
        max_attempts: 1_000,
        saga_timeout_ms: 600_000,
        ..fast_policy()
    };
    let mut app = spawn_app_custom(
        &["notification", "orders", "users"],
        policy,
        Chaos::default(),
    )
    .await;
    let db = app.db("orchestrator").await;
    let statements: &[&str] = if test_postgres().is_some() {
        &[
            "CREATE TABLE refused (saga_id TEXT PRIMARY KEY)",
            "CREATE FUNCTION refuse_outbox() RETURNS trigger AS $$ BEGIN \
               IF EXISTS (SELECT 1 FROM refused WHERE saga_id = NEW.msg_key) THEN \
                 RAISE EXCEPTION 'injected: outbox row refused'; \
               END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox \
             FOR EACH ROW EXECUTE FUNCTION refuse_outbox()",
        ]
    } else {
        &[
            "CREATE TABLE refused (saga_id TEXT PRIMARY KEY)",
            "CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox \
             WHEN EXISTS (SELECT 1 FROM refused WHERE saga_id = NEW.msg_key) \
             BEGIN SELECT RAISE(ABORT, 'injected: outbox row refused'); END",
        ]
    };
    for sql in statements {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    // No payment service: both sagas wait at authorize_payment, re-sending it.
    let stuck = app.start_saga("c-stuck").await;
    let other = app.start_saga("c-other").await;
    for id in [&stuck, &other] {
        app.wait_for(id, Duration::from_secs(30), |s| {
            s["current_step"] == "authorize_payment"
        })
        .await;
    }
    sqlx::query("INSERT INTO refused (saga_id) VALUES ($1)")
        .bind(&stuck)
        .execute(&db)
        .await
        .unwrap();
    let saga = app
        .wait_for(&stuck, Duration::from_secs(60), |s| !s["parked"].is_null())
        .await;
    let why = saga["parked"].as_str().unwrap();
    assert!(why.contains("timer failed 3 times"), "{why}");
    assert!(why.contains("injected"), "{why}");
    assert_eq!(saga["status"], "STARTED");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM sagas WHERE saga_id = $1 AND wake_at IS NULL",
            &stuck
        )
        .await,
        1,
        "no deadline brings it back"
    );
    // Meanwhile the other saga's re-sends went on.
    let (_, other_now) = app.get_saga(&other).await;
    assert!(
        other_now["steps"][2]["attempts"].as_u64().unwrap() >= 3,
        "{other_now}"
    );

    // The cause is fixed; the operator resumes it, and the payment service arrives.
    sqlx::query("DELETE FROM refused")
        .execute(&db)
        .await
        .unwrap();
    let (status, body) = app.post(&format!("/sagas/{stuck}/retry")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.start_service("payments").await;
    for id in [&stuck, &other] {
        let saga = app.wait_terminal(id).await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
        assert!(saga["parked"].is_null());
    }
    app.stop().await;
}
