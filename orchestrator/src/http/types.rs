//! `GET /saga-types` and `GET /saga-types/{type}`: what each saga type does, as data a client
//! draws (steps, parallel groups, compensations, the pivot) and builds a start form from (the
//! input JSON Schema).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Access::Needs, Routes, Scope};
use super::{ApiError, ApiPath, ApiQuery, AppState};
use crate::saga::SagaDefinition;

pub fn routes() -> Routes {
    Routes::default()
        .get("/saga-types", Needs(Scope::Read), list_types)
        .get("/saga-types/{saga_type}", Needs(Scope::Read), get_type)
}

/// A saga type at one version.
#[derive(Debug, Serialize, ToSchema)]
pub struct TypeView {
    saga_type: String,
    version: u32,
    /// Every version this instance can run, oldest first.
    versions: Vec<u32>,
    description: String,
    /// The JSON Schema a start's input must match.
    #[schema(value_type = Object)]
    input_schema: Value,
    /// Input fields derived by the orchestrator, never taken from a client: field → function.
    computed: std::collections::BTreeMap<String, String>,
    /// A saga not done after this long is compensated (unless past its pivot); `null`: the
    /// orchestrator's `SAGA_TIMEOUT_MS`.
    deadline_ms: Option<i64>,
    /// The step after which the saga only goes forward (it cannot be cancelled any more).
    pivot: Option<String>,
    steps: Vec<StepView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TypeStepView)]
struct StepView {
    name: String,
    /// The parallel group the step runs in with its neighbours of the same group.
    group: Option<String>,
    /// `compensatable`, `nothing to undo`, `pivot` or `retriable` (after the pivot).
    role: &'static str,
    command: CommandView,
    /// Reply fields the saga keeps.
    receive: Vec<String>,
    compensation: Option<CompensationView>,
    /// Why the step needs no compensation.
    nothing_to_undo: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct CommandView {
    name: String,
    topic: String,
    /// Where the participant answers (from the message contract).
    reply_topic: Option<String>,
    /// The reply that means done, and the one that means refused.
    success: String,
    failure: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct CompensationView {
    name: String,
    command: CommandView,
}

fn view(app: &AppState, def: &SagaDefinition) -> TypeView {
    let registry = &app.sagas.registry;
    let reply_topic = |command: &str| {
        registry
            .contract
            .command(command)
            .map(|c| c.reply_topic.clone())
    };
    TypeView {
        saga_type: def.saga_type.clone(),
        version: def.version,
        versions: registry
            .all()
            .filter(|d| d.saga_type == def.saga_type)
            .map(|d| d.version)
            .collect(),
        description: def.description.clone(),
        input_schema: def.input_schema.clone(),
        computed: def.computed.clone(),
        deadline_ms: def.deadline_ms,
        pivot: def.pivot.and_then(|p| def.step(p)).map(|s| s.name.clone()),
        steps: def
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepView {
                name: s.name.clone(),
                group: s.group.clone(),
                role: def.role(i).as_str(),
                command: CommandView {
                    name: s.command.command_type.clone(),
                    topic: s.command.topic.clone(),
                    reply_topic: reply_topic(&s.command.command_type),
                    success: s.on_success.clone(),
                    failure: Some(s.on_failure.clone()),
                },
                receive: s.receive.clone(),
                compensation: s.compensation.as_ref().map(|c| CompensationView {
                    name: c.name.clone(),
                    command: CommandView {
                        name: c.command.command_type.clone(),
                        topic: c.command.topic.clone(),
                        reply_topic: reply_topic(&c.command.command_type),
                        success: c.on_success.clone(),
                        failure: c.on_failure.clone(),
                    },
                }),
                nothing_to_undo: s.nothing_to_undo.clone(),
            })
            .collect(),
    }
}

/// `GET /saga-types`: the latest version of every type, by name.
#[utoipa::path(
    get,
    path = "/saga-types",
    tag = "saga types",
    summary = "Every saga type at its latest version: steps, groups, compensations, input schema",
    responses((status = 200, description = "The saga types", body = Vec<TypeView>))
)]
async fn list_types(State(app): State<AppState>) -> Json<Vec<TypeView>> {
    Json(app.sagas.registry.types().map(|d| view(&app, d)).collect())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TypeParams {
    /// A version other than the latest (one a running saga still uses).
    version: Option<u32>,
}

/// `GET /saga-types/{type}?version=`: one type, at its latest version or the one asked for.
#[utoipa::path(
    get,
    path = "/saga-types/{saga_type}",
    tag = "saga types",
    summary = "One saga type, at its latest version or the one asked for",
    params(("saga_type" = String, Path, description = "The saga type"), TypeParams),
    responses(
        (status = 200, description = "The saga type", body = TypeView),
        (status = 400, description = "A bad parameter", body = super::error::ErrorBody),
        (status = 404, description = "No such type or version", body = super::error::ErrorBody),
    )
)]
async fn get_type(
    State(app): State<AppState>,
    ApiPath(saga_type): ApiPath<String>,
    ApiQuery(params): ApiQuery<TypeParams>,
) -> Result<Json<TypeView>, ApiError> {
    let registry = &app.sagas.registry;
    let def = match params.version {
        None => registry.latest(&saga_type).cloned(),
        Some(v) => registry.of_saga_type(&saga_type, v).ok(),
    };
    match def {
        Some(def) => Ok(Json(view(&app, &def))),
        None => Err(ApiError::NotFound(match params.version {
            None => format!("no saga type {saga_type:?}"),
            Some(v) => format!("no saga type {saga_type:?} at version {v}"),
        })),
    }
}
