//! `GET /dead-letters`: the dead letters the dead-letter topic would not take, kept in the
//! orchestrator's database; `POST /dead-letters/republish` offers them to the topic now instead
//! of at the next background round.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Access::Needs, Routes, Scope};
use super::{ApiError, ApiQuery, AppState};

pub fn routes() -> Routes {
    Routes::default()
        .get("/dead-letters", Needs(Scope::Operator), list)
        .post("/dead-letters/republish", Needs(Scope::Operator), republish)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
// An unknown parameter is a mistake to name (`?customer_id=` filters nothing), not to ignore.
#[serde(deny_unknown_fields)]
struct ListParams {
    /// How many, oldest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/dead-letters", tag = "dead letters",
    summary = "Dead letters the dead-letter topic would not take, kept in the database",
    params(ListParams),
    responses(
        (status = 200, description = "`{\"dead_letters\": [...]}`", body = Object),
        (status = 400, description = "A bad limit", body = super::error::ErrorBody),
        (status = 503, description = "The database is away", body = super::error::ErrorBody),
    ))]
async fn list(
    State(app): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let letters = platform::dead_letters::list(&app.db, limit)
        .await
        .map_err(|e| ApiError::from(crate::Error::from(e)))?;
    Ok(Json(json!({ "dead_letters": letters })))
}

#[utoipa::path(post, path = "/dead-letters/republish", tag = "dead letters",
    summary = "Offer the stored dead letters to the dead-letter topic now",
    responses(
        (status = 200, description = "`{\"published\": n, \"left\": m}`", body = Object),
        (status = 503, description = "The database is away", body = super::error::ErrorBody),
    ))]
async fn republish(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (published, left) = app
        .dead_letters
        .republish_stored()
        .await
        .map_err(|e| ApiError::from(crate::Error::from(e)))?;
    Ok(Json(json!({ "published": published, "left": left })))
}
