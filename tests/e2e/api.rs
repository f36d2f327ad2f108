//! The HTTP API's contract: shapes, listing, health, and clear 4xx errors for bad input.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_starts_nothing() {
    let app = spawn_app().await;
    let item = json!({"name": "Burger", "price": 12.5, "quantity": 2});
    let with = |customer: Value, items: Value| json!({"customer_id": customer, "order_details": {"foodItems": items}});
    let cases: Vec<(&str, String, &str, StatusCode, &str)> = vec![
        ("malformed JSON", "{\"customer_id\": ".into(), "application/json", StatusCode::BAD_REQUEST, "malformed JSON"),
        ("not an object", "[1,2]".into(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "invalid request"),
        ("missing customer", json!({"order_details": {"foodItems": [item]}}).to_string(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "customer_id"),
        ("empty customer", with(json!(""), json!([item])).to_string(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "customer_id"),
        ("customer not a string", with(json!(42), json!([item])).to_string(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "/customer_id: 42 is not of type"),
        ("no items", with(json!("c"), json!([])).to_string(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "foodItems"),
        ("negative price", with(json!("c"), json!([{"name": "A", "price": -1, "quantity": 1}])).to_string(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "price"),
        ("absurd price", with(json!("c"), json!([{"name": "A", "price": 1e300, "quantity": 1}])).to_string(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "price"),
        ("overflowing number", "{\"customer_id\":\"c\",\"order_details\":{\"foodItems\":[{\"name\":\"A\",\"price\":1e999,\"quantity\":1}]}}".into(), "application/json", StatusCode::BAD_REQUEST, "malformed JSON"),
        ("negative quantity", with(json!("c"), json!([{"name": "A", "price": 1, "quantity": -2}])).to_string(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "/order_details/foodItems/0/quantity"),
        ("fractional quantity", with(json!("c"), json!([{"name": "A", "price": 1, "quantity": 1.5}])).to_string(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "/order_details/foodItems/0/quantity"),
        ("absurd quantity", with(json!("c"), json!([{"name": "A", "price": 1, "quantity": 1000000}])).to_string(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "quantity"),
        ("wrong content type", order_body("c").to_string(), "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type"),
        ("over-large body", with(json!("x".repeat(100_000)), json!([item])).to_string(), "application/json", StatusCode::PAYLOAD_TOO_LARGE, ""),
    ];
    for (what, body, content_type, status, needle) in cases {
        let r = app
            .client
            .post(app.url("/orders"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{what}");
        let error: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        let message = error["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error message: {error}"));
        assert!(
            message.contains(needle),
            "{what}: {message:?} should mention {needle:?}"
        );
    }
    let r = app
        .client
        .post(app.url("/orders"))
        .header("Idempotency-Key", "")
        .json(&order_body("c"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    for (path, status) in [
        ("/sagas/not-a-uuid", StatusCode::BAD_REQUEST),
        (
            "/sagas/00000000-0000-0000-0000-000000000000",
            StatusCode::NOT_FOUND,
        ),
        ("/sagas?status=NOPE", StatusCode::BAD_REQUEST),
        ("/sagas?limit=0", StatusCode::BAD_REQUEST),
        ("/sagas?limit=abc", StatusCode::BAD_REQUEST),
        ("/no/such/route", StatusCode::NOT_FOUND),
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let (_, list) = app.get_json("/sagas").await;
    assert_eq!(
        list.as_array().unwrap().len(),
        0,
        "no bad request started a saga"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_are_listed_newest_first_and_filtered_by_status() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for customer in ["c-list-1", "nocard-list", "c-list-2"] {
        let id = app.start_saga(customer).await;
        app.wait_terminal(&id).await;
        ids.push(id);
    }
    let (status, all) = app.get_json("/sagas").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]
    );

    let (_, completed) = app.get_json("/sagas?status=COMPLETED&limit=50").await;
    let completed: Vec<&str> = completed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap())
        .collect();
    assert_eq!(completed, vec![ids[2].as_str(), ids[0].as_str()]);

    let (_, compensated) = app.get_json("/sagas?status=compensated").await;
    assert_eq!(compensated.as_array().unwrap().len(), 1);
    assert_eq!(compensated[0]["saga_id"], ids[1].as_str());
    assert_eq!(compensated[0]["steps"].as_array().unwrap().len(), 3);

    let (_, limited) = app.get_json("/sagas?limit=1").await;
    assert_eq!(limited.as_array().unwrap().len(), 1);
    assert_eq!(limited[0]["saga_id"], ids[2].as_str());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_database_and_kafka() {
    if crate::broker::needs_the_mock("taking a broker down") {
        return;
    }
    let app = spawn_app().await;
    let (status, body) = app.get_json("/health").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "ok", "database": "ok", "kafka": "ok"})
    );

    app.kafka.broker_down(1).unwrap();
    let (status, body) = app.get_json("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["kafka"], "unreachable");
    assert_eq!(body["database"], "ok");

    app.kafka.broker_up(1).unwrap();
    let mut healthy = false;
    for _ in 0..50 {
        if app.get_json("/health").await.0 == StatusCode::OK {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(healthy, "health recovers when the broker is back");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_once_the_saga_has_ended() {
    // Without the payment service the saga waits at its third step.
    let mut app = spawn_app_with(&["notification", "orders", "users"]).await;
    let id = app.start_saga("c-long-poll").await;
    let (base, client) = (app.url(&format!("/sagas/{id}")), app.client.clone());
    let get = |wait_ms: u64| {
        let url = format!("{base}?wait_ms={wait_ms}");
        let client = client.clone();
        async move {
            let started = std::time::Instant::now();
            let r = client.get(url).send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap(), started.elapsed())
        }
    };
    // Not ended: held for the whole wait, then the current state.
    let (status, saga, took) = get(700).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(saga["status"], "STARTED", "{saga}");
    assert!(took >= std::time::Duration::from_millis(650), "{took:?}");

    // Ends while held: answered as soon as it ends, well before the wait is over.
    let waiting = tokio::spawn(get(9_000));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.start_service("payments").await;
    let (status, saga, took) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");

    // Ended: answered at once.
    let (_, saga, took) = get(9_000).await;
    assert_eq!(saga["status"], "COMPLETED");
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");

    for bad in ["wait_ms=9001", "wait_ms=-1", "wait_ms=soon"] {
        let r = app
            .client
            .get(app.url(&format!("/sagas/{id}?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    app.stop().await;
}

/// An unknown query parameter is a 400 naming it: `GET /sagas?customer_id=c-1` used to answer
/// every customer's sagas as if it filtered them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_query_parameter_is_refused_naming_it() {
    let app = spawn_app_with(&[]).await;
    let id = app.start_saga("c-query").await;
    for path in [
        "/sagas?customer_id=c-1".to_string(),
        format!("/sagas/{id}?customer_id=c-1"),
        "/dead-letters?customer_id=c-1".to_string(),
        "/api/sagas?customer_id=c-1".to_string(),
    ] {
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{path}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("customer_id"), "{path}: {error}");
    }
    let (status, list) = app.get_json("/sagas?type=create_order&limit=5").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1);
    app.stop().await;
}
