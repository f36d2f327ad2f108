//! Every path of the create-order saga, driven from `POST /orders` with the stub services' test
//! behaviours.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_order_completes_with_four_forward_steps() {
    let app = spawn_app().await;
    let id = app.start_saga("c-happy").await;
    let saga = app.wait_terminal(&id).await;

    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(
        steps(&saga),
        vec![
            step("create_order", "forward", "COMPLETED"),
            step("get_payment_info", "forward", "COMPLETED"),
            step("authorize_payment", "forward", "COMPLETED"),
            step("update_order_status", "forward", "COMPLETED"),
        ]
    );
    assert_eq!(saga["amount_cents"], 2800, "2 x 12.50 + 3.00 delivery");
    assert_eq!(saga["customer_id"], "c-happy");
    assert!(saga["completed_at"].is_string());
    assert!(saga["current_step"].is_null());
    assert!(saga["error"].is_null());

    assert!(saga["order_id"].is_string(), "{saga}");
    assert!(saga["payment_id"].is_string(), "{saga}");
    assert_eq!(app.order_status(&id).await.as_deref(), Some("CREATED"));
    assert_eq!(app.payment_status(&id).await.as_deref(), Some("AUTHORIZED"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_without_a_card_gets_the_order_cancelled() {
    let app = spawn_app().await;
    let id = app.start_saga("nocard-1").await;
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
    assert!(
        saga["error"]
            .as_str()
            .unwrap()
            .contains("get_payment_info failed"),
        "{saga}"
    );
    assert!(saga["steps"][1]["error"]
        .as_str()
        .unwrap()
        .contains("no payment method"));
    assert!(saga["order_id"].is_string(), "{saga}");
    assert_eq!(app.order_status(&id).await.as_deref(), Some("CANCELLED"));
    let payments = app.db("payments").await;
    assert_eq!(
        count(
            &payments,
            "SELECT COUNT(*) FROM payments WHERE customer_id = $1",
            "nocard-1"
        )
        .await,
        0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_cancels_the_order_and_releases_nothing() {
    let app = spawn_app().await;
    let id = app.start_saga("declined-1").await;
    let saga = app.wait_terminal(&id).await;

    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(
        steps(&saga),
        vec![
            step("create_order", "forward", "COMPLETED"),
            step("get_payment_info", "forward", "COMPLETED"),
            step("authorize_payment", "forward", "FAILED"),
            step("cancel_order", "compensation", "COMPLETED"),
        ]
    );
    assert!(saga["payment_id"].is_null());
    assert!(saga["order_id"].is_string(), "{saga}");
    assert_eq!(app.order_status(&id).await.as_deref(), Some("CANCELLED"));
    assert_eq!(app.payment_status(&id).await.as_deref(), Some("DECLINED"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_over_the_payment_limit_is_declined_and_compensated() {
    let app = spawn_app().await;
    let body = serde_json::json!({
        "customer_id": "big-spender",
        "order_details": {"foodItems": [{"name": "Caviar", "price": 10000.01, "quantity": 100}], "deliveryFee": 0}
    });
    let r = app
        .client
        .post(app.url("/orders"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["saga_id"]
        .as_str()
        .unwrap()
        .to_string();
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["amount_cents"], 100_000_100i64);
    assert!(
        saga["error"].as_str().unwrap().contains("over the limit"),
        "{saga}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_confirmation_reverts_the_payment_then_cancels_the_order() {
    let app = spawn_app().await;
    let id = app.start_saga("noupdate-1").await;
    let saga = app.wait_terminal(&id).await;

    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(
        steps(&saga),
        vec![
            step("create_order", "forward", "COMPLETED"),
            step("get_payment_info", "forward", "COMPLETED"),
            step("authorize_payment", "forward", "COMPLETED"),
            step("update_order_status", "forward", "FAILED"),
            step("revert_payment", "compensation", "COMPLETED"),
            step("cancel_order", "compensation", "COMPLETED"),
        ]
    );
    assert!(saga["payment_id"].is_string(), "{saga}");
    assert_eq!(app.payment_status(&id).await.as_deref(), Some("RELEASED"));
    assert!(saga["order_id"].is_string(), "{saga}");
    assert_eq!(app.order_status(&id).await.as_deref(), Some("CANCELLED"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_order_creation_has_nothing_to_compensate() {
    let app = spawn_app().await;
    let id = app.start_saga("noorder-1").await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(
        steps(&saga),
        vec![step("create_order", "forward", "FAILED")]
    );
    let orders = app.db("orders").await;
    assert_eq!(
        count(
            &orders,
            "SELECT COUNT(*) FROM orders WHERE saga_id = $1",
            &id
        )
        .await,
        0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notification_log_shows_every_message_of_a_saga() {
    let app = spawn_app().await;
    let id = app.start_saga("noupdate-tail").await;
    app.wait_terminal(&id).await;
    // 6 commands, 6 replies, and saga.started / saga.compensating / saga.compensated.
    let lines = app.notifications(&id, 15).await;
    let types: Vec<&str> = lines
        .iter()
        .map(|l| l["type"].as_str().unwrap_or("?"))
        .collect();
    for expected in [
        "saga.started",
        "create_order",
        "order.created",
        "get_payment_info",
        "user.payment_info_retrieved",
        "authorize_payment",
        "payment.authorized",
        "update_order_status",
        "order.status_update_failed",
        "saga.compensating",
        "revert_payment",
        "payment.released",
        "cancel_order",
        "order.cancelled",
        "saga.compensated",
    ] {
        assert!(
            types.contains(&expected),
            "{expected} missing from {types:?}"
        );
    }
    assert_eq!(lines.len(), 15, "each message exactly once: {types:?}");
    for l in &lines {
        assert!(
            l["time"].is_string() && l["topic"].is_string() && l["payload"].is_object(),
            "{l}"
        );
    }
    app.stop().await;
}
