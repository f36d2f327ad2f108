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
        .get("/livez", Open, platform::ops::livez)
        .get("/readyz", Open, readyz)
        .get("/metrics", Open, metrics)
        .get("/asyncapi.json", Open, asyncapi)
}

/// The AsyncAPI document of every topic, command, reply and event, from the loaded definitions.
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
async fn readyz(State(app): State<AppState>) -> axum::response::Response {
    platform::ops::readyz(&app.ops.health)
}

/// Every metric of the process; the outbox and saga gauges are read from the database now
/// (bounded, so a database that is away does not hold the scrape).
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
