//! Sagas continue across an orchestrator restart: state is in the database, replies wait in
//! Kafka, offsets are stored only after a reply's transaction commits.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_in_flight_completes_after_the_orchestrator_restarts() {
    // No payment service yet: sagas stop at authorize_payment.
    let mut app = spawn_app_with(&["notification", "orders", "users"]).await;
    let ids = [
        app.start_saga("c-restart-1").await,
        app.start_saga("noupdate-restart").await,
    ];
    for id in &ids {
        app.wait_for(id, Duration::from_secs(30), |s| {
            s["current_step"] == "authorize_payment"
        })
        .await;
    }
    app.stop_orchestrator().await;

    // While the orchestrator is down, the payment service answers; the replies wait in Kafka.
    app.start_service("payments").await;
    let payments = app.db("payments").await;
    for _ in 0..300 {
        if count(
            &payments,
            "SELECT COUNT(*) FROM processed_commands WHERE command_type = $1",
            "authorize_payment",
        )
        .await
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    app.start_orchestrator().await;
    let done = app.wait_terminal(&ids[0]).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(steps(&done).len(), 4);
    assert!(done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["attempts"] == 1));
    let compensated = app.wait_terminal(&ids[1]).await;
    assert_eq!(compensated["status"], "COMPENSATED", "{compensated}");
    assert_eq!(
        steps(&compensated)[4..],
        [
            step("revert_payment", "compensation", "COMPLETED"),
            step("cancel_order", "compensation", "COMPLETED")
        ]
    );
    assert_eq!(
        count(
            &payments,
            "SELECT COUNT(*) FROM payments WHERE saga_id = $1",
            &ids[0]
        )
        .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_accepted_before_a_restart_are_all_finished_after_it() {
    let mut app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let prefix = ["c", "nocard", "declined", "noupdate"][i % 4];
        ids.push(app.start_saga(&format!("{prefix}-burst-{i}")).await);
    }
    // Stop at once, mid-flight, and start again.
    app.stop_orchestrator().await;
    app.start_orchestrator().await;
    for (i, id) in ids.iter().enumerate() {
        let saga = app.wait_terminal(id).await;
        let expected = if i % 4 == 0 {
            "COMPLETED"
        } else {
            "COMPENSATED"
        };
        assert_eq!(saga["status"], expected, "{saga}");
    }
    let db = app.db("orchestrator").await;
    // Nothing is left unsent: a row whose delivery the restart cut off is retried on its own
    // schedule (from 100 ms on), so it may still be on its way when the sagas have ended.
    let mut unsent = -1;
    for _ in 0..100 {
        unsent = count(
            &db,
            "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND topic <> $1",
            "",
        )
        .await;
        if unsent == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(unsent, 0, "outbox rows left unsent");
    app.stop().await;
}
