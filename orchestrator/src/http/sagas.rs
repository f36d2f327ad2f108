//! `GET /sagas/{id}` and `GET /sagas`: where a saga is and what happened to it.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Access::Needs, Routes, Scope};
use super::{ApiError, ApiPath, ApiQuery, AppState};
use crate::saga::engine::{self, Ignored};
use crate::saga::{Attempt, SagaState, SagaStatus, Sagas, StepKind, StepStatus};
use crate::store::{Changed, ListFilter};
use crate::transition::{transition, Persist};
use platform::retry::Retried;

/// CampusG's page size.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 500;

pub fn routes() -> Routes {
    Routes::default()
        .get("/sagas", Needs(Scope::Read), list_sagas)
        // One path parameter name for both: the saga's id (GET), or the type to start (POST).
        .get("/sagas/{saga_id}", Needs(Scope::Read), get_saga)
        .post(
            "/sagas/{saga_id}",
            Needs(Scope::Start),
            super::start::start_saga,
        )
        .post(
            "/sagas/{saga_id}/cancel",
            Needs(Scope::Operator),
            cancel_saga,
        )
        .post("/sagas/{saga_id}/retry", Needs(Scope::Operator), retry_saga)
}

/// A saga as the API shows it: any type's, with its input and context; a create-order saga also
/// carries CampusG's fields (`customer_id`, `order_id`, ...).
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaView {
    /// CampusG's name for the saga id.
    id: Uuid,
    saga_id: Uuid,
    saga_type: String,
    /// The version of its definition the saga runs under.
    definition_version: u32,
    status: SagaStatus,
    current_step: Option<String>,
    /// A create-order saga's fields, as CampusG shows them.
    #[serde(flatten)]
    order: Option<OrderFields>,
    /// What started the saga.
    #[schema(value_type = Option<Object>)]
    input: Option<serde_json::Value>,
    /// What the saga knows now: its input and the fields its steps received.
    #[schema(value_type = Object)]
    context: serde_json::Map<String, serde_json::Value>,
    /// Why compensation started: the failed step, the deadline.
    error: Option<String>,
    /// Why the saga is FAILED: the compensation that could not be done.
    compensation_error: Option<String>,
    steps: Vec<StepView>,
    /// The commands the saga waits on a reply to now: one, or every running member of a
    /// parallel group; empty once it has ended.
    waiting: Vec<WaitView>,
    created_at: String,
    updated_at: String,
    completed_at: Option<String>,
    /// When a saga still running is compensated.
    deadline_at: Option<String>,
    /// The W3C trace id every message of the saga carries (find the saga in a tracing UI).
    trace_id: Option<String>,
    /// Why the saga was set aside for an operator (its state cannot go on under its
    /// definition); `null` for every healthy saga.
    parked: Option<String>,
}

/// The create-order saga's fields, as CampusG shows them.
#[derive(Debug, Serialize, ToSchema)]
struct OrderFields {
    customer_id: Option<String>,
    order_id: Option<String>,
    payment_id: Option<String>,
    amount_cents: Option<i64>,
}

