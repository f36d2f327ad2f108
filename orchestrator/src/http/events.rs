//! Live updates as Server-Sent Events.
//!
//! - `GET /sagas/{id}/events`: the saga's changes it missed (after `Last-Event-ID`), then its
//!   current state (`event: saga`), then every change as it commits (`event: change`, each
//!   followed by the new state); the stream ends after a change that ends the saga. A reconnect
//!   after the end is answered 204, which tells an `EventSource` to stop.
//! - `GET /events?type=&status=`: every change of every saga (of that type, reaching that
//!   status), from now or after `Last-Event-ID`, without end.
//!
//! Event ids are positions in the change log (see [`crate::store::Cursor`]): a client that
//! reconnects with the last one it saw gets everything after it that is still stored (the
//! retention). Streams are capped per instance (503 past the cap), send a comment when quiet
//! (heartbeat), and a client that falls a broadcast buffer behind is told (`event: dropped`) and
//! disconnected; the server's write timeout disconnects one that stops reading altogether.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Access::Needs, Routes, Scope};
use super::sagas::{parse_id, parse_status, SagaView};
use super::{ApiError, ApiPath, ApiQuery, AppState};
use crate::live::{Batch, Feed, Place, PAGE};
use crate::store::{ChangeFilter, ChangeRecord, Cursor, SagaStore};

pub fn routes() -> Routes {
    Routes::default()
        .get("/events", Needs(Scope::Read), all_events)
        .get("/sagas/{saga_id}/events", Needs(Scope::Read), saga_events)
}

/// How long an `EventSource` waits before reconnecting after the stream ends or breaks.
const RECONNECT_MS: u64 = 1_000;

/// A saga's changes read up front when a stream of one saga opens: far more than any saga makes.
const MAX_SAGA_BACKLOG: usize = 10_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsParams {
    /// Only changes of sagas of this type.
    #[serde(rename = "type")]
    #[param(rename = "type", max_length = 64)]
    saga_type: Option<String>,
    /// Only changes that leave their saga in this status (any case).
    status: Option<String>,
}

/// `GET /events?type=&status=`.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    summary = "Every change of every saga as Server-Sent Events (`event: change`), from now or after Last-Event-ID",
    params(
        EventsParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, description = "An event stream that does not end: `event: change` with a ChangeView", content_type = "text/event-stream", body = ChangeView),
        (status = 400, description = "A bad filter or Last-Event-ID", body = super::error::ErrorBody),
        (status = 503, description = "Too many event streams open on this instance", body = super::error::ErrorBody),
    )
)]
async fn all_events(
    State(app): State<AppState>,
    ApiQuery(params): ApiQuery<EventsParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let saga_type = params.saga_type.filter(|t| !t.is_empty());
    if saga_type.as_ref().is_some_and(|t| t.chars().count() > 64) {
        return Err(ApiError::bad_request("type is at most 64 characters"));
    }
    let filter = ChangeFilter {
        saga_id: None,
        saga_type,
        status: parse_status(params.status.as_deref())?,
    };
    let resume = last_event_id(&headers)?;
    let permit = enter(&app.feed)?;
    let rx = app.feed.subscribe();
    let head = app.store.changes_head().await?;
    let tail = Tail {
        feed: app.feed.clone(),
        store: app.store.clone(),
        rx,
        filter,
        cursor: resume.unwrap_or(head),
        backlog: resume.filter(|r| *r < head).map(|_| head),
        queue: VecDeque::from([Event::default()
            .retry(std::time::Duration::from_millis(RECONNECT_MS))
            .comment("changes follow")]),
        saga: None,
        done: false,
        _place: permit,
    };
    Ok(stream(&app.feed, tail))
}

