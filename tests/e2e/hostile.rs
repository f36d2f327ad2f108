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

/// POST a saga and poll it until it ends; how long that took.
async fn timed_saga(app: &TestApp, customer: &str) -> std::time::Duration {
    let started = std::time::Instant::now();
    let id = app.start_saga(customer).await;
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    started.elapsed()
}

fn median(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort();
    v[v.len() / 2]
}

/// Slow and partial request heads and idle keep-alive connections were held
/// for ever, and long polls had no cap. Now a head must arrive (and an idle connection must
/// send its next request) within the header timeout, long polls over the cap are answered 503
/// at once, and sagas complete at their usual latency through all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_idle_connections_and_long_polls_are_bounded_and_sagas_go_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A saga that stays COMPENSATING for 20 s: its cancel_order is answered late. Steps wait
    // 3 s for a reply: the restarted orchestrator's group join on the embedded Kafka can outlast
    // `fast_policy`'s three 300 ms attempts, which would fail the first baseline saga.
    let policy = orchestrator::Policy {
        step_timeout_ms: 3_000,
        compensation_limit_ms: 60_000,
        max_step_timeout_ms: 30_000,
        ..fast_policy()
    };
    let slow_cancel = services::chaos::Chaos {
        reply_delay_ms: 20_000,
        commands: vec!["cancel_order".into()],
        ..Default::default()
    };
    let mut app = spawn_app_custom(&ALL_SERVICES, policy, slow_cancel).await;
    app.stop_orchestrator().await;
    app.config.api.limits.header_read_timeout = std::time::Duration::from_secs(2);
    app.config.api.max_long_polls = 8;
    app.start_orchestrator().await;

    let mut baseline = Vec::new();
    for i in 0..8 {
        baseline.push(timed_saga(&app, &format!("c-base-{i}")).await);
    }
    let baseline = median(baseline);

    // 200 connections that send half a request head and stop; 50 that send one request, read
    // the answer and then idle on keep-alive.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET /sagas HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        idle.push(s);
    }
    // Long polls up to the cap on the saga that cannot end yet; one more is refused at once.
    let waiting = app.start_saga("nocard-poll").await;
    app.wait_for(&waiting, std::time::Duration::from_secs(10), |s| {
        s["status"] == "COMPENSATING"
    })
    .await;
    let mut polls = Vec::new();
    for _ in 0..8 {
        let client = app.client.clone();
        let url = app.url(&format!("/sagas/{waiting}?wait_ms=9000"));
        polls.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap().status()
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let over = app
        .client
        .get(app.url(&format!("/sagas/{waiting}?wait_ms=9000")))
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    let body: Value = over.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("long polls"),
        "{body}"
    );

    // Sagas go on at their usual pace meanwhile.
    let mut during = Vec::new();
    for i in 0..8 {
        during.push(timed_saga(&app, &format!("c-during-{i}")).await);
    }
    let during = median(during);
    assert!(
        during <= baseline * 3 + std::time::Duration::from_millis(300),
        "median saga latency {during:?} under hostile clients vs {baseline:?} before"
    );

    // The server closed every slow and idle connection by itself, soon after the 2 s timeout.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for (kind, conns) in [("slow head", &mut slow), ("idle keep-alive", &mut idle)] {
        for s in conns.iter_mut() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut buf = [0u8; 1024];
            // End of stream (or a reset) once the server closes; it must not hang.
            loop {
                match tokio::time::timeout(left, s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => continue, // e.g. a 408 before the close
                    Err(_) => panic!("a {kind} connection was still open after 7 s"),
                }
            }
        }
    }
    for p in polls {
        assert_eq!(p.await.unwrap(), reqwest::StatusCode::OK);
    }
    app.stop().await;
}

/// Past `HTTP_MAX_CONNECTIONS` a new connection waits to be served until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_a_free_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut app = spawn_app_with(&[]).await;
    app.stop_orchestrator().await;
    app.config.api.limits.max_connections = 16;
    app.config.api.limits.header_read_timeout = std::time::Duration::from_secs(2);
    app.start_orchestrator().await;
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let waited = started.elapsed();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        waited >= std::time::Duration::from_millis(1_500),
        "served after {waited:?}: the 16 silent connections did not hold the cap"
    );
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    drop(held);
    app.stop().await;
}

/// A client that pipelines requests and never reads the responses used to keep its connection
/// past every timeout: four of them filled a cap of 4 and `/livez` stopped answering. A
/// response the client does not take within the header timeout now ends its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_their_responses_lose_their_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut app = spawn_app_with(&[]).await;
    app.stop_orchestrator().await;
    app.config.api.limits.max_connections = 4;
    app.config.api.limits.header_read_timeout = std::time::Duration::from_secs(1);
    app.start_orchestrator().await;
    let mut writers = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        writers.push(tokio::spawn(async move {
            // Large answers, asked for again and again, never read.
            let request = b"GET /asyncapi.json HTTP/1.1\r\nHost: x\r\n\r\n";
            for _ in 0..20_000 {
                if s.write_all(request).await.is_err() {
                    return; // the server closed it
                }
            }
            // Hold the connection, still reading nothing.
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            drop(s);
        }));
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        answer
    })
    .await
    .expect("/livez did not answer while four clients sat on their responses");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    eprintln!(
        "/livez answered {:?} after the slow readers started",
        started.elapsed()
    );
    for w in writers {
        w.abort();
    }
    app.stop().await;
}