/// A command the saga waits on.
#[derive(Debug, Serialize, ToSchema)]
struct WaitView {
    /// The step (or compensation) whose reply is awaited.
    step: String,
    kind: StepKind,
    command_id: Uuid,
    /// The sending in flight, 1 for the first.
    attempt: u32,
    /// When the command was first sent.
    since: String,
    /// When the orchestrator stops waiting: it re-sends, or gives up.
    deadline_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
struct StepView {
    name: String,
    kind: StepKind,
    /// The forward step this entry is or undoes (a compensation is named after its command).
    step: Option<String>,
    /// The parallel group the step ran in.
    group: Option<String>,
    status: StepStatus,
    attempts: u32,
    started_at: String,
    finished_at: Option<String>,
    error: Option<String>,
    /// Every sending of the command and how it ended.
    history: Vec<AttemptView>,
}

#[derive(Debug, Serialize, ToSchema)]
struct AttemptView {
    attempt: u32,
    sent_at: String,
    /// `null` while waiting; then `succeeded`, `failed: <reason>` or `timed out`.
    outcome: Option<String>,
}

impl From<&Attempt> for AttemptView {
    fn from(a: &Attempt) -> Self {
        AttemptView {
            attempt: a.number,
            sent_at: platform::time::rfc3339(a.sent_at),
            outcome: a.outcome.clone(),
        }
    }
}

impl From<&SagaState> for SagaView {
    fn from(s: &SagaState) -> Self {
        let time = platform::time::rfc3339;
        let text = |key: &str| s.context_str(key).map(str::to_string);
        SagaView {
            id: s.saga_id,
            saga_id: s.saga_id,
            saga_type: s.saga_type.clone(),
            definition_version: s.definition_version,
            status: s.status,
            current_step: s.current_step().map(str::to_string),
            order: (s.saga_type == "create_order").then(|| OrderFields {
                customer_id: text("customer_id"),
                order_id: text("order_id"),
                payment_id: text("payment_id"),
                amount_cents: s.context_i64("amount_cents"),
            }),
            input: super::start::input_of(s),
            context: s.context.clone(),
            error: s.error.clone(),
            compensation_error: s.compensation_error.clone(),
            steps: s
                .steps
                .iter()
                .map(|r| StepView {
                    name: r.name.clone(),
                    kind: r.kind,
                    step: forward_name(s, r.step_index),
                    group: r.group.clone(),
                    status: r.status,
                    attempts: r.attempts,
                    started_at: time(r.started_at),
                    finished_at: r.finished_at.map(time),
                    error: r.error.clone(),
                    history: r.attempt_log.iter().map(AttemptView::from).collect(),
                })
                .collect(),
            waiting: s
                .pending
                .iter()
                .filter_map(|p| {
                    let record = s
                        .steps
                        .iter()
                        .rev()
                        .find(|r| r.command_id == p.command_id)?;
                    Some(WaitView {
                        step: record.name.clone(),
                        kind: p.kind,
                        command_id: p.command_id,
                        attempt: p.attempt,
                        since: time(p.first_sent_at),
                        deadline_at: time(p.deadline_at),
                    })
                })
                .collect(),
            created_at: time(s.created_at),
            updated_at: time(s.updated_at),
            completed_at: s.completed_at.map(time),
            deadline_at: match s.status {
                SagaStatus::Started => s.deadline_at.map(time),
                _ => None,
            },
            trace_id: s.trace.trace_id(),
            parked: s.parked.clone(),
        }
    }
}

/// The name of the forward step at `index`: the first record that ran it (a compensation
/// carries its step's index).
fn forward_name(s: &SagaState, index: usize) -> Option<String> {
    s.steps
        .iter()
        .find(|r| r.kind == StepKind::Forward && r.step_index == index)
        .map(|r| r.name.clone())
}

pub(super) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::bad_request("saga id must be a UUID"))
}

/// The longest `wait_ms` accepted: below the request timeout, so a wait ends with the saga.
const MAX_WAIT_MS: u64 = 9_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// An unknown parameter is a mistake to name (`?customer_id=` filters nothing), not to ignore.
#[serde(deny_unknown_fields)]
struct GetParams {
    /// Hold the response until the saga has ended, for at most this long (long polling).
    #[param(maximum = 9000)]
    wait_ms: Option<u64>,
}

/// `GET /sagas/{id}`, and with `?wait_ms=N` the same once the saga has ended (or after N ms).
#[utoipa::path(
    get,
    path = "/sagas/{saga_id}",
    tag = "sagas",
    summary = "A saga: where it is and what happened to it",
    params(("saga_id" = Uuid, Path, description = "The saga's id"), GetParams),
    responses(
        (status = 200, description = "The saga", body = SagaView),
        (status = 400, description = "Not a UUID, or a bad parameter", body = super::error::ErrorBody),
        (status = 404, description = "No such saga", body = super::error::ErrorBody),
        (status = 503, description = "Too many long polls, or the database is away", body = super::error::ErrorBody),
    )
)]
async fn get_saga(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<GetParams>,
) -> Result<Json<SagaView>, ApiError> {
    let saga_id = parse_id(&id)?;
    let state = match params.wait_ms {
        None | Some(0) => app.store.get(saga_id).await?,
        Some(ms) if ms <= MAX_WAIT_MS => {
            let _place = app.long_polls.enter()?;
            app.store
                .get_when_ended(saga_id, std::time::Duration::from_millis(ms))
                .await?
        }
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "wait_ms must be at most {MAX_WAIT_MS}"
            )))
        }
    };
    match state {
        Some(state) => Ok(Json(SagaView::from(&state))),
        None => Err(ApiError::NotFound(format!("no saga with id {saga_id}"))),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// An unknown parameter is a mistake to name (`?customer_id=` filters nothing), not to ignore.
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Only sagas of this type.
    #[serde(rename = "type")]
    #[param(rename = "type", max_length = 64)]
    saga_type: Option<String>,
    /// Only sagas in this status (any case).
    status: Option<String>,
    /// Sagas per page (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// Where the previous page ended (from its `Link: <...>; rel="next"`).
    cursor: Option<String>,
    /// A saga id, or text found in a saga's input or context (a customer, an order id).
    #[param(max_length = 256)]
    search: Option<String>,
}

