//! Starting a saga of any type: `POST /sagas/{type}` with the input as the body, and the path
//! `POST /orders` takes once it has built create-order's input from CampusG's request.
//!
//! The input is checked against the type's JSON Schema (a 422 names each failing path), the
//! saga and its first commands are stored in one transaction (the intake's group commit), and an
//! `Idempotency-Key` (unique per saga type) makes a retried request answer with the saga the
//! first one started.

use axum::extract::{MatchedPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::Instrument;
use uuid::Uuid;

use super::{ApiError, ApiJson, ApiPath, AppState, RequestTrace};
use crate::intake::Ticket;
use crate::saga::{engine, SagaState, SagaStatus};
use crate::store::Created;

const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A saga that was started, or found by its idempotency key.
pub struct Started {
    pub state: SagaState,
    /// The idempotency key had started it before: nothing new was stored.
    pub replayed: bool,
}

/// What a start is asked for.
pub struct StartRequest<'a> {
    pub saga_type: &'a str,
    pub input: Map<String, Value>,
    pub idempotency_key: Option<String>,
    /// The request's trace: the saga's trace is rooted in it.
    pub trace: Option<Extension<RequestTrace>>,
    pub ticket: Option<Extension<Ticket>>,
}

/// Validates the input against the type's schema, then stores the saga and its first commands.
pub async fn start(app: &AppState, request: StartRequest<'_>) -> Result<Started, ApiError> {
    let definition = app
        .sagas
        .registry
        .latest(request.saga_type)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no saga type {:?}; known types: {}",
                request.saga_type,
                app.sagas
                    .registry
                    .types()
                    .map(|d| d.saga_type.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?
        .clone();
    let mut input = Value::Object(request.input);
    // 2.0 and 2 are the same number to JSON Schema (an integer either way): stored and sent as
    // 2, so participants that read an integer get one.
    integral_as_integers(&mut input);
    if let Err(problems) = app.sagas.registry.check_input(&definition, &input) {
        return Err(ApiError::unprocessable(format!(
            "the input does not match the {} input schema: {}",
            definition.saga_type,
            problems.join("; ")
        )));
    }
    let Value::Object(mut input) = input else {
        unreachable!("built from a map above")
    };
    // Derived, never taken from the client: an order's amount is what its items cost.
    for (field, function) in &definition.computed {
        let value = crate::saga::computed::compute(function, &input).map_err(|why| {
            ApiError::unprocessable(format!("{field} cannot be computed from the input: {why}"))
        })?;
        input.insert(field.clone(), value);
    }
    // Time-ordered (UUID v7, monotonic within the process): sagas one instance starts in the
    // same millisecond still list newest first, since `GET /sagas` breaks `created_at` ties by id.
    let saga_id = Uuid::now_v7();
    let span = tracing::info_span!(
        "start_saga",
        saga_id = %saga_id,
        saga_type = %definition.saga_type,
        definition_version = definition.version,
        trace_id = tracing::field::Empty,
    );
    let parent = request
        .trace
        .map(|Extension(RequestTrace(t))| t)
        .unwrap_or_default();
    let trace = platform::trace::continue_trace(&span, &parent);
    async move {
        let (mut state, mut messages) = engine::start(
            &definition,
            &app.sagas.policy,
            saga_id,
            input,
            platform::time::now_ms(),
        );
        state.trace = trace.clone();
        for m in &mut messages {
            m.trace = trace.clone();
        }
        let created = app
            .intake
            .create(
                state.clone(),
                request.idempotency_key,
                messages,
                request.ticket.map(|Extension(t)| t).unwrap_or_default(),
            )
            .await?;
        match created {
            Created::New => {
                tracing::debug!("saga started");
                Ok(Started {
                    state,
                    replayed: false,
                })
            }
            Created::Existing(existing) => {
                if input_of(&existing) != input_of(&state) {
                    // 409: the key is taken by another request (the resource's state conflicts
                    // with this one), not a fault of this request's body.
                    return Err(ApiError::Client {
                        status: StatusCode::CONFLICT,
                        message: "this Idempotency-Key was already used with a different request"
                            .into(),
                    });
                }
                tracing::info!(existing = %existing.saga_id, "idempotent retry; returning the existing saga");
                Ok(Started {
                    state: *existing,
                    replayed: true,
                })
            }
        }
    }
    .instrument(span)
    .await
}

/// Every number with no fraction (`2.0`) as an integer (`2`), within the range JSON carries
/// integers exactly.
fn integral_as_integers(value: &mut Value) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < EXACT) {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_as_integers),
        _ => {}
    }
}

