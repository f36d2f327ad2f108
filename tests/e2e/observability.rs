//! What operators see: Prometheus metrics that equal what happened, probes that answer at once,
//! one trace per saga across every component (in Kafka headers, and exported over OTLP), JSON
//! logs, request ids and access logs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::procs::*;

/// The value of the sample of `name` whose labels include all of `labels`, from a scrape.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let has_all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            has_all.then(|| value.parse().ok()).flatten()
        })
        .next()
}

/// [`sample`], or 0 when the series does not exist (a counter never incremented).
fn count(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> String {
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    r.text().await.unwrap()
}

const CO: (&str, &str) = ("saga_type", "create_order");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_happened_down_every_saga_path() {
    let app = spawn_app().await;
    let mut ids = HashMap::new();
    for customer in [
        "c-1",
        "nocard-1",
        "declined-1",
        "noupdate-1",
        "noorder-1",
        "c-cancel",
    ] {
        let id = app.start_saga(customer).await;
        app.wait_terminal(&id).await;
        ids.insert(customer, id);
    }
    let cancelled = &ids["c-cancel"];
    let (status, _) = app.post(&format!("/sagas/{cancelled}/cancel")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.wait_for(cancelled, Duration::from_secs(30), |s| {
        s["status"] == "CANCELLED"
    })
    .await;

    // A reply delivered again: its message id is in the inbox already.
    let db = app.db("orchestrator").await;
    let happy = &ids["c-1"];
    let seen = scalar(
        &db,
        "SELECT message_id FROM inbox WHERE saga_id = $1 AND message_type = 'order.created'",
        happy,
    )
    .await
    .expect("the reply is in the inbox");
    let duplicate = json!({"message_id": seen, "type": "order.created", "correlation_id": happy,
        "causation_id": uuid::Uuid::new_v4(), "timestamp": "2026-01-01T00:00:00.000Z", "payload": {"order_id": "o-1"}});
    let events = app.config.topics.role("order_events").unwrap().name.clone();
    app.produce(&events, happy, duplicate.to_string().as_bytes())
        .await;
    // Junk: dead-lettered as unreadable (and so is the sentinel that waits for it).
    app.produce(&events, happy, b"not an envelope").await;
    app.sync_orchestrator(&events, happy).await;

    let text = scrape(&app).await;
    let m = |name: &str, labels: &[(&str, &str)]| count(&text, name, labels);
    assert_eq!(m("saga_started_total", &[CO]), 6.0, "{text}");
    let ended = |status| m("saga_ended_total", &[CO, ("status", status)]);
    // The cancelled saga completed first, then was undone.
    assert_eq!(ended("COMPLETED"), 2.0);
    assert_eq!(ended("COMPENSATED"), 4.0);
    assert_eq!(ended("CANCELLED"), 1.0);
    assert_eq!(ended("FAILED"), 0.0);
    assert_eq!(
        m(
            "saga_duration_seconds_count",
            &[CO, ("status", "COMPENSATED")]
        ),
        4.0
    );
    let compensation = |step| {
        m(
            "saga_compensations_total",
            &[CO, ("step", step), ("outcome", "completed")],
        )
    };
    // nocard, declined, noupdate and the cancel each cancel their order; noupdate and the
    // cancel each release a payment.
    assert_eq!(compensation("cancel_order"), 4.0);
    assert_eq!(compensation("revert_payment"), 2.0);
    let step = |name, outcome| {
        m(
            "saga_step_duration_seconds_count",
            &[
                CO,
                ("step", name),
                ("kind", "forward"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(step("create_order", "completed"), 5.0);
    assert_eq!(step("create_order", "failed"), 1.0);
    assert_eq!(step("get_payment_info", "failed"), 1.0);
    assert_eq!(step("authorize_payment", "failed"), 1.0);
    assert_eq!(step("update_order_status", "failed"), 1.0);
    assert_eq!(step("update_order_status", "completed"), 2.0);
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("saga_command_resends_total")
                || l.starts_with("saga_step_give_ups_total")),
        "nothing was re-sent or given up: {text}"
    );
    assert_eq!(m("saga_inbox_duplicates_total", &[]), 1.0);
    let orchestrator = ("component", "orchestrator");
    assert_eq!(
        m(
            "dead_letters_total",
            &[orchestrator, ("reason", "unreadable")]
        ),
        2.0
    );
    // Replies: c-1 4, nocard 3, declined 4, noupdate 6, noorder 1, cancelled 4 + 2; and the
    // duplicate, which is handled (ignored) too.
    assert_eq!(
        m(
            "messages_handled_total",
            &[orchestrator, ("outcome", "done")]
        ),
        25.0
    );
    assert_eq!(
        m(
            "messages_handled_total",
            &[orchestrator, ("outcome", "dead_lettered")]
        ),
        2.0
    );
    let http = |method, route, status| {
        m(
            "http_server_request_duration_seconds_count",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(http("POST", "/orders", "202"), 6.0);
    assert_eq!(http("POST", "/sagas/{saga_id}/cancel", "202"), 1.0);
    assert!(http("GET", "/sagas/{saga_id}", "200") >= 1.0);
    // Each service's own counters and pools live in the same registry.
    assert_eq!(
        m(
            "messages_handled_total",
            &[("component", "payment-service"), ("outcome", "done")]
        ),
        // authorize: c-1, declined, noupdate, cancelled; revert: noupdate, cancelled
        6.0
    );
    for component in [
        "orchestrator",
        "order-service",
        "user-service",
        "payment-service",
    ] {
        assert!(
            sample(
                &text,
                "db_pool_max_connections",
                &[("component", component)]
            )
            .is_some(),
            "{component} pool: {text}"
        );
    }
    assert_eq!(m("saga_outbox_unsent_messages", &[]), 0.0);
    assert_eq!(m("saga_outbox_oldest_unsent_age_seconds", &[]), 0.0);
    assert!(
        m(
            "kafka_consumer_assigned_partitions",
            &[("group", "saga-orchestrator")]
        ) > 0.0
    );

    // Consumer lag comes from librdkafka's statistics (every 5 s) against committed offsets
    // (every 500 ms): once everything is consumed and committed, every series reads 0.
    let start = Instant::now();
    loop {
        let text = scrape(&app).await;
        let lag = |group| {
            text.lines()
                .filter(|l| {
                    l.starts_with("kafka_consumer_lag_messages{")
                        && l.contains(&format!("group=\"{group}\""))
                })
                .count()
        };
        let caught_up = text
            .lines()
            .filter(|l| l.starts_with("kafka_consumer_lag_messages{"))
            .all(|l| l.ends_with(" 0"));
        if lag("saga-orchestrator") > 0 && lag("order-service") > 0 && caught_up {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "lag never reported as caught up: {text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_sends_give_ups_and_failed_compensations_are_counted_as_the_saga_history_shows() {
    // No payment service: authorize_payment is never answered, re-sent, given up, and its
    // compensation (in doubt) is never confirmed either, until the saga is FAILED.
    let app = spawn_app_custom(
        &["notification", "orders", "users"],
        fast_policy(),
        Default::default(),
    )
    .await;
    let id = app.start_saga("c-1").await;
    let saga = app
        .wait_for(&id, Duration::from_secs(30), |s| s["status"] == "FAILED")
        .await;
    let attempts = |name: &str| {
        saga["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["attempts"].as_f64().unwrap())
            .unwrap()
    };
    let text = scrape(&app).await;
    let m = |name: &str, labels: &[(&str, &str)]| count(&text, name, labels);
    let authorize = ("step", "authorize_payment");
    let revert = ("step", "revert_payment");
    assert_eq!(attempts("authorize_payment"), 3.0);
    assert_eq!(
        m("saga_command_resends_total", &[CO, authorize]),
        2.0,
        "{text}"
    );
    assert_eq!(m("saga_step_give_ups_total", &[CO, authorize]), 1.0);
    assert_eq!(
        m("saga_command_resends_total", &[CO, revert]),
        attempts("revert_payment") - 1.0
    );
    assert_eq!(
        m(
            "saga_compensation_attempt_failures_total",
            &[CO, revert, ("reason", "timed_out")]
        ),
        attempts("revert_payment")
    );
    assert_eq!(
        m(
            "saga_compensations_total",
            &[CO, revert, ("kind", "compensation"), ("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(m("saga_ended_total", &[CO, ("status", "FAILED")]), 1.0);
    // The order's compensation never ran: revert_payment came first and failed.
    assert_eq!(
        m("saga_compensations_total", &[CO, ("step", "cancel_order")]),
        0.0
    );
    app.stop().await;
}

/// `GET path` and how long it took.
async fn timed_get(app: &TestApp, path: &str) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let r = app.client.get(app.url(path)).send().await.unwrap();
    let status = r.status();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_at_once_and_names_the_broker_while_it_is_away() {
    if crate::broker::needs_the_mock("taking a broker down") {
        return;
    }
    let app = spawn_app().await;
    let (status, _, _) = timed_get(&app, "/livez").await;
    assert_eq!(status, StatusCode::OK);
    let start = Instant::now();
    let body = loop {
        let (status, body, _) = timed_get(&app, "/readyz").await;
        if status == StatusCode::OK {
            break body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for check in [
        "database:orchestrator",
        "kafka:orchestrator",
        "consumer_group:saga-orchestrator",
        "database:order-service",
        "consumer_group:payment-service",
        "kafka:notification-service",
    ] {
        assert_eq!(body["checks"][check]["status"], "ok", "{check}: {body}");
    }

    app.kafka.broker_down(1).unwrap();
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let body = loop {
        let (status, body, took) = timed_get(&app, "/readyz").await;
        slowest = slowest.max(took);
        // Every component checks the broker on its own schedule: wait for the orchestrator's.
        if status == StatusCode::SERVICE_UNAVAILABLE
            && body["checks"]["kafka:orchestrator"]["status"] == "failing"
        {
            break body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["status"], "not ready");
    assert_eq!(
        body["checks"]["kafka:orchestrator"]["status"], "failing",
        "{body}"
    );
    assert!(
        body["checks"]["database:orchestrator"]["status"] == "ok",
        "{body}"
    );
    for _ in 0..20 {
        let (status, _, took) = timed_get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_millis(100),
        "/readyz took {slowest:?} with the broker away"
    );
    // Liveness does not depend on the broker: no restart storm.
    let (status, _, took) = timed_get(&app, "/livez").await;
    assert_eq!(status, StatusCode::OK);
    assert!(took < Duration::from_millis(100));

    app.kafka.broker_up(1).unwrap();
    let start = Instant::now();
    loop {
        let (status, body, _) = timed_get(&app, "/readyz").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not ready again: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

/// A message of one saga as read back from Kafka: topic, type, and its trace context.
#[derive(Debug, Clone)]
struct Traced {
    topic: String,
    message_type: String,
    trace_id: String,
    span_id: String,
}

/// Every message of saga `id` on every topic, once at least `min` are there.
fn messages_of(app: &TestApp, id: &str, min: usize) -> Vec<Traced> {
    let t = &app.config.topics;
    let topics = t
        .all()
        .into_iter()
        .filter(|spec| spec.name != t.dead_letter.name);
    let consumer: BaseConsumer = app
        .kafka
        .client()
        .set("group.id", format!("test-trace-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        for p in 0..topic.partitions {
            tpl.add_partition_offset(&topic.name, p, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut found = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            if found.len() >= min {
                break;
            }
            continue;
        };
        if m.key() != Some(id.as_bytes()) {
            continue;
        }
        let envelope: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let traceparent = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| panic!("no traceparent on {envelope}"));
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        found.push(Traced {
            topic: m.topic().to_string(),
            message_type: envelope["type"].as_str().unwrap().to_string(),
            trace_id: parts[1].to_string(),
            span_id: parts[2].to_string(),
        });
    }
    found
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_a_saga_carries_the_trace_of_the_request_that_started_it() {
    let app = spawn_app().await;
    let r = app
        .client
        .post(app.url("/orders"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("x-request-id", "req-trace-1")
        .json(&order_body("c-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["x-request-id"], "req-trace-1");
    let id = r.json::<Value>().await.unwrap()["saga_id"]
        .as_str()
        .unwrap()
        .to_string();
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["trace_id"], CLIENT_TRACE);
    // 4 commands, 4 replies, saga.started and saga.completed, and the confirmation email's
    // delivery job (on the trace of the event that set it off).
    let messages = messages_of(&app, &id, 11);
    assert_eq!(messages.len(), 11, "{messages:?}");
    let job = messages
        .iter()
        .find(|m| m.message_type == "delivery.mail")
        .expect("the email's job");
    let completed = messages
        .iter()
        .find(|m| m.message_type == "saga.completed")
        .unwrap();
    assert_eq!(job.span_id, completed.span_id, "{messages:?}");
    assert!(
        messages.iter().all(|m| m.trace_id == CLIENT_TRACE),
        "{messages:?}"
    );
    // Each message names the span that sent it: a span of its own per hop, never the client's.
    let spans: HashSet<&str> = messages.iter().map(|m| m.span_id.as_str()).collect();
    assert!(!spans.contains(CLIENT_SPAN));
    let commands: HashSet<&str> = messages
        .iter()
        .filter(|m| m.topic.ends_with("_commands"))
        .map(|m| m.span_id.as_str())
        .collect();
    let replies: HashSet<&str> = messages
        .iter()
        .filter(|m| {
            m.topic.ends_with("_events")
                && m.topic != app.config.topics.role("notification_events").unwrap().name
        })
        .map(|m| m.span_id.as_str())
        .collect();
    assert_eq!((commands.len(), replies.len()), (4, 4), "{messages:?}");
    assert!(commands.is_disjoint(&replies));

    // Without a traceparent the saga starts a trace of its own, which the API shows.
    let r = app
        .client
        .post(app.url("/orders"))
        .json(&order_body("c-2"))
        .send()
        .await
        .unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    let id = r.json::<Value>().await.unwrap()["saga_id"]
        .as_str()
        .unwrap()
        .to_string();
    let saga = app.wait_terminal(&id).await;
    let trace = saga["trace_id"].as_str().unwrap().to_string();
    assert_eq!(trace.len(), 32);
    assert_ne!(trace, CLIENT_TRACE);
    let messages = messages_of(&app, &id, 10);
    assert!(messages.iter().all(|m| m.trace_id == trace), "{messages:?}");
    app.stop().await;
}

/// A minimal OTLP/HTTP receiver (JSON encoding): keeps every exported span.
struct Collector {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
}

async fn start_collector() -> Collector {
    let spans: Arc<Mutex<Vec<Value>>> = Default::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                    let service = rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.name")
                        .map(|a| a["value"]["stringValue"].clone())
                        .unwrap_or(Value::Null);
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for span in ss["spans"].as_array().into_iter().flatten() {
                            let mut span = span.clone();
                            span["service"] = service.clone();
                            kept.lock().unwrap().push(span);
                        }
                    }
                }
                ([("content-type", "application/json")], "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Collector { addr, spans }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_otlp_on_each_message_is_sent_from_an_exported_span_and_handled_in_its_child() {
    let collector = start_collector().await;
    let endpoint = format!("http://{}", collector.addr);
    let app = spawn_processes(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("LOG_FORMAT", "json"),
        ("NOTIFICATION_STDOUT", "true"),
        (
            "RUST_LOG",
            "warn,orchestrator=info,services=info,http_access=info",
        ),
    ])
    .await;
    let r = app
        .client
        .post(app.url("/orders"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("x-request-id", "req-otel-1")
        .json(&order_body("c-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await.unwrap()["saga_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.wait_terminal(&id).await;
    // The commands and replies, each handled in a span of its own (the lifecycle events and
    // the email's delivery job are handled by the notification service, which exports none).
    let messages: Vec<Traced> = messages_of(&app, &id, 11)
        .into_iter()
        .filter(|m| m.topic != app.config.topics.role("notification_events").unwrap().name)
        .filter(|m| !m.message_type.starts_with("delivery."))
        .collect();
    assert_eq!(messages.len(), 8, "{messages:?}");

    // Wait until every message's handler span has been exported.
    let by_id = |spans: &[Value]| -> HashMap<String, Value> {
        spans
            .iter()
            .filter(|s| s["traceId"] == CLIENT_TRACE)
            .map(|s| {
                (
                    s["spanId"].as_str().unwrap_or_default().to_string(),
                    s.clone(),
                )
            })
            .collect()
    };
    let start = Instant::now();
    let spans = loop {
        let spans = by_id(&collector.spans.lock().unwrap());
        let handled = messages.iter().all(|m| {
            spans
                .values()
                .any(|s| s["parentSpanId"] == m.span_id.as_str())
        });
        if handled || start.elapsed() > Duration::from_secs(20) {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let service = |s: &Value| s["service"].as_str().unwrap_or_default().to_string();
    for m in &messages {
        let sender = spans
            .get(&m.span_id)
            .unwrap_or_else(|| panic!("the span that sent {m:?} was not exported: {spans:?}"));
        let handler = spans
            .values()
            .find(|s| s["parentSpanId"] == m.span_id.as_str())
            .unwrap_or_else(|| panic!("no exported span handled {m:?}"));
        let topic = m.topic.strip_prefix(app.kafka.prefix()).unwrap_or(&m.topic);
        let participant = match topic.split('_').next().unwrap() {
            "order" => "order-service",
            "user" => "user-service",
            _ => "payment-service",
        };
        if m.topic.ends_with("_commands") {
            assert_eq!(service(sender), "orchestrator", "{m:?}");
            assert_eq!(service(handler), participant, "{m:?}");
        } else {
            assert_eq!(service(sender), participant, "{m:?}");
            assert_eq!(service(handler), "orchestrator", "{m:?}");
        }
    }
    // The first command was sent inside the request's span, which continues the client's.
    let first = messages
        .iter()
        .find(|m| m.message_type == "create_order")
        .unwrap();
    let mut span = &spans[&first.span_id];
    while span["parentSpanId"] != CLIENT_SPAN {
        let parent = span["parentSpanId"].as_str().unwrap_or_default();
        span = spans
            .get(parent)
            .unwrap_or_else(|| panic!("the chain from the first command breaks at {span}"));
    }
    assert_eq!(span["name"], "http_request");

    // JSON logs: one object per line on stderr, the access log among them with the request id.
    let (logs, _) = app.proc_output("orchestrator");
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["level"].is_string()), "{logs}");
    let access = lines
        .iter()
        .find(|l| l["target"] == "http_access" && l.to_string().contains("req-otel-1"))
        .unwrap_or_else(|| panic!("no access log line: {logs}"));
    assert_eq!(access["status"], 202, "{access}");
    assert!(access.to_string().contains(CLIENT_TRACE), "{access}");
    // The notification lines stay apart from the logs: stdout, one message each.
    let (logs, out) = app.proc_output("notification");
    assert!(out.lines().any(|l| l.contains(&id)));
    for l in out.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["topic"].is_string() && v["level"].is_null(), "{l}");
    }
    for l in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["level"].is_string() && v["topic"].is_null(), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_serve_probes_and_metrics_on_their_own_port() {
    let mut app = spawn_app_on(None, &[NO_IN_PROCESS], fast_policy(), Default::default()).await;
    let addr = free_addr();
    app.proc_env = vec![("METRICS_ADDR".into(), addr.to_string())];
    app.spawn_proc("payments");
    let get = |path: &'static str| {
        let client = app.client.clone();
        async move {
            client
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .map(|r| (r.status(), r.headers().clone()))
        }
    };
    let start = Instant::now();
    while get("/livez").await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "no metrics port");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        if matches!(get("/readyz").await, Ok((StatusCode::OK, _))) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "payment-service never ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = app
        .client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        sample(
            &text,
            "db_pool_max_connections",
            &[("component", "payment-service")]
        )
        .is_some(),
        "{text}"
    );
    assert!(
        count(
            &text,
            "kafka_consumer_assigned_partitions",
            &[("group", "payment-service")]
        ) > 0.0,
        "{text}"
    );
    let (status, _) = get("/nope").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The container health probe (the image has no curl) reads the same port.
    let probe = |url: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_healthcheck"))
            .arg(url)
            .output()
            .unwrap()
    };
    assert!(probe(format!("http://{addr}/readyz")).status.success());
    let refused = probe(format!("http://{}/readyz", free_addr()));
    assert_eq!(refused.status.code(), Some(1));
    assert!(!refused.stderr.is_empty());
    assert_eq!(probe(format!("http://{addr}/nope")).status.code(), Some(1));
    let (status, elapsed) = app.sigterm("payments");
    assert!(status.success(), "{status:?} after {elapsed:?}");
}

/// What alerts and on-call need is there before anything happened: every saga type's ended
/// counters and every dead-letter reason at 0 (a series born with its first increment hides
/// that increment from `increase()`), and the gauges of sagas in flight, parked, the oldest
/// running one's age and the dead letters waiting in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerted_series_exist_at_zero_and_the_on_call_gauges_are_exported() {
    // No user service: the saga waits on get_payment_info.
    let app = spawn_app_with(&["notification", "orders", "payments"]).await;
    let text = scrape(&app).await;
    for saga_type in ["create_order", "refund_order"] {
        for status in ["COMPLETED", "COMPENSATED", "CANCELLED", "FAILED"] {
            assert_eq!(
                sample(
                    &text,
                    "saga_ended_total",
                    &[("saga_type", saga_type), ("status", status)]
                ),
                Some(0.0),
                "{saga_type} {status}: {text}"
            );
        }
        assert_eq!(
            sample(&text, "saga_started_total", &[("saga_type", saga_type)]),
            Some(0.0)
        );
    }
    for component in [
        "orchestrator",
        "order-service",
        "payment-service",
        "notification-service",
    ] {
        for reason in [
            "unreadable",
            "unknown_saga",
            "rejected",
            "failed",
            "undeliverable",
        ] {
            assert_eq!(
                sample(
                    &text,
                    "dead_letters_total",
                    &[("component", component), ("reason", reason)]
                ),
                Some(0.0),
                "{component} {reason}"
            );
        }
    }
    // What the notification alerts read.
    for channel in ["mail", "alerts"] {
        for outcome in ["sent", "retried", "dead_lettered", "duplicate"] {
            assert_eq!(
                sample(
                    &text,
                    "notification_deliveries_total",
                    &[("channel", channel), ("outcome", outcome)]
                ),
                Some(0.0),
                "{channel} {outcome}"
            );
        }
        assert_eq!(
            sample(
                &text,
                "notification_retry_oldest_due_age_seconds",
                &[("channel", channel)]
            ),
            Some(0.0),
            "{channel}"
        );
    }
    assert_eq!(sample(&text, "saga_in_flight", &[]), Some(0.0), "{text}");
    let id = app.start_saga("c-gauges").await;
    app.wait_for(&id, Duration::from_secs(10), |s| {
        s["current_step"] == "get_payment_info"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let text = scrape(&app).await;
    assert_eq!(sample(&text, "saga_in_flight", &[]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "saga_parked", &[]), Some(0.0));
    assert_eq!(sample(&text, "dead_letters_stored", &[]), Some(0.0));
    let age = sample(&text, "saga_oldest_running_age_seconds", &[]).unwrap();
    assert!(age >= 1.0, "{age}");
    app.stop().await;
}
