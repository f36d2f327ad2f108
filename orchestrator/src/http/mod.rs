//! The HTTP front: `POST /orders`, `GET /sagas/{id}`, `GET /sagas`, `GET /health`.

mod error;
mod health;
mod orders;
mod sagas;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use rdkafka::producer::FutureProducer;
use serde::de::DeserializeOwned;
use std::time::Duration;

pub use error::ApiError;

use crate::intake::Intake;
use crate::relay::Relay;
use crate::saga::engine::Policy;
use crate::saga::SagaDefinition;
use crate::store::SagaStore;

/// Request bodies larger than this are refused with 413: an order is a few kilobytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A request (reading its body included) that takes longer than this is answered 503, so a slow
/// client or a stuck database cannot hold a connection forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn deadline(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: SagaStore,
    /// Where `POST /orders` stores new sagas (group commit).
    pub intake: Intake,
    pub definition: Arc<SagaDefinition>,
    pub policy: Policy,
    pub relay: Relay,
    /// Used by `/health` to ask the cluster for metadata.
    pub producer: FutureProducer,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(orders::router())
        .merge(sagas::router())
        .merge(health::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(deadline))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `Json` whose rejections are [`ApiError`]s (JSON bodies with clear messages).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// `Query` whose rejections are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// `Path` whose rejections are [`ApiError`]s.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}