/// `GET /sagas?type=&status=&search=&limit=&cursor=`: a JSON array, newest first (CampusG's shape); when
/// more follow, `Link: </sagas?...&cursor=...>; rel="next"` points at the next page.
#[utoipa::path(
    get,
    path = "/sagas",
    tag = "sagas",
    summary = "Sagas, newest first, a page at a time",
    params(ListParams),
    responses(
        (status = 200, description = "A page of sagas", body = Vec<SagaView>,
         headers(("Link" = String, description = "`<...>; rel=\"next\"` when more follow"))),
        (status = 400, description = "A bad filter, limit or cursor", body = super::error::ErrorBody),
        (status = 503, description = "The database is away", body = super::error::ErrorBody),
    )
)]
async fn list_sagas(
    State(app): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let status = parse_status(params.status.as_deref())?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let saga_type = params.saga_type.filter(|t| !t.is_empty());
    if saga_type.as_ref().is_some_and(|t| t.chars().count() > 64) {
        return Err(ApiError::bad_request("type is at most 64 characters"));
    }
    let after = params
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| {
            parse_cursor(c).ok_or_else(|| {
                ApiError::bad_request(
                    "cursor is not one this API gave out (take it from the Link header)",
                )
            })
        })
        .transpose()?;
    let search = params
        .search
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    if search.as_ref().is_some_and(|t| t.chars().count() > 256) {
        return Err(ApiError::bad_request("search is at most 256 characters"));
    }
    let filter = ListFilter {
        saga_type: saga_type.clone(),
        status,
        after,
        search: search.clone(),
    };
    // One more than asked for: whether another page follows.
    let mut sagas = app.store.list(&filter, limit + 1).await?;
    let more = sagas.len() as i64 > limit;
    sagas.truncate(limit as usize);
    let views: Vec<SagaView> = sagas.iter().map(SagaView::from).collect();
    let mut response = Json(views).into_response();
    if let (true, Some(last)) = (more, sagas.last()) {
        let mut query = vec![format!("limit={limit}")];
        if let Some(t) = &saga_type {
            // A saga type is a-z, 0-9 and _, but a client may have sent anything.
            let t = percent_encoding::utf8_percent_encode(t, QUERY_VALUE);
            query.push(format!("type={t}"));
        }
        if let Some(s) = status {
            query.push(format!("status={}", s.as_str()));
        }
        if let Some(t) = &search {
            let t = percent_encoding::utf8_percent_encode(t, QUERY_VALUE);
            query.push(format!("search={t}"));
        }
        query.push(format!("cursor={}.{}", last.created_at, last.saga_id));
        let link = format!("</sagas?{}>; rel=\"next\"", query.join("&"));
        if let Ok(v) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(response)
}

/// A `status` filter, in any case; empty is none.
pub(super) fn parse_status(status: Option<&str>) -> Result<Option<SagaStatus>, ApiError> {
    match status {
        None | Some("") => Ok(None),
        Some(s) => SagaStatus::parse(&s.to_ascii_uppercase())
            .map(Some)
            .ok_or_else(|| {
                let known: Vec<&str> = SagaStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::bad_request(format!(
                    "unknown status {s:?}; expected one of {}",
                    known.join(", ")
                ))
            }),
    }
}

/// What a page cursor looks like (the API's document says so): `created_at.saga_id`.
pub const PAGE_CURSOR_PATTERN: &str =
    "^[0-9]{1,18}\\.[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// `created_at.saga_id` of the last saga of a page: exactly [`PAGE_CURSOR_PATTERN`].
fn parse_cursor(cursor: &str) -> Option<(i64, Uuid)> {
    let (at, id) = cursor.split_once('.')?;
    let digits = !at.is_empty() && at.len() <= 18 && at.bytes().all(|b| b.is_ascii_digit());
    // 36 characters: the hyphenated form only (a UUID also parses from 32, 38 and 45).
    (digits && id.len() == 36).then_some(())?;
    Some((at.parse().ok()?, Uuid::parse_str(id).ok()?))
}

/// What a query value keeps unencoded: RFC 3986's unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'-')
    .remove(b'.')
    .remove(b'~');

/// An operator command taken: `message` as CampusG answers a cancel, the saga and its status.
#[derive(Debug, Serialize, ToSchema)]
struct Accepted {
    message: String,
    saga_id: Uuid,
    status: SagaStatus,
}

impl Accepted {
    fn new(saga_id: Uuid, status: SagaStatus, verb: &str) -> Json<Self> {
        // Said as it stands: a repeated cancel of a cancelled saga is not "being cancelled".
        let message = if status.is_terminal() {
            format!("saga {saga_id} is {}", status.as_str())
        } else {
            format!("saga {saga_id} is being {verb}")
        };
        Json(Accepted {
            message,
            saga_id,
            status,
        })
    }
}

