//! The chaos knobs in the running system: failures, dropped, duplicated and delayed replies.
//! Every saga must end terminal and consistent with the services' databases.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use services::chaos::Chaos;

/// How a forward step of `saga` ended: `Some(true)` completed, `Some(false)` failed by the
/// service's own answer, `None` never sent, still in doubt (no answer), or given up on.
fn forward_outcome(saga: &Value, name: &str) -> Option<bool> {
    let step = saga["steps"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name && s["kind"] == "forward")?;
    if step["status"] == "COMPLETED" {
        return Some(true);
    }
    let last = step["history"].as_array()?.last()?;
    last["outcome"]
        .as_str()
        .filter(|o| o.starts_with("failed"))
        .map(|_| false)
}

/// Checks one terminal saga against the order and payment databases: the rows the services hold
/// are exactly the ones the saga's history implies, with the ids the saga recorded, and every
/// command a service handled for the saga is one the orchestrator sent (no effect from a
/// message nobody sent, none from a command the saga did not know about).
pub async fn assert_consistent(app: &TestApp, saga: &Value) {
    let id = saga["saga_id"].as_str().unwrap();
    let orders = app.db("orders").await;
    let payments = app.db("payments").await;
    let order_ids = strings(
        &orders,
        "SELECT order_id FROM orders WHERE saga_id = $1",
        id,
    )
    .await;
    let order = scalar(&orders, "SELECT status FROM orders WHERE saga_id = $1", id).await;
    match forward_outcome(saga, "create_order") {
        Some(true) => assert_eq!(
            order_ids,
            [saga["order_id"].as_str().unwrap()],
            "the order is the saga's: {saga}"
        ),
        Some(false) => assert!(order_ids.is_empty(), "a refused order left a row: {saga}"),
        None => {}
    }
    let payment_ids = strings(
        &payments,
        "SELECT payment_id FROM payments WHERE saga_id = $1",
        id,
    )
    .await;
    let payment = scalar(
        &payments,
        "SELECT status FROM payments WHERE saga_id = $1",
        id,
    )
    .await;
    if forward_outcome(saga, "authorize_payment") == Some(true) {
        assert_eq!(
            payment_ids,
            [saga["payment_id"].as_str().unwrap()],
            "the payment is the saga's: {saga}"
        );
    }
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
    let orchestrator = app.db("orchestrator").await;
    let sent: std::collections::HashSet<String> = strings(
        &orchestrator,
        "SELECT message_id FROM outbox WHERE msg_key = $1",
        id,
    )
    .await
    .into_iter()
    .collect();
    for (service, db) in [("orders", &orders), ("payments", &payments)] {
        for command in strings(
            db,
            "SELECT command_id FROM processed_commands WHERE saga_id = $1",
            id,
        )
        .await
        {
            assert!(
                sent.contains(&command),
                "{service} handled command {command}, which the orchestrator never sent: {saga}"
            );
        }
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
