use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::auth::{Access::Open, Routes};
use super::AppState;

pub fn routes() -> Routes {
    Routes::default()
        .get("/health", Open, health)
        .get("/livez", Open, livez)
        .get("/readyz", Open, readyz)
        .get("/metrics", Open, metrics)
        .get("/asyncapi.json", Open, asyncapi)
}

/// The process is up (no dependency is asked).
#[utoipa::path(get, path = "/livez", tag = "operations", summary = "Liveness: the process answers",
    responses((status = 200, description = "`{\"status\":\"alive\"}`", body = Object)))]
async fn livez() -> axum::response::Response {
    platform::ops::livez().await
}

/// The AsyncAPI document of every topic, command, reply and event, from the loaded definitions.
#[utoipa::path(get, path = "/asyncapi.json", tag = "operations",
    summary = "The AsyncAPI document of every topic, command, reply and lifecycle event",
    responses((status = 200, description = "AsyncAPI 3.0", body = Object)))]
async fn asyncapi(State(app): State<AppState>) -> Json<Value> {
    let registry = &app.sagas.registry;
    Json(crate::asyncapi::document(
        registry,
        &registry.contract,
        &app.topics,
    ))
}

/// Database, broker and consumer group, as last checked in the background: answers at once
/// even while the broker is away.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    summary = "Readiness: the database, Kafka and the consumer group, as last checked",
    responses(
        (status = 200, description = "Ready; the checks and any warnings", body = Object),
        (status = 503, description = "Not ready; what failed", body = Object),
    ))]
async fn readyz(State(app): State<AppState>) -> axum::response::Response {
    platform::ops::readyz(&app.ops.health)
}

/// Every metric of the process; the outbox and saga gauges are read from the database now
/// (bounded, so a database that is away does not hold the scrape).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics (OpenMetrics text)",
    responses((status = 200, description = "Every metric of the process", content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(app): State<AppState>) -> axum::response::Response {
    let m = app.store.saga_metrics();
    match tokio::time::timeout(Duration::from_secs(2), app.store.outbox_backlog()).await {
        Ok(Ok((unsent, oldest))) => {
            m.outbox_unsent.set(unsent);
            let age = oldest.map_or(0, |t| platform::time::now_ms() - t);
            m.outbox_oldest_age.set(age.max(0) as f64 / 1000.0);
        }
        _ => tracing::debug!("outbox backlog not read for this scrape"),
    }
    match tokio::time::timeout(Duration::from_secs(2), app.store.saga_gauges()).await {
        Ok(Ok(g)) => {
            m.sagas_in_flight.set(g.in_flight);
            m.sagas_parked.set(g.parked);
            let age = g
                .oldest_started_at
                .map_or(0, |t| platform::time::now_ms() - t);
            m.oldest_running_age.set(age.max(0) as f64 / 1000.0);
            m.dead_letters_stored.set(g.dead_letters_stored);
        }
        _ => tracing::debug!("saga gauges not read for this scrape"),
    }
    platform::ops::metrics(&app.ops.metrics)
}

/// 200 when the database and Kafka both answer, 503 naming what does not. Asks both now (kept
/// as it was for existing probes; `/livez` and `/readyz` are what probes should use).
#[utoipa::path(get, path = "/health", tag = "operations",
    summary = "The database and Kafka, asked now",
    responses(
        (status = 200, description = "Both answer", body = Object),
        (status = 503, description = "One does not", body = Object),
    ))]
async fn health(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let (db, kafka) = tokio::join!(
        app.store.db().ping(),
        platform::kafka::reachable(&app.producer)
    );
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    let status = if db && kafka {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if db && kafka { "ok" } else { "degraded" },
        "database": word(db),
        "kafka": word(kafka),
    });
    (status, Json(body))
}
