use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

/// 200 when the database and Kafka both answer, 503 naming what does not.
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