/// An operator command on one saga: the engine function that applies it, and its past tense.
type Command = fn(&Sagas, &SagaState, i64) -> engine::Decision;

/// `POST /sagas/{id}/cancel`: 202 when accepted (again), 409 with the status when the saga is
/// compensating or has ended otherwise.
#[utoipa::path(
    post,
    path = "/sagas/{saga_id}/cancel",
    tag = "sagas",
    summary = "Cancel a saga: its completed steps are undone",
    params(("saga_id" = Uuid, Path, description = "The saga's id")),
    responses(
        (status = 202, description = "Accepted", body = Accepted),
        (status = 400, description = "Not a UUID", body = super::error::ErrorBody),
        (status = 404, description = "No such saga", body = super::error::ErrorBody),
        (status = 409, description = "Its status does not allow it", body = super::error::ConflictBody),
        (status = 503, description = "The database is away", body = super::error::ErrorBody),
    )
)]
async fn cancel_saga(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    command(&app, &id, Sagas::cancel, "cancelled").await
}

/// `POST /sagas/{id}/retry`: re-drives the failed compensation of a `FAILED` saga.
#[utoipa::path(
    post,
    path = "/sagas/{saga_id}/retry",
    tag = "sagas",
    summary = "Retry the failed compensation of a FAILED saga",
    params(("saga_id" = Uuid, Path, description = "The saga's id")),
    responses(
        (status = 202, description = "Accepted", body = Accepted),
        (status = 400, description = "Not a UUID", body = super::error::ErrorBody),
        (status = 404, description = "No such saga", body = super::error::ErrorBody),
        (status = 409, description = "Its status does not allow it", body = super::error::ConflictBody),
        (status = 503, description = "The database is away", body = super::error::ErrorBody),
    )
)]
async fn retry_saga(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    command(&app, &id, Sagas::retry, "retried").await
}

async fn command(
    app: &AppState,
    id: &str,
    apply: Command,
    verb: &str,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let saga_id = parse_id(id)?;
    let now = platform::time::now_ms();
    // What the command sends continues the saga's own trace (not the request's).
    let span = tracing::info_span!(
        "saga_command",
        saga_id = %saga_id,
        saga_type = tracing::field::Empty,
        command = verb,
        trace_id = tracing::field::Empty,
    );
    let outcome = match transition(&app.store, saga_id, now, &span, Persist::Request, |s| {
        apply(&app.sagas, s, now)
    })
    .await
    {
        Retried::Ok(outcome) => outcome,
        Retried::Permanent(e) => return Err(e.into()),
        Retried::Cancelled => return Err(ApiError::Timeout),
    };
    respond(app, saga_id, outcome, verb).await
}

async fn respond(
    app: &AppState,
    saga_id: Uuid,
    outcome: Option<Changed>,
    verb: &str,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    match outcome {
        None => Err(ApiError::NotFound(format!("no saga with id {saga_id}"))),
        Some(Changed::Yes { status, .. }) => {
            tracing::info!(saga_id = %saga_id, status = status.as_str(), "saga {verb}");
            Ok((StatusCode::ACCEPTED, Accepted::new(saga_id, status, verb)))
        }
        Some(Changed::Parked { status, reason }) => {
            tracing::error!(saga_id = %saga_id, %reason, "saga parked for an operator");
            Err(ApiError::Conflict {
                message: format!("the saga cannot be {verb}: {reason}"),
                status,
            })
        }
        Some(Changed::No(Ignored::AlreadyCancelled)) => {
            let status = app
                .store
                .get(saga_id)
                .await?
                .map(|s| s.status)
                .unwrap_or(SagaStatus::Cancelling);
            Ok((StatusCode::ACCEPTED, Accepted::new(saga_id, status, verb)))
        }
        Some(Changed::No(Ignored::NotCancellable(status) | Ignored::NotRetryable(status))) => {
            Err(ApiError::Conflict {
                message: format!("the saga is {} and cannot be {verb}", status.as_str()),
                status,
            })
        }
        Some(Changed::No(Ignored::PastPointOfNoReturn(pivot))) => Err(ApiError::Conflict {
            message: format!(
                "the saga has passed its point of no return ({pivot}) and cannot be {verb}: \
                 what is left of it is retried until done"
            ),
            status: current_status(app, saga_id).await?,
        }),
        Some(Changed::No(other)) => Err(ApiError::Conflict {
            message: format!("the saga cannot be {verb} now ({other:?})"),
            status: current_status(app, saga_id).await?,
        }),
    }
}

/// The saga's status as stored now, for a refusal's body.
async fn current_status(app: &AppState, saga_id: Uuid) -> Result<SagaStatus, ApiError> {
    Ok(app
        .store
        .get(saga_id)
        .await?
        .map(|s| s.status)
        .unwrap_or(SagaStatus::Started))
}
