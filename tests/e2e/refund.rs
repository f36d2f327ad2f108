//! The second saga shipped, `refund_order` (sagas/refund_order.toml), down every path: the
//! refund, a customer not eligible (a parallel member failing while the other runs), a refund
//! the provider refuses (compensation of the parallel group), and an order that cannot be
//! refunded (a second refund).

use reqwest::StatusCode;
use serde_json::{json, Value};

use services::chaos::Chaos;

use crate::helpers::*;

/// A confirmed order of `customer`: its saga id, order id and payment id.
async fn confirmed_order(app: &TestApp, customer: &str) -> (String, String, String) {
    let id = app.start_saga(customer).await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    (
        id,
        saga["order_id"].as_str().unwrap().to_string(),
        saga["payment_id"].as_str().unwrap().to_string(),
    )
}

async fn refund(app: &TestApp, customer: &str, order_id: &str, payment_id: &str) -> Value {
    let r = app
        .client
        .post(app.url("/sagas/refund_order"))
        .json(&json!({"order_id": order_id, "payment_id": payment_id, "customer_id": customer, "reason": "cold food"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["saga_type"], "refund_order");
    app.wait_terminal(body["saga_id"].as_str().unwrap()).await
}

fn names(saga: &Value) -> Vec<(String, String)> {
    steps(saga).into_iter().map(|(n, _, s)| (n, s)).collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_is_refunded_and_cannot_be_refunded_twice() {
    let app = spawn_app().await;
    let (saga, order_id, payment_id) = confirmed_order(&app, "c-refund").await;
    let done = refund(&app, "c-refund", &order_id, &payment_id).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(
        names(&done),
        pairs(&[
            ("begin_refund", "COMPLETED"),
            ("check_refund_eligibility", "COMPLETED"),
            ("hold_refund", "COMPLETED"),
            ("refund_payment", "COMPLETED"),
            ("complete_refund", "COMPLETED"),
        ])
    );
    assert_eq!(
        done["context"]["amount_cents"], 2800,
        "received from hold_refund"
    );
    assert_eq!(app.order_status(&saga).await.as_deref(), Some("REFUNDED"));
    assert_eq!(app.payment_status(&saga).await.as_deref(), Some("REFUNDED"));

    // Again: the order is REFUNDED, not CREATED: refused at once, nothing to undo.
    let again = refund(&app, "c-refund", &order_id, &payment_id).await;
    assert_eq!(again["status"], "COMPENSATED", "{again}");
    assert_eq!(names(&again), pairs(&[("begin_refund", "FAILED")]));
    assert!(
        again["error"].as_str().unwrap().contains("REFUNDED"),
        "{again}"
    );
    assert_eq!(app.payment_status(&saga).await.as_deref(), Some("REFUNDED"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_not_eligible_gets_the_hold_released_and_the_order_back() {
    let app = spawn_app().await;
    let (saga, order_id, payment_id) = confirmed_order(&app, "norefund-1").await;
    let done = refund(&app, "norefund-1", &order_id, &payment_id).await;
    assert_eq!(done["status"], "COMPENSATED", "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .starts_with("check_refund_eligibility failed"),
        "{done}"
    );
    let history = names(&done);
    // The group's members ran together; the hold that was made is released, newest first, then
    // the refund is aborted. Nothing was refunded.
    assert_eq!(history[0], ("begin_refund".into(), "COMPLETED".into()));
    assert!(
        history.contains(&("check_refund_eligibility".into(), "FAILED".into())),
        "{history:?}"
    );
    assert!(
        history.contains(&("hold_refund".into(), "COMPLETED".into())),
        "{history:?}"
    );
    assert_eq!(
        &history[3..],
        &pairs(&[
            ("release_refund_hold", "COMPLETED"),
            ("abort_refund", "COMPLETED")
        ])[..]
    );
    assert!(!history.iter().any(|(n, _)| n == "refund_payment"));
    assert_eq!(app.order_status(&saga).await.as_deref(), Some("CREATED"));
    assert_eq!(
        app.payment_status(&saga).await.as_deref(),
        Some("AUTHORIZED")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refund_releases_the_hold_and_aborts_the_refund() {
    let app = spawn_app().await;
    let (saga, order_id, payment_id) = confirmed_order(&app, "refundfail-1").await;
    let done = refund(&app, "refundfail-1", &order_id, &payment_id).await;
    assert_eq!(done["status"], "COMPENSATED", "{done}");
    assert_eq!(
        names(&done)[3..],
        pairs(&[
            ("refund_payment", "FAILED"),
            ("release_refund_hold", "COMPLETED"),
            ("abort_refund", "COMPLETED"),
        ])[..]
    );
    assert!(
        done["error"].as_str().unwrap().contains("provider refused"),
        "{done}"
    );
    assert_eq!(app.order_status(&saga).await.as_deref(), Some("CREATED"));
    assert_eq!(
        app.payment_status(&saga).await.as_deref(),
        Some("AUTHORIZED")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_elses_order_or_a_bad_input_is_refused() {
    let app = spawn_app().await;
    let (saga, order_id, payment_id) = confirmed_order(&app, "c-owner").await;
    let done = refund(&app, "c-intruder", &order_id, &payment_id).await;
    assert_eq!(done["status"], "COMPENSATED");
    assert_eq!(names(&done), pairs(&[("begin_refund", "FAILED")]));
    assert_eq!(app.order_status(&saga).await.as_deref(), Some("CREATED"));
    // The input schema: ids required, no other fields.
    let r = app
        .client
        .post(app.url("/sagas/refund_order"))
        .json(&json!({"order_id": order_id, "customer_id": "c-owner", "amount": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("payment_id") && error.contains("amount"),
        "{error}"
    );
    app.stop().await;
}

/// `refund_payment` is the saga's pivot: once the money has left, a failing `complete_refund` is
/// retried until it is done, never compensated (it used to end `COMPENSATED` with the payment
/// `REFUNDED` and the order back to `CREATED`), and a cancel is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_refund_is_retried_forward_never_undone() {
    let mut app = spawn_app().await;
    let (saga, order_id, payment_id) = confirmed_order(&app, "c-pivot").await;
    let failing = Chaos {
        failure_rate: 1.0,
        commands: vec!["complete_refund".into()],
        ..Chaos::default()
    };
    app.restart_service("orders", failing).await;
    let r = app
        .client
        .post(app.url("/sagas/refund_order"))
        .json(&json!({"order_id": order_id, "payment_id": payment_id, "customer_id": "c-pivot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await.unwrap()["saga_id"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = |s: &Value| {
        s["steps"].as_array().unwrap().iter().any(|st| {
            st["name"] == "complete_refund"
                && st["history"].as_array().is_some_and(|h| {
                    h.iter()
                        .filter(|a| {
                            a["outcome"]
                                .as_str()
                                .is_some_and(|o| o.starts_with("failed"))
                        })
                        .count()
                        >= 2
                })
        })
    };
    let retrying = app
        .wait_for(&id, std::time::Duration::from_secs(20), refused)
        .await;
    assert_eq!(retrying["status"], "STARTED", "{retrying}");
    assert!(
        !names(&retrying)
            .iter()
            .any(|(n, _)| n == "release_refund_hold" || n == "abort_refund"),
        "nothing undone: {retrying}"
    );
    assert_eq!(app.payment_status(&saga).await.as_deref(), Some("REFUNDED"));
    let (status, body) = app.post(&format!("/sagas/{id}/cancel")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("point of no return (refund_payment)"),
        "{body}"
    );

    // The order service works again: the next re-send completes the refund.
    app.restart_service("orders", Chaos::default()).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(app.order_status(&saga).await.as_deref(), Some("REFUNDED"));
    assert_eq!(app.payment_status(&saga).await.as_deref(), Some("REFUNDED"));
    app.stop().await;
}

/// The saga's deadline passing while `refund_payment` is in flight no longer undoes the saga:
/// the refund's reply, however late, is waited for, and the saga completes (it used to be
/// compensated while the provider went on to refund the payment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_passing_while_the_refund_is_in_flight_undoes_nothing() {
    let policy = orchestrator::Policy {
        saga_timeout_ms: 5_000,
        ..orchestrator::Policy::default()
    };
    let mut app = spawn_app_custom(&ALL_SERVICES, policy, Chaos::default()).await;
    let (saga, order_id, payment_id) = confirmed_order(&app, "c-late-refund").await;
    let slow = Chaos {
        reply_delay_ms: 7_000,
        commands: vec!["refund_payment".into()],
        ..Chaos::default()
    };
    app.restart_service("payments", slow).await;
    let done = refund(&app, "c-late-refund", &order_id, &payment_id).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(
        !names(&done)
            .iter()
            .any(|(n, _)| n == "release_refund_hold" || n == "abort_refund"),
        "{done}"
    );
    assert_eq!(app.order_status(&saga).await.as_deref(), Some("REFUNDED"));
    assert_eq!(app.payment_status(&saga).await.as_deref(), Some("REFUNDED"));
    app.stop().await;
}
