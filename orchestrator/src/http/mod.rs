//! The HTTP front: `POST /sagas/{type}` (any saga), `POST /orders` (CampusG's create-order),
//! `GET /sagas/{id}`, `GET /sagas`, cancel and retry, the event streams (`/events`,
//! `/sagas/{id}/events`), `/dead-letters`
//! (also under `/api`, where CampusG serves them), the probes (`/livez`, `/readyz`, `/health`)
//! and `/metrics`.
//!
//! Every request gets an `x-request-id` (the client's, or a new UUID, returned in the response),
//! a span that continues the caller's W3C trace (`traceparent`) or starts one, an access log line
//! (target `http_access`), and a sample in `http_server_request_duration_seconds`.

pub mod auth;
mod dead_letters;
mod error;
mod events;
mod health;
mod limits;
mod openapi;
mod orders;
mod sagas;
mod start;
mod types;
mod ui;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use rdkafka::producer::FutureProducer;
use std::time::{Duration, Instant};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tracing::Instrument;

use platform::metrics::Metrics;
use platform::trace::{TRACEPARENT, TRACESTATE};
use platform::{Ops, TraceContext};

pub use error::ApiError;
pub use limits::{ApiArgs, ApiConfig, LongPolls};
pub use openapi::document as openapi_document;

use crate::intake::{Intake, Ticket};
use crate::saga::Sagas;
use crate::store::SagaStore;

/// Request bodies larger than this are refused with 413: an order is a few kilobytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A request (reading its body included) that takes longer than this is answered 503, so a slow
/// client or a stuck database cannot hold a connection forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers 503 past [`REQUEST_TIMEOUT`] — except for a new saga the intake is already storing:
/// that request waits for the outcome (bounded by the database's own timeouts), because a 503
/// for a saga that is then stored would make a client without an `Idempotency-Key` start a
/// second one. A new saga still queued when time runs out is abandoned: never stored, and the
/// 503 says so.
async fn deadline(mut req: Request, next: Next) -> Response {
    let ticket = Ticket::default();
    req.extensions_mut().insert(ticket.clone());
    let run = next.run(req);
    tokio::pin!(run);
    match tokio::time::timeout(REQUEST_TIMEOUT, &mut run).await {
        Ok(response) => response,
        Err(_) if ticket.abandon() => ApiError::Timeout.into_response(),
        Err(_) => {
            tracing::warn!("request past its deadline while its saga is being stored; waiting");
            run.await
        }
    }
}

/// What every handler can reach: one allocation shared by every request (axum clones the state
/// for each request and each middleware; a clone of this is one reference count).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.0
    }
}

pub struct AppParts {
    pub store: SagaStore,
    /// Where starts store new sagas (group commit).
    pub intake: Intake,
    /// Every saga type, and the timing policy.
    pub sagas: Sagas,
    /// Every topic, by role (for `/asyncapi.json`).
    pub topics: platform::Topics,
    /// Used by `/health` to ask the cluster for metadata.
    pub producer: FutureProducer,
    /// Metrics and readiness of the process.
    pub ops: Ops,
    /// Long polls in progress, capped.
    pub long_polls: LongPolls,
    /// Dead letters kept in the database, listed and re-published by `/dead-letters`.
    pub dead_letters: platform::kafka::DeadLetters,
    pub db: platform::db::Db,
    /// Who may call what.
    pub auth: auth::Auth,
    /// What the event streams follow.
    pub feed: crate::live::Feed,
    /// `/openapi.json`, once built.
    pub openapi: std::sync::OnceLock<serde_json::Value>,
}

/// Every route of the API, each with who may call it: among them a start path per saga type
/// of `registry`.
pub fn routes(registry: &crate::saga::Registry) -> auth::Routes {
    let typed = registry.types().fold(auth::Routes::default(), |r, d| {
        r.post(
            &format!("/sagas/{}", d.saga_type),
            auth::Access::Needs(auth::Scope::Start),
            start::start_typed,
        )
    });
    // CampusG's orchestrator serves its API under /api: its clients work against either path.
    let sagas = orders::routes()
        .merge(sagas::routes())
        .merge(typed)
        .merge(events::routes())
        .merge(types::routes());
    auth::Routes::default()
        .merge(sagas.clone())
        .nest("/api", sagas)
        .merge(health::routes())
        .merge(dead_letters::routes())
        .merge(auth::Routes::default().get(
            "/openapi.json",
            auth::Access::Open,
            openapi::openapi_json,
        ))
}

pub fn router(state: AppState) -> Router {
    routes(&state.sagas.registry)
        .into_router(state.auth.clone())
        // Swagger UI's page and files (not API routes: they read /openapi.json like any client).
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .config(utoipa_swagger_ui::Config::from("/openapi.json").try_it_out_enabled(true)),
        )
        .merge(ui::router())
        .route_layer(axum::middleware::from_fn(name_route))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(deadline))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // The last layer added runs first: the request id is set, then the request observed
        // (span, access log, metrics), then the id copied onto the response.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::from_fn_with_state(
            state.ops.metrics.clone(),
            observe,
        ))
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .with_state(state)
}

/// The trace context of the request's span, for handlers whose work continues it (a new saga
/// belongs to the trace of the request that started it).
#[derive(Debug, Clone)]
pub struct RequestTrace(pub TraceContext);

/// The route template that served a request, passed out to [`observe`] (routing happens inside
/// it, so it cannot read [`MatchedPath`] itself).
#[derive(Clone)]
struct RouteName(String);

async fn name_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let mut response = next.run(req).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteName(route));
    }
    response
}

/// A random UUID (v4) for a request that came without an `x-request-id`. From a per-thread
/// generator rather than the OS: a `getrandom` system call per request showed in the profile.
#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
        axum::http::HeaderValue::from_str(&id.to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// A client's `x-request-id` is logged at most this long.
const MAX_REQUEST_ID: usize = 128;

/// The span, the access log line and the latency sample of every request.
async fn observe(State(metrics): State<Metrics>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let (request_id, parent) = {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let id: String = header("x-request-id")
            .unwrap_or_default()
            .chars()
            .take(MAX_REQUEST_ID)
            .collect();
        (
            id,
            TraceContext::from_headers(header(TRACEPARENT), header(TRACESTATE)),
        )
    };
    let span = tracing::info_span!(
        "http_request",
        method = %method,
        path = %req.uri().path(),
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    let trace = platform::trace::continue_trace(&span, &parent);
    req.extensions_mut().insert(RequestTrace(trace));
    let response = next.run(req).instrument(span.clone()).await;
    let route = response
        .extensions()
        .get::<RouteName>()
        .map_or("unmatched", |r| r.0.as_str());
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics.http_request(method.as_str(), route, status, elapsed);
    span.in_scope(|| {
        tracing::info!(
            target: "http_access",
            route,
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request served"
        )
    });
    response
}

/// `Json` whose rejections are [`ApiError`]s (JSON bodies with clear messages).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Query` whose rejections are [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path` whose rejections are [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);