/// `GET /sagas/{id}/events`.
#[utoipa::path(
    get,
    path = "/sagas/{saga_id}/events",
    tag = "events",
    summary = "One saga live as Server-Sent Events: its state (`event: saga`), then each change (`event: change`, then `event: saga`), ending with it",
    params(
        ("saga_id" = Uuid, Path, description = "The saga's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, description = "An event stream: `event: saga` with a SagaView, `event: change` with a ChangeView", content_type = "text/event-stream", body = super::sagas::SagaView),
        (status = 204, description = "Resumed after the end: nothing more will come"),
        (status = 404, description = "No such saga", body = super::error::ErrorBody),
        (status = 400, description = "A bad filter or Last-Event-ID", body = super::error::ErrorBody),
        (status = 503, description = "Too many event streams open on this instance", body = super::error::ErrorBody),
    )
)]
async fn saga_events(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let saga_id = parse_id(&id)?;
    let resume = last_event_id(&headers)?;
    let permit = enter(&app.feed)?;
    let rx = app.feed.subscribe();
    let head = app.store.changes_head().await?;
    let filter = ChangeFilter {
        saga_id: Some(saga_id),
        ..Default::default()
    };
    let mut queue =
        VecDeque::from([Event::default().retry(std::time::Duration::from_millis(RECONNECT_MS))]);
    let mut missed = 0;
    if let Some(after) = resume.filter(|r| *r < head) {
        let mut at = after;
        while missed < MAX_SAGA_BACKLOG {
            let page = app
                .store
                .changes_after(at, Some(head), &filter, PAGE)
                .await?;
            for c in &page {
                queue.push_back(change_event(c));
            }
            missed += page.len();
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => at = last.cursor,
                _ => break,
            }
        }
    }
    let Some(state) = app.store.get(saga_id).await? else {
        return Err(ApiError::NotFound(format!("no saga with id {saga_id}")));
    };
    let ended = state.status.is_terminal();
    if resume.is_some() && missed == 0 && ended {
        // Nothing new, and nothing will come: an EventSource stops reconnecting on a 204.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    queue.push_back(saga_event(&SagaView::from(&state)).id(head.to_string()));
    let tail = Tail {
        feed: app.feed.clone(),
        store: app.store.clone(),
        rx,
        filter,
        cursor: head,
        backlog: None,
        queue,
        saga: Some(saga_id),
        done: ended,
        _place: permit,
    };
    Ok(stream(&app.feed, tail))
}

fn enter(feed: &Feed) -> Result<Place, ApiError> {
    feed.enter().ok_or_else(|| {
        ApiError::Busy(format!(
            "too many event streams open on this instance ({}); retry later",
            feed.limits().max_streams
        ))
    })
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<Cursor>, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let refused = || ApiError::bad_request("Last-Event-ID is not an event id this API gave out");
    let text = v.to_str().map_err(|_| refused())?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|()| refused())
}

fn stream(feed: &Feed, tail: Tail) -> Response {
    let events = futures_util::stream::unfold(tail, |mut tail| async move {
        let event = tail.next().await?;
        Some((Ok::<_, Infallible>(event), tail))
    });
    let mut response = Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(feed.limits().heartbeat)
                .text("heartbeat"),
        )
        .into_response();
    // Proxies that buffer responses (nginx) would hold the events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// One open stream: where it is in the change log, and what it still has to send.
struct Tail {
    feed: Feed,
    store: SagaStore,
    rx: broadcast::Receiver<Arc<Batch>>,
    filter: ChangeFilter,
    /// Everything up to here has been sent (or was not wanted).
    cursor: Cursor,
    /// Changes up to here are to be read from the database first (a resume, a gap).
    backlog: Option<Cursor>,
    queue: VecDeque<Event>,
    /// A stream of one saga: sends its state after each change, ends when it ends.
    saga: Option<Uuid>,
    done: bool,
    _place: Place,
}

