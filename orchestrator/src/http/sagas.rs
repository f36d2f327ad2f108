//! `GET /sagas/{id}` and `GET /sagas`: where a saga is and what happened to it.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ApiError, ApiQuery, AppState};
use crate::saga::{SagaState, SagaStatus, StepKind, StepStatus};

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sagas", get(list_sagas))
        .route("/sagas/{saga_id}", get(get_saga))
}

/// A saga as the API shows it.
#[derive(Debug, Serialize)]
pub struct SagaView {
    saga_id: Uuid,
    saga_type: String,
    status: SagaStatus,
    current_step: Option<String>,
    customer_id: Option<String>,
    order_id: Option<String>,
    payment_id: Option<String>,
    amount_cents: Option<i64>,
    error: Option<String>,
    steps: Vec<StepView>,
    created_at: String,
    updated_at: String,
    completed_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct StepView {
    name: String,
    kind: StepKind,
    status: StepStatus,
    attempts: u32,
    started_at: String,
    finished_at: Option<String>,
    error: Option<String>,
}

impl From<&SagaState> for SagaView {
    fn from(s: &SagaState) -> Self {
        let time = platform::time::rfc3339;
        SagaView {
            saga_id: s.saga_id,
            saga_type: s.saga_type.clone(),
            status: s.status,
            current_step: s.current_step().map(str::to_string),
            customer_id: s.context_str("customer_id").map(str::to_string),
            order_id: s.context_str("order_id").map(str::to_string),
            payment_id: s.context_str("payment_id").map(str::to_string),
            amount_cents: s.context_i64("amount_cents"),
            error: s.error.clone(),
            steps: s
                .steps
                .iter()
                .map(|r| StepView {
                    name: r.name.clone(),
                    kind: r.kind,
                    status: r.status,
                    attempts: r.attempts,
                    started_at: time(r.started_at),
                    finished_at: r.finished_at.map(time),
                    error: r.error.clone(),
                })
                .collect(),
            created_at: time(s.created_at),
            updated_at: time(s.updated_at),
            completed_at: s.completed_at.map(time),
        }
    }
}

async fn get_saga(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SagaView>, ApiError> {
    let saga_id =
        Uuid::parse_str(&id).map_err(|_| ApiError::bad_request("saga id must be a UUID"))?;
    match app.store.get(saga_id).await? {
        Some(state) => Ok(Json(SagaView::from(&state))),
        None => Err(ApiError::NotFound(format!("no saga with id {saga_id}"))),
    }
}

#[derive(Debug, Deserialize)]
struct ListParams {
    status: Option<String>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
struct SagaList {
    sagas: Vec<SagaView>,
}

async fn list_sagas(
    State(app): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<SagaList>, ApiError> {
    let status = match params.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(SagaStatus::parse(&s.to_ascii_uppercase()).ok_or_else(|| {
            let known: Vec<&str> = SagaStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(format!(
                "unknown status {s:?}; expected one of {}",
                known.join(", ")
            ))
        })?),
    };
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let sagas = app.store.list(status, limit).await?;
    Ok(Json(SagaList {
        sagas: sagas.iter().map(SagaView::from).collect(),
    }))
}