/// The input a saga was started with, as stored.
pub fn input_of(state: &SagaState) -> Option<Value> {
    state
        .input_json
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
}

/// The `Idempotency-Key` header, if any.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.trim().is_empty() && s.len() <= MAX_IDEMPOTENCY_KEY => Ok(Some(s.to_string())),
        _ => Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        ))),
    }
}

/// 202 with `body`, `Location: /sagas/{id}`, and `Idempotent-Replayed: true` for a replay.
pub fn accepted(started: &Started, body: impl Serialize) -> Response {
    let location = format!("/sagas/{}", started.state.saga_id);
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    if started.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct StartedBody {
    saga_id: Uuid,
    saga_type: String,
    definition_version: u32,
    status: SagaStatus,
}

/// `POST /sagas/{type}`: the body is the saga's input.
#[utoipa::path(
    post,
    path = "/sagas/{saga_id}",
    tag = "sagas",
    summary = "Start a saga of any type (the path names the type); each type's own path below has its input schema",
    params(
        ("saga_id" = String, Path, description = "The saga type to start (the path is shared with GET /sagas/{saga_id})"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retried start with the same key answers with the saga the first one started"),
    ),
    request_body(content = Object, description = "The input; the type's JSON Schema says what it must hold"),
    responses(
        (status = 202, description = "Started (or replayed for its Idempotency-Key)", body = StartedBody, headers(
            ("Location" = String, description = "`/sagas/{saga_id}`"),
            ("idempotent-replayed" = String, description = "`true` when the Idempotency-Key had started it before"),
        )),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = super::error::ErrorBody),
        (status = 404, description = "No such saga type", body = super::error::ErrorBody),
        (status = 413, description = "The body is over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "Not Content-Type: application/json", body = super::error::ErrorBody),
        (status = 409, description = "The Idempotency-Key was used before with a different input", body = super::error::ErrorBody),
        (status = 422, description = "The input does not match the type's schema", body = super::error::ErrorBody),
        (status = 503, description = "The database is away, or the request timed out", body = super::error::ErrorBody),
    )
)]
pub async fn start_saga(
    State(app): State<AppState>,
    ApiPath(saga_type): ApiPath<String>,
    trace: Option<Extension<RequestTrace>>,
    ticket: Option<Extension<Ticket>>,
    headers: HeaderMap,
    ApiJson(input): ApiJson<Value>,
) -> Result<Response, ApiError> {
    start_of_type(&app, &saga_type, trace, ticket, headers, input).await
}

/// `POST /sagas/create_order` and the like: one route per loaded type, so the API (and its
/// document) says exactly which methods each type's path takes. The type is the path's last
/// segment.
pub async fn start_typed(
    State(app): State<AppState>,
    path: MatchedPath,
    trace: Option<Extension<RequestTrace>>,
    ticket: Option<Extension<Ticket>>,
    headers: HeaderMap,
    ApiJson(input): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let saga_type = path.as_str().rsplit('/').next().unwrap_or_default();
    start_of_type(&app, saga_type, trace, ticket, headers, input).await
}

async fn start_of_type(
    app: &AppState,
    saga_type: &str,
    trace: Option<Extension<RequestTrace>>,
    ticket: Option<Extension<Ticket>>,
    headers: HeaderMap,
    input: Value,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let Value::Object(input) = input else {
        return Err(ApiError::unprocessable("the input must be a JSON object"));
    };
    let started = start(
        app,
        StartRequest {
            saga_type,
            input,
            idempotency_key,
            trace,
            ticket,
        },
    )
    .await?;
    let body = StartedBody {
        saga_id: started.state.saga_id,
        saga_type: started.state.saga_type.clone(),
        definition_version: started.state.definition_version,
        status: started.state.status,
    };
    Ok(accepted(&started, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_numbers_become_integers_and_the_rest_stay() {
        let mut v = serde_json::json!({"q": 959.0, "p": 12.5, "n": [2.0, -3.0, 1e300], "i": 7});
        integral_as_integers(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"q": 959, "p": 12.5, "n": [2, -3, 1e300], "i": 7})
        );
        assert!(v["q"].is_i64());
    }
}