impl Tail {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.done || self.feed.stopping().is_cancelled() {
                return None;
            }
            if let Some(until) = self.backlog {
                let read = match self.read_backlog(until).await {
                    Ok(true) => self.push_state().await,
                    other => other.map(|_| ()),
                };
                if let Err(e) = read {
                    tracing::warn!(error = %e, "event stream cannot read the change log");
                    return None;
                }
                continue;
            }
            let received = tokio::select! {
                _ = self.feed.stopping().cancelled() => return None,
                r = self.rx.recv() => r,
            };
            match received {
                Ok(batch) => {
                    if let Err(e) = self.take(&batch).await {
                        tracing::warn!(error = %e, "event stream cannot read the change log");
                        return None;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(
                        batches = missed,
                        "event stream dropped: its client fell behind"
                    );
                    self.feed.dropped();
                    self.done = true;
                    let body = super::error::ErrorBody {
                        success: false,
                        error: "this stream fell too far behind and is closed; reconnect with \
                                Last-Event-ID to resume"
                            .into(),
                    };
                    self.queue.push_back(
                        Event::default()
                            .event("dropped")
                            .data(serde_json::to_string(&body).unwrap_or_default()),
                    );
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// One page of the changes up to `until` from the database; whether it held any.
    async fn read_backlog(&mut self, until: Cursor) -> crate::Result<bool> {
        let page = self
            .store
            .changes_after(self.cursor, Some(until), &self.filter, PAGE)
            .await?;
        let full = page.len() as i64 == PAGE;
        for c in &page {
            self.push(c);
            self.cursor = c.cursor;
        }
        if !full {
            self.cursor = self.cursor.max(until);
            self.backlog = None;
        }
        Ok(!page.is_empty())
    }

    /// What the feed broadcast: first any gap before it from the database, then what this
    /// stream wants of it. Changes read from the gap count like broadcast ones: a saga's stream
    /// sends the state they left and ends after the one that ends the saga, however they came.
    async fn take(&mut self, batch: &Batch) -> crate::Result<()> {
        let mut moved = false;
        if batch.after > self.cursor {
            self.backlog = Some(batch.after);
            while let Some(until) = self.backlog {
                moved |= self.read_backlog(until).await?;
            }
        }
        for c in &batch.changes {
            if c.cursor <= self.cursor {
                continue;
            }
            self.cursor = c.cursor;
            if self.filter.matches(c) {
                self.push(c);
                moved = true;
            }
        }
        if moved {
            self.push_state().await?;
        }
        Ok(())
    }

    /// Queues a change; a saga's stream ends after the change that ends the saga.
    fn push(&mut self, c: &ChangeRecord) {
        self.queue.push_back(change_event(c));
        if self.saga.is_some() && c.status.is_terminal() {
            self.done = true;
        }
    }

    /// After changes of its saga, a saga's stream sends the saga as it is now.
    async fn push_state(&mut self) -> crate::Result<()> {
        if let Some(id) = self.saga {
            if let Some(state) = self.store.get(id).await? {
                self.queue.push_back(saga_event(&SagaView::from(&state)));
            }
        }
        Ok(())
    }
}

/// The data of `event: change`: what one committed transition did to one saga.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ChangeView {
    /// The event id: where a reconnect resumes (`Last-Event-ID`).
    id: String,
    saga_id: Uuid,
    saga_type: String,
    /// The saga's status once the change committed.
    status: crate::saga::SagaStatus,
    /// The saga's stored version once the change committed.
    version: i64,
    at: String,
    /// What happened, in order: `started`; `sent`, `resent` (`step`, `compensation`,
    /// `attempt`); `replied` (with its `outcome`); `timed_out`; `status` (`from`, `to`);
    /// `parked` (`reason`); `resumed`.
    #[schema(value_type = Vec<Object>)]
    changes: Value,
}

fn change_event(c: &ChangeRecord) -> Event {
    let body = ChangeView {
        id: c.cursor.to_string(),
        saga_id: c.saga_id,
        saga_type: c.saga_type.clone(),
        status: c.status,
        version: c.version,
        at: platform::time::rfc3339(c.at),
        changes: serde_json::from_str(&c.what).unwrap_or(Value::Array(Vec::new())),
    };
    Event::default()
        .event("change")
        .id(c.cursor.to_string())
        .data(serde_json::to_string(&body).unwrap_or_default())
}

/// `event: saga`: the saga as `GET /sagas/{id}` shows it.
fn saga_event(view: &SagaView) -> Event {
    Event::default()
        .event("saga")
        .data(serde_json::to_string(view).unwrap_or_default())
}
