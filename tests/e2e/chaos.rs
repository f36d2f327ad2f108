//! The chaos knobs in the running system: failures, dropped, duplicated and delayed replies.
//! Every saga must end terminal and consistent with the services' databases.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use services::chaos::Chaos;

/// Checks one terminal saga against the order and payment databases.
pub async fn assert_consistent(app: &TestApp, saga: &Value) {
    let id = saga["saga_id"].as_str().unwrap();
    let orders = app.db("orders").await;
    let payments = app.db("payments").await;
    let order_count = count(
        &orders,
        "SELECT COUNT(*) FROM orders WHERE saga_id = $1",
        id,
    )
    .await;
    assert!(order_count <= 1, "one order per saga: {saga}");
    let order = scalar(&orders, "SELECT status FROM orders WHERE saga_id = $1", id).await;
    let payment_count = count(
        &payments,
        "SELECT COUNT(*) FROM payments WHERE saga_id = $1",
        id,
    )
    .await;
    assert!(payment_count <= 1, "one payment per saga: {saga}");
    let payment = scalar(
        &payments,
        "SELECT status FROM payments WHERE saga_id = $1",
        id,
    )
    .await;
    match saga["status"].as_str().unwrap() {
        "COMPLETED" => {
            assert_eq!(order.as_deref(), Some("CREATED"), "{saga}");
            assert_eq!(payment.as_deref(), Some("AUTHORIZED"), "{saga}");
        }
        "COMPENSATED" | "CANCELLED" => {
            assert!(
                matches!(order.as_deref(), None | Some("CANCELLED")),
                "order {order:?}: {saga}"
            );
            assert_ne!(
                payment.as_deref(),
                Some("AUTHORIZED"),
                "no live payment: {saga}"
            );
        }
        other => panic!("saga ended {other}: {saga}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_survive_failures_drops_duplicates_and_delays() {
    let chaos = Chaos {
        failure_rate: 0.2,
        drop_rate: 0.1,
        duplicate_rate: 0.1,
        // Longer than the first step deadline (300 ms): every command is re-sent once before
        // its reply arrives.
        reply_delay_ms: 350,
        ..Chaos::default()
    };
    let policy = orchestrator::Policy {
        max_attempts: 6,
        compensation_limit_ms: 30_000,
        ..fast_policy()
    };
    let app = spawn_app_custom(&ALL_SERVICES, policy, chaos).await;
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(app.start_saga(&format!("c-chaos-{i}")).await);
    }
    let mut by_status = std::collections::BTreeMap::new();
    let mut resent = false;
    for id in &ids {
        let saga = app
            .wait_for(id, Duration::from_secs(90), |s| {
                matches!(
                    s["status"].as_str(),
                    Some("COMPLETED" | "COMPENSATED" | "FAILED")
                )
            })
            .await;
        assert_consistent(&app, &saga).await;
        for step in saga["steps"].as_array().unwrap() {
            resent |= step["attempts"].as_u64().unwrap() > 1;
        }
        *by_status
            .entry(saga["status"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert!(
        by_status.get("COMPLETED").copied().unwrap_or(0) > 0,
        "{by_status:?}"
    );
    assert!(
        by_status.get("COMPENSATED").copied().unwrap_or(0) > 0,
        "{by_status:?}"
    );
    assert!(
        resent,
        "replies slower than the deadline made the orchestrator re-send"
    );
    app.stop().await;
}
