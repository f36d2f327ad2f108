//! `POST /sagas/{id}/cancel`: undoing sagas on request.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_completed_saga_undoes_it_newest_step_first() {
    let app = spawn_app().await;
    let id = app.start_saga("c-cancel").await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "COMPLETED");

    let (status, body) = app.post(&format!("/sagas/{id}/cancel")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "CANCELLING");
    let saga = app
        .wait_for(&id, Duration::from_secs(30), |s| s["status"] == "CANCELLED")
        .await;
    assert_eq!(
        steps(&saga)[4..],
        [
            step("revert_payment", "compensation", "COMPLETED"),
            step("cancel_order", "compensation", "COMPLETED")
        ]
    );
    assert_eq!(app.order_status(&id).await.as_deref(), Some("CANCELLED"));
    assert_eq!(app.payment_status(&id).await.as_deref(), Some("RELEASED"));

    let (status, body) = app.post(&format!("/sagas/{id}/cancel")).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "a second cancel is harmless: {body}"
    );
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(
        body["message"],
        format!("saga {id} is CANCELLED"),
        "said as it stands, not 'being cancelled'"
    );
    let (_, again) = app.get_saga(&id).await;
    assert_eq!(steps(&again).len(), 6, "and runs nothing");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_mid_step_waits_for_the_step_then_undoes_it() {
    let mut app = spawn_app_with(&["notification", "orders", "users"]).await;
    let id = app.start_saga("c-cancel-mid").await;
    app.wait_for(&id, Duration::from_secs(30), |s| {
        s["current_step"] == "authorize_payment"
    })
    .await;

    let (status, body) = app.post(&format!("/sagas/{id}/cancel")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, saga) = app.get_saga(&id).await;
    assert_eq!(saga["status"], "CANCELLING");
    assert_eq!(
        saga["current_step"], "authorize_payment",
        "still waiting for the payment"
    );

    app.start_service("payments").await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "CANCELLED", "{saga}");
    assert_eq!(
        steps(&saga),
        vec![
            step("create_order", "forward", "COMPLETED"),
            step("get_payment_info", "forward", "COMPLETED"),
            step("authorize_payment", "forward", "COMPLETED"),
            step("revert_payment", "compensation", "COMPLETED"),
            step("cancel_order", "compensation", "COMPLETED"),
        ]
    );
    assert_eq!(app.payment_status(&id).await.as_deref(), Some("RELEASED"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_that_cannot_be_cancelled_or_retried_get_409_with_their_status() {
    let app = spawn_app().await;
    let id = app.start_saga("nocard-409").await;
    assert_eq!(app.wait_terminal(&id).await["status"], "COMPENSATED");
    let (status, body) = app.post(&format!("/sagas/{id}/cancel")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["status"], "COMPENSATED");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("cannot be cancelled"));

    let (status, body) = app.post(&format!("/sagas/{id}/retry")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["status"], "COMPENSATED");

    let unknown = uuid::Uuid::new_v4();
    assert_eq!(
        app.post(&format!("/sagas/{unknown}/cancel")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(&format!("/sagas/{unknown}/retry")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post("/sagas/nope/cancel").await.0,
        StatusCode::BAD_REQUEST
    );
    app.stop().await;
}

/// A cancel whose saga update loses a version race (another instance, or the
/// timer, stored a version in between) is tried again on fresh state, not answered 503. The
/// race is forced with a trigger that makes every update of the saga match no row for the next
/// 100 ms, as a concurrent writer would (a rolled-back transaction would take any bookkeeping
/// of the trigger with it, so the window is time, not a count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_loses_a_version_race_is_retried_on_fresh_state() {
    let app = spawn_app().await;
    let id = app.start_saga("c-race").await;
    app.wait_for(&id, Duration::from_secs(15), |s| s["status"] == "COMPLETED")
        .await;
    let db = app.db("orchestrator").await;
    let statements: &[&str] = if app.config.postgres_url.is_some() {
        &[
            "CREATE TABLE conflict_until (saga_id TEXT PRIMARY KEY, until_ms BIGINT NOT NULL)",
            "CREATE FUNCTION skip_for_a_while() RETURNS trigger AS $$ BEGIN \
               IF EXISTS (SELECT 1 FROM conflict_until WHERE saga_id = OLD.saga_id \
                          AND until_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint) THEN \
                 RETURN NULL; \
               END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER skip_for_a_while BEFORE UPDATE ON sagas \
             FOR EACH ROW EXECUTE FUNCTION skip_for_a_while()",
        ]
    } else {
        &[
            "CREATE TABLE conflict_until (saga_id TEXT PRIMARY KEY, until_ms BIGINT NOT NULL)",
            "CREATE TRIGGER skip_for_a_while BEFORE UPDATE ON sagas \
             WHEN EXISTS (SELECT 1 FROM conflict_until WHERE saga_id = OLD.saga_id \
                          AND until_ms > CAST(unixepoch('subsec') * 1000 AS INTEGER)) \
             BEGIN SELECT RAISE(IGNORE); END",
        ]
    };
    for sql in statements {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    sqlx::query("INSERT INTO conflict_until (saga_id, until_ms) VALUES ($1, $2)")
        .bind(&id)
        .bind(platform::time::now_ms() + 100)
        .execute(&db)
        .await
        .unwrap();

    let (status, body) = app.post(&format!("/sagas/{id}/cancel")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "CANCELLING");
    let saga = app
        .wait_for(&id, Duration::from_secs(15), |s| s["status"] == "CANCELLED")
        .await;
    assert_eq!(saga["status"], "CANCELLED");
    app.stop().await;
}
