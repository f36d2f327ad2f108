//! At-least-once delivery with exactly-once effects: duplicated replies, re-sent commands,
//! retried POSTs, and messages nobody can read.

use reqwest::StatusCode;
use std::collections::HashMap;

use serde_json::Value;

use crate::helpers::*;

/// The orchestrator's view of a saga that must not change: the API body and the row version.
async fn snapshot(app: &TestApp, id: &str) -> (Value, i64) {
    let (_, saga) = app.get_saga(id).await;
    let db = app.db("orchestrator").await;
    let version = count(&db, "SELECT version FROM sagas WHERE saga_id = $1", id).await;
    (saga, version)
}

/// The system with only the `running` services, and a saga of `customer` waiting at `step`
/// (whose participant is missing), with no re-send for a minute: a test has the waiting saga to
/// itself.
async fn saga_waiting_at(
    running: &[&'static str],
    customer: &str,
    step: &str,
) -> (TestApp, String) {
    let policy = orchestrator::Policy {
        step_timeout_ms: 60_000,
        max_step_timeout_ms: 60_000,
        ..fast_policy()
    };
    let app = spawn_app_custom(running, policy, services::chaos::Chaos::default()).await;
    let id = app.start_saga(customer).await;
    app.wait_for(&id, std::time::Duration::from_secs(30), |s| {
        s["current_step"] == step
    })
    .await;
    (app, id)
}

/// Replies of steps already passed, delivered again while the saga still waits on a later step:
/// the exact stored replies (same message ids: the inbox drops them) and one re-sent under a new
/// message id with a forged payload (the inbox lets it through; the engine ignores it because
/// it answers a command the saga is not waiting for). Nothing moves: not the version, not the
/// step history, not the context, not the outbox. The duplicate that only the inbox can stop is
/// `a_refusal_delivered_twice_while_its_compensation_waits_counts_once`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_of_passed_steps_delivered_again_while_the_saga_waits_change_nothing() {
    // No payment service: the saga sits at authorize_payment.
    let (mut app, id) = saga_waiting_at(
        &["notification", "orders", "users"],
        "c-dup",
        "authorize_payment",
    )
    .await;
    let before = snapshot(&app, &id).await;
    let orchestrator_db = app.db("orchestrator").await;
    let outbox_before = count(
        &orchestrator_db,
        "SELECT COUNT(*) FROM outbox WHERE msg_key = $1",
        &id,
    )
    .await;

    let mut sent = Vec::new();
    for (service, command, topic) in [
        (
            "orders",
            "create_order",
            app.config.topics.role("order_events").unwrap().name.clone(),
        ),
        (
            "users",
            "get_payment_info",
            app.config.topics.role("user_events").unwrap().name.clone(),
        ),
    ] {
        let db = app.db(service).await;
        let reply = scalar(
            &db,
            &format!(
                "SELECT reply FROM processed_commands WHERE saga_id = $1 AND command_type = '{command}'"
            ),
            &id,
        )
        .await
        .expect("stored reply");
        app.produce(&topic, &id, reply.as_bytes()).await;
        let mut resent: Value = serde_json::from_str(&reply).unwrap();
        resent["message_id"] = Value::String(uuid::Uuid::new_v4().to_string());
        resent["payload"]["order_id"] = Value::String("forged".into());
        app.produce(&topic, &id, resent.to_string().as_bytes())
            .await;
        sent.push(topic);
    }
    for topic in &sent {
        app.sync_orchestrator(topic, &id).await;
    }
    assert_eq!(snapshot(&app, &id).await, before, "saga unchanged");
    assert_eq!(
        count(
            &orchestrator_db,
            "SELECT COUNT(*) FROM outbox WHERE msg_key = $1",
            &id
        )
        .await,
        outbox_before
    );

    // The payment service arrives: the saga finishes with one attempt per step and the real
    // order id.
    app.start_service("payments").await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_ne!(saga["order_id"], "forged");
    assert_eq!(saga["order_id"], before.0["order_id"]);
    let steps = saga["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4, "{saga}");
    for step in steps {
        assert_eq!(step["attempts"], 1, "{saga}");
        assert_eq!(step["history"].as_array().unwrap().len(), 1, "{saga}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_command_gets_the_same_reply_and_one_effect() {
    let app = spawn_app().await;
    let id = app.start_saga("c-redeliver").await;
    app.wait_terminal(&id).await;
    let db = app.db("orchestrator").await;
    let command = scalar(
        &db,
        &format!(
            "SELECT payload FROM outbox WHERE msg_key = $1 AND topic = '{}'",
            app.config.topics.role("payment_commands").unwrap().name
        ),
        &id,
    )
    .await
    .expect("authorize_payment in the outbox");
    let topic = app
        .config
        .topics
        .role("payment_commands")
        .unwrap()
        .name
        .clone();
    app.produce(&topic, &id, command.as_bytes()).await;
    // The payment service answers the re-sent command with its stored reply: same message id,
    // so the orchestrator's inbox drops it.
    let command_id = serde_json::from_str::<Value>(&command).unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let lines = app.notifications(&id, 12).await;
    let replies: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "payment.authorized" && l["causation_id"] == command_id.as_str())
        .collect();
    assert_eq!(replies.len(), 2, "the command was answered twice");
    assert_eq!(
        replies[0]["message_id"], replies[1]["message_id"],
        "with the same reply"
    );
    let payments = app.db("payments").await;
    assert_eq!(
        count(
            &payments,
            "SELECT COUNT(*) FROM payments WHERE saga_id = $1",
            &id
        )
        .await,
        1
    );
    app.sync_orchestrator(&app.config.topics.role("payment_events").unwrap().name, &id)
        .await;
    let (_, saga) = app.get_saga(&id).await;
    assert_eq!(saga["status"], "COMPLETED");
    assert_eq!(steps(&saga).len(), 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_post_with_the_same_idempotency_key_returns_the_same_saga() {
    let app = spawn_app().await;
    let post = |key: &'static str, customer: &'static str| {
        app.client
            .post(app.url("/orders"))
            .header("Idempotency-Key", key)
            .json(&order_body(customer))
            .send()
    };
    let first = post("key-1", "c-idem").await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first_location = first.headers()["location"].to_str().unwrap().to_string();
    let first: Value = first.json().await.unwrap();
    let id = first["saga_id"].as_str().unwrap().to_string();
    assert_eq!(first_location, format!("/sagas/{id}"));
    app.wait_terminal(&id).await;

    let again = post("key-1", "c-idem").await.unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["saga_id"], id.as_str());
    assert_eq!(
        again["status"], "COMPLETED",
        "the retry reports where the saga is now"
    );

    // The key is another request's: a conflict (409), not a fault of this body.
    let misuse = post("key-1", "someone-else").await.unwrap();
    assert_eq!(misuse.status(), StatusCode::CONFLICT);
    let misuse: Value = misuse.json().await.unwrap();
    assert!(misuse["error"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));

    let other = post("key-2", "c-idem").await.unwrap();
    let other: Value = other.json().await.unwrap();
    assert_ne!(
        other["saga_id"],
        id.as_str(),
        "another key starts another saga"
    );

    let db = app.db("orchestrator").await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM sagas WHERE input LIKE $1",
            "%\"customer_id\":\"c-idem\"%"
        )
        .await,
        2
    );
    let orders = app.db("orders").await;
    assert_eq!(
        count(
            &orders,
            "SELECT COUNT(*) FROM orders WHERE saga_id = $1",
            &id
        )
        .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_and_orphan_replies_are_dead_lettered_and_the_partition_moves_on() {
    let app = spawn_app().await;
    let topic = app.config.topics.role("user_events").unwrap().name.clone();
    let key = uuid::Uuid::new_v4().to_string();
    app.produce(&topic, &key, b"{this is not json").await;
    let headers = app.wait_dead_letter(b"{this is not json").await;
    assert_eq!(headers["dlq.source.topic"], topic);
    assert_eq!(headers["dlq.component"], "orchestrator");
    // The headers are the ones /asyncapi.json describes, spelled the same, and the reason is
    // one of the document's.
    let (_, doc) = app.get_json("/asyncapi.json").await;
    let described = &doc["components"]["messages"]["dead_letter"]["headers"];
    let names: std::collections::BTreeSet<&str> = described["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let sent: std::collections::BTreeSet<&str> = headers
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("dlq."))
        .collect();
    assert_eq!(sent, names, "the letter's dlq.* headers and the document's");
    let reasons = described["properties"]["dlq.reason"]["enum"]
        .as_array()
        .unwrap();
    assert!(
        reasons.contains(&Value::from(headers["dlq.reason"].as_str())),
        "{reasons:?}"
    );
    assert!(
        headers["dlq.error"].contains("not a valid envelope"),
        "{headers:?}"
    );
    assert!(headers["dlq.source.offset"].parse::<i64>().is_ok());
    assert!(headers["dlq.source.partition"].parse::<i32>().is_ok());

    // A well-formed reply for a saga nobody started, on the same partition, after the garbage.
    let reply = |payload: Value| {
        serde_json::json!({
            "message_id": uuid::Uuid::new_v4(),
            "type": "user.payment_info_retrieved",
            "correlation_id": key,
            "causation_id": uuid::Uuid::new_v4(),
            "timestamp": "2026-01-01T00:00:00Z",
            "payload": payload
        })
        .to_string()
    };
    let orphan = reply(serde_json::json!({"customer_id": "c-1", "payment_method_id": "pm_1"}));
    app.produce(&topic, &key, orphan.as_bytes()).await;
    let headers = app.wait_dead_letter(orphan.as_bytes()).await;
    assert!(headers["dlq.error"].contains("no saga"), "{headers:?}");

    // A reply whose payload breaks its schema in messages.toml: refused before any saga sees it,
    // naming the reply and the path.
    let broken = reply(serde_json::json!({"customer_id": "c-1", "payment_method_id": 42}));
    app.produce(&topic, &key, broken.as_bytes()).await;
    let headers = app.wait_dead_letter(broken.as_bytes()).await;
    assert_eq!(headers["dlq.reason"], "rejected", "{headers:?}");
    let error = &headers["dlq.error"];
    assert!(
        error.contains("user.payment_info_retrieved") && error.contains("/payment_method_id: "),
        "{error}"
    );

    // Services dead-letter what they cannot read too, and keep serving.
    let commands = app
        .config
        .topics
        .role("order_commands")
        .unwrap()
        .name
        .clone();
    app.produce(&commands, &key, b"garbage for the order service")
        .await;
    let headers = app.wait_dead_letter(b"garbage for the order service").await;
    assert_eq!(headers["dlq.component"], "order-service");

    let id = app.start_saga("c-after-garbage").await;
    assert_eq!(app.wait_terminal(&id).await["status"], "COMPLETED");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_with_one_idempotency_key_start_one_saga() {
    // Sent at once, they land in the same group commit or in consecutive ones.
    let app = spawn_app().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let (client, url) = (app.client.clone(), app.url("/orders"));
        tasks.spawn(async move {
            let key = format!("burst-{}", i % 3);
            let r = client
                .post(url)
                .header("Idempotency-Key", &key)
                .json(&order_body(&format!("c-{key}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let body: Value = r.json().await.unwrap();
            (key, body["saga_id"].as_str().unwrap().to_string())
        });
    }
    let mut by_key: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (key, id) = r.unwrap();
        by_key.entry(key).or_default().insert(id);
    }
    assert_eq!(by_key.len(), 3);
    for (key, ids) in &by_key {
        assert_eq!(ids.len(), 1, "{key} started {ids:?}");
    }
    let db = app.db("orchestrator").await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM sagas WHERE idempotency_key <> $1",
            ""
        )
        .await,
        3
    );
    for ids in by_key.values() {
        let id = ids.iter().next().unwrap();
        assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
        assert_eq!(
            count(
                &db,
                &format!(
                    "SELECT COUNT(*) FROM outbox WHERE msg_key = $1 AND topic = '{}'",
                    app.config.topics.role("order_commands").unwrap().name
                ),
                id
            )
            .await,
            2,
            "one create_order and one update_order_status, no second saga's commands"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_of_one_saga_fetched_together_take_effect_in_their_order() {
    // A service applies a batch with set-based statements, grouped by command type; commands of
    // one saga must still take effect in the order they were sent. Each saga's two commands go out
    // back to back (usually one fetch, so one batch): create then cancel must end CANCELLED, cancel
    // (of nothing yet) then create must end PENDING — whichever type a batch applies first.
    let app = spawn_app().await;
    let producer = app.producer();
    let topic = app
        .config
        .topics
        .role("order_commands")
        .unwrap()
        .name
        .clone();
    let command = |saga: &uuid::Uuid, kind: &str, payload: Value| {
        serde_json::json!({
            "message_id": uuid::Uuid::new_v4(),
            "type": kind,
            "correlation_id": saga,
            "causation_id": null,
            "timestamp": "2026-01-01T00:00:00Z",
            "payload": payload
        })
        .to_string()
    };
    let sagas: Vec<uuid::Uuid> = (0..20).map(|_| uuid::Uuid::new_v4()).collect();
    let mut deliveries = Vec::new();
    for (n, saga) in sagas.iter().enumerate() {
        let key = saga.to_string();
        let create = command(
            saga,
            "create_order",
            serde_json::json!({"customer_id": format!("c-batch-{n}"), "amount_cents": 100, "order_details": {}}),
        );
        let cancel = command(saga, "cancel_order", serde_json::json!({}));
        let in_order = if n % 2 == 0 {
            [create, cancel]
        } else {
            [cancel, create]
        };
        for payload in in_order {
            let record = rdkafka::producer::FutureRecord::to(&topic)
                .key(&key)
                .payload(&payload);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
    }
    for d in deliveries {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let start = std::time::Instant::now();
    for (n, saga) in sagas.iter().enumerate() {
        let expected = if n % 2 == 0 { "CANCELLED" } else { "PENDING" };
        loop {
            let status = app.order_status(&saga.to_string()).await;
            if status.as_deref() == Some(expected) {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "order of saga {saga} is {status:?}, not {expected}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    app.stop().await;
}

/// A reply that fails with an error that is not transient (here: the saga's
/// stored state is unreadable) is tried `MAX_DELIVERY_ATTEMPTS` times, as the README promises,
/// before it is dead-lettered; the dead letter says how many attempts were made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_failing_for_good_is_tried_max_delivery_attempts_times_then_dead_lettered() {
    // No user service: the saga waits on get_payment_info.
    let app = spawn_app_with(&["notification", "orders"]).await;
    let id = app.start_saga("c-1").await;
    app.wait_for(&id, std::time::Duration::from_secs(10), |s| {
        s["current_step"] == "get_payment_info"
    })
    .await;
    let db = app.db("orchestrator").await;
    sqlx::query("UPDATE sagas SET state = 'not json', wake_at = NULL WHERE saga_id = $1")
        .bind(&id)
        .execute(&db)
        .await
        .unwrap();
    let reply = serde_json::json!({"message_id": uuid::Uuid::new_v4(), "type": "user.payment_info_retrieved",
        "correlation_id": id, "causation_id": uuid::Uuid::new_v4(),
        "timestamp": "2026-01-01T00:00:00.000Z",
        "payload": {"customer_id": "c-1", "payment_method_id": "pm_1"}})
    .to_string();
    let events = app.config.topics.role("user_events").unwrap().name.clone();
    app.produce(&events, &id, reply.as_bytes()).await;
    let headers = app.wait_dead_letter(reply.as_bytes()).await;
    assert_eq!(
        headers.get("dlq.reason").map(String::as_str),
        Some("failed")
    );
    let error = &headers["dlq.error"];
    assert!(error.contains("after 3 attempts"), "{error}");
    app.stop().await;
}

/// A participant's reply that matches the command the saga waits on but breaks its schema in
/// messages.toml (`user.payment_info_retrieved` without `payment_method_id`) is dead-lettered
/// and changes nothing: before replies were checked, the saga took it and moved on without the
/// field later steps read. The participant's real reply then completes the saga.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_breaking_its_contract_is_dead_lettered_and_the_saga_waits_for_a_good_one() {
    // No user service yet: the saga waits on get_payment_info.
    let (mut app, id) = saga_waiting_at(
        &["notification", "orders", "payments"],
        "c-contract",
        "get_payment_info",
    )
    .await;
    let before = snapshot(&app, &id).await;
    let command = orchestrator::saga::engine::command_id(
        uuid::Uuid::parse_str(&id).unwrap(),
        "get_payment_info",
        orchestrator::saga::StepKind::Forward,
    );
    let forged = serde_json::json!({"message_id": uuid::Uuid::new_v4(),
        "type": "user.payment_info_retrieved", "correlation_id": id, "causation_id": command,
        "timestamp": "2026-01-01T00:00:00.000Z", "payload": {"customer_id": "c-contract"}})
    .to_string();
    let events = app.config.topics.role("user_events").unwrap().name.clone();
    app.produce(&events, &id, forged.as_bytes()).await;
    let headers = app.wait_dead_letter(forged.as_bytes()).await;
    assert_eq!(headers["dlq.reason"], "rejected", "{headers:?}");
    assert!(
        headers["dlq.error"].contains("payment_method_id"),
        "{headers:?}"
    );
    assert_eq!(
        snapshot(&app, &id).await,
        before,
        "the saga took a reply that breaks its contract"
    );

    // The user service, started now, takes the command waiting in its topic.
    app.start_service("users").await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert!(saga["context"]["payment_method_id"].is_string(), "{saga}");
    app.stop().await;
}

/// A duplicate that only the inbox can stop. While a refused compensation
/// waits for its retry, the refusal delivered again answers the very command the saga waits
/// on, so the engine would count it as a second refusal (another attempt in the history, another
/// version); the inbox drops it. (`a_duplicated_reply_changes_nothing` above duplicates replies
/// the engine ignores anyway.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_delivered_twice_while_its_compensation_waits_counts_once() {
    let policy = orchestrator::Policy {
        retry_delay_ms: 60_000,
        compensation_limit_ms: 600_000,
        ..fast_policy()
    };
    let chaos = services::chaos::Chaos {
        failure_rate: 1.0,
        commands: vec!["cancel_order".into()],
        ..Default::default()
    };
    let app = spawn_app_custom(&ALL_SERVICES, policy, chaos).await;
    let id = app.start_saga("nocard-dup").await;
    app.wait_for(&id, std::time::Duration::from_secs(15), |s| {
        s["steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|st| st["name"] == "cancel_order"))
            .is_some_and(|st| st["history"][0]["outcome"].as_str().is_some())
    })
    .await;
    let before = snapshot(&app, &id).await;
    assert_eq!(before.0["status"], "COMPENSATING");

    let db = app.db("orchestrator").await;
    let refusal = scalar(
        &db,
        "SELECT message_id FROM inbox WHERE saga_id = $1 AND message_type = 'order.cancel_failed'",
        &id,
    )
    .await
    .expect("the refusal is in the inbox");
    let saga = uuid::Uuid::parse_str(&id).unwrap();
    let cancel = orchestrator::saga::engine::command_id(
        saga,
        "cancel_order",
        orchestrator::saga::StepKind::Compensation,
    );
    let again = serde_json::json!({"message_id": refusal, "type": "order.cancel_failed",
        "correlation_id": id, "causation_id": cancel,
        "timestamp": "2026-01-01T00:00:00.000Z", "payload": {"reason": "again"}});
    let topic = app.config.topics.role("order_events").unwrap().name.clone();
    app.produce(&topic, &id, again.to_string().as_bytes()).await;
    app.sync_orchestrator(&topic, &id).await;

    let after = snapshot(&app, &id).await;
    assert_eq!(after, before, "the duplicate refusal changed the saga");
    app.stop().await;
}

/// On SQLite the relay read every unsent row, so after a failed *delivery* of a
/// saga's `create_order` it had already published that saga's later `cancel_order` in the same
/// round, stamped it sent, and re-published `create_order` afterwards: the order service saw the
/// cancel first and the order stayed `PENDING`. A round now holds at most one row per (topic,
/// key); the delivery failure is injected where the relay reports it (`finish_claim` without
/// the row), on the real database of each engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_holds_back_the_later_messages_of_its_saga() {
    let mut app = spawn_app_with(&[]).await;
    // The running relay would publish the rows below itself: stop it, and drive its rounds here.
    app.stop_orchestrator().await;
    let store = app.orchestrator_store().await;
    let pool = app.db("orchestrator").await;
    let (saga, other) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    for (name, topic, key) in [
        ("create_order", "order_commands", &saga),
        ("cancel_order", "order_commands", &saga),
        ("create_order", "order_commands", &other),
        ("saga.compensating", "saga_events", &saga),
    ] {
        sqlx::query(
            "INSERT INTO outbox (message_id, topic, msg_key, payload, created_at) VALUES ($1, $2, $3, $4, 0)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(topic)
        .bind(key)
        .bind(name)
        .execute(&pool)
        .await
        .unwrap();
    }
    let round = |claimed: &orchestrator::store::Claim| -> Vec<(String, String)> {
        claimed
            .rows
            .iter()
            .map(|r| (r.payload.clone(), r.key.clone()))
            .collect()
    };
    let ids = |claimed: &orchestrator::store::Claim, except: &str| -> Vec<i64> {
        claimed
            .rows
            .iter()
            .filter(|r| r.payload != except || r.key != saga)
            .map(|r| r.id)
            .collect()
    };

    let now = platform::time::now_ms();
    let first = store.claim_unsent(500, now).await.unwrap();
    assert_eq!(
        round(&first),
        [
            ("create_order".to_string(), saga.clone()),
            ("create_order".to_string(), other.clone()),
            ("saga.compensating".to_string(), saga.clone()),
        ],
        "the saga's cancel_order waits for its create_order"
    );
    // The saga's create_order is not delivered; the rest is.
    let delivered = ids(&first, "create_order");
    store.finish_claim(first, &delivered, &[], 1).await.unwrap();

    let second = store.claim_unsent(500, now).await.unwrap();
    assert_eq!(
        round(&second),
        [("create_order".to_string(), saga.clone())],
        "the failed row goes again, still ahead of the cancel"
    );
    // This time the broker refuses it: it waits 100 ms before it is claimed again, and its
    // saga's cancel_order waits behind it.
    let refused = [(second.rows[0].id, "Message size too large".to_string())];
    store
        .finish_claim(second, &[], &refused, now)
        .await
        .unwrap();
    assert!(
        store
            .claim_unsent(500, now + 99)
            .await
            .unwrap()
            .rows
            .is_empty(),
        "the refused row waits, and holds back its saga's next row"
    );
    let (attempts, error): (i64, String) = {
        let row = sqlx::query(
            "SELECT CAST(attempts AS BIGINT) AS a, last_error FROM outbox WHERE id = $1",
        )
        .bind(refused[0].0)
        .fetch_one(&pool)
        .await
        .unwrap();
        use sqlx::Row;
        (row.get("a"), row.get("last_error"))
    };
    assert_eq!((attempts, error.as_str()), (1, "Message size too large"));
    let again = store.claim_unsent(500, now + 100).await.unwrap();
    assert_eq!(round(&again), [("create_order".to_string(), saga.clone())]);
    let delivered = ids(&again, "");
    store
        .finish_claim(again, &delivered, &[], now + 2)
        .await
        .unwrap();

    let third = store.claim_unsent(500, now).await.unwrap();
    assert_eq!(round(&third), [("cancel_order".to_string(), saga.clone())]);
    let delivered = ids(&third, "");
    store
        .finish_claim(third, &delivered, &[], now + 3)
        .await
        .unwrap();
    assert!(store.claim_unsent(500, now).await.unwrap().rows.is_empty());
    app.stop().await;
}

/// A message the broker refuses (here one over the producer's `message.max.bytes`) stopped the
/// relay's round at that row and made it back off, round after round with the row at the head:
/// every saga's commands stalled behind one. Now the row waits out its own retries and holds
/// back only its saga; the others complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_refuses_holds_back_its_saga_only() {
    let mut app = spawn_app_with(&["notification", "orders", "users", "payments"]).await;
    app.stop_orchestrator().await;
    let mut kafka = app.kafka.settings();
    kafka
        .overrides
        .push(("message.max.bytes".into(), "20000".into()));
    app.config.ops = platform::Ops::default();
    app.start_orchestrator_on(kafka).await;
    let items: Vec<serde_json::Value> = (0..100)
        .map(|i| serde_json::json!({"name": format!("{i:03}{}", "x".repeat(240)), "price": 1.0, "quantity": 1}))
        .collect();
    let huge = serde_json::json!({"customer_id": "c-huge", "order_details": {"foodItems": items}});
    let r = app
        .client
        .post(app.url("/sagas/create_order"))
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let stuck: serde_json::Value = r.json().await.unwrap();
    let stuck = stuck["saga_id"].as_str().unwrap().to_string();
    let db = app.db("orchestrator").await;
    for _ in 0..100 {
        let refused = count(
            &db,
            "SELECT COUNT(*) FROM outbox WHERE msg_key = $1 AND attempts > 0",
            &stuck,
        )
        .await;
        if refused > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(app.start_saga(&format!("c-behind-{i}")).await);
    }
    for id in &others {
        let saga = app.wait_terminal(id).await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
    }
    let (_, saga) = app.get_saga(&stuck).await;
    assert_eq!(saga["status"], "STARTED", "{saga}");
    let error = scalar(
        &db,
        "SELECT last_error FROM outbox WHERE msg_key = $1 AND attempts > 0 ORDER BY id LIMIT 1",
        &stuck,
    )
    .await
    .unwrap_or_default();
    assert!(
        error.contains("too large"),
        "the refusal is kept: {error:?}"
    );
    app.stop().await;
}

/// A `POST /orders` whose saga was stored after the request's 10 s deadline
/// was answered 503, so a client retrying without an Idempotency-Key started a second order.
/// Here the sagas table is locked (PostgreSQL: the insert waits on the lock, then succeeds) for
/// 12 s: the request the intake had already taken waits and answers 202 with its saga; a request
/// still queued behind it is abandoned at its deadline, answered 503, and never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_past_its_deadline_is_answered_with_its_outcome_never_a_503_for_a_stored_saga() {
    let app = spawn_app_on(
        Some(required_postgres()),
        &ALL_SERVICES,
        fast_policy(),
        services::chaos::Chaos::default(),
    )
    .await;
    let db = app.db("orchestrator").await;
    let mut lock = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE sagas IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let post = |customer: &str| {
        client
            .post(app.url("/orders"))
            .json(&order_body(customer))
            .timeout(std::time::Duration::from_secs(60))
            .send()
    };
    let taken = tokio::spawn(post("c-slow-store"));
    // The intake is now blocked inside its transaction with the first saga; the second waits
    // in its queue.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let queued = tokio::spawn(post("c-queued"));
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    lock.rollback().await.unwrap();

    let taken = taken.await.unwrap().unwrap();
    assert_eq!(
        taken.status(),
        StatusCode::ACCEPTED,
        "the stored saga is answered as such"
    );
    let body: Value = taken.json().await.unwrap();
    let id = body["saga_id"].as_str().unwrap().to_string();
    let queued = queued.await.unwrap().unwrap();
    assert_eq!(queued.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = queued.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("timed out"),
        "{body}"
    );

    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    // Give the intake time to (wrongly) store the abandoned one, then check it did not.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let customers = |c: &'static str| {
        let db = db.clone();
        let pattern = format!("%\"customer_id\":\"{c}\"%");
        async move {
            count(
                &db,
                "SELECT COUNT(*) FROM sagas WHERE input LIKE $1",
                &pattern,
            )
            .await
        }
    };
    assert_eq!(customers("c-slow-store").await, 1);
    assert_eq!(
        customers("c-queued").await,
        0,
        "the abandoned request stored nothing"
    );
    app.stop().await;
}

/// Publishing a dead letter was retried until shutdown while the consume loop
/// waited, so one unreadable reply with a dead-letter topic the broker refuses (here an ACL:
/// TOPIC_AUTHORIZATION_FAILED) stopped all reply handling. Now the publish is bounded, the
/// message is kept in the orchestrator's `dead_letters` table (bytes and headers intact, listed
/// at `GET /dead-letters`), sagas go on, and once the topic takes writes again the stored letter
/// is published and leaves the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_dead_letter_topic_stops_nothing_and_letters_wait_in_the_database() {
    if crate::broker::needs_the_mock("per-topic errors (a dead-letter topic refusing writes)") {
        return;
    }
    use rdkafka::bindings::rd_kafka_resp_err_t as E;
    let (app, dlq) = with_the_dead_letter_topic_denied().await;
    let topic = app.config.topics.role("user_events").unwrap().name.clone();
    let key = uuid::Uuid::new_v4().to_string();
    app.produce(&topic, &key, b"{unreadable while the DLQ is denied")
        .await;

    // Replies keep flowing, on every partition.
    for i in 0..3 {
        let id = app.start_saga(&format!("c-dlq-denied-{i}")).await;
        let saga = app
            .wait_for(&id, std::time::Duration::from_secs(40), |s| {
                s["status"] == "COMPLETED"
            })
            .await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
    }
    // The letter is kept, whole.
    let start = std::time::Instant::now();
    let letter = loop {
        let (status, body) = app.get_json("/dead-letters").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if let Some(l) = body["dead_letters"].as_array().and_then(|a| a.first()) {
            break l.clone();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "never stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(
        b64.decode(letter["payload"].as_str().unwrap()).unwrap(),
        b"{unreadable while the DLQ is denied"
    );
    assert_eq!(
        b64.decode(letter["key"].as_str().unwrap()).unwrap(),
        key.as_bytes()
    );
    assert_eq!(letter["source_topic"], topic);
    assert_eq!(letter["component"], "orchestrator");
    let headers = letter["headers"].to_string();
    assert!(
        headers.contains("dlq.reason") && headers.contains("dlq.error"),
        "{headers}"
    );

    // The ACL is fixed: the letter is published, with its headers, and leaves the table.
    app.kafka
        .mock()
        .topic_error(&dlq, E::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        let (status, body) = app.post("/dead-letters/republish").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["left"] == 0 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let headers = app
        .wait_dead_letter(b"{unreadable while the DLQ is denied")
        .await;
    assert_eq!(headers["dlq.component"], "orchestrator");
    assert_eq!(headers["dlq.source.topic"], topic);
    app.stop().await;
}

/// A reply must say which command it answers: one without `causation_id` (valid JSON, the right
/// type, for the very saga that waits) used to be ignored in silence while the step waited for
/// its deadline and re-sent. Now it is dead-lettered naming why, as is one whose causation is no
/// command the saga sent; the real reply then moves the saga on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_without_or_with_a_foreign_causation_is_dead_lettered_naming_why() {
    let (mut app, id) = saga_waiting_at(
        &["notification", "orders", "payments"],
        "c-causation",
        "get_payment_info",
    )
    .await;
    let topic = app.config.topics.role("user_events").unwrap().name.clone();
    let reply = |causation: Value| {
        serde_json::json!({
            "message_id": uuid::Uuid::new_v4(),
            "type": "user.payment_info_retrieved",
            "correlation_id": id,
            "causation_id": causation,
            "timestamp": "2026-01-01T00:00:00Z",
            "payload": {"customer_id": "c-causation", "payment_method_id": "pm_forged"}
        })
        .to_string()
    };
    let without = reply(Value::Null);
    app.produce(&topic, &id, without.as_bytes()).await;
    let headers = app.wait_dead_letter(without.as_bytes()).await;
    assert_eq!(headers["dlq.reason"], "rejected", "{headers:?}");
    assert!(
        headers["dlq.error"].contains("no causation_id"),
        "{headers:?}"
    );
    let stranger = uuid::Uuid::new_v4();
    let foreign = reply(Value::from(stranger.to_string()));
    app.produce(&topic, &id, foreign.as_bytes()).await;
    let headers = app.wait_dead_letter(foreign.as_bytes()).await;
    assert_eq!(headers["dlq.reason"], "rejected", "{headers:?}");
    assert!(
        headers["dlq.error"].contains(&stranger.to_string())
            && headers["dlq.error"].contains("is no command saga"),
        "{headers:?}"
    );
    let (_, saga) = app.get_saga(&id).await;
    assert_eq!(
        saga["current_step"], "get_payment_info",
        "nothing moved: {saga}"
    );
    assert!(saga["context"]["payment_method_id"].is_null(), "{saga}");
    app.start_service("users").await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_ne!(done["context"]["payment_method_id"], "pm_forged");
    app.stop().await;
}

/// A dead letter that can be neither published nor stored (the topic refusing writes, the table
/// refusing the row) used to end the reply consumer for good while the process went on serving:
/// no saga moved again. Now the letter waits, its partition with it, and goes out once the
/// topic takes writes; the consumer never stopped, so the sagas behind it complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_nobody_takes_waits_and_the_consumer_goes_on() {
    if crate::broker::needs_the_mock("per-topic errors (a dead-letter topic refusing writes)") {
        return;
    }
    use rdkafka::bindings::rd_kafka_resp_err_t as E;
    let (app, dlq) = with_the_dead_letter_topic_denied().await;
    // The table refuses every row for good.
    let db = app.db("orchestrator").await;
    sqlx::query("ALTER TABLE dead_letters RENAME TO dead_letters_away")
        .execute(&db)
        .await
        .unwrap();
    let topic = app.config.topics.role("user_events").unwrap().name.clone();
    let key = uuid::Uuid::new_v4().to_string();
    let unreadable = b"{nobody takes this letter";
    app.produce(&topic, &key, unreadable).await;
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    // The topic takes writes again: the letter goes out, and the consumer is still there.
    app.kafka
        .mock()
        .topic_error(&dlq, E::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    let headers = app.wait_dead_letter(unreadable).await;
    assert_eq!(headers["dlq.reason"], "unreadable", "{headers:?}");
    for i in 0..3 {
        let id = app.start_saga(&format!("c-dlq-nowhere-{i}")).await;
        let saga = app
            .wait_for(&id, std::time::Duration::from_secs(60), |s| {
                s["status"] == "COMPLETED"
            })
            .await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
    }
    sqlx::query("ALTER TABLE dead_letters_away RENAME TO dead_letters")
        .execute(&db)
        .await
        .unwrap();
    app.stop().await;
}

/// The whole system with the dead-letter topic refusing writes (an ACL:
/// TOPIC_AUTHORIZATION_FAILED), and the topic's name. The topic refuses writes before any
/// component starts: a producer that had already read the topic's metadata (the readiness check
/// asks for every topic's) would publish to it anyway, and the letter would never need the
/// table.
async fn with_the_dead_letter_topic_denied() -> (TestApp, String) {
    use rdkafka::bindings::rd_kafka_resp_err_t as E;
    let mut app = spawn_app_custom(&[NO_IN_PROCESS], Default::default(), Default::default()).await;
    let dlq = app.config.topics.dead_letter.name.clone();
    app.kafka
        .mock()
        .topic_error(&dlq, E::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
        .unwrap();
    app.start_all().await;
    (app, dlq)
}
