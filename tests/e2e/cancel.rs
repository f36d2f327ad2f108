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
