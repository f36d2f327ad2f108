//! Hostile HTTP input, generated: random and malformed methods, paths, queries, headers and
//! bodies at every endpoint. The API must answer every one with a status below 500 and a JSON
//! error for a 4xx, and must still be healthy afterwards.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use crate::helpers::*;

/// Arbitrary JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z_]{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Orders that are almost right: one field replaced by something random, sometimes an extra
/// field too.
fn mangled_order() -> impl Strategy<Value = Value> {
    (any_json(), any_json(), any::<u8>()).prop_map(|(a, b, pick)| {
        let item = json!({"name": "Burger", "price": 12.5, "quantity": 2});
        let mut details = json!({"foodItems": [item], "deliveryFee": 3.0});
        let mut order = json!({"customer_id": "c-1"});
        match pick % 6 {
            0 => order["customer_id"] = a,
            1 => details["foodItems"] = a,
            2 => details["foodItems"][0]["price"] = a,
            3 => details["foodItems"][0]["quantity"] = a,
            4 => details["deliveryFee"] = a,
            _ => details["foodItems"][0]["name"] = a,
        }
        order["order_details"] = if pick > 240 { b.clone() } else { details };
        if pick % 7 == 0 {
            order["extra"] = b;
        }
        order
    })
}

#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    path: String,
    content_type: Option<String>,
    idempotency_key: Option<String>,
    body: Vec<u8>,
}

fn request() -> impl Strategy<Value = Request> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]);
    let id = prop_oneof![
        Just(uuid::Uuid::new_v4().to_string()),
        "[a-zA-Z0-9._~-]{0,40}",
        // Percent-escapes, including ones that decode to invalid UTF-8.
        "([a-z]{0,3}%[0-9A-Fa-f]{2}){1,4}",
    ];
    let path = prop_oneof![
        Just("/orders".to_string()),
        Just("/health".to_string()),
        "[a-zA-Z0-9=&_.-]{0,30}(%[0-9A-Fa-f]{2})?".prop_map(|q| format!("/sagas?{q}")),
        ("(STARTED|COMPLETED|nope|)", "-?[0-9]{0,6}")
            .prop_map(|(s, l)| format!("/sagas?status={s}&limit={l}")),
        id.clone().prop_map(|id| format!("/sagas/{id}")),
        id.clone().prop_map(|id| format!("/sagas/{id}/cancel")),
        id.prop_map(|id| format!("/sagas/{id}/retry")),
        "(/[a-zA-Z0-9._~-]{0,12}){0,4}",
    ];
    let content_type = prop::option::of(prop_oneof![
        Just("application/json".to_string()),
        Just("text/plain".to_string()),
        "[ -~]{0,30}",
    ]);
    let key = prop::option::of("[ -~]{0,300}");
    let body = prop_oneof![
        mangled_order().prop_map(|v| v.to_string().into_bytes()),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..512),
        Just(vec![b'{'; 70_000]),
    ];
    (method, path, content_type, key, body).prop_map(
        |(method, path, content_type, idempotency_key, body)| Request {
            method,
            path,
            content_type,
            idempotency_key,
            body,
        },
    )
}

#[test]
fn hostile_requests_never_get_a_5xx_or_crash_the_api() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(spawn_app());
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&request(), |r| {
        let outcome = rt.block_on(async {
            let mut req = app
                .client
                .request(
                    reqwest::Method::from_bytes(r.method.as_bytes()).unwrap(),
                    app.url(&r.path),
                )
                .body(r.body.clone());
            if let Some(ct) = &r.content_type {
                if let Ok(v) = reqwest::header::HeaderValue::from_str(ct) {
                    req = req.header("content-type", v);
                }
            }
            if let Some(k) = &r.idempotency_key {
                if let Ok(v) = reqwest::header::HeaderValue::from_str(k) {
                    req = req.header("idempotency-key", v);
                }
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    Some((status, resp.bytes().await.unwrap_or_default()))
                }
                // The server may answer (413, 405, ...) and close before a large body is fully
                // written: the client then sees a broken pipe. Fine, if the server still serves.
                Err(e) => {
                    let health = app.client.get(app.url("/health")).send().await;
                    assert!(
                        health.is_ok_and(|h| h.status() == 200),
                        "server gone after {e}"
                    );
                    None
                }
            }
        });
        let Some((status, body)) = outcome else {
            return Ok(());
        };
        prop_assert!(
            status.as_u16() < 500,
            "{} {} -> {status}: {}",
            r.method,
            r.path,
            String::from_utf8_lossy(&body)
        );
        if status.is_client_error() {
            let error: Value = serde_json::from_slice(&body).map_err(|e| {
                TestCaseError::fail(format!(
                    "{} {} -> {status}: body is not JSON ({e})",
                    r.method, r.path
                ))
            })?;
            prop_assert!(
                error["error"].is_string(),
                "{} {} -> {status}: {error}",
                r.method,
                r.path
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (status, _) = rt.block_on(app.get_saga(&uuid::Uuid::new_v4().to_string()));
    assert_eq!(status, 404, "still serving");
    rt.block_on(app.stop());
}
