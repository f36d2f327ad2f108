//! The contract of CampusG's create-order saga orchestrator (its Flask routes under `/api`), as
//! its responses are documented there: a client written against it works here unchanged, on the
//! `/api` paths CampusG serves and on the unprefixed ones.
//!
//! - `POST /api/orders` → 202 `{success: true, message, saga_id, status}`; a bad request is a 4xx
//!   `{success: false, error}`.
//! - `GET /api/sagas/<id>` → 200 `{id, customer_id, order_id, status, current_step, error,
//!   created_at, updated_at, completed_at}`; unknown → 404 `{success: false, error}`.
//! - `GET /api/sagas?status=S` → 200 JSON array of `{id, customer_id, order_id, status,
//!   current_step, created_at, updated_at}`, newest first; an unknown status → 400
//!   `{success: false, error}`.
//! - `POST /api/sagas/<id>/cancel` → 202 `{message}`.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

fn is_time(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() >= 19 && s.as_bytes()[10] == b'T')
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = app.client.request(method, app.url(path));
    if let Some(body) = body {
        r = r.json(&body);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campusg_client_works_unchanged() {
    let app = spawn_app().await;
    for prefix in ["/api", ""] {
        // Start an order.
        let order = json!({
            "customer_id": "cust-campusg",
            "order_details": {
                "foodItems": [{"name": "Chicken Rice", "price": 5.5, "quantity": 2}],
                "deliveryLocation": "Block 22"
            }
        });
        let (status, body) = call(
            &app,
            reqwest::Method::POST,
            &format!("{prefix}/orders"),
            Some(order),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["success"], true, "{body}");
        assert!(body["message"].is_string(), "{body}");
        assert!(body["status"].is_string(), "{body}");
        let id = body["saga_id"].as_str().expect("saga_id").to_string();

        // Follow it.
        let done = app.wait_terminal(&id).await;
        assert_eq!(done["status"], "COMPLETED");
        let (status, saga) = call(
            &app,
            reqwest::Method::GET,
            &format!("{prefix}/sagas/{id}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(saga["id"], id.as_str());
        assert_eq!(saga["customer_id"], "cust-campusg");
        assert!(saga["order_id"].is_string(), "{saga}");
        assert_eq!(saga["status"], "COMPLETED");
        for key in ["current_step", "error"] {
            assert!(
                saga.get(key).is_some(),
                "{key} is there (null when none): {saga}"
            );
        }
        for key in ["created_at", "updated_at", "completed_at"] {
            assert!(is_time(&saga[key]), "{key}: {saga}");
        }

        // List by status: a JSON array of summaries.
        let (status, list) = call(
            &app,
            reqwest::Method::GET,
            &format!("{prefix}/sagas?status=COMPLETED"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let first = &list.as_array().expect("an array")[0];
        assert_eq!(first["id"], id.as_str(), "newest first");
        for key in ["customer_id", "order_id", "status", "current_step"] {
            assert!(first.get(key).is_some(), "{key}: {first}");
        }
        assert!(is_time(&first["created_at"]) && is_time(&first["updated_at"]));

        // Errors: success false, and a message.
        for (path, expected) in [
            (
                format!("{prefix}/sagas/{}", uuid::Uuid::new_v4()),
                StatusCode::NOT_FOUND,
            ),
            (
                format!("{prefix}/sagas?status=NOT_A_STATUS"),
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let (status, body) = call(&app, reqwest::Method::GET, &path, None).await;
            assert_eq!(status, expected, "{path}");
            assert_eq!(body["success"], false, "{body}");
            assert!(body["error"].is_string(), "{body}");
        }
        let (status, body) = call(
            &app,
            reqwest::Method::POST,
            &format!("{prefix}/orders"),
            Some(json!({"customer_id": "x"})),
        )
        .await;
        assert!(status.is_client_error(), "{status}");
        assert_eq!(body["success"], false, "{body}");

        // Cancel: 202 with a message.
        let (status, body) = call(
            &app,
            reqwest::Method::POST,
            &format!("{prefix}/sagas/{id}/cancel"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert!(body["message"].is_string(), "{body}");
        let cancelled = app
            .wait_for(&id, std::time::Duration::from_secs(30), |s| {
                s["status"] == "CANCELLED"
            })
            .await;
        assert_eq!(cancelled["status"], "CANCELLED");
    }
    app.stop().await;
}
